"""Slack listeners, one module per kind; `register(app, runtime)` wires them all."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
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


class OncePerDelivery(AsyncMiddleware):
    """A retry (X-Slack-Retry-Num) or a replay of a delivery already taken is answered, not run again.

    A class rather than a decorated function: Bolt then skips its per-call argument injection, which is a
    measurable share of the ack path.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
        key = request_key(req.body)
        if key and not self.runtime.store.first_time("slack_requests", key, self.runtime.clock()):
            req.context["mlops_kind"] = "duplicate"
            return BoltResponse(status=200, body="")
        return await next()


def register(app: AsyncApp, runtime: Runtime) -> None:
    app.use(OncePerDelivery(runtime))
    commands.register(app, runtime)
    actions.register(app, runtime)
    views.register(app, runtime)
    events.register(app, runtime)
