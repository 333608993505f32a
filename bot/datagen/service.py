"""Datagen monitoring: fetch each day's record, keep the history, raise one alert per run date, post the summary.

A record reaches the bot three ways (the scheduled poll of the job's source URI, the signed webhook and
`mlops-bot datagen ingest`), and all of them end in `ingest`: store by (job, run date), evaluate the rules
against the stored history, then bring the run date's alert message in line with what is breached now.
An alert is one Slack message per (job, run date), edited in place from then on; it resolves when a
later report no longer breaches any of its (rule, metric) pairs. The webhook answers once the record is
stored; its Slack posts go through the hooks' durable queue (bot/hooks.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import sqlite3
import time as walltime
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from aiohttp import web
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import DatagenJob
from bot.context import Context
from bot.datagen import messages
from bot.datagen.report import Report, ReportError, parse_report
from bot.datagen.rules import Breach, StageMove, biggest_mover, evaluate
from bot.hooks import BodyTooLarge, HookQueue, max_body_bytes, not_stored, read_body
from bot.notifier import Message, SlackError
from bot.scheduler import Scheduler
from bot.serving.artifacts import ArtifactError, open_store
from bot.silences import Silences
from bot.store import Store, iso

log = logging.getLogger(__name__)

SOURCE = "datagen"
HOOK_MAX_SKEW = 300  # seconds; a signed hook older than this is a replay
HOOK_MAX_AHEAD = timedelta(days=1)  # a run date further ahead of today (in the job's zone) is refused
ANNOUNCE, UNREADABLE = "datagen.announce", "datagen.unreadable"  # the hook's queued work
SILENCE_SPANS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}


class DatagenError(ValueError):
    """A datagen request that cannot be served; the message says why and what to do."""


class Ingested(NamedTuple):
    job: str
    run_date: date
    stored: bool  # False: the same record was already stored, or it was unreadable
    breaches: list[Breach]


# --- pure rules of timing and resolution ---------------------------------------------------------------------


def due_at(job: DatagenJob, run_date: date) -> datetime:
    """When the record of `run_date` should exist: the job's start in its zone plus its typical run time."""
    start = datetime.combine(run_date, job.expected_at, ZoneInfo(job.tz))
    return (start + timedelta(minutes=job.typical_runtime_minutes)).astimezone(UTC)


def run_date_at(job: DatagenJob, now: datetime) -> date:
    return now.astimezone(ZoneInfo(job.tz)).date()


def source_uri(job: DatagenJob, run_date: date) -> str:
    return job.source.format(date=run_date.isoformat())


def pairs(breaches: list[Breach]) -> set[tuple[str, str | None]]:
    return {(b.rule_id, b.metric) for b in breaches}


def cleared(alerted: list[Breach], later: list[Breach]) -> bool:
    """A later report clears an alert when it breaches none of the alert's (rule, metric) pairs."""
    return not pairs(alerted) & pairs(later)


