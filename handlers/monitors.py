"""Datagen monitoring in Slack: the datagen verb and the buttons of a datagen alert."""
from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

from bot.monitors.messages import RETRAIN_BUTTONS, SILENCE_CHOICES, AlertRef, RetrainRef, SilenceRef
from bot.monitors.service import DatagenError
from bot.notifier import Message
from handlers.buttons import Press, answer_press, button
from handlers.grammar import Command, UsageError, quoted
from handlers.retrain import answer_retrain_press
from handlers.router import tell, verb

if TYPE_CHECKING:
    from bot.runtime import Runtime


def _day(word: str) -> date:
    try:
        return date.fromisoformat(word)
    except ValueError:
        raise UsageError(f"`{quoted(word)}` is not a date (YYYY-MM-DD)") from None


def _parse_datagen(runtime: Runtime, cmd: Command) -> tuple[str, Any, Any]:
    try:
        job = runtime.datagen.job_name(cmd.option("job"))
    except DatagenError as exc:
        raise UsageError(str(exc)) from None
    args = list(cmd.args)
    compare = _day(args.pop()) if len(args) >= 2 and args[-2] == "compare" else None
    if compare is not None:
        args.pop()
    if len(args) > 1:
        raise UsageError(f"unexpected words: {quoted(' '.join(args[1:]))}")
    first = args[0] if args else "latest"
    return job, None if first == "latest" else _day(first), compare


@verb("datagen", "datagen [latest|DATE] [compare DATE] [job=J]",
      "a datagen run: status, funnel with loss and deltas, item-age buckets; or two runs side by side",
      parse=_parse_datagen, audit_fields=lambda p: {"model": p[0], "version": str(p[1] or "latest")},
      options=frozenset({"job"}))
async def _datagen(runtime: Runtime, cmd: Command, parsed: tuple[str, Any, Any]) -> None:
    try:
        shown = runtime.datagen.view(*parsed)
    except DatagenError as exc:
        shown = [Message(f":warning: {exc}")]
    for msg in shown:
        await tell(runtime, cmd, msg)


# -- the buttons of an alert -------------------------------------------------------------------------------

@button("datagen.ack", AlertRef)
async def _ack(runtime: Runtime, press: Press, ref: AlertRef) -> None:
    await answer_press(runtime, press, await runtime.datagen.ack(ref.job, ref.run_date, press.user))


async def _silence(runtime: Runtime, press: Press, ref: SilenceRef) -> None:
    await answer_press(runtime, press, await runtime.datagen.silence(ref.job, ref.run_date, press.user, ref.duration))


for _duration in SILENCE_CHOICES:  # one button each: action ids must be unique within a message
    button(f"datagen.silence.{_duration}", SilenceRef)(_silence)


@button("datagen.expected", AlertRef)
async def _expected(runtime: Runtime, press: Press, ref: AlertRef) -> None:
    await answer_press(runtime, press, await runtime.datagen.mark_expected(ref.job, ref.run_date, press.user))


async def _retrain(runtime: Runtime, press: Press, ref: RetrainRef) -> None:
    if ref.model not in runtime.datagen.retrainable(ref.job):  # the config changed since the alert was posted
        runtime.audit(actor=press.user, channel=press.channel, verb=press.action_id, status="refused", model=ref.model,
                      detail={"job": ref.job, "reason": "not in datagen.jobs.<job>.models"})
        await answer_press(runtime, press, f"Retraining {ref.model} from datagen {ref.job} is not configured any more "
                                           f"(datagen.jobs.{ref.job}.models); use `/mlops retrain {ref.model}`.")
        return
    await answer_retrain_press(runtime, press, runtime.retrain.start(ref.model, press.user, press.channel,
                                                                     reason=f"datagen {ref.job} alert {ref.run_date}"))


for _i in range(RETRAIN_BUTTONS):  # one per model trained on the job's data
    button(f"datagen.retrain.{_i}", RetrainRef, "deployers")(_retrain)
