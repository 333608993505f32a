"""Button presses: one table of `<domain>.<verb>` action ids, each with a typed value and a role.

The press is acked at once; the value is parsed with the button's pydantic model (ids only, never state),
and the work runs in a tracked background task, answering through the message's thread or response_url.
"""
from __future__ import annotations

import re

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp

from bot.config import Role
from bot.notifier import Message, SlackError
from bot.oncall.messages import ACK_HANDOFF, TAKE_COVER, CoverRef, HandoffRef
from bot.releases.messages import when

if TYPE_CHECKING:
    from bot.runtime import Runtime


# -- the payload, as far as the handlers read it (checked at the edge: handlers.refuse_shape) --------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)  # ids and values are strings in every Slack payload


class _Id(_Strict):
    id: str = Field(min_length=1)


class _Action(_Strict):
    action_id: str = Field(min_length=1)
    value: str | None = None


class _Container(_Strict):
    type: str = "message"
    message_ts: str = ""
    channel_id: str = ""


class BlockActions(_Strict):
    type: str
    user: _Id
    actions: list[_Action] = Field(min_length=1)  # Bolt's matchers read the first
    trigger_id: str = ""
    response_url: str = ""
    channel: _Id | None = None
    container: _Container = _Container()


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


@dataclass(frozen=True)
class Button:
    action_id: str
    value: type[BaseModel]
    run: Callable[["Runtime", Press, Any], Awaitable[None]]
    role: Role | None = None
    once: bool = False  # a press of this button (its value names one card rendering) runs at most once
    # Raises Mismatch when the value names something other than what the card it was pressed on is about (an
    # edited value: another release, another model), before anything runs.
    check: Callable[["Runtime", Press, Any], None] | None = None


BUTTONS: dict[str, Button] = {}
UNKNOWN = "button.unknown"  # the verb of every unknown action id: what comes in must not become a metrics label


def button(b: Button) -> Button:
    BUTTONS[b.action_id] = b
    return b


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
        base = {"actor": press.user, "channel": press.channel, "verb": press.action_id if spec else UNKNOWN,
                "key": payload.trigger_id or None}

        def refuse(status: str, detail: dict[str, Any], text: str) -> None:
            runtime.audit(**base, status=status, detail=detail)
            runtime.spawn(_tell(runtime, press, text), name=f"{base['verb']} {status}")

        if spec is None:
            return refuse("invalid", {"action_id": press.action_id[:100], "error": "unknown button"},
                          ":warning: That button is not known to this version of the bot. Run the command again to get a fresh card.")
        # The role first: it depends on the button alone, so a press without it reads and looks up nothing.
        if spec.role and not await runtime.roles.has(press.user, spec.role):
            who = ", ".join(runtime.roles.who_to_ask(spec.role)) or "an admin"
            return refuse("denied", {"role": spec.role, "value": (action.value or "")[:300]},
                          f"You need the *{spec.role}* role for that button; ask {who}.")
        try:
            value = spec.value.model_validate_json(action.value or "{}")
        except ValidationError as exc:
            return refuse("invalid", {"value": (action.value or "")[:300], "error": str(exc)[:500]},
                          f":warning: That button could not be used ({str(exc).splitlines()[0]}). Run the command again to get a fresh card.")
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
                runtime.spawn(_tell(runtime, press, f"Already done: <@{first[0]}> pressed that {when(first[1])}; it runs once. "
                                                    "The card shows where it stands."), name=f"{press.action_id} duplicate")
                return
        runtime.audit(**base, status="accepted", detail=value.model_dump())

        async def report_failure(exc: Exception) -> None:
            runtime.audit(**base, status="error", detail={"error": f"{type(exc).__name__}: {exc}"})
            await _tell(runtime, press, f":x: That action failed unexpectedly ({type(exc).__name__}); it is in the bot's log.")

        runtime.spawn(spec.run(runtime, press, value), name=press.action_id, on_error=report_failure)


async def _tell(runtime: Runtime, press: Press, text: str) -> None:
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


# -- release train ------------------------------------------------------------------------------------

async def _release_op(runtime: Runtime, press: Press, work: Callable[[], Awaitable[Any]]) -> None:
    from bot.releases.service import ReleaseError

    try:
        await work()
    except ReleaseError as exc:
        await _tell(runtime, press, f":warning: {exc}")


