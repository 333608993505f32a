"""Modal submissions: one table of callback ids, each with a typed private_metadata and a handler.

A handler returns a dict of field errors to show in the modal (Slack's response_action "errors"), or None
to close it; the work it starts runs in a tracked background task.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp

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
    @app.view({"type": "view_submission"})
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
