"""The pipeline watch: polls the watched DAGs' runs in Airflow and keeps one alert message per failed run (and per
late day) in line with the run, from failure through Retry to recovery.

One request per DAG per poll: the runs Airflow changed since the newest change seen (`updated_at_gte`), so a quiet
DAG costs one small answer. Task instances and the log tail are read only when a run newly fails. While Airflow
cannot be reached the polls back off (1, 2, 4 … up to 16 intervals skipped) and one message in the error channel
says so, resolved in place when Airflow answers again. Alerts are rows of the `alerts` table (source `pipelines`),
so a restart finds them, and the digest lists those still open.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger
from pydantic import ValidationError

from bot.airflow import AirflowClient, AirflowError, client_for, parse_time, ui_link
from bot.config import WatchedDag
from bot.context import Context
from bot.notifier import Message
from bot.pipelines import messages
from bot.pipelines.messages import RunAlert
from bot.pipelines.model import WEEK, FailedTask, deadline, failed_tasks, late_day, next_state
from bot.releases.messages import when
from bot.scheduler import Scheduler
from bot.silences import Silences
from bot.store import iso

log = logging.getLogger(__name__)

SOURCE = "pipelines"
LOOKBACK = timedelta(days=1)  # at start: runs changed this recently are looked at again (alerts are kept once)
MAX_SKIP = 15
SILENCE_FOR = timedelta(hours=24)
UNREACHABLE = "airflow"  # the key of the one "cannot reach Airflow" alert


class PipelineWatch:
    def __init__(self, ctx: Context, *, scheduler: Scheduler, silences: Silences) -> None:
        self.ctx = ctx
        self.silences = silences
        self.cfg = ctx.config.pipelines.airflow
        self.dags = {d.dag_id: d for d in self.cfg.dags}
        self._client: AirflowClient | None = None
        self._since: dict[str, datetime] = {}  # per DAG: the newest `updated_at` Airflow reported
        self._last_success: dict[str, datetime] = {}
        self._failed_polls = 0
        self._skip = 0
        self._lock = asyncio.Lock()  # a poll and a button press never edit the same alert at once
        if self.dags:
            every = timedelta(seconds=self.cfg.poll_seconds)
            trigger = IntervalTrigger(seconds=self.cfg.poll_seconds, start_date=datetime(2000, 1, 1, tzinfo=UTC), timezone=UTC)
            scheduler.add("pipelines.poll", trigger, self._scheduled, grace=every)

    @property
    def client(self) -> AirflowClient:
        if self._client is None:
            self._client = client_for(self.ctx.config.airflow, self.ctx.secrets)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def channel(self, dag_id: str) -> str:
        dag = self.dags.get(dag_id)
        return (dag.channel if dag else None) or self.ctx.config.channels.error

    # -- polling ---------------------------------------------------------------------------------------------

    async def _scheduled(self, slot: datetime) -> None:
        """The scheduler's wake-up starts a poll in the background: an Airflow slow to answer (up to the client's
        timeout) must hold up neither the bot's start, which runs the due jobs, nor the other jobs."""
        if not self._lock.locked():
            self.ctx.spawn(self.poll(), name="pipelines.poll")

    async def poll(self) -> None:
        async with self._lock:
            if self._skip:
                self._skip -= 1
                return
            try:
                for dag in self.dags.values():
                    await self._poll_dag(dag)
            except AirflowError as exc:
                self._failed_polls += 1
                self._skip = min(2 ** (self._failed_polls - 1), MAX_SKIP + 1) - 1
                log.warning("pipeline watch: %s (next %d polls skipped)", exc, self._skip)
                await self._say_unreachable(str(exc))
                return
            self._failed_polls = 0
            await self._say_reachable()

    async def _poll_dag(self, dag: WatchedDag) -> None:
        now = self.ctx.clock()
        try:
            runs = await self.client.dag_runs(dag.dag_id, updated_since=self._since.get(dag.dag_id, now - LOOKBACK))
        except AirflowError as exc:
            if exc.status != 404:
                raise
            await self._say_once(f"{dag.dag_id}:missing", f":warning: {exc}; the other DAGs are watched as before.",
                                 dag.dag_id)
            return
        for run in sorted(runs, key=lambda r: r.get("updated_at") or ""):
            await self._follow(dag, run)
            if updated := parse_time(run.get("updated_at")):
                self._since[dag.dag_id] = max(updated, self._since.get(dag.dag_id, updated))
        if day := late_day(now, dag.expected_by, dag.tz, self._last_success.get(dag.dag_id)):
            await self._late(dag, day)

    async def _follow(self, dag: WatchedDag, run: dict[str, Any]) -> None:
        run_id, state = str(run["dag_run_id"]), str(run.get("state") or "queued")
        if state == "success":
            ended = parse_time(run.get("end_date")) or self.ctx.clock()
            self._last_success[dag.dag_id] = max(ended, self._last_success.get(dag.dag_id, ended))
            await self._resolve_late(dag, ended)
        row = self._row(f"{dag.dag_id}:{run_id}")
        new = next_state(row["state"] if row else None, state)
        if new is None:
            return
        if new != "open":
            assert row is not None  # next_state moves only an alert that exists
            alert = RunAlert.model_validate_json(row["detail"]).model_copy(update={"state": new})
            await self._show(alert)
            return
        failure = RunAlert.model_validate_json(row["detail"]).failure + 1 if row else 1
        await self._show(await self._failed(dag, run, failure))

    async def _failed(self, dag: WatchedDag, run: dict[str, Any], failure: int) -> RunAlert:
        """The alert of a run that just failed: its failed tasks, how often each failed this week, the log tail."""
        run_id = str(run["dag_run_id"])
        now = self.ctx.clock()
        tasks = failed_tasks(await self.client.task_instances(dag.dag_id, run_id))
        with self.ctx.store.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO pipeline_failures (dag_id, run_id, task_id, try_number, failed_at) VALUES (?, ?, ?, ?, ?)",
                [(dag.dag_id, run_id, t.task_id, t.try_number, iso(now)) for t in tasks if t.state == "failed"])
        tasks = [t.model_copy(update={"failures_this_week": self._runs_failed(dag.dag_id, t.task_id, now)})
                 if t.state == "failed" else t for t in tasks]
        tail, tail_error = await self._tail(dag.dag_id, run_id, tasks)
        silence = self.silences.current(SOURCE, dag.dag_id)
        ui_url = self.ctx.config.airflow.ui_url if self.ctx.config.airflow else None
        url = ui_link(self.client.run_url(dag.dag_id, run_id), self.client, ui_url)
        return RunAlert(dag_id=dag.dag_id, run_id=run_id, state="silenced" if silence else "open", tasks=tasks,
                        tail=tail, tail_error=tail_error, url=url, failed_at=parse_time(run.get("end_date")) or now,
                        failure=failure, by=silence.created_by if silence else None)

    def _runs_failed(self, dag_id: str, task_id: str, now: datetime) -> int:
        return self.ctx.store.conn.execute(
            "SELECT count(DISTINCT run_id) FROM pipeline_failures WHERE dag_id = ? AND task_id = ? AND failed_at > ?",
            (dag_id, task_id, iso(now - WEEK))).fetchone()[0]

    async def _tail(self, dag_id: str, run_id: str, tasks: list[FailedTask]) -> tuple[list[str], str | None]:
        first = next((t for t in tasks if t.state == "failed"), None)
        if first is None:
            return [], None
        try:
            return await self.client.log_tail(dag_id, run_id, first.task_id, try_number=first.try_number,
                                              lines=messages.TAIL_LINES), None
        except AirflowError as exc:  # the alert goes without its tail
            return [], str(exc)

    # -- alert rows and their messages -------------------------------------------------------------------------

    def _row(self, key: str) -> dict[str, Any] | None:
        found = self.ctx.store.query("SELECT * FROM alerts WHERE source = ? AND key = ?", (SOURCE, key))
        return found[0] if found else None

    def _by_id(self, alert_id: int) -> dict[str, Any] | None:
        found = self.ctx.store.query("SELECT * FROM alerts WHERE source = ? AND id = ?", (SOURCE, alert_id))
        return found[0] if found else None

    async def _show(self, alert: RunAlert) -> None:
        """Store the run's alert as it is now and bring its message in line (a silenced one is kept, not posted)."""
        key, now = f"{alert.dag_id}:{alert.run_id}", self.ctx.clock()
        tasks = ", ".join(t.task_id for t in alert.tasks if t.state == "failed") or "no task"
        fields = {"state": alert.state, "severity": "error", "summary": f"pipeline {alert.dag_id} failed ({tasks})",
                  "detail": alert.model_dump_json(), "acked_by": alert.by,
                  "resolved_at": iso(now) if alert.state == "resolved" else None}
        row = self._row(key)
        if row is None:
            row = self._insert(key, {"channel": self.channel(alert.dag_id), "opened_at": iso(now), **fields})
        else:
            self.ctx.store.db["alerts"].update(row["id"], fields)
        self.ctx.audit(actor="airflow", verb="pipelines.alert", status=alert.state, channel=row["channel"],
                       model=alert.dag_id, detail={"run": alert.run_id, "failure": alert.failure,
                                                   "tasks": [t.task_id for t in alert.tasks]})
        await self._bring_in_line(row, messages.run_alert(alert, row["id"]), post=alert.state == "open")

    def _insert(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.ctx.store.db["alerts"].insert({"source": SOURCE, "key": key, **fields})
        row = self._row(key)
        assert row is not None
        return row

    async def _bring_in_line(self, row: dict[str, Any], shown: Message, *, post: bool) -> None:
        if row["ts"]:
            ts = await self.ctx.notifier.edit_or_repost(row["channel"], row["ts"], shown)
        elif post:
            ts = await self.ctx.notifier.post(row["channel"], shown)
        else:
            return
        if ts != row["ts"]:
            self.ctx.store.db["alerts"].update(row["id"], {"ts": ts})

    async def _say_once(self, key: str, text: str, dag_id: str) -> None:
        if self._row(key) is None:
            row = self._insert(key, {"state": "open", "severity": "warning", "summary": text[:1000],
                                     "channel": self.channel(dag_id), "opened_at": iso(self.ctx.clock())})
            self.ctx.audit(actor="mlops-bot", verb="pipelines.alert", status="config", model=dag_id, detail={"text": text})
            await self._bring_in_line(row, Message(text), post=True)

    async def _say_unreachable(self, error: str) -> None:
        row = self._row(UNREACHABLE)
        if row and row["state"] == "open":
            return
        fields = {"state": "open", "severity": "error", "summary": f"cannot reach Airflow: {error}"[:1000],
                  "opened_at": iso(self.ctx.clock()), "resolved_at": None, "ts": None,
                  "channel": self.ctx.config.channels.error}
        if row:
            self.ctx.store.db["alerts"].update(row["id"], fields)
            row = {**row, **fields}
        else:
            row = self._insert(UNREACHABLE, fields)
        self.ctx.audit(actor="mlops-bot", verb="pipelines.alert", status="unreachable", detail={"error": error[:500]})
        await self._bring_in_line(row, messages.unreachable(error, resolved=False), post=True)

    async def _say_reachable(self) -> None:
        row = self._row(UNREACHABLE)
        if row and row["state"] == "open":
            self.ctx.store.db["alerts"].update(row["id"], {"state": "resolved", "resolved_at": iso(self.ctx.clock())})
            self.ctx.audit(actor="mlops-bot", verb="pipelines.alert", status="reachable")
            await self._bring_in_line(row, messages.unreachable("", resolved=True), post=False)

    # -- late runs -------------------------------------------------------------------------------------------

    async def _late(self, dag: WatchedDag, day: date) -> None:
        key = f"{dag.dag_id}:late:{day.isoformat()}"
        if self._row(key) is not None:
            return
        assert dag.expected_by is not None  # late_day found the day by it
        due = deadline(day, dag.expected_by, dag.tz)
        silence = self.silences.current(SOURCE, dag.dag_id)
        state = "silenced" if silence else "open"
        row = self._insert(key, {
            "state": state, "severity": "warning", "channel": self.channel(dag.dag_id),
            "summary": f"pipeline {dag.dag_id} late: no successful run for {day}", "opened_at": iso(self.ctx.clock()),
            "detail": json.dumps({"dag": dag.dag_id, "day": day.isoformat(), "due": iso(due)})})
        self.ctx.audit(actor="mlops-bot", verb="pipelines.alert", status="late", model=dag.dag_id,
                       detail={"day": day.isoformat(), "due": iso(due)})
        await self._bring_in_line(row, messages.late_alert(dag.dag_id, day, due), post=state == "open")

    async def _resolve_late(self, dag: WatchedDag, ended: datetime) -> None:
        rows = self.ctx.store.query("SELECT * FROM alerts WHERE source = ? AND key LIKE ? AND state != 'resolved'",
                                    (SOURCE, f"{dag.dag_id}:late:%"))
        for row in rows:
            detail = json.loads(row["detail"])
            if ended.astimezone(UTC) < datetime.fromisoformat(detail["due"]) - timedelta(days=1):
                continue  # a success from before the late day does not make it on time
            self.ctx.store.db["alerts"].update(row["id"], {"state": "resolved", "resolved_at": iso(self.ctx.clock())})
            self.ctx.audit(actor="airflow", verb="pipelines.alert", status="resolved", model=dag.dag_id,
                           detail={"day": detail["day"]})
            shown = messages.late_alert(dag.dag_id, date.fromisoformat(detail["day"]),
                                        datetime.fromisoformat(detail["due"]), resolved_at=ended)
            await self._bring_in_line(row, shown, post=False)

    # -- buttons ---------------------------------------------------------------------------------------------

    def _pressed(self, alert_id: int, failure: int, user: str, verb: str, **detail: str) -> RunAlert | str:
        """The run alert a button names, or why there is nothing to do (audited as `verb` refused)."""
        row = self._by_id(alert_id)
        try:
            alert = RunAlert.model_validate_json(row["detail"]) if row else None
        except ValidationError:  # a late or "cannot reach" alert: no run to act on
            alert = None
        if alert is None:
            why = "That alert is not known to this bot any more; see the run in Airflow."
        elif alert.state not in ("open", "acked", "silenced") or alert.failure != failure:
            why = f"Nothing to do: run `{alert.run_id}` of `{alert.dag_id}` is {alert.state} now (see its message)."
        elif "task" in detail and detail["task"] not in {t.task_id for t in alert.tasks}:
            why = f"Nothing to do: `{detail['task']}` is not failed in run `{alert.run_id}`."
        else:
            return alert
        self.ctx.audit(actor=user, verb=verb, status="refused", detail={"alert": alert_id, **detail, "why": why})
        return why

    async def retry(self, alert_id: int, failure: int, user: str) -> str:
        """Clear the run's failed task instances, so Airflow's scheduler runs them again."""
        async with self._lock:
            alert = self._pressed(alert_id, failure, user, messages.RETRY)
            if isinstance(alert, str):
                return alert
            try:
                cleared = await self.client.clear_failed(alert.dag_id, alert.run_id)
            except AirflowError as exc:
                self.ctx.audit(actor=user, verb=messages.RETRY, status="failed", model=alert.dag_id,
                               detail={"run": alert.run_id, "error": str(exc)[:500]})
                return f":x: Airflow did not clear the failed tasks: {exc}"
            self.ctx.audit(actor=user, verb=messages.RETRY, status="ok", model=alert.dag_id,
                           detail={"run": alert.run_id, "cleared": cleared})
            await self._show(alert.model_copy(update={"state": "retrying", "by": user}))
        tasks = ", ".join(f"`{t}`" for t in cleared) or "no task (none was failed any more)"
        return f"Cleared {tasks} of run `{alert.run_id}`; Airflow runs them again and the alert follows the run."

    async def mark_success(self, alert_id: int, failure: int, task_id: str, user: str, reason: str) -> str:
        """Mark a failed task success in Airflow, and the run too once no failed task remains: Airflow leaves a run
        failed when its tasks are marked success, so the alert would never resolve."""
        async with self._lock:
            alert = self._pressed(alert_id, failure, user, messages.MARK_SUCCESS, task=task_id, reason=reason)
            if isinstance(alert, str):
                return alert
            where = {"run": alert.run_id, "task": task_id, "reason": reason}
            try:
                await self.client.mark_task_success(alert.dag_id, alert.run_id, task_id, note=f"{reason} (by {user} from Slack)")
                left = failed_tasks(await self.client.task_instances(alert.dag_id, alert.run_id))
                if not left:
                    await self.client.set_run_state(alert.dag_id, alert.run_id, "success")
            except AirflowError as exc:
                self.ctx.audit(actor=user, verb=messages.MARK_SUCCESS, status="failed", model=alert.dag_id,
                               detail={**where, "error": str(exc)[:500]})
                return f":x: Airflow did not mark `{task_id}` success: {exc}"
            self.ctx.audit(actor=user, verb=messages.MARK_SUCCESS, status="ok", model=alert.dag_id,
                           detail={**where, "still_failed": [t.task_id for t in left]})
            known = {t.task_id: t for t in alert.tasks}
            marked = [*alert.marked, messages.Marked(task_id=task_id, by=user, reason=reason)]
            await self._show(alert.model_copy(update={
                "tasks": [known.get(t.task_id, t) for t in left], "marked": marked,
                "state": alert.state if left else "resolved"}))
        if left:
            return (f"Marked `{task_id}` success; run `{alert.run_id}` stays failed while "
                    f"{', '.join(f'`{t.task_id}`' for t in left)} {'is' if len(left) == 1 else 'are'} failed.")
        return f"Marked `{task_id}` success, and run `{alert.run_id}` of `{alert.dag_id}` with it."

    async def ack(self, alert_id: int, failure: int, user: str) -> str:
        async with self._lock:
            alert = self._pressed(alert_id, failure, user, messages.ACK)
            if isinstance(alert, str):
                return alert
            self.ctx.audit(actor=user, verb=messages.ACK, status="ok", model=alert.dag_id, detail={"run": alert.run_id})
            await self._show(alert.model_copy(update={"state": "acked", "by": user}))
        return f"Acked: you are looking at `{alert.dag_id}`."

    async def silence(self, alert_id: int, failure: int, user: str) -> str:
        async with self._lock:
            alert = self._pressed(alert_id, failure, user, messages.SILENCE)
            if isinstance(alert, str):
                return alert
            until = self.ctx.clock() + SILENCE_FOR
            self.silences.add(SOURCE, alert.dag_id, until, user)
            self.ctx.audit(actor=user, verb=messages.SILENCE, status="ok", model=alert.dag_id,
                           detail={"run": alert.run_id, "until": iso(until)})
            await self._show(alert.model_copy(update={"state": "silenced", "by": user}))
        return f"Alerts of pipeline `{alert.dag_id}` are silenced until {when(until)}; they are kept, not posted."