def sign(secret: str, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    """The webhook signature: `v1=` and the hex HMAC-SHA256 of the lines `v1`, timestamp, method, path and
    query (as sent: percent-encoding kept, no `?`), then the body after a final newline.

    Everything that decides what is stored is signed, so a captured request replayed with another query
    (`date=`, `job=`) does not verify. A newline cannot occur in a request line, so no two requests share
    a signed string.
    """
    head = "\n".join(("v1", timestamp, method.upper(), path, query)) + "\n"
    digest = hmac.new(secret.encode(), head.encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def _breach(data: dict[str, Any]) -> Breach:
    return Breach(**data)


def load_history(store: Store, job: str) -> tuple[dict[date, Report], set[date]]:
    """Every stored report of `job` by run date, and the days marked expected."""
    reports, expected = {}, set()
    for day_text, raw, marked in store.conn.execute(
            "SELECT run_date, raw, expected FROM datagen_reports WHERE job = ?", (job,)):
        day = date.fromisoformat(day_text)
        reports[day] = parse_report(raw, run_date=day)
        if marked:
            expected.add(day)
    return reports, expected


def stored_raw(store: Store, job: str, run_date: date) -> str | None:
    row = store.conn.execute("SELECT raw FROM datagen_reports WHERE job = ? AND run_date = ?",
                             (job, run_date.isoformat())).fetchone()
    return row[0] if row else None


def save_record(store: Store, job: str, run_date: date, text: str, source: str, *, actor: str, at: datetime) -> bool:
    """Store a readable record with its audit row; False when the very same record is already stored."""
    if stored_raw(store, job, run_date) == text:
        return False
    with store.transaction() as conn:
        # A rerun of the job replaces its record; the day's "expected" mark stays.
        conn.execute(
            "INSERT INTO datagen_reports (job, run_date, raw, source, ingested_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(job, run_date) DO UPDATE SET raw = excluded.raw, source = excluded.source, "
            "ingested_at = excluded.ingested_at",
            (job, run_date.isoformat(), text, source, iso(at)))
        store.audit(actor=actor, verb="datagen.ingest", status="ok", model=job, version=run_date.isoformat(),
                    detail={"source": source}, at=at)
    return True


async def read_source(uri: str, s3_endpoint_url: str | None) -> bytes:
    folder, _, name = uri.rpartition("/")
    return await open_store(folder, s3_endpoint_url=s3_endpoint_url).read(name)


# --- the service ---------------------------------------------------------------------------------------------


class DatagenService:
    def __init__(self, ctx: Context, *, scheduler: Scheduler, hooks: HookQueue, silences: Silences) -> None:
        self.ctx = ctx
        self.hooks = hooks
        self.silences = silences
        self.store = ctx.store
        self.jobs = ctx.config.datagen.jobs
        # Per alert message: one writer at a time, and how many changes were asked for / already shown, so a
        # storm of changes to one alert becomes a few edits of its newest state (see _show).
        self._writers: dict[tuple[str, date], asyncio.Lock] = {}
        self._asked: dict[tuple[str, date], int] = {}
        self._shown: dict[tuple[str, date], int] = {}
        self._posting: set[tuple[str, str]] = set()  # summary slots this process is posting now
        for name, job in self.jobs.items():
            every = timedelta(minutes=job.poll_minutes)
            trigger = IntervalTrigger(minutes=job.poll_minutes, start_date=datetime(2000, 1, 1, tzinfo=UTC),
                                      timezone=UTC)
            scheduler.add(f"datagen.poll.{name}", trigger, partial(self.poll, name), grace=every)
        hooks.handle(ANNOUNCE, self._announce_queued)
        hooks.handle(UNREADABLE, self._unreadable_queued)

    # -- history --------------------------------------------------------------------------------------------

    def history(self, job: str) -> tuple[dict[date, Report], set[date]]:
        return load_history(self.store, job)

    # -- ingest ---------------------------------------------------------------------------------------------

    async def poll(self, job_name: str, slot: datetime) -> None:
        """One scheduled look for today's record. Polling goes on past the freshness deadline, so a late
        record is still picked up and resolves the "raw data not found" alert."""
        job = self.jobs[job_name]
        day = run_date_at(job, slot)
        due = due_at(job, day)
        if slot < due:
            return
        if stored_raw(self.store, job_name, day) is not None:
            if not self._announced(job_name, day):  # stored by `mlops-bot datagen ingest` without Slack
                await self.announce(job_name, day, actor="scheduler")
            return
        uri = source_uri(job, day)
        try:
            raw = await read_source(uri, self.ctx.config.s3.endpoint_url)
        except ArtifactError as exc:
            log.info("datagen %s %s not there yet: %s", job_name, day, exc)
            history, expected = self.history(job_name)
            breaches = evaluate(job.rules, history, day, expected=expected, now=slot, expected_at=due)
            if breaches:
                await self.sync_alert(job_name, day, breaches, None, actor="scheduler")
            return
        await self.ingest(job_name, day, raw, uri, actor="scheduler")

    async def ingest(self, job_name: str, run_date: date, raw: bytes | str, source: str, *, actor: str) -> Ingested:
        """Store one record (idempotent per run date), evaluate it and update Slack. Never raises for bad input:
        an unreadable record becomes an alert and leaves the history as it was."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            parse_report(raw, run_date=run_date)  # validate before storing; history keeps only readable records
        except ReportError as exc:
            breach = messages.unreadable(job_name, run_date, exc.reason, source)
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
        """Evaluate a stored record, bring the alerts in line with it and post the day's summary once.

        The slot is claimed before the post and given the post's ts after it: a crash between the two (the queued
        item runs again after the restart) finds the claim without a ts and posts the summary then."""
        history, expected = self.history(job_name)
        breaches = evaluate(self.jobs[job_name].rules, history, run_date, expected=expected)
        await self.sync_alert(job_name, run_date, breaches, self._mover(history, expected, run_date), actor=actor)
        await self._resolve_older(job_name, run_date, breaches)
        slot = (f"datagen.summary.{job_name}", run_date.isoformat())
        if slot in self._posting:
            return breaches
        if self.store.claim_slot(*slot, self.ctx.clock(), {"ts": None}) or not self._announced(job_name, run_date):
            self._posting.add(slot)
            try:
                await self._post_summary(job_name, run_date, history, len(breaches), slot)
            finally:
                self._posting.discard(slot)
        return breaches

    @staticmethod
    def _mover(history: dict[date, Report], expected: set[date], run_date: date) -> StageMove | None:
        report, before = history.get(run_date), history.get(run_date - timedelta(days=1))
        if report is None or before is None or report.failed or before.failed or before.run_date in expected:
            return None
        return biggest_mover(report, before)

    # -- alerts ---------------------------------------------------------------------------------------------

    def alert_row(self, job: str, run_date: date) -> dict[str, Any] | None:
        rows = list(self.store.db.query("SELECT * FROM alerts WHERE source = ? AND key = ?",
                                        [SOURCE, f"{job}/{run_date}"]))
        return rows[0] if rows else None

    def retrainable(self, job: str) -> list[str]:
        """The models trained on this job's data that the bot can retrain."""
        models = self.ctx.config.models
        return [m for m in self.jobs[job].models if models[m].retrain] if job in self.jobs else []

    def _render(self, job: str, run_date: date, row: dict[str, Any]) -> Message:
        detail = json.loads(row["detail"])
        mover = StageMove(**detail["mover"]) if detail.get("mover") else None
        return messages.alert(job, run_date, [_breach(b) for b in detail["breaches"]], state=row["state"],
                              mover=mover, by=row["acked_by"], retrain=self.retrainable(job))

    async def sync_alert(self, job: str, run_date: date, breaches: list[Breach], mover: StageMove | None,
                          *, actor: str) -> None:
        """Make the run date's alert say what is breached now: post it, edit it, or resolve it."""
        row = self.alert_row(job, run_date)
        now = self.ctx.clock()
        if not breaches:
            if row is not None and row["state"] != "resolved":
                await self._resolve(job, run_date, row, actor=actor)
            return
        severity = messages.severity_of(breaches)
        detail = json.dumps({"breaches": [asdict(b) for b in breaches], "mover": mover._asdict() if mover else None})
        summary = "; ".join(b.message for b in breaches)[:1000]
        if row is not None and json.loads(row["detail"])["breaches"] == json.loads(detail)["breaches"]:
            return  # nothing new to say
        if row is None:
            silenced = self.silences.current(SOURCE, job) is not None
            channels = self.ctx.config.channels
            channel = self.jobs[job].channel or (channels.error if severity == "crit" else channels.info)
            self.store.db["alerts"].insert({
                "source": SOURCE, "key": f"{job}/{run_date}", "state": "silenced" if silenced else "open",
                "severity": severity, "summary": summary, "detail": detail, "channel": channel,
                "opened_at": iso(now)})
            row = self.alert_row(job, run_date)
            assert row is not None
            self.ctx.audit(actor=actor, verb="datagen.alert", status=row["state"], channel=channel, model=job,
                           version=run_date.isoformat(), detail={"severity": severity, "breaches": len(breaches)})
            await self._show(job, run_date)
            return
        state = "open" if row["state"] == "resolved" else row["state"]
        self.store.db["alerts"].update(row["id"], {"detail": detail, "summary": summary, "severity": severity,
                                                   "state": state, "resolved_at": None})
        self.ctx.audit(actor=actor, verb="datagen.alert", status="updated", channel=row["channel"], model=job,
                       version=run_date.isoformat(), detail={"severity": severity, "breaches": len(breaches)})
        await self._show(job, run_date)

    async def _show(self, job: str, run_date: date) -> None:
        """Bring the alert's message up to its stored state: post it once, then edit it.

        Callers queue on the message's lock; whoever gets it renders the newest row, so the callers behind it
        whose change that already covers return without another call to Slack.
        """
        key = (job, run_date)
        self._asked[key] = asked = self._asked.get(key, 0) + 1
        async with self._writers.setdefault(key, asyncio.Lock()):
            if self._shown.get(key, 0) >= asked:
                return
            covered = self._asked[key]
            row = self.alert_row(job, run_date)
            if row is None:
                return
            if row["ts"] is None:
                if row["state"] in ("open", "acked"):  # silenced until now; people see it from here on
                    ts = await self.ctx.notifier.post(row["channel"], self._render(job, run_date, row))
                    self.store.db["alerts"].update(row["id"], {"ts": ts})
            else:
                ts = await self.ctx.notifier.edit_or_repost(row["channel"], row["ts"], self._render(job, run_date, row))
                if ts != row["ts"]:
                    self.store.db["alerts"].update(row["id"], {"ts": ts})
            self._shown[key] = covered

    async def _resolve(self, job: str, run_date: date, row: dict[str, Any], *, actor: str) -> None:
        self.store.db["alerts"].update(row["id"], {"state": "resolved", "resolved_at": iso(self.ctx.clock())})
        self.ctx.audit(actor=actor, verb="datagen.alert", status="resolved", channel=row["channel"], model=job,
                       version=run_date.isoformat())
        await self._show(job, run_date)

    async def _resolve_older(self, job: str, run_date: date, breaches: list[Breach]) -> None:
        for row in list(self.store.db.query(
                "SELECT * FROM alerts WHERE source = ? AND key LIKE ? AND state != 'resolved'",
                [SOURCE, f"{job}/%"])):
            day = date.fromisoformat(row["key"].rpartition("/")[2])
            alerted = [_breach(b) for b in json.loads(row["detail"])["breaches"]]
            if day < run_date and cleared(alerted, breaches):
                await self._resolve(job, day, row, actor="datagen")

    # -- what people do with an alert -----------------------------------------------------------------------

    async def ack(self, job: str, run_date: date, user: str) -> str:
        return await self._mark(job, run_date, user, "acked", "datagen.ack")

    async def silence(self, job: str, run_date: date, user: str, duration: str) -> str:
        now = self.ctx.clock()
        until = due_at(self.jobs[job], run_date + timedelta(days=1)) if duration == "next_run" else (
            now + SILENCE_SPANS[duration])
        self.silences.add(SOURCE, job, until, user)
        return await self._mark(job, run_date, user, "silenced", "datagen.silence",
                                extra={"until": iso(until), "duration": duration})

    async def mark_expected(self, job: str, run_date: date, user: str) -> str:
        """The day's numbers were expected (a planned change): it stops being anybody's baseline."""
        self.store.conn.execute("UPDATE datagen_reports SET expected = 1 WHERE job = ? AND run_date = ?",
                                (job, run_date.isoformat()))
        return await self._mark(job, run_date, user, "expected", "datagen.expected")

    async def _mark(self, job: str, run_date: date, user: str, state: str, verb: str,
                    extra: dict[str, Any] | None = None) -> str:
        row = self.alert_row(job, run_date)
        if row is None or job not in self.jobs:
            self.ctx.audit(actor=user, verb=verb, status="refused", model=job, version=run_date.isoformat(),
                           detail={"reason": "no such alert"})
            return f"There is no datagen alert for {job} {run_date}."
        if row["state"] == "resolved":
            self.ctx.audit(actor=user, verb=verb, status="refused", model=job, version=run_date.isoformat(),
                           detail={"reason": "already resolved"})
            return f"The datagen alert for {job} {run_date} is already resolved."
        self.store.db["alerts"].update(row["id"], {"state": state, "acked_by": user})
        self.ctx.audit(actor=user, verb=verb, status="ok", channel=row["channel"], model=job,
                       version=run_date.isoformat(), detail=extra or {})
        await self._show(job, run_date)
        return f"Datagen alert for {job} {run_date}: {state}."

    # -- the daily summary ----------------------------------------------------------------------------------

    async def _post_summary(self, job: str, run_date: date, history: dict[date, Report], alerts: int,
                            slot: tuple[str, str]) -> None:
        report = history[run_date]
        before, week = history.get(run_date - timedelta(days=1)), history.get(run_date - timedelta(days=7))
        channel = self.ctx.config.channels.main
        ts = await self.ctx.notifier.post(channel, messages.summary(
            job, report, before, week, usual_runtime=usual_runtime(history, run_date), alerts=alerts))
        self.store.conn.execute("UPDATE job_runs SET detail = json_set(detail, '$.ts', ?) WHERE job = ? AND slot = ?",
                                (ts, *slot))
        if report.failed:
            return
        await self.ctx.notifier.reply(channel, ts, messages.details(report, before, week))
        await self._charts(job, run_date, history, channel, ts)

    async def _charts(self, job: str, run_date: date, history: dict[date, Report], channel: str, ts: str) -> None:
        try:
            from bot.datagen import charts
        except ImportError:  # the `charts` extra is not installed: the summary stands without pictures
            return
        for filename, title, png in await asyncio.to_thread(charts.render, job, run_date, history):
            try:
                await self.ctx.notifier.upload(channel, filename, png, title=title, thread_ts=ts)
            except SlackError as exc:
                self.ctx.audit(actor="datagen", verb="datagen.chart", status="error", channel=channel, model=job,
                               version=run_date.isoformat(), detail={"file": filename, "error": str(exc)})

    # -- what /mlops datagen shows --------------------------------------------------------------------------

    def job_name(self, given: str | None) -> str:
        if given is None:
            if len(self.jobs) != 1:
                raise DatagenError(f"name the job with job=…; jobs: {', '.join(sorted(self.jobs)) or 'none'}")
            return next(iter(self.jobs))
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
        if compare is not None:
            if compare not in history:
                raise DatagenError(f"no datagen report for {job} {compare} to compare with")
            other = history[compare]
            mover = None if report.failed or other.failed else biggest_mover(report, other)
            return [messages.comparison(job, report, other, mover)]
        row = self.alert_row(job, day)
        alerts = len(json.loads(row["detail"])["breaches"]) if row and row["state"] != "resolved" else 0
        before, week = history.get(day - timedelta(days=1)), history.get(day - timedelta(days=7))
        shown = [messages.summary(job, report, before, week, usual_runtime=usual_runtime(history, day), alerts=alerts)]
        if not report.failed:
            shown.append(messages.details(report, before, week))
        return shown

    # -- the webhook ----------------------------------------------------------------------------------------

    async def hook(self, request: web.Request) -> web.Response:
        """POST /hooks/datagen?job=J&date=YYYY-MM-DD with the record as the body, signed with
        MLOPS_DATAGEN_HOOK_SECRET (X-Datagen-Timestamp, X-Datagen-Signature; see `sign`). Answers once the
        record is stored; the summary, alerts and charts are posted from the hooks' queue."""
        secret = self.ctx.secrets.datagen_hook_secret
        if not secret:
            return web.json_response({"error": "the datagen hook is off: set MLOPS_DATAGEN_HOOK_SECRET"}, status=503)
        try:
            body = await read_body(request, max_body_bytes())
        except BodyTooLarge as exc:
            log.warning("datagen hook refused a request from %s: %s", request.remote, exc)
            self.ctx.audit(actor="unknown", verb="datagen.hook", status="too_large",
                           detail={"bytes": exc.size, "limit": exc.limit})
            return web.json_response({"error": f"record refused: {exc}"}, status=413)
        stamp = request.headers.get("X-Datagen-Timestamp", "")
        given = request.headers.get("X-Datagen-Signature", "")
        # isascii: str.isdigit() is true of '²', which int() refuses.
        fresh = stamp.isascii() and stamp.isdigit() and abs(walltime.time() - int(stamp)) <= HOOK_MAX_SKEW
        url = request.rel_url
        expected = sign(secret, stamp, request.method, url.raw_path, url.raw_query_string, body)
        if not fresh or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            self.ctx.audit(actor="unknown", verb="datagen.hook", status="rejected",
                           detail={"reason": "bad signature or timestamp"})
            return web.json_response({"error": "bad signature or timestamp (the signature covers the method, path, "
                                               "query and body: see README, Webhooks)"}, status=401)
        try:
            job = self.job_name(request.query.get("job"))
            day = date.fromisoformat(request.query["date"])
            self._not_ahead(job, day)
        except (DatagenError, KeyError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, DatagenError) else "give date=YYYY-MM-DD in the query"
            self.ctx.audit(actor="datagen.hook", verb="datagen.hook", status="invalid", detail={"error": reason})
            return web.json_response({"error": reason}, status=400)
        source = f"hook:{request.remote}"
        answer: dict[str, Any] = {"job": job, "run_date": day.isoformat()}
        try:
            parse_report(body, run_date=day)  # validate before storing; history keeps only readable records
        except ReportError as exc:
            # The alert saying so is posted from the queue; the audit row and the queued item commit together.
            try:
                with self.store.transaction():
                    self.ctx.audit(actor="datagen.hook", verb="datagen.ingest", status="unreadable", model=job,
                                   version=day.isoformat(), detail={"source": source, "reason": exc.reason})
                    queued = self.hooks.put(UNREADABLE, f"{SOURCE}:{job}", {
                        "job": job, "date": day.isoformat(), "reason": exc.reason, "source": source})
            except sqlite3.Error as failed:
                return not_stored("datagen hook", failed)
            return web.json_response({**answer, "stored": False, "queued": queued,
                                      "error": f"unreadable record: {exc.reason}"}, status=422)
        try:
            with self.store.transaction():  # stored and queued at once, so a crash cannot keep one without the other
                stored = save_record(self.store, job, day, body.decode("utf-8", "replace"), source,
                                     actor="datagen.hook", at=self.ctx.clock())
                queued = (self.hooks.put(ANNOUNCE, f"{SOURCE}:{job}", {"job": job, "date": day.isoformat()})
                          if stored else None)
        except sqlite3.Error as failed:
            return not_stored("datagen hook", failed)
        return web.json_response({**answer, "stored": stored, "queued": queued})

    def _not_ahead(self, job: str, day: date) -> None:
        today = run_date_at(self.jobs[job], self.ctx.clock())
        if day > today + HOOK_MAX_AHEAD:
            raise DatagenError(f"date={day} is in the future: today is {today} in {self.jobs[job].tz}, and the hook "
                               f"takes run dates up to {today + HOOK_MAX_AHEAD}")

    async def _announce_queued(self, item: dict[str, Any]) -> None:
        await self.announce(item["job"], date.fromisoformat(item["date"]), actor="datagen.hook")

    async def _unreadable_queued(self, item: dict[str, Any]) -> None:
        job, day = item["job"], date.fromisoformat(item["date"])
        await self.sync_alert(job, day, [messages.unreadable(job, day, item["reason"], item["source"])], None,
                              actor="datagen.hook")


def usual_runtime(history: dict[date, Report], run_date: date, days: int = 14) -> timedelta | None:
    """The median run time of the successful runs in the `days` before `run_date`."""
    times = sorted(r.run_time for d, r in history.items()
                   if run_date - timedelta(days=days) <= d < run_date and not r.failed and r.run_time is not None)
    return times[len(times) // 2] if times else None
