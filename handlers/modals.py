"""Modal submissions: the table of callback ids the domain modules fill with `@modal`, each with a typed
private_metadata and a role, and the listener that checks a submission and answers it in the ack."""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse

from bot.config import Role
from handlers.payloads import State, View, ViewSubmission

if TYPE_CHECKING:
    from bot.runtime import Runtime


@dataclass(frozen=True)
class Submission:
    user: str
    values: dict[str, str]  # block_id → the text or selected value of its single input


class Refused(Exception):
    """What a submission names cannot be used (a release that does not exist, one of another model): nothing ran."""


# Returns the field errors to show in the modal (Slack's response_action "errors"), or None to close it; the
# work it starts runs in a tracked background task.
Submit = Callable[["Runtime", Submission, Any], Awaitable[dict[str, str] | None]]


@dataclass(frozen=True)
class Modal:
    callback_id: str
    metadata: type[BaseModel]
    submit: Submit
    role: Role | None = None  # checked again on submit: the submission, not the button, is what does the work


MODALS: dict[str, Modal] = {}
UNKNOWN_VIEW = "view.unknown"  # the verb of every unknown callback id: what comes in must not become a metrics label


def modal(callback_id: str, metadata: type[BaseModel], role: Role | None = None) -> Callable[[Submit], Submit]:
    """Declare the decorated function as what submitting the modal `callback_id` runs."""

    def declare(submit: Submit) -> Submit:
        MODALS[callback_id] = Modal(callback_id, metadata, submit, role)
        return submit

    return declare


def _values(state: State) -> dict[str, str]:
    out = {}
    for block_id, elements in state.values.items():
        for element in elements.values():
            out[block_id] = element.value or (element.selected_option.value if element.selected_option else "") or ""
    return out


def _shown(view: View, text: str) -> dict[str, Any]:
    """The reason on the modal's first input, which keeps it open with what was typed; else Slack says it failed."""
    inputs = (b.get("block_id") for b in view.blocks if b.get("type") == "input" and isinstance(b.get("block_id"), str))
    block_id = next(inputs, None)
    return {"response_action": "errors", "errors": {block_id: text}} if block_id else {}


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.view(re.compile(".+"))
    async def submitted(ack: AsyncAck, context: dict[str, Any]) -> BoltResponse | None:
        payload: ViewSubmission = context["mlops_payload"]
        view, user = payload.view, payload.user.id
        spec = MODALS.get(view.callback_id)
        base = {"actor": user, "verb": f"view.{view.callback_id}" if spec else UNKNOWN_VIEW, "key": payload.trigger_id or None}
        if spec is None:
            runtime.audit(**base, status="invalid", detail={"callback_id": view.callback_id[:100], "error": "unknown form"})
            return BoltResponse(status=400, body={"error": "unknown form"})
        if spec.role and not await runtime.roles.has(user, spec.role):
            who = runtime.roles.who_to_ask(spec.role)
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
