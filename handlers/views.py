"""Modal submissions: one table of callback ids, each with a typed private_metadata and a handler.

A handler returns a dict of field errors to show in the modal (Slack's response_action "errors"), or None
to close it; the work it starts runs in a tracked background task.
"""
from __future__ import annotations

import re

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp

from bot.notifier import Message

if TYPE_CHECKING:
    from bot.runtime import Runtime


@dataclass(frozen=True)
class Submission:
    user: str
    values: dict[str, str]  # block_id → the text or selected value of its single input


@dataclass(frozen=True)
class Modal:
    callback_id: str
    metadata: type[BaseModel]
    submit: Callable[["Runtime", Submission, Any], Awaitable[dict[str, str] | None]]


MODALS: dict[str, Modal] = {}


def modal(m: Modal) -> Modal:
    MODALS[m.callback_id] = m
    return m


def _values(state: dict[str, Any]) -> dict[str, str]:
    out = {}
    for block_id, actions in state.get("values", {}).items():
        for element in actions.values():
            out[block_id] = element.get("value") or (element.get("selected_option") or {}).get("value") or ""
    return out


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.view(re.compile(".+"))
    async def submitted(body: dict[str, Any], ack: AsyncAck) -> None:
        view = body["view"]
        spec = MODALS.get(view.get("callback_id", ""))
        user = body["user"]["id"]
        base = {"actor": user, "verb": f"view.{view.get('callback_id', '?')}", "key": body.get("trigger_id")}
        try:
            if spec is None:
                raise ValueError("unknown form")
            meta = spec.metadata.model_validate_json(view.get("private_metadata") or "{}")
        except (ValidationError, ValueError) as exc:
            await ack()
            runtime.audit(**base, status="invalid", detail={"error": str(exc)[:500]})
            return
        errors = await spec.submit(runtime, Submission(user, _values(view.get("state", {}))), meta)
        if errors:
            await ack(response_action="errors", errors=errors)
            runtime.audit(**base, status="invalid", detail={"errors": errors})
        else:
            await ack()


# -- release train ------------------------------------------------------------------------------------

def _reason(sub: Submission) -> str | None:
    return (sub.values.get("reason") or "").strip() or None


async def _urgent(runtime: Runtime, sub: Submission, ref: Any) -> dict[str, str] | None:
    reason = _reason(sub)
    if reason is None or len(reason) < 5:
        return {"reason": "Say why this cannot wait for deploy hours (a few words at least)."}
    runtime.spawn(_notify_failure(runtime, sub.user, runtime.releases.promote(runtime.releases.get(ref.release), sub.user, urgent_reason=reason)),
                  name="release.urgent")
    return None


async def _rollback(runtime: Runtime, sub: Submission, ref: Any) -> dict[str, str] | None:
    reason = _reason(sub)
    if reason is None:
        return {"reason": "A rollback needs a reason for the audit log."}

    async def work() -> None:
        text = await runtime.releases.rollback(ref.model, ref.env, sub.user, to_version=ref.to, reason=reason, card_release=ref.release)
        await runtime.notifier.post(runtime.config.channels.main, Message(text))

    runtime.spawn(_notify_failure(runtime, sub.user, work()), name="release.rollback")
    return None


async def _notify_failure(runtime: Runtime, user: str, work: Awaitable[Any]) -> None:
    from bot.releases.service import ReleaseError

    try:
        await work
    except ReleaseError as exc:
        await runtime.notifier.dm(user, Message(f":warning: {exc}"))


def _register_release_modals() -> None:
    from bot.releases.messages import ReleaseRef, RollbackRef

    modal(Modal("release.urgent", ReleaseRef, _urgent))
    modal(Modal("release.rollback", RollbackRef, _rollback))


_register_release_modals()
