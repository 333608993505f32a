"""Button presses: the table of `<domain>.<verb>` action ids the domain modules fill with `@button`, each with a
typed value (ids only, never state) and a role, and the listener that acks a press and runs it in the background."""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp

from bot.config import Role
from bot.notifier import Message, SlackError
from bot.releases.messages import when
from handlers.payloads import BlockActions

if TYPE_CHECKING:
    from bot.runtime import Runtime


@dataclass(frozen=True)
class Press:
    user: str
    channel: str
    message_ts: str
    action_id: str
    response_url: str
    trigger_id: str


class Mismatch(Exception):
    """A button's value names something other than what the message it was pressed on is about."""


Run = Callable[["Runtime", Press, Any], Awaitable[None]]
Check = Callable[["Runtime", Press, Any], None]


@dataclass(frozen=True)
class Button:
    action_id: str
    value: type[BaseModel]
    run: Run
    role: Role | tuple[Role, ...] | None = None  # a tuple: any one of them will do
    once: bool = False  # a press of this button (its value names one card rendering) runs at most once
    # Raises Mismatch when the value names something other than what the card it was pressed on is about (an
    # edited value: another release, another model), before anything runs.
    check: Check | None = None


BUTTONS: dict[str, Button] = {}
UNKNOWN_BUTTON = "button.unknown"  # the verb of every unknown action id: what comes in must not become a metrics label


def button(action_id: str, value: type[BaseModel], role: Role | tuple[Role, ...] | None = None,
           **fields: Any) -> Callable[[Run], Run]:
    """Declare the decorated function as what pressing `action_id` runs; `fields` are the Button's others (once, check)."""

    def declare(run: Run) -> Run:
        BUTTONS[action_id] = Button(action_id, value, run, role, **fields)
        return run

    return declare


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.action(re.compile(".+"))
    async def pressed(ack: AsyncAck, context: dict[str, Any]) -> None:
        await ack()
        payload: BlockActions = context["mlops_payload"]
        action = payload.actions[0]
        press = Press(
            user=payload.user.id,
            channel=(payload.channel.id if payload.channel else "") or payload.container.channel_id,
            message_ts=payload.container.message_ts,
            action_id=action.action_id,
            response_url=payload.response_url,
            trigger_id=payload.trigger_id,
        )
        spec = BUTTONS.get(press.action_id)
        base = {"actor": press.user, "channel": press.channel, "verb": press.action_id if spec else UNKNOWN_BUTTON,
                "key": payload.trigger_id or None}

        def refuse(status: str, detail: dict[str, Any], text: str) -> None:
            runtime.audit(**base, status=status, detail=detail)
            runtime.spawn(answer_press(runtime, press, text), name=f"{base['verb']} {status}")

        if spec is None:
            return refuse("invalid", {"action_id": press.action_id[:100], "error": "unknown button"},
                          ":warning: That button is not known to this version of the bot. "
                          "Run the command again to get a fresh card.")
        # The role first: it depends on the button alone, so a press without it reads and looks up nothing.
        roles = (spec.role,) if isinstance(spec.role, str) else spec.role or ()
        if roles and not any([await runtime.roles.has(press.user, role) for role in roles]):
            named, who = " or ".join(f"*{r}*" for r in roles), "; ".join(runtime.roles.who_to_ask(r) for r in roles)
            return refuse("denied", {"role": " or ".join(roles), "value": (action.value or "")[:300]},
                          f"You need the {named} role for that button; ask {who}.")
        try:
            value = spec.value.model_validate_json(action.value or "{}")
        except ValidationError as exc:
            return refuse("invalid", {"value": (action.value or "")[:300], "error": str(exc)[:500]},
                          f":warning: That button could not be used ({str(exc).splitlines()[0]}). "
                          "Run the command again to get a fresh card.")
        try:
            if spec.check:
                spec.check(runtime, press, value)
        except Mismatch as exc:
            return refuse("refused", {**value.model_dump(mode="json"), "reason": str(exc)},
                          f":no_entry: That button does not match its message ({exc}); nothing was done.")
        if spec.once:
            # The same button pressed twice, or by two people: the first runs, the others are told who did.
            first = runtime.store.claim_press(f"{press.action_id}:{value.model_dump_json()}", press.user, runtime.clock())
            if first is not None:
                runtime.audit(**base, status="duplicate", detail={**value.model_dump(), "first": first[0]})
                runtime.spawn(answer_press(runtime, press, f"Already done: <@{first[0]}> pressed that {when(first[1])}; "
                                                           "it runs once. The card shows where it stands."),
                              name=f"{press.action_id} duplicate")
                return
        runtime.audit(**base, status="accepted", detail=value.model_dump())

        async def report_failure(exc: Exception) -> None:
            runtime.audit(**base, status="error", detail={"error": f"{type(exc).__name__}: {exc}"})
            await answer_press(runtime, press,
                               f":x: That action failed unexpectedly ({type(exc).__name__}); it is in the bot's log.")

        runtime.spawn(spec.run(runtime, press, value), name=press.action_id, on_error=report_failure)


async def answer_press(runtime: Runtime, press: Press, text: str) -> None:
    """Answer the presser alone: ephemeral in the channel, else through the press's response_url, else by DM."""
    if press.channel and press.channel.startswith(("C", "G", "D")):
        try:
            await runtime.notifier.ephemeral(press.channel, press.user, Message(text))
            return
        except SlackError:  # e.g. a private channel the bot is not in; the response_url still reaches them
            if not press.response_url:
                raise
    if press.response_url:
        await runtime.notifier.respond(press.response_url, Message(text))
    else:  # a button of the App Home: no channel and no response_url, so answer in the app's DM
        await runtime.notifier.dm(press.user, Message(text))


def on_its_card(press: Press, what: str, channel: str | None, card_ts: str | None) -> None:
    """Mismatch when a button naming `what` was pressed on a message that is not `what`'s card. The bot records
    where it posts each card (edited in place, so re-renderings keep the ts), and Slack reports where a press
    happened: a value edited to name something else shows here. Presses off a message (the App Home) have no ts."""
    if press.message_ts and card_ts and (channel, card_ts) != (press.channel, press.message_ts):
        raise Mismatch(f"{what} has another card")


def row_card(table: str, what: str, attr: str) -> Check:
    """The check of a button naming a row of `table` (with channel, ts) by the value's `attr`: a row that does not
    exist is left to the service to explain; one posted as another message is a mismatch."""

    def check(runtime: Runtime, press: Press, ref: Any) -> None:
        rows = runtime.store.query(f"SELECT channel, ts FROM {table} WHERE id = ?", (getattr(ref, attr),))
        if rows:
            on_its_card(press, f"{what} {getattr(ref, attr)}", rows[0]["channel"], rows[0]["ts"])

    return check
