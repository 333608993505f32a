"""A pipeline run as the bot shows it, whichever backend ran it, and an Airflow dagRun folded onto it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from bot.airflow import AirflowClient, parse_time

RunState = Literal["queued", "running", "success", "failed"]


@dataclass(frozen=True)
class RunStatus:
    """One pipeline run as the bot shows it, whichever backend ran it."""

    run_id: str
    state: RunState
    tasks: list[tuple[str, str]] = field(default_factory=list)  # (task id, task state), in run order
    url: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    tail: list[str] = field(default_factory=list)  # last lines of output, when the backend has them
    detail: str | None = None  # one line on why it ended the way it did

    @property
    def finished(self) -> bool:
        return self.state in ("success", "failed")

    @property
    def failed_tasks(self) -> list[str]:
        return [task for task, state in self.tasks if state in ("failed", "upstream_failed")]


_RUN_STATES: dict[str, RunState] = {"running": "running", "success": "success", "failed": "failed"}


def run_state(airflow_state: str | None) -> RunState:
    """Airflow's dag-run states folded onto the four the bot shows ("queued" and none mean waiting)."""
    return _RUN_STATES.get(airflow_state or "", "queued")


def run_status(run: dict[str, Any], task_instances: list[dict[str, Any]], url: str) -> RunStatus:
    """Normalise a dagRun and its taskInstances as the API returns them (v1 and v2 alike)."""
    # Tasks in the order they started; those not started yet last.
    ordered = sorted(task_instances, key=lambda ti: (ti.get("start_date") or "~", ti["task_id"]))
    tasks = [(ti["task_id"], ti.get("state") or "none") for ti in ordered]
    status = RunStatus(
        run_id=run["dag_run_id"],
        state=run_state(run.get("state")),
        tasks=tasks,
        url=url,
        started_at=parse_time(run.get("start_date")),
        ended_at=parse_time(run.get("end_date")),
    )
    if status.state == "failed" and status.failed_tasks:
        return replace(status, detail="failed task: " + ", ".join(status.failed_tasks))
    return status


async def airflow_status(client: AirflowClient, dag_id: str, run_id: str) -> RunStatus:
    run = await client.dag_run(dag_id, run_id)
    return run_status(run, await client.task_instances(dag_id, run_id), client.run_url(dag_id, run_id))
