"""Retraining from Slack: the retrain verb and its buttons: Retrain (a status table's, a finished run's), and a run
card's Cancel and Deploy to staging."""
from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from bot.notifier import Message
from bot.retrain.messages import CANCEL, DEPLOY, START, ModelRef, RunRef
from bot.retrain.service import RetrainError, parse_request
from handlers.buttons import Mismatch, Press, answer_press, button, on_its_card
from handlers.grammar import DRY_RUN, Command, UsageError, flag, refused
from handlers.releases import answer_release_press
from handlers.router import tell, verb

if TYPE_CHECKING:
    from bot.runtime import Runtime


def _parse_retrain(runtime: Runtime, cmd: Command) -> Any:
    retrainable = {name: m.retrain is not None for name, m in runtime.config.models.items()}
    if "force" in cmd.options and cmd.options["force"].lower() not in ("on", "off"):
        flag("force", cmd.options["force"])  # parse_request would read `force=maybe` as false
    try:
        return parse_request(cmd.args, cmd.options, retrainable)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


async def _plan_retrain(runtime: Runtime, cmd: Command, request: Any) -> str:
    try:
        return runtime.retrain.plan(request.model, cmd.user, cmd.channel, args=request.args, force=request.force,
                                    cancel=request.cancel)
    except RetrainError as exc:
        return refused(exc)


@verb("retrain", "retrain <model> [key=value ...] [force=true] | retrain <model> cancel",
      "run the model's training pipeline and follow it to a new version", parse=_parse_retrain,
      role="deployers", audit_fields=lambda r: {"model": r.model},
      # Every key=value is the pipeline's conf by design; force and dry_run are the bot's own.
      options=frozenset({"force", DRY_RUN}), any_option=True, plan=_plan_retrain,
      details="key=value arguments go to the pipeline (Airflow: in the run's conf). One run per model at a time; "
              "`force=true` starts another anyway. The card's *Deploy to staging* button ships the new version.")
async def _retrain(runtime: Runtime, cmd: Command, request: Any) -> None:
    try:
        if request.cancel:
            await tell(runtime, cmd, Message(await runtime.retrain.cancel(request.model, cmd.user)))
        else:
            await runtime.retrain.start(request.model, cmd.user, cmd.channel, args=request.args, force=request.force)
    except RetrainError as exc:
        await tell(runtime, cmd, Message(f":warning: {exc}"))


# -- buttons -----------------------------------------------------------------------------------------------

async def answer_retrain_press(runtime: Runtime, press: Press, work: Awaitable[Any]) -> None:
    """Run a retrain operation for a press; what it says, or why it was refused, is told to the presser."""
    try:
        text = await work
    except RetrainError as exc:
        text = f":warning: {exc}"
    if isinstance(text, str):
        await answer_press(runtime, press, text)


def _model_known(runtime: Runtime, press: Press, ref: ModelRef) -> None:
    if ref.model not in runtime.config.models:
        raise Mismatch(f"no model {ref.model}")


def _run_card(runtime: Runtime, press: Press, ref: RunRef) -> None:
    try:
        run = runtime.retrain.get(ref.run)
    except RetrainError as exc:
        raise Mismatch(str(exc).split(";")[0]) from None
    on_its_card(press, f"retrain run {ref.run} ({run.model})", run.channel, run.card_ts)


@button(START, ModelRef, "deployers", check=_model_known)
async def _start(runtime: Runtime, press: Press, ref: ModelRef) -> None:
    await answer_retrain_press(runtime, press, runtime.retrain.start(ref.model, press.user, press.channel))


@button(CANCEL, RunRef, "deployers", check=_run_card)
async def _cancel(runtime: Runtime, press: Press, ref: RunRef) -> None:
    await answer_retrain_press(runtime, press, runtime.retrain.cancel_run(ref.run, press.user))


@button(DEPLOY, RunRef, "deployers", once=True, check=_run_card)
async def _deploy(runtime: Runtime, press: Press, ref: RunRef) -> None:
    async def work() -> None:
        run = runtime.retrain.get(ref.run)
        await runtime.releases.deploy(run.model, run.version, press.user, press.channel)

    await answer_retrain_press(runtime, press, answer_release_press(runtime, press, work))
