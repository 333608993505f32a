"""Who holds which role: the config's users and user groups, groups resolved through Slack."""
from __future__ import annotations

import logging
import time

from bot.config import Config, Members, Role
from bot.notifier import Notifier, SlackError

log = logging.getLogger(__name__)

# A refusal names this many people at most: enough to find someone awake, short enough to read.
MAX_NAMED = 5


class RoleDirectory:
    """Who holds which role, resolving user groups through Slack (cached: a role check is on the ack path)."""

    ttl = 300.0

    def __init__(self, config: Config, notifier: Notifier):
        self.roles = config.roles
        self.notifier = notifier
        self._groups: dict[str, tuple[float, set[str]]] = {}

    async def _group(self, group: str) -> set[str]:
        cached = self._groups.get(group)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            members = set(await self.notifier.usergroup_members(group))
        except SlackError:
            log.warning("cannot resolve user group %s; treating it as empty", group, exc_info=True)
            members = cached[1] if cached else set()
        self._groups[group] = (time.monotonic(), members)
        return members

    async def _in(self, user: str, role: Role) -> bool:
        members = getattr(self.roles, role)
        if user in members.users:
            return True
        for group in members.groups:
            if user in await self._group(group):
                return True
        return False

    async def has(self, user: str, role: Role) -> bool:
        return await self._in(user, role) or (role != "admins" and await self._in(user, "admins"))

    def who_to_ask(self, role: Role) -> str:
        """Whom a refusal sends the person to: the role's holders by name, then the admins, who hold every role
        ("<@U1>, <!subteam^S1> (deployers) or an admin (<@U9>)"), as Slack mentions."""
        admins = _mentions(self.roles.admins)
        holders = [m for m in _mentions(getattr(self.roles, role)) if m not in admins] if role != "admins" else []
        admin = f"an admin ({_listed(admins)})" if admins else "an admin"
        return f"{_listed(holders)} ({role}) or {admin}" if holders else admin


def _mentions(members: Members) -> list[str]:
    return [f"<@{u}>" for u in members.users] + [f"<!subteam^{g}>" for g in members.groups]


def _listed(mentions: list[str]) -> str:
    shown = mentions[:MAX_NAMED] + ([f"{len(mentions) - MAX_NAMED} more"] if len(mentions) > MAX_NAMED else [])
    return ", ".join(shown)
