"""Monitoring: fetch each day's record, keep the history, raise one alert per run date, post the summary.

Every monitor is judged here: the datagen job (`datagen.jobs`) and the team checks of `monitors`, which differ
only in where their record comes from and how it is parsed (bot/monitors/history.py `parser_of`). A record
reaches the bot by the scheduled poll of a source URI, by running a monitor's command or notebook on its
schedule (bot/monitors/sources.py), by the signed webhook of bot/monitors/hook.py or by `mlops-bot datagen ingest`,
and all of them end in `ingest`: store by (job, run date), evaluate the rules against the stored history, then
bring the run date's alert message in line with what is breached now (bot/monitors/alerts.py). The datagen job
also posts its daily summary once; other monitors speak only when a rule fires.

A run that gives no record (a command that exits non-zero, times out or prints no JSON object) is one alert for
its run date, edited as further runs fail, resolved by the first good run.

A day without a record is alerted once ("raw data not found"): by the poll at its deadline, when the next
record arrives, or at start (`catch_up`) for deadlines that passed while the bot was down.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from apscheduler.triggers.interval import IntervalTrigger

from bot.config import DatagenJob, Monitor
from bot.context import Context
from bot.monitors import messages
from bot.monitors.alerts import DatagenAlerts
from bot.monitors.datagen import Report, ReportError
from bot.monitors.history import (
    due_at,
    gap_before,
    load_history,
    parser_of,
    read_source,
    run_date_at,
    save_record,
    source_uri,
    stored_raw,
    unreported,
    usual_runtime,
)
from bot.monitors.rules import Breach, StageMove, Verdicts, biggest_mover, evaluate
from bot.monitors.sources import RunFailed, notebooks_missing, run_monitor
from bot.notifier import Message, SlackError
from bot.scheduler import Scheduler
from bot.serving.artifacts import ArtifactError
from bot.silences import Silences

log = logging.getLogger(__name__)

MAX_CHARTED = 5  # metrics on a monitor alert's chart
MONITOR_GRACE = timedelta(hours=6)  # a monitor's slot missed while the bot was down still runs this long after


class DatagenError(ValueError):
    """A datagen request that cannot be served; the message says why and what to do."""


class Ingested(NamedTuple):
    job: str
    run_date: date
    stored: bool  # False: the same record was already stored, or it was unreadable
    breaches: list[Breach]


class DatagenService(DatagenAlerts):
    def __init__(self, ctx: Context, *, scheduler: Scheduler, silences: Silences) -> None:
        super().__init__(ctx, silences=silences)
        self._posting: set[tuple[str, str]] = set()  # summary slots this process is posting now
        for name, job in ctx.config.datagen.jobs.items():
            every = timedelta(minutes=job.poll_minutes)
            trigger = IntervalTrigger(minutes=job.poll_minutes, start_date=datetime(2000, 1, 1, tzinfo=UTC),
                                      timezone=UTC)
            scheduler.add(f"datagen.poll.{name}", trigger, partial(self.poll, name), grace=every)
        for name, monitor in ctx.config.monitors.items():
            if monitor.notebook and notebooks_missing():
                log.warning("monitors.%s is a notebook, and papermill is not installed: not scheduled (install the "
                            "`notebooks` extra: pip install 'mlops-chatops[notebooks]')", name)
                continue
            scheduler.add(f"monitor.run.{name}", monitor.schedule.trigger(), partial(self._scheduled, name),
                          grace=MONITOR_GRACE)

    # -- history --------------------------------------------------------------------------------------------

    def history(self, job: str) -> tuple[dict[date, Any], set[date]]:
        return load_history(self.store, job, parser_of(self.jobs[job]))

    # -- ingest ---------------------------------------------------------------------------------------------

    async def poll(self, job_name: str, slot: datetime) -> None:
        """One scheduled look for today's record. Polling goes on past the freshness deadline, so a late
        record is still picked up and resolves the "raw data not found" alert."""
        job = self.jobs[job_name]
        day = run_date_at(job, slot)
        if slot < due_at(job, day):
            return
        if stored_raw(self.store, job_name, day) is not None:
            if not self._announced(job_name, day):  # stored by `mlops-bot datagen ingest` without Slack
                await self.announce(job_name, day, actor="scheduler")
            return
        await self._fetch(job_name, day, slot)

    async def _scheduled(self, name: str, slot: datetime) -> None:
        """The scheduler's wake-up starts the run in the background: a notebook may take minutes, and must hold up
        neither the bot's start, which runs the due jobs, nor the other jobs."""
        self.ctx.spawn(self.run(name, slot), name=f"monitor {name}")

    async def run(self, name: str, slot: datetime) -> None:
        """A monitor's scheduled slot: fetch its source, or run its command or notebook, and judge the record."""
        monitor = self.jobs[name]
        assert isinstance(monitor, Monitor)
        day = run_date_at(monitor, slot)
        if monitor.source is not None:
            await self._fetch(name, day, slot)
            return
        origin = f"notebook {monitor.notebook}" if monitor.notebook else f"command {' '.join(monitor.command)}"
        try:
            raw = await run_monitor(monitor, day)
        except RunFailed as exc:
            self.ctx.audit(actor="scheduler", verb="monitor.run", status="error", model=name, version=day.isoformat(),
                           detail={"reason": exc.reason, "slot": slot.isoformat()})
            await self.sync_alert(name, day, [messages.run_failed(name, exc.reason, monitor)], None, actor="scheduler")
            return
        await self.ingest(name, day, raw, origin, actor="scheduler")

    async def _fetch(self, job_name: str, day: date, slot: datetime) -> None:
        uri = source_uri(self.jobs[job_name], day)
        try:
            raw = await read_source(uri, self.ctx.config.s3.endpoint_url)
        except ArtifactError as exc:
            log.info("monitor %s %s not there yet: %s", job_name, day, exc)
            await self._overdue(job_name, day, slot, actor="scheduler")
            return
        await self.ingest(job_name, day, raw, uri, actor="scheduler")

    async def catch_up(self) -> None:
        """At start: every day of the lookback whose deadline passed while the bot was down, with no record and no
        alert yet, gets its "raw data not found" alert now. The alert rows make this once per day, restarts or not."""
        now = self.ctx.clock()
        for name, job in self.jobs.items():
            history, _ = self.history(name)
            for day in unreported(history, run_date_at(job, now), job.baseline_lookback_days):
                if self.alert_row(name, day) is None:
                    await self._overdue(name, day, now, actor="datagen")

    async def _overdue(self, job_name: str, day: date, now: datetime, *, actor: str) -> None:
        job = self.jobs[job_name]
        history, expected = self.history(job_name)
        breaches = evaluate(job.rules, history, day, expected=expected, now=now, expected_at=due_at(job, day),
                            grace=job.grace, missing=f"{self.kind(job_name)} report")
        if breaches:
            await self.sync_alert(job_name, day, breaches, None, actor=actor)

    async def ingest(self, job_name: str, run_date: date, raw: bytes | str, source: str, *, actor: str) -> Ingested:
        """Store one record (idempotent per run date), evaluate it and update Slack. Never raises for bad input:
        an unreadable record becomes an alert and leaves the history as it was."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            self.parse(job_name, raw, run_date)  # validate before storing; history keeps only readable records
        except ReportError as exc:
            breach = messages.unreadable(self.kind(job_name), run_date, exc.reason, source)
            self.ctx.audit(actor=actor, verb="datagen.ingest", status="unreadable", model=job_name,
                           version=run_date.isoformat(), detail={"source": source, "reason": exc.reason})
            await self.sync_alert(job_name, run_date, [breach], None, actor=actor)
            return Ingested(job_name, run_date, False, [breach])
        if not save_record(self.store, job_name, run_date, text, source, actor=actor, at=self.ctx.clock()):
            return Ingested(job_name, run_date, False, [])
        return Ingested(job_name, run_date, True, await self.announce(job_name, run_date, actor=actor))

    def _announced(self, job_name: str, run_date: date) -> bool:
        """Whether the day's summary is in Slack: its slot claimed, and its ts recorded (claims made before the ts
        was recorded have no `ts` key and count as posted)."""
        row = self.store.conn.execute("SELECT json_type(detail, '$.ts') FROM job_runs WHERE job = ? AND slot = ?", (
            f"datagen.summary.{job_name}", run_date.isoformat())).fetchone()
        return row is not None and row[0] != "null"

    async def announce(self, job_name: str, run_date: date, *, actor: str) -> list[Breach]:
        """Evaluate a stored record, bring the alerts in line with it, raise the alert of any day missing right
        before it, and post the day's summary once.

        The slot is claimed before the post and given the post's ts after it: a crash between the two (the queued
        item runs again after the restart) finds the claim without a ts and posts the summary then."""
        job = self.jobs[job_name]
        history, expected = self.history(job_name)
        verdicts = Verdicts(job.rules, history, expected=expected, lookback=job.baseline_lookback_days)
        breaches = verdicts.of(run_date)
        datagen = isinstance(job, DatagenJob)
        await self.sync_alert(job_name, run_date, breaches, self._mover(verdicts, run_date) if datagen else None,
                              actor=actor)
        await self._resolve_older(job_name, run_date, breaches, history)
        missing = gap_before(history, run_date, job.baseline_lookback_days)
        for day in missing:
            if self.alert_row(job_name, day) is None:
                await self._overdue(job_name, day, self.ctx.clock(), actor=actor)
        if not datagen:  # a monitor speaks only through its alerts; the datagen job also posts its day
            await self._chart_alert(job_name, run_date, breaches, history)
            return breaches
        slot = (f"datagen.summary.{job_name}", run_date.isoformat())
        if slot in self._posting:
            return breaches
        if self.store.claim_slot(*slot, self.ctx.clock(), {"ts": None}) or not self._announced(job_name, run_date):
            self._posting.add(slot)
            try:
                await self._post_summary(job_name, run_date, history, len(breaches), missing, slot)
            finally:
                self._posting.discard(slot)
        return breaches

    @staticmethod
    def _mover(verdicts: Verdicts, run_date: date) -> StageMove | None:
        """The funnel step that moved most against the day the day-over-day rules compared with."""
        report, before = verdicts.history[run_date], verdicts.baseline_day(run_date, 1)
        if report.failed or before is None:
            return None
        return biggest_mover(report, verdicts.history[before])

    # -- the daily summary ----------------------------------------------------------------------------------

    async def _post_summary(self, job: str, run_date: date, history: dict[date, Report], breaches: int,
                            missing: list[date], slot: tuple[str, str]) -> None:
        report = history[run_date]
        before, week = history.get(run_date - timedelta(days=1)), history.get(run_date - timedelta(days=7))
        channel = self.ctx.config.channels.main
        ts = await self.ctx.notifier.post(channel, messages.summary(
            job, report, before, week, usual_runtime=usual_runtime(history, run_date), breaches=breaches,
            missing=missing))
        self.store.conn.execute("UPDATE job_runs SET detail = json_set(detail, '$.ts', ?) WHERE job = ? AND slot = ?",
                                (ts, *slot))
        if report.failed:
            return
        await self.ctx.notifier.reply(channel, ts, messages.details(report, before, week, tz=self.jobs[job].tz))
        await self._charts(job, run_date, history, channel, ts)

    async def _charts(self, job: str, run_date: date, history: dict[date, Report], channel: str, ts: str) -> None:
        try:
            from bot.monitors import charts
        except ImportError:  # the `charts` extra is not installed: the summary stands without pictures
            return
        for filename, title, png in await asyncio.to_thread(charts.render, job, run_date, history):
            await self._upload(job, run_date, channel, ts, filename, title, png)

    async def _chart_alert(self, job: str, run_date: date, breaches: list[Breach], history: dict[date, Any]) -> None:
        """A monitor has no summary: its alert's thread gets the breached metrics over the last days, once per set
        of breaches (the mark lives in the detail `sync_alert` rewrites, as the thread's list of breaches does)."""
        row = self.alert_row(job, run_date)
        metrics = sorted({b.metric for b in breaches if b.metric})[:MAX_CHARTED]
        if row is None or row["ts"] is None or not metrics or json.loads(row["detail"]).get("charted"):
            return
        try:
            from bot.monitors import charts
        except ImportError:
            return
        title = f"monitor {job}: {', '.join(metrics)}, {charts.DAYS} days to {run_date}"
        png = await asyncio.to_thread(charts.metric_history, title, metrics, history, run_date)
        await self._upload(job, run_date, row["channel"], row["ts"], f"{job}-{run_date}-metrics.png", title, png)
        self.store.conn.execute("UPDATE alerts SET detail = json_set(detail, '$.charted', json('true')) "
                                "WHERE id = ? AND detail = ?", (row["id"], row["detail"]))

    async def _upload(self, job: str, run_date: date, channel: str, ts: str, filename: str, title: str,
                      png: bytes) -> None:
        try:
            await self.ctx.notifier.upload(channel, filename, png, title=title, thread_ts=ts)
        except SlackError as exc:
            self.ctx.audit(actor="datagen", verb="datagen.chart", status="error", channel=channel, model=job,
                           version=run_date.isoformat(), detail={"file": filename, "error": str(exc)})

    # -- what /mlops datagen shows --------------------------------------------------------------------------

    def job_name(self, given: str | None) -> str:
        """The datagen job or monitor named; unnamed, the only datagen job."""
        if given is None:
            if len(datagen := self.ctx.config.datagen.jobs) != 1:
                raise DatagenError(f"name the job with job=…; jobs: {', '.join(sorted(self.jobs)) or 'none'}")
            return next(iter(datagen))
        if given not in self.jobs:
            raise DatagenError(f"unknown datagen job `{given}`; jobs: {', '.join(sorted(self.jobs)) or 'none'}")
        return given

    def view(self, job: str, day: date | None, compare: date | None) -> list[Message]:
        history, expected = self.history(job)
        day = day or (max(history) if history else None)
        if day is None or day not in history:
            raise DatagenError(f"no datagen report for {job} {day or ''}".rstrip()
                               + (f"; the latest is {max(history)}" if history else ""))
        report = history[day]
        settings = self.jobs[job]
        if not isinstance(settings, DatagenJob):
            if compare is not None:
                raise DatagenError(f"`compare` is for a datagen job's funnel; {job} is a monitor")
            return self._monitor_view(job, day, history, expected)
        if compare is not None:
            if compare not in history:
                raise DatagenError(f"no datagen report for {job} {compare} to compare with")
            other = history[compare]
            mover = None if report.failed or other.failed else biggest_mover(report, other)
            return [messages.comparison(job, report, other, mover)]
        # The day's breaches as its record is judged now: what its summary said, and the full list its alert
        # points at, resolved or not.
        breaches = evaluate(settings.rules, history, day, expected=expected, lookback=settings.baseline_lookback_days)
        before, week = history.get(day - timedelta(days=1)), history.get(day - timedelta(days=7))
        shown = [messages.summary(job, report, before, week, usual_runtime=usual_runtime(history, day),
                                  breaches=len(breaches), missing=gap_before(history, day, settings.baseline_lookback_days))]
        if not report.failed:
            shown.append(messages.details(report, before, week, tz=settings.tz))
        if breaches:
            shown.append(messages.breach_list(job, day, breaches))
        return shown

    def _monitor_view(self, job: str, day: date, history: dict[date, Any], expected: set[date]) -> list[Message]:
        settings = self.jobs[job]
        breaches = evaluate(settings.rules, history, day, expected=expected, lookback=settings.baseline_lookback_days)
        shown = [messages.record_view(job, history[day], len(breaches))]
        if breaches:
            shown.append(messages.breach_list(job, day, breaches, kind="monitor"))
        return shown
