"""Alerts in Slack: the silence verb, which holds back alerts for a while, and the buttons of an Alertmanager alert."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from bot.alertmanager import ROLLBACK, SILENCE, AlertRef
from bot.notifier import Message
from bot.releases.messages import RollbackRef
from bot.silences import SilenceError, parse_duration
from handlers.buttons import Press, answer_press, button, row_card
from handlers.grammar import DRY_RUN, Command, UsageError, env_named, model_named, quoted, refused
from handlers.releases import open_rollback_modal, rollback_check
from handlers.router import tell, verb

if TYPE_CHECKING:
    from bot.runtime import Runtime


@dataclass(frozen=True)
class SilenceRequest:
    """No source: list the silences in force. `end`: end one early. Otherwise: silence these alerts."""

    source: str | None = None
    matcher: str = ""
    span: timedelta = timedelta(hours=24)
    end: int | None = None


def _parse_silence(runtime: Runtime, cmd: Command) -> SilenceRequest:
    args = cmd.args
    if not args:
        return SilenceRequest()
    if args[0] == "end":
        # isdecimal, not isdigit: int() cannot read digits such as "²", which isdigit accepts. A number past
        # int64 names no row, and SQLite cannot even look it up (OverflowError).
        number = args[1].lstrip("#") if len(args) == 2 else ""
        if not number.isdecimal() or len(number) > 19 or int(number) > 2**63 - 1:
            raise UsageError("name the silence to end by its number, as `/mlops silence` lists them")
        return SilenceRequest(end=int(number))
    if args[0] in ("datagen", "monitor"):  # one name space: a monitor's alerts are silenced as a datagen job's
        jobs, monitors = runtime.config.datagen.jobs, runtime.config.monitors
        if len(args) < 2 or (args[1] not in jobs and args[1] not in monitors):
            raise UsageError(f"name a datagen job; jobs: {', '.join(sorted(jobs)) or 'none'}"
                             + (f"; monitors: {', '.join(sorted(monitors))}" if monitors else ""))
        source, matcher, rest = "datagen", args[1], args[2:]
    elif args[0] == "pipeline":
        dags = [d.dag_id for d in runtime.config.pipelines.airflow.dags]
        if len(args) < 2 or args[1] not in dags:
            raise UsageError(f"name a watched pipeline (a DAG id); watched: {', '.join(dags) or 'none'}")
        source, matcher, rest = "pipelines", args[1], args[2:]
    else:
        model = model_named(runtime.config, cmd)
        if len(args) < 2:
            raise UsageError(f"name the environment: {', '.join(runtime.config.models[model].environments)}")
        source, matcher, rest = "alertmanager", f"{model}/{env_named(runtime.config, model, args[1])}", args[2:]
    if len(rest) > 1:
        raise UsageError(f"unexpected words: {quoted(' '.join(rest[1:]))}")
    try:
        return SilenceRequest(source, matcher, parse_duration(rest[0])) if rest else SilenceRequest(source, matcher)
    except SilenceError as exc:
        raise UsageError(str(exc)) from None


async def _plan_silence(runtime: Runtime, cmd: Command, req: SilenceRequest) -> str:
    try:
        return runtime.silences.plan(req.source, req.matcher, req.span, end=req.end)
    except SilenceError as exc:
        return refused(exc)


@verb("silence", "silence [<model> <env> | datagen <job> | pipeline <dag>] [30m|4h|2d] | silence end <id>",
      "hold back alerts for a model's environment, a datagen job or a pipeline for a while (24h unless told); "
      "alone, list silences",
      parse=_parse_silence, options=frozenset({DRY_RUN}), plan=_plan_silence,
      details="Alerts that arrive while silenced are stored (and counted in the weekly digest) but not posted. "
              "A silence lasts at most 7d.")
async def _silence(runtime: Runtime, cmd: Command, req: SilenceRequest) -> None:
    silences = runtime.silences
    if req.source is None and req.end is None:
        await tell(runtime, cmd, Message(silences.listing()))
        return
    try:
        said = (silences.end(req.end, cmd.user, cmd.channel) if req.end is not None
                else silences.silence(req.source, req.matcher, req.span, cmd.user, cmd.channel))
    except SilenceError as exc:
        await tell(runtime, cmd, Message(f":warning: {exc}"))
        return
    await runtime.notifier.post(cmd.channel, Message(said))


# -- the buttons of an Alertmanager alert --------------------------------------------------------------------

# Roll back opens the release card's rollback modal, which runs the code of `/mlops rollback`.
button(ROLLBACK, RollbackRef, "deployers", check=rollback_check)(open_rollback_modal)


@button(SILENCE, AlertRef, check=row_card("alerts", "alert", "alert"))
async def _silence_press(runtime: Runtime, press: Press, ref: AlertRef) -> None:
    await answer_press(runtime, press, await runtime.alertmanager.silence(ref.alert, press.user))
