"""Modal submissions: one table of callback ids, each with a typed private_metadata and a handler.

A handler returns a dict of field errors to show in the modal (Slack's response_action "errors"), or None
to close it; the work it starts runs in a tracked background task.
"""
from __future__ import annotations

import re

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse

from bot.config import Role
from bot.notifier import Message

if TYPE_CHECKING:
    from bot.runtime import Runtime


# -- the payload, as far as the handlers read it (checked at the edge: handlers.refuse_shape) --------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)  # ids and texts are strings in every Slack payload


class _User(_Strict):
    id: str = Field(min_length=1)


class _Option(_Strict):
    value: str = ""


class _Element(_Strict):
    value: str | None = None
    selected_option: _Option | None = None


class _State(_Strict):
    values: dict[str, dict[str, _Element]] = {}


class _View(_Strict):
    type: str  # Bolt's matchers read it
    callback_id: str
    private_metadata: str = ""
    state: _State = _State()
    blocks: list[dict[str, Any]] = []


class ViewSubmission(_Strict):
    type: str
    user: _User
    view: _View
    trigger_id: str = ""


@dataclass(frozen=True)
class Submission:
    user: str
    values: dict[str, str]  # block_id → the text or selected value of its single input


class Refused(Exception):
    """What a submission names cannot be used (a release that does not exist, one of another model): nothing ran."""


@dataclass(frozen=True)
class Modal:
    callback_id: str
    metadata: type[BaseModel]
    submit: Callable[["Runtime", Submission, Any], Awaitable[dict[str, str] | None]]
    role: Role | None = None  # checked again on submit: the submission, not the button, is what does the work


MODALS: dict[str, Modal] = {}
UNKNOWN = "view.unknown"  # the verb of every unknown callback id: what comes in must not become a metrics label


def modal(m: Modal) -> Modal:
    MODALS[m.callback_id] = m
    return m


def _values(state: _State) -> dict[str, str]:
    out = {}
    for block_id, elements in state.values.items():
        for element in elements.values():
            out[block_id] = element.value or (element.selected_option.value if element.selected_option else "") or ""
    return out


def _shown(view: _View, text: str) -> dict[str, Any]:
    """The reason on the modal's first input, which keeps it open with what was typed; else Slack says it failed."""
    block_id = next((b.get("block_id") for b in view.blocks if b.get("type") == "input" and isinstance(b.get("block_id"), str)), None)
    return {"response_action": "errors", "errors": {block_id: text}} if block_id else {}


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.view(re.compile(".+"))
    async def submitted(ack: AsyncAck, context: dict[str, Any]) -> BoltResponse | None:
        payload: ViewSubmission = context["mlops_payload"]
        view, user = payload.view, payload.user.id
        spec = MODALS.get(view.callback_id)
        base = {"actor": user, "verb": f"view.{view.callback_id}" if spec else UNKNOWN, "key": payload.trigger_id or None}
        if spec is None:
            runtime.audit(**base, status="invalid", detail={"callback_id": view.callback_id[:100], "error": "unknown form"})
            return BoltResponse(status=400, body={"error": "unknown form"})
        if spec.role and not await runtime.roles.has(user, spec.role):
            who = ", ".join(runtime.roles.who_to_ask(spec.role)) or "an admin"
            runtime.audit(**base, status="denied", detail={"role": spec.role})
            if shown := _shown(view, f"You need the {spec.role} role for this; ask {who}. Nothing was done."):
                await ack(**shown)
                return None
            return BoltResponse(status=403, body={"error": "denied"})
        try:
            meta = spec.metadata.model_validate_json(view.private_metadata or "{}")
            errors = await spec.submit(runtime, Submission(user, _values(view.state)), meta)
        except (ValidationError, Refused) as exc:
            # Slack sends back the private_metadata the bot wrote: one it cannot use was not written by it.
            runtime.audit(**base, status="invalid", detail={"error": str(exc).splitlines()[0][:300]})
            return BoltResponse(status=400, body={"error": "invalid submission"})
        if errors:
            await ack(response_action="errors", errors=errors)
            runtime.audit(**base, status="invalid", detail={"errors": errors})
        else:
            await ack()
        return None


# -- release train ------------------------------------------------------------------------------------

def _reason(sub: Submission) -> str | None:
    return (sub.values.get("reason") or "").strip() or None


def _release(runtime: Runtime, release_id: int, model: str | None = None) -> Any:
    """The release a submission names, looked up before the ack; Refused if there is none or it is another model's."""
    from bot.releases.service import ReleaseError

    try:
        release = runtime.releases.get(release_id)
    except ReleaseError as exc:
        raise Refused(str(exc)) from None
    if model is not None and release.model != model:
        raise Refused(f"release {release_id} is {release.model}'s, not {model}'s")
    return release


async def _urgent(runtime: Runtime, sub: Submission, ref: Any) -> dict[str, str] | None:
    release = _release(runtime, ref.release)
    reason = _reason(sub)
    if reason is None or len(reason) < 5:
        return {"reason": "Say why this cannot wait for deploy hours (a few words at least)."}
    runtime.spawn(_notify_failure(runtime, sub.user, runtime.releases.promote(release, sub.user, urgent_reason=reason)),
                  name="release.urgent")
    return None


async def _rollback(runtime: Runtime, sub: Submission, ref: Any) -> dict[str, str] | None:
    if ref.model not in runtime.config.models or ref.env not in runtime.config.models[ref.model].environments:
        raise Refused(f"no environment {ref.env} of a model {ref.model}")
    if ref.release is not None:
        _release(runtime, ref.release, ref.model)
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

    modal(Modal("release.urgent", ReleaseRef, _urgent, "approvers"))
    modal(Modal("release.rollback", RollbackRef, _rollback, "deployers"))


_register_release_modals()
