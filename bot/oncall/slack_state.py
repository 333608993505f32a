"""The Slack side of a rotation: the @oncall user group and the channel topic, pointed at whoever is on call.

Each is written only when it differs from what the bot last set (kept in `oncall_slack_state`), so unchanged
ticks make no Slack calls; every write is audited, and a refused one is tried again at the next tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from datetime import datetime

from bot.context import Context
from bot.notifier import SlackError
from bot.oncall import messages
from bot.oncall.schedule import Rotation, Shift
from bot.store import iso

BOT = "mlops-bot"


class SlackState:
    def __init__(self, ctx: Context, rotations: Mapping[str, Rotation]):
        self.ctx = ctx
        # One sync at a time per rotation, so a tick and a handoff at the same instant write Slack once.
        self._locks = {name: asyncio.Lock() for name in rotations}

    async def sync(self, rotation: Rotation, shift: Shift, now: datetime) -> None:
        async with self._locks[rotation.name]:
            row = self.ctx.store.conn.execute(
                "SELECT usergroup_users, topic FROM oncall_slack_state WHERE rotation = ?", (rotation.name,)).fetchone()
            users, topic_set = row if row else (None, None)
            if (rotation.usergroup and users != shift.user
                    and await self._set_usergroup(rotation, rotation.usergroup, shift.user)):
                self._remember(rotation, "usergroup_users", shift.user, now)
            topic = messages.topic_text(shift.user, shift.end, rotation.tz)
            if topic_set != topic and await self._write(
                    rotation, "topic", topic, self.ctx.notifier.set_topic(rotation.channel, topic)):
                self._remember(rotation, "topic", topic, now)

    async def _set_usergroup(self, rotation: Rotation, group: str, user: str) -> bool:
        try:
            current = await self.ctx.notifier.usergroup_members(group)
        except SlackError as exc:
            self.ctx.audit(actor=BOT, verb="oncall.usergroup", status="failed", detail={"group": group, "error": exc.error})
            return False
        if current == [user]:  # someone (or an earlier run) already set it
            return True
        return await self._write(rotation, "usergroup", user, self.ctx.notifier.set_usergroup(group, [user]))

    async def _write(self, rotation: Rotation, what: str, value: str, call: Awaitable[None]) -> bool:
        audit = {"actor": BOT, "verb": f"oncall.{what}", "channel": rotation.channel}
        try:
            await call
        except SlackError as exc:
            self.ctx.audit(**audit, status="failed", detail={"rotation": rotation.name, "value": value, "error": exc.error})
            return False
        self.ctx.audit(**audit, status="succeeded", detail={"rotation": rotation.name, "value": value})
        return True

    def _remember(self, rotation: Rotation, column: str, value: str, now: datetime) -> None:
        self.ctx.store.conn.execute(
            f"INSERT INTO oncall_slack_state (rotation, {column}, updated_at) VALUES (?, ?, ?) "
            f"ON CONFLICT(rotation) DO UPDATE SET {column} = excluded.{column}, updated_at = excluded.updated_at",
            (rotation.name, value, iso(now)),
        )
