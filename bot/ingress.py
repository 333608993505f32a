"""Slack requests on their way in, before any listener: the signature checked on the raw bytes, refusals
counted and audited in summary, and the gate that refuses changes while the store cannot take a write."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.context import Context
from bot.notifier import Message

log = logging.getLogger(__name__)

# Slack's window for a request's timestamp, either way (slack_sdk's SignatureVerifier uses the same).
SIGNATURE_WINDOW = 300


def unsigned(secret: str | None, raw: bytes, headers: Mapping[str, str], now: float) -> str | None:
    """Why a request is not signed by Slack now, or None (https://api.slack.com/authentication/verifying-requests-from-slack)."""
    if not secret:  # an empty key would accept anyone's signature
        return "no signing secret is configured"
    timestamp, signature = headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
    if not timestamp or not signature:
        return "unsigned (no signature or timestamp)"
    if not (timestamp.isascii() and timestamp.isdecimal() and len(timestamp) <= 12):
        return "malformed timestamp"
    age = now - int(timestamp)
    if age > SIGNATURE_WINDOW:
        return "stale timestamp"
    if age < -SIGNATURE_WINDOW:
        return "timestamp in the future"
    expected = "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return "bad signature"
    return None


class Rejections:
    """Slack requests refused before anything ran (unsigned, forged, stale, malformed), audited in summary.

    A flood of forged requests must not become a flood of undeletable audit rows and log lines: each (source,
    reason) gets one audit row per window with its count, written when the window closes, and one log line, at
    its first refusal. Bodies are never logged or stored: they are the sender's, and may hold a response_url.
    """

    window = 60.0  # seconds
    max_buckets = 100  # distinct (source, reason) pairs per window; more sources are summed as one

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._buckets: dict[tuple[str, str], dict[str, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, source: str, reason: str, example: str | None = None) -> None:
        key = (source, reason)
        if key not in self._buckets and len(self._buckets) >= self.max_buckets:
            key = ("other sources", reason)
        bucket = self._buckets.get(key)
        now = self.ctx.clock().isoformat()
        if bucket is None:
            bucket = self._buckets[key] = {"count": 0, "first": now}
            if example:
                bucket["example"] = example[:300]
            log.warning("refused a Slack request from %s: %s (like ones are counted and audited every %.0f s)",
                        key[0], reason, self.window)
            self._arm()
        bucket["count"] += 1
        bucket["last"] = now

    def _arm(self) -> None:
        if self._timer is not None:
            return
        try:
            self._timer = asyncio.get_running_loop().call_later(self.window, self.flush)
        except RuntimeError:  # no loop: nothing would close the window, so write now
            self.flush()

    def flush(self) -> None:
        """Write one row per (source, reason) seen since the last flush. Runtime.stop should call it first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buckets, self._buckets = self._buckets, {}
        for (source, reason), bucket in buckets.items():
            self.ctx.audit(actor="unknown", verb="slack.request", status="rejected",
                               detail={"source": source, "reason": reason, "window_s": self.window, **bucket})


class RefuseWhileStoreUnwritable(AsyncMiddleware):
    """While the store cannot take a write, Slack work that would change something is refused before it starts,
    with the reason: work never done leaves nothing half-done and no audit row to lose. Reads still answer.

    First in the chain, so a refused request claims nothing either (its delivery key, a press).
    """

    READ_ONLY_VERBS = frozenset({"help", "status", "models", "provenance"})

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
        body = req.body if isinstance(req.body, dict) else {}
        problem = self.ctx.store.write_problem()  # the last failure, else one statvfs
        if problem is None or self._reads_only(body):
            return await next()
        req.context["mlops_kind"] = "store_unwritable"
        text = (f":no_entry: The bot cannot write its audit log right now: {problem}. Nothing was done; "
                "try again when /healthz is green.")
        kind = "command" if "command" in body else str(body.get("type") or "other")
        user = body.get("user_id") or _get(body, "user", "id") or "unknown"
        channel = body.get("channel_id") or _get(body, "channel", "id") or _get(body, "container", "channel_id")
        if kind == "command":
            asked = f"{body.get('command', '')} {body.get('text', '')}"
        else:
            asked = _get(body, "actions", 0, "action_id") or _get(body, "view", "callback_id")
        # Kept in memory with the rest of the group and written once the store takes writes again.
        self.ctx.audit(actor=str(user), channel=channel, verb="slack.request", status="store_unwritable",
                           detail={"kind": kind, "asked": str(asked or "")[:200], "reason": problem},
                           key=body.get("trigger_id"))
        if kind == "command":
            return BoltResponse(status=200, body={"text": text, "response_type": "ephemeral"})
        if kind == "view_submission":
            return BoltResponse(status=200, body=_refused_view(body, text))
        if kind == "block_actions":
            if url := body.get("response_url"):
                self.ctx.spawn(self.ctx.notifier.respond(str(url), Message(text)), name="store.refused")
            elif channel and user != "unknown":
                self.ctx.spawn(self.ctx.notifier.ephemeral(str(channel), str(user), Message(text)),
                                   name="store.refused")
        return BoltResponse(status=200, body="")

    def _reads_only(self, body: dict[str, Any]) -> bool:
        if body.get("type") == "event_callback":  # app_home_opened: the Home tab is drawn from what is stored
            return True
        if "command" in body:
            words = str(body.get("text") or "").split()
            return (words[0].lower() if words else "help") in self.READ_ONLY_VERBS
        return False


def _get(value: Any, *path: str | int) -> Any:
    """A nested field of a Slack payload, or None when any step is missing or of another shape."""
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


def _refused_view(body: dict[str, Any], text: str) -> dict[str, Any]:
    """A modal stays open with the reason on its first input, so what was typed is not lost; else it says so."""
    blocks = _get(body, "view", "blocks") or []
    inputs = [b for b in blocks if isinstance(b, dict) and b.get("type") == "input" and b.get("block_id")]
    if inputs:
        return {"response_action": "errors", "errors": {inputs[0]["block_id"]: text}}
    return {"response_action": "update", "view": {
        "type": "modal", "title": {"type": "plain_text", "text": "Nothing was done"},
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}}
