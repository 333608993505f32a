"""Block Kit for retraining: the one card a run lives on, its thread notes, and the Retrain button."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from bot.notifier import Message, RowId
from bot.releases.messages import btn, context, section, when
from bot.retrain.status import RunStatus

START = "retrain.start"
CANCEL = "retrain.cancel"
DEPLOY = "retrain.deploy"

ICONS = {
    "starting": ":hourglass:",
    "queued": ":hourglass:",
    "running": ":gear:",
    "cancelling": ":octagonal_sign:",
    "success": ":white_check_mark:",
    "failed": ":x:",
    "cancelled": ":no_entry_sign:",
}
TASK_ICONS = {"success": ":white_check_mark:", "running": ":gear:", "failed": ":x:", "upstream_failed": ":x:",
              "skipped": ":fast_forward:", "queued": ":hourglass:", "scheduled": ":hourglass:"}


class ModelRef(BaseModel):
    """The Retrain button's value: which model (the run is started fresh on each press)."""

    model: str


class RunRef(BaseModel):
    """The value of a run's buttons: the retrain_runs id, never state."""

    run: RowId


@dataclass(frozen=True)
class Run:
    """A retrain_runs row as the card shows it."""

    id: int
    model: str
    backend: str
    run_id: str
    state: str
    requested_by: str
    args: dict[str, str]
    started_at: datetime
    handle: dict[str, str] = field(default_factory=dict)  # how the backend finds the run: dag_id or run_dir
    ended_at: datetime | None = None
    version: str | None = None
    reason: str | None = None
    detail: str | None = None
    cancelled_by: str | None = None
    channel: str | None = None
    card_ts: str | None = None


def task_line(tasks: list[tuple[str, str]]) -> str:
    return " · ".join(f"{TASK_ICONS.get(state, ':white_circle:')} `{task}` {state}" for task, state in tasks)


def tail_block(lines: list[str]) -> str:
    # Three backticks inside the output would end the code block early.
    text = "\n".join(line.replace("```", "'''") for line in lines)[-2800:]
    return f"```{text}```"


def retrain_button(model: str, label: str = "Retrain") -> dict[str, Any]:
    return btn(label, START, ModelRef(model=model))


def card(run: Run, where: str, status: RunStatus | None = None, *, metrics: dict[str, float] | None = None,
         note: str = "") -> Message:
    """The run's card, as it is now: state, who asked and why, progress, and what can be done next."""
    state = run.state
    head = f"{ICONS.get(state, ':grey_question:')} *Retrain {run.model}* · *{state}* · run `{run.run_id}`"
    if state == "success" and run.version:
        head = f"{ICONS['success']} *{run.model} {run.version} is ready* · retrained by run `{run.run_id}`"
    facts = [f"requested by <@{run.requested_by}> {when(run.started_at)}", where]
    if run.args:
        facts.append(" ".join(f"`{k}={v}`" for k, v in run.args.items()))
    if run.reason:
        facts.append(f"reason: {run.reason}")
    if run.ended_at:
        facts.append(f"ended {when(run.ended_at)}")
    blocks = [section(head), context(" · ".join(facts))]
    if metrics:
        blocks.append(section("*Offline metrics*: " + ", ".join(f"{k} `{v:g}`" for k, v in sorted(metrics.items()))))
    if status is not None and status.tasks:
        blocks.append(section(task_line(status.tasks)))
    if status is not None and status.tail and state != "success":
        blocks.append(section(tail_block(status.tail)))
    if note:
        blocks.append(section(note))
    if status is not None and status.url:
        blocks.append(context(f"<{status.url}|Open the run in Airflow>"))
    actions = _buttons(run)
    if actions:
        blocks.append({"type": "actions", "block_id": f"retrain-{run.id}", "elements": actions})
    text = f"{run.model} {run.version} is ready" if state == "success" and run.version else (
        f"Retrain {run.model} {run.run_id}: {state}")
    return Message(text=text, blocks=blocks)


def _buttons(run: Run) -> list[dict[str, Any]]:
    ref = RunRef(run=run.id)
    if run.state in ("starting", "queued", "running"):
        return [btn("Cancel", CANCEL, ref, "danger")]
    if run.state == "success" and run.version:
        return [btn("Deploy to staging", DEPLOY, ref, "primary")]
    if run.state in ("failed", "cancelled"):
        return [retrain_button(run.model, "Retrain again")]
    return []


def progress(run: Run, status: RunStatus) -> Message:
    """A thread note on a state change: the state, then the tasks (Airflow) or the last lines (command)."""
    text = f"{ICONS.get(status.state, '')} {status.state}"
    if status.tasks:
        text += "\n" + task_line(status.tasks)
    elif status.tail:
        text += "\n" + tail_block(status.tail[-5:])
    return Message(text=f"Retrain {run.model}: {status.state}", blocks=[section(text)])


def ready(run: Run, metrics: dict[str, float]) -> Message:
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(metrics.items())) or "no offline metrics recorded"
    text = f":white_check_mark: *{run.model} {run.version} is ready* ({shown}). Deploy it from the card above."
    return Message(text=f"{run.model} {run.version} is ready", blocks=[section(text)])


def failed(run: Run, status: RunStatus, tail: list[str], mention: str) -> Message:
    """The failure note: what failed, its last log lines, where to look, and who is on call."""
    lines = [f":x: *Retrain {run.model} failed*: {status.detail or 'the pipeline failed'}"]
    if status.failed_tasks:
        lines.append("Failed tasks: " + ", ".join(f"`{t}`" for t in status.failed_tasks))
    if status.url:
        lines.append(f"<{status.url}|Open the run in Airflow>")
    if mention:
        lines.append(f"{mention} please take a look.")
    blocks = [section("\n".join(lines))]
    if tail:
        blocks.append(section(tail_block(tail)))
    return Message(text=f"Retrain {run.model} failed: {status.detail or 'the pipeline failed'}", blocks=blocks)


def note(text: str) -> Message:
    return Message(text=text, blocks=[section(text)])


def with_retrain_button(msg: Message, model: str) -> Message:
    """A model's status message, with a button that starts its retrain pipeline."""
    actions = {"type": "actions", "block_id": f"retrain-{model}", "elements": [retrain_button(model)]}
    return Message(text=msg.text, blocks=[*msg.blocks[:49], actions])