def on_its_card(press: Press, what: str, channel: str | None, card_ts: str | None) -> None:
    """Mismatch when a button naming `what` was pressed on a message that is not `what`'s card. The bot records
    where it posts each card (edited in place, so re-renderings keep the ts), and Slack reports where a press
    happened: a value edited to name something else shows here. Presses off a message (the App Home) have no ts."""
    if press.message_ts and card_ts and (channel, card_ts) != (press.channel, press.message_ts):
        raise Mismatch(f"{what} has another card")


def _card_of(runtime: Runtime, press: Press, release_id: int, model: str | None = None) -> None:
    """Mismatch unless release `release_id` exists, is `model`'s, and its card is where it was pressed."""
    from bot.releases.service import ReleaseError

    try:
        release = runtime.releases.get(release_id)
    except ReleaseError as exc:
        raise Mismatch(str(exc)) from None
    if model is not None and release.model != model:
        raise Mismatch(f"release {release_id} is {release.model}'s, not {model}'s")
    on_its_card(press, f"release {release_id} ({release.model} {release.version})", release.channel, release.card_ts)


def _release_button(action_id: str, operation: Callable[["Runtime", Press, Any], Awaitable[Any]], role: Role,
                    *, once: bool = True) -> None:
    from bot.releases.messages import ReleaseRef

    async def run(runtime: Runtime, press: Press, ref: ReleaseRef) -> None:
        await _release_op(runtime, press, lambda: operation(runtime, press, runtime.releases.get(ref.release)))

    button(Button(action_id, ReleaseRef, run, role, once=once, check=lambda rt, press, ref: _card_of(rt, press, ref.release)))


def _rollback_check(runtime: Runtime, press: Press, ref: Any) -> None:
    model = runtime.config.models.get(ref.model)
    if model is None or ref.env not in model.environments:
        raise Mismatch(f"no environment {ref.env} of a model {ref.model}")
    if press.action_id == "release.rollback" and ref.release is None:
        raise Mismatch("a release card's Roll back names its release")
    if ref.release is not None:
        _card_of(runtime, press, ref.release, ref.model)


def _row_card(table: str, what: str, attr: str) -> Callable[["Runtime", Press, Any], None]:
    """The check of a button naming a row of `table` (with channel, ts) by the value's `attr`: a row that does not
    exist is left to the service to explain; one posted as another message is a mismatch."""

    def check(runtime: Runtime, press: Press, ref: Any) -> None:
        rows = runtime.store.query(f"SELECT channel, ts FROM {table} WHERE id = ?", (getattr(ref, attr),))
        if rows:
            on_its_card(press, f"{what} {getattr(ref, attr)}", rows[0]["channel"], rows[0]["ts"])

    return check


async def _promote(runtime: Runtime, press: Press, release: Any) -> None:
    from handlers.commands import open_urgent_modal

    decision = await runtime.releases.check_promote(release, press.user)
    if decision.needs_urgent:
        await open_urgent_modal(runtime, press.trigger_id, release, decision.reason)
        return
    await runtime.releases.promote(release, press.user)


_release_button("release.verify", lambda rt, press, release: rt.releases.verify_release(release, press.user), "deployers")
# Unblock may open the urgent modal, which a person may cancel and reopen: its compare-and-set (verified →
# promoting) is what makes it run once, and a late press is told who unblocked it.
_release_button("release.promote", _promote, "approvers", once=False)
_release_button("release.reject", lambda rt, press, release: rt.releases.reject(release, press.user), "approvers")


async def _rollback(runtime: Runtime, press: Press, ref: Any) -> None:
    from bot.releases import messages

    await runtime.notifier.open_view(press.trigger_id, messages.reason_modal(
        "release.rollback", "Roll back", f"Roll *{ref.model} {ref.env}* back to the previous version?", "Roll back", ref))


def _register_rollback() -> None:
    from bot.releases.messages import RollbackRef

    button(Button("release.rollback", RollbackRef, _rollback, "deployers", check=_rollback_check))


_register_rollback()


# -- Alertmanager -------------------------------------------------------------------------------------

def _register_alertmanager() -> None:
    from bot.alertmanager import ROLLBACK, SILENCE, AlertRef
    from bot.releases.messages import RollbackRef

    async def silence(runtime: Runtime, press: Press, ref: AlertRef) -> None:
        await _tell(runtime, press, await runtime.alertmanager.silence(ref.alert, press.user))

    # Roll back opens the release card's rollback modal, which runs the code of `/mlops rollback`.
    button(Button(ROLLBACK, RollbackRef, _rollback, "deployers", check=_rollback_check))
    button(Button(SILENCE, AlertRef, silence, check=_row_card("alerts", "alert", "alert")))


_register_alertmanager()


