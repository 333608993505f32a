"""Slack listeners, one module per domain over the shared command, button and modal tables, behind an edge that
checks each payload's shape; `register(app, runtime)` wires them all."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from handlers import alerts, audit, buttons, environments, home, modals, monitors, oncall, pipelines, releases, retrain, router
from handlers.payloads import EVENTS, BlockActions, EventCallback, SlashCommand, ViewSubmission

if TYPE_CHECKING:
    from bot.runtime import Runtime

# Imported for what they declare: their verbs, buttons and modals fill the router's, buttons' and modals' tables.
DOMAINS = (alerts, audit, environments, monitors, oncall, pipelines, releases, retrain)

# The payloads the bot listens to, each with the model of the fields its handler reads.
SHAPES: dict[str, type[BaseModel]] = {
    "command": SlashCommand,
    "block_actions": BlockActions,
    "view_submission": ViewSubmission,
    "event_callback": EventCallback,
}


# Handled by Bolt itself, before any listener: passed through as they are.
BOLT_KINDS = frozenset({"url_verification", "ssl_check"})


def payload_kind(body: dict[str, Any]) -> str | None:
    if "command" in body:
        return "command"
    kind = body.get("type")
    return kind if isinstance(kind, str) and kind in SHAPES else None


def refuse_shape(runtime: Runtime, req: AsyncBoltRequest) -> BoltResponse | None:
    """Check a payload's shape before Bolt or a handler reads it, so what Slack never sends is refused at the edge.

    Bolt's own middleware and listener matching index the body (the event's type, the first action, the view's
    type) and handlers read ids as strings: a signed body without `user`, with no actions, or with
    `"user": {"id": 5}` raised there (500) or was stored as something else than it said. The validated model is
    left in the context as `mlops_payload`; None means go on.
    """
    body = req.body
    kind = payload_kind(body)
    if kind is None:
        if body.get("type") in BOLT_KINDS:
            return None
        req.context["mlops_kind"] = "unhandled"  # a kind no listener takes: answered before Bolt reads its fields
        return BoltResponse(status=404, body={"error": "unhandled request"})
    try:
        payload = req.context["mlops_payload"] = SHAPES[kind].model_validate(body)
    except (ValidationError, RecursionError) as exc:
        req.context["mlops_kind"] = "malformed"
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['type']}"  # never the values
                          for e in exc.errors()[:3]) if isinstance(exc, ValidationError) else "nested too deeply"
        source = req.context.get("mlops_source") or req.mode.replace("_", " ")
        runtime.rejections.note(str(source), f"malformed {kind} payload", where)
        return BoltResponse(status=400, body={"error": "malformed payload"})
    if kind == "event_callback" and payload.event.type not in EVENTS:
        return BoltResponse(status=200, body="")  # subscribed to but not handled: Slack would retry a 404
    return None


class SlackApp(AsyncApp):
    """Bolt's app with each payload's shape checked first (refuse_shape), over HTTP and Socket Mode alike:
    Bolt's own middleware reads fields before any middleware of ours could run."""

    def __init__(self, runtime: Runtime, **kwargs: Any):
        super().__init__(**kwargs)
        self._runtime = runtime

    async def async_dispatch(self, req: AsyncBoltRequest) -> BoltResponse:
        return refuse_shape(self._runtime, req) or await super().async_dispatch(req)


def delivery_key(req: AsyncBoltRequest) -> str | None:
    """What identifies one delivery across Slack's retries and any replay: the event id, else the trigger id, else
    the signed bytes themselves with their timestamp (a replay within Slack's 5 minutes is those same bytes)."""
    body = req.body
    if event_id := body.get("event_id"):
        return f"event:{event_id}"
    if trigger := body.get("trigger_id"):
        return f"trigger:{trigger}"
    if req.mode == "socket_mode":  # no signature; a redelivered envelope carries the same payload
        signed = json.dumps(body, sort_keys=True).encode()
    else:
        signed = (req.headers.get("x-slack-request-timestamp") or [""])[0].encode() + b":" + req.raw_body.encode()
    return "body:" + hashlib.sha256(signed).hexdigest()


class OncePerDelivery(AsyncMiddleware):
    """A retry (X-Slack-Retry-Num) or a replay of a delivery already taken is answered, not run again.

    A class rather than a decorated function: Bolt then skips its per-call argument injection, which is a
    measurable share of the ack path.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
        key = delivery_key(req)
        if key and not self.runtime.store.first_time("slack_requests", key, self.runtime.clock()):
            req.context["mlops_kind"] = "duplicate"
            return BoltResponse(status=200, body="")
        return await next()


def register(app: AsyncApp, runtime: Runtime) -> None:
    app.use(OncePerDelivery(runtime))
    router.register(app, runtime)
    buttons.register(app, runtime)
    modals.register(app, runtime)
    home.register(app, runtime)
