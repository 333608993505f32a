"""What the pipeline watch decides, from plain values: a run's failed tasks, how often a task failed this week,
when a DAG is late, and how an alert's state follows its run."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

WEEK = timedelta(days=7)
FAILED = ("failed", "upstream_failed")


class FailedTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    try_number: int
    state: str  # failed, or upstream_failed (never ran: no log of its own)
    failures_this_week: int = 1  # runs of this DAG in which this task failed in the last 7 days, this one included


def failed_tasks(instances: Iterable[Mapping[str, Any]]) -> list[FailedTask]:
    """A run's failed task instances, those that failed themselves before those skipped by their failure."""
    found = [FailedTask(task_id=str(ti["task_id"]), try_number=int(ti.get("try_number") or 1), state=str(ti["state"]))
             for ti in instances if ti.get("state") in FAILED]
    return sorted(found, key=lambda t: (t.state != "failed", t.task_id))


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def next_state(alert_state: str | None, run_state: str) -> str | None:
    """The alert's state once its run is in `run_state`; None: nothing to say (no alert, or no change)."""
    if run_state == "failed":
        return None if alert_state in ("open", "acked", "silenced") else "open"
    if alert_state in (None, "resolved"):
        return None
    if run_state == "success":
        return "resolved"
    return "retrying" if alert_state != "retrying" else None  # queued or running again after a clear


def deadline(day: date, at: time, tz: str) -> datetime:
    return datetime.combine(day, at, tzinfo=ZoneInfo(tz))


def late_day(now: datetime, at: time | None, tz: str, last_success: datetime | None) -> date | None:
    """The local day whose successful run is overdue at `now` (a success that day counts), or None."""
    if at is None:
        return None
    today = now.astimezone(ZoneInfo(tz)).date()
    if now < deadline(today, at, tz):
        return None
    if last_success is not None and last_success.astimezone(ZoneInfo(tz)).date() >= today:
        return None
    return today
