"""Slack listeners, one module per kind; `register(app, runtime)` wires them all."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse

from handlers import actions, commands, events, views

if TYPE_CHECKING:
    from bot.runtime import Runtime


def request_key(body: dict[str, Any]) -> str | None:
    """What identifies one delivery across Slack's retries: the event id, else the trigger id."""
    if "event_id" in body:
        return f"event:{body['event_id']}"
    if isinstance(body.get("payload"), str):
        body = json.loads(body["payload"])
    trigger = body.get("trigger_id")
    return f"trigger:{trigger}" if trigger else None


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.middleware
    async def once_per_delivery(body: dict[str, Any], context: dict[str, Any], next: Callable[[], Awaitable[BoltResponse]]):
        # A retry (X-Slack-Retry-Num) or a replay of a delivery already taken is answered, not run again.
        key = request_key(body)
        if key and not runtime.store.first_time("slack_requests", key, runtime.clock()):
            context["mlops_kind"] = "duplicate"
            return BoltResponse(status=200, body="")
        return await next()

    commands.register(app, runtime)
    actions.register(app, runtime)
    views.register(app, runtime)
    events.register(app, runtime)