# -- retrain ------------------------------------------------------------------------------------------

async def _retrain_op(runtime: Runtime, press: Press, work: Awaitable[Any]) -> None:
    from bot.retrain.service import RetrainError

    try:
        text = await work
    except RetrainError as exc:
        text = f":warning: {exc}"
    if isinstance(text, str):
        await _tell(runtime, press, text)


def _register_retrain() -> None:
    from bot.retrain.messages import CANCEL, DEPLOY, START, ModelRef, RunRef

    async def start(runtime: Runtime, press: Press, ref: ModelRef) -> None:
        await _retrain_op(runtime, press, runtime.retrain.start(ref.model, press.user, press.channel))

    async def cancel(runtime: Runtime, press: Press, ref: RunRef) -> None:
        await _retrain_op(runtime, press, runtime.retrain.cancel_run(ref.run, press.user))

    async def deploy(runtime: Runtime, press: Press, ref: RunRef) -> None:
        async def work() -> None:
            run = runtime.retrain.get(ref.run)
            await runtime.releases.deploy(run.model, run.version, press.user, press.channel)

        await _retrain_op(runtime, press, _release_op(runtime, press, work))

    def model_known(runtime: Runtime, press: Press, ref: ModelRef) -> None:
        if ref.model not in runtime.config.models:
            raise Mismatch(f"no model {ref.model}")

    def run_card(runtime: Runtime, press: Press, ref: RunRef) -> None:
        from bot.retrain.service import RetrainError

        try:
            run = runtime.retrain.get(ref.run)
        except RetrainError as exc:
            raise Mismatch(str(exc).split(";")[0]) from None
        on_its_card(press, f"retrain run {ref.run} ({run.model})", run.channel, run.card_ts)

    button(Button(START, ModelRef, start, "deployers", check=model_known))
    button(Button(CANCEL, RunRef, cancel, "deployers", check=run_card))
    button(Button(DEPLOY, RunRef, deploy, "deployers", once=True, check=run_card))


_register_retrain()


# -- datagen ------------------------------------------------------------------------------------------

def _register_datagen() -> None:
    from bot.datagen.messages import RETRAIN_BUTTONS, SILENCE_CHOICES, AlertRef, RetrainRef, SilenceRef

    async def ack(runtime: Runtime, press: Press, ref: AlertRef) -> None:
        await _tell(runtime, press, await runtime.datagen.ack(ref.job, ref.run_date, press.user))

    async def silence(runtime: Runtime, press: Press, ref: SilenceRef) -> None:
        await _tell(runtime, press, await runtime.datagen.silence(ref.job, ref.run_date, press.user, ref.duration))

    async def expected(runtime: Runtime, press: Press, ref: AlertRef) -> None:
        await _tell(runtime, press, await runtime.datagen.mark_expected(ref.job, ref.run_date, press.user))

    async def retrain(runtime: Runtime, press: Press, ref: RetrainRef) -> None:
        if ref.model not in runtime.datagen.retrainable(ref.job):  # the config changed since the alert was posted
            runtime.audit(actor=press.user, channel=press.channel, verb=press.action_id, status="refused", model=ref.model,
                          detail={"job": ref.job, "reason": "not in datagen.jobs.<job>.models"})
            await _tell(runtime, press, f"Retraining {ref.model} from datagen {ref.job} is not configured any more "
                                        f"(datagen.jobs.{ref.job}.models); use `/mlops retrain {ref.model}`.")
            return
        await _retrain_op(runtime, press, runtime.retrain.start(ref.model, press.user, press.channel,
                                                                 reason=f"datagen {ref.job} alert {ref.run_date}"))

    button(Button("datagen.ack", AlertRef, ack))
    for duration in SILENCE_CHOICES:  # one button each: action ids must be unique within a message
        button(Button(f"datagen.silence.{duration}", SilenceRef, silence))
    button(Button("datagen.expected", AlertRef, expected))
    for i in range(RETRAIN_BUTTONS):
        button(Button(f"datagen.retrain.{i}", RetrainRef, retrain, "deployers"))


_register_datagen()


# -- on-call ------------------------------------------------------------------------------------------

button(Button(ACK_HANDOFF, HandoffRef, lambda rt, press, ref: rt.oncall.acknowledge(ref.handoff, press.user, press.channel),
              check=_row_card("oncall_handoffs", "handoff", "handoff")))
button(Button(TAKE_COVER, CoverRef, lambda rt, press, ref: rt.oncall.take(ref.request, press.user, press.channel),
              check=_row_card("oncall_cover_requests", "cover request", "request")))
