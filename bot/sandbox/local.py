"""The whole bot on loopback against the Slack emulator: what `mlops-bot sandbox`, tests and benchmarks run.

Nothing is faked inside the bot: it signs nothing, checks every signature, and talks HTTP to a Slack
Web API that enforces Slack's limits. Only the workspace is local.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from bot.config import Config, Secrets
from bot.runtime import Runtime
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from bot.store import utcnow

BOT_TOKEN = "xoxb-sandbox"
SIGNING_SECRET = "sandbox-signing-secret"


@dataclass
class LocalBot:
    runtime: Runtime
    slack: SlackEmulator
    client: SlackEventsClient  # delivers commands, presses and events as Slack would
    url: str


def workspace(config: Config) -> tuple[dict[str, dict], dict[str, dict]]:
    """Users and user groups the config mentions, so the emulator's workspace matches the config."""
    users: set[str] = set()
    groups: dict[str, dict] = {}
    for members in (config.roles.deployers, config.roles.approvers, config.roles.admins):
        users.update(members.users)
        for group in members.groups:
            groups.setdefault(group, {"handle": group.lower(), "users": []})
    for rotation in config.oncall.rotations:
        users.update(rotation.members)
        if rotation.usergroup:
            groups.setdefault(rotation.usergroup, {"handle": f"oncall-{rotation.name}", "users": [rotation.members[0]]})
    return {u: {"name": u.lower()} for u in sorted(users)}, groups


@asynccontextmanager
async def local_bot(
    config: Config,
    *,
    clock: Callable[[], datetime] = utcnow,
    secrets: Secrets | None = None,
    post_rate: float = 1.0,
    post_burst: int = 4,
    start: bool = True,
    slack: SlackEmulator | None = None,
) -> AsyncIterator[LocalBot]:
    """`slack`: a workspace already running (its messages kept across a restart of the bot), left running after."""
    users, groups = workspace(config)
    emulator = slack or SlackEmulator(
        bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, post_rate=post_rate, post_burst=post_burst,
        users=users, usergroups=groups,
    )
    if slack is None:
        await emulator.start()
    secrets = (secrets or Secrets()).model_copy(
        update={"slack_bot_token": BOT_TOKEN, "slack_signing_secret": SIGNING_SECRET, "slack_api_url": emulator.api_url}
    )
    runtime = Runtime(config, secrets, clock=clock)
    for pacer in (runtime.notifier.posts, runtime.notifier.edits):  # the bot knows its workspace's limits
        pacer.rate, pacer.burst = post_rate, post_burst
    runner = web.AppRunner(runtime.web_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    client = SlackEventsClient(f"{url}/slack/events", SIGNING_SECRET, emulator)
    try:
        if start:
            await runtime.start()
        yield LocalBot(runtime, emulator, client, url)
    finally:
        await runtime.stop()
        await runner.cleanup()
        await client.close()
        if slack is None:
            await emulator.stop()
