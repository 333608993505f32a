"""Block Kit of a pipeline alert: one message per failed run (or late day), edited in place as the run recovers."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from bot.notifier import Message, RowId, escape
from bot.pipelines.model import FailedTask, ordinal
from bot.releases.messages import btn, context, reason_modal, section, when

RETRY, ACK, SILENCE = "pipelines.retry", "pipelines.ack", "pipelines.silence"
MARK_SUCCESS = "pipelines.mark_success"  # the modal's callback id; its buttons are MARK_SUCCESS.<i>
MARK_BUTTONS = 3  # "Mark <task> success" buttons on one alert, one per failed task (action ids are unique)
TAIL_LINES = 15
TAIL_CHARS = 2500


class PipelineRef(BaseModel):
    """A pipeline alert's buttons: its row, and which failure of the run they were drawn for (Retry runs once per
    failure: pressed twice it clears once, but the run failing again gets a fresh button)."""

    alert: RowId
    failure: int = 1


class TaskRef(PipelineRef):
    """A "Mark <task> success" button, and the modal it opens for the reason."""

    task: str


class Marked(BaseModel):
    """A failed task someone marked success from the alert, and why."""

    task_id: str
    by: str
    reason: str


class RunAlert(BaseModel):
    """What a run's alert says; kept as the alert row's detail, so an edit redraws it from the store."""

    dag_id: str
    run_id: str
    state: str  # open, acked, silenced, retrying, resolved
    tasks: list[FailedTask] = []
    tail: list[str] = []
    tail_error: str | None = None  # why the log could not be read; the alert goes without it
    url: str | None = None
    failed_at: datetime | None = None
    failure: int = 1
    by: str | None = None  # who acked, silenced or retried it
    marked: list[Marked] = []


def _task_line(t: FailedTask) -> str:
    if t.state != "failed":
        return f"`{escape(t.task_id)}` did not run (an upstream task failed)"
    often = f" · {ordinal(t.failures_this_week)} failure this week" if t.failures_this_week > 1 else ""
    return f"`{escape(t.task_id)}` failed on try {t.try_number}{often}"


def _tail(lines: list[str]) -> str:
    text = "\n".join(lines[-TAIL_LINES:]).replace("```", "'''")
    return escape(text[-TAIL_CHARS:])


def run_alert(a: RunAlert, row_id: int) -> Message:
    where = f"`{escape(a.dag_id)}` run `{escape(a.run_id)}`"
    heads = {
        "open": f":x: *Pipeline failed* · {where}",
        "acked": f":eyes: *Pipeline failed* · {where} · acked by <@{a.by}>",
        "silenced": f":mute: *Pipeline failed* · {where} · silenced by <@{a.by}>",
        "retrying": f":arrows_counterclockwise: *Retrying* · {where}" + (f" · failed tasks cleared by <@{a.by}>" if a.by else ""),
        "resolved": f":white_check_mark: *Recovered* · ~{where}~ succeeded",
    }
    if a.state == "resolved" and a.marked:
        heads["resolved"] = f":white_check_mark: *Marked success* · ~{where}~ by <@{a.marked[-1].by}>"
    blocks: list[dict[str, Any]] = [section(heads[a.state])]
    if a.state != "resolved":
        blocks.append(section("\n".join(_task_line(t) for t in a.tasks) or "no task is marked failed; see the run in Airflow"))
        first = next((t for t in a.tasks if t.state == "failed"), None)
        if a.tail and first:
            title = f"*Log of `{escape(first.task_id)}`, try {first.try_number}* (last lines)"
            blocks.append(section(f"{title}\n```{_tail(a.tail)}```"))
        elif a.tail_error:
            blocks.append(context(f"no log tail: {escape(a.tail_error[:300])}"))
    if a.marked:
        blocks.append(context("\n".join(f"`{escape(m.task_id)}` marked success by <@{m.by}>: {escape(m.reason[:300])}"
                                        for m in a.marked)))
    facts = [f"failed {when(a.failed_at)}" if a.failed_at else "", f"<{a.url}|open in Airflow>" if a.url else ""]
    if any(facts):
        blocks.append(context(" · ".join(f for f in facts if f)))
    if a.state in ("open", "acked"):
        ref = PipelineRef(alert=row_id, failure=a.failure)
        buttons = [btn("Retry failed tasks", RETRY, ref, "primary")]
        if a.state == "open":
            buttons.append(btn("Ack", ACK, ref))
        buttons.append(btn("Silence 24h", SILENCE, ref))
        buttons += [btn(f"Mark {t.task_id[:50]} success", f"{MARK_SUCCESS}.{i}",
                        TaskRef(alert=row_id, failure=a.failure, task=t.task_id))
                    for i, t in enumerate(a.tasks[:MARK_BUTTONS])]
        blocks.append({"type": "actions", "block_id": f"pipelines-{row_id}-{a.failure}", "elements": buttons})
    word = {"resolved": "recovered", "retrying": "retrying"}.get(a.state, "failed")
    return Message(text=f"Pipeline {a.dag_id} {word}: run {a.run_id}", blocks=blocks)


def late_alert(dag_id: str, day: date, due: datetime, *, resolved_at: datetime | None = None) -> Message:
    name = f"`{escape(dag_id)}`"
    if resolved_at is not None:
        text = f":white_check_mark: *Pipeline on time again* · {name} succeeded {when(resolved_at)} (was due {when(due)})"
    else:
        text = f":hourglass: *Pipeline late* · {name} has no successful run for {day:%a %d %b} yet; it was due {when(due)}"
    return Message(text=text, blocks=[section(text)])


def unreachable(error: str, *, resolved: bool) -> Message:
    text = (":white_check_mark: The bot reaches Airflow again; watched pipelines are checked as before." if resolved
            else f":warning: The bot cannot check its watched pipelines: {escape(error[:500])}")
    return Message(text=text, blocks=[section(text)])


def mark_success_modal(ref: TaskRef) -> dict[str, Any]:
    return reason_modal(MARK_SUCCESS, "Mark success", f"Mark task `{escape(ref.task)}` of this run success in Airflow? "
                        "Airflow does not run it again; once no failed task remains the run is marked success too.",
                        "Mark success", ref)
