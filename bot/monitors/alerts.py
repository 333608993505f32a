"""Monitor alerts: one Slack message per (monitor, run date), edited in place as the breaches change.

Every monitor's alerts are these, the datagen job's and those of `monitors` (stored under source `datagen`, the
name predating other monitors, keyed `<name>/<run date>`), so a button or a state added here works for all.
The message shows the breaches grouped by cause (bot/monitors/causes.py); its thread lists every breach. An alert
resolves when its day's record clears it, or a later report no longer breaches any of its (rule, metric) pairs;
a day still without a readable record keeps its alert, unless its only breach was a run that gave no record (a
later good run clears that). Ack, Silence and "Expected" act on it from its buttons.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from dataclasses import asdict
from datetime import date, timedelta
from typing import Any

from bot.config import DatagenJob, Monitor, Watched
from bot.context import Context
from bot.monitors import messages
from bot.monitors.history import due_at, parser_of
from bot.monitors.record import Record
from bot.monitors.rules import Breach, StageMove
from bot.notifier import Message
from bot.silences import Silences
from bot.store import iso

SOURCE = "datagen"
SILENCE_SPANS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}


def pairs(breaches: list[Breach]) -> set[tuple[str, str | None]]:
    return {(b.rule_id, b.metric) for b in breaches}


def cleared(alerted: list[Breach], later: list[Breach]) -> bool:
    """A later report clears an alert when it breaches none of the alert's (rule, metric) pairs."""
    return not pairs(alerted) & pairs(later)


def _breach(data: dict[str, Any]) -> Breach:
    return Breach(**data)


class DatagenAlerts:
    """The alert messages of every configured monitor; `DatagenService` adds how records arrive."""

    def __init__(self, ctx: Context, *, silences: Silences) -> None:
        self.ctx = ctx
        self.silences = silences
        self.store = ctx.store
        self.jobs: dict[str, DatagenJob | Monitor] = {**ctx.config.datagen.jobs, **ctx.config.monitors}
        # Per alert message: one writer at a time, and how many changes were asked for / already shown, so a
        # storm of changes to one alert becomes a few edits of its newest state (see _show).
        self._writers: dict[tuple[str, date], asyncio.Lock] = {}
        self._asked: dict[tuple[str, date], int] = {}
        self._shown: dict[tuple[str, date], int] = {}

    def kind(self, job: str) -> str:
        """How messages name the job: `datagen`, or `monitor` for the checks of `monitors`."""
        return "monitor" if job in self.ctx.config.monitors else "datagen"

    def parse(self, job: str, raw: bytes | str, run_date: date) -> Record:
        """The job's record read by its own parser; ReportError when it cannot be read."""
        return parser_of(self.jobs[job])(raw, run_date=run_date)

    def alert_row(self, job: str, run_date: date) -> dict[str, Any] | None:
        rows = list(self.store.db.query("SELECT * FROM alerts WHERE source = ? AND key = ?",
                                        [SOURCE, f"{job}/{run_date}"]))
        return rows[0] if rows else None

    def retrainable(self, job: str) -> list[str]:
        """The models trained on this job's data that the bot can retrain."""
        models = self.ctx.config.models
        return [m for m in self.jobs[job].models if models[m].retrain] if job in self.jobs else []

    def _tolerance(self, job: str) -> float:
        # An alert outlives its job's removal from the config; it is then grouped by the default.
        job_config = self.jobs.get(job)
        return job_config.fold_tolerance_pct if job_config else Watched.model_fields["fold_tolerance_pct"].default

    def _render(self, job: str, run_date: date, row: dict[str, Any]) -> Message:
        detail = json.loads(row["detail"])
        mover = StageMove(**detail["mover"]) if detail.get("mover") else None
        return messages.alert(job, run_date, [_breach(b) for b in detail["breaches"]], state=row["state"],
                              mover=mover, by=row["acked_by"], retrain=self.retrainable(job),
                              tolerance_pct=self._tolerance(job), kind=self.kind(job))

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
        summary = messages.summary_text(breaches, self._tolerance(job))
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
            ts = row["ts"]
            if ts is None:
                if row["state"] in ("open", "acked"):  # silenced until now; people see it from here on
                    ts = await self.ctx.notifier.post(row["channel"], self._render(job, run_date, row))
                    self.store.db["alerts"].update(row["id"], {"ts": ts})
            else:
                ts = await self.ctx.notifier.edit_or_repost(row["channel"], ts, self._render(job, run_date, row))
                if ts != row["ts"]:
                    self.store.db["alerts"].update(row["id"], {"ts": ts})
            if ts is not None:
                await self._list_in_thread(job, run_date, row, ts)
            self._shown[key] = covered

    async def _list_in_thread(self, job: str, run_date: date, row: dict[str, Any], ts: str) -> None:
        """Every breach of the alert, in its thread, once per set of breaches: the message itself shows causes.

        The mark lives in the row's detail, which `sync_alert` rewrites when the breaches change, so a new set is
        listed again and a restart does not list the same set twice."""
        detail = json.loads(row["detail"])
        if row["state"] == "resolved" or detail.get("listed") or len(detail["breaches"]) < 2:
            return
        await self.ctx.notifier.reply(row["channel"], ts, messages.breach_list(
            job, run_date, [_breach(b) for b in detail["breaches"]], kind=self.kind(job)))
        # Only the detail that was listed is marked: a set of breaches that came in meanwhile is listed next time.
        self.store.conn.execute("UPDATE alerts SET detail = json_set(detail, '$.listed', json('true')) "
                                "WHERE id = ? AND detail = ?", (row["id"], row["detail"]))

    async def _resolve(self, job: str, run_date: date, row: dict[str, Any], *, actor: str) -> None:
        self.store.db["alerts"].update(row["id"], {"state": "resolved", "resolved_at": iso(self.ctx.clock())})
        self.ctx.audit(actor=actor, verb="datagen.alert", status="resolved", channel=row["channel"], model=job,
                       version=run_date.isoformat())
        await self._show(job, run_date)

    async def _resolve_older(self, job: str, run_date: date, breaches: list[Breach], reported: Collection[date]) -> None:
        """Resolve the alerts of earlier days that this report clears. A day that still has no record keeps its
        alert: a later day's numbers say nothing about it; but a run that gave no record is cleared by this one."""
        for row in list(self.store.db.query(
                "SELECT * FROM alerts WHERE source = ? AND key LIKE ? AND state != 'resolved'",
                [SOURCE, f"{job}/%"])):
            day = date.fromisoformat(row["key"].rpartition("/")[2])
            alerted = [_breach(b) for b in json.loads(row["detail"])["breaches"]]
            gone = day in reported or all(b.rule_id == messages.RUN_FAILED for b in alerted)
            if day < run_date and gone and cleared(alerted, breaches):
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
        """The day's numbers were expected (a planned change): they are the new normal, so the days after compare
        with it although it breached."""
        self.store.conn.execute("UPDATE datagen_reports SET expected = 1 WHERE job = ? AND run_date = ?",
                                (job, run_date.isoformat()))
        return await self._mark(job, run_date, user, "expected", "datagen.expected")

    async def _mark(self, job: str, run_date: date, user: str, state: str, verb: str,
                    extra: dict[str, Any] | None = None) -> str:
        row = self.alert_row(job, run_date)
        if row is None or job not in self.jobs:
            self.ctx.audit(actor=user, verb=verb, status="refused", model=job, version=run_date.isoformat(),
                           detail={"reason": "no such alert"})
            return f"There is no {self.kind(job)} alert for {job} {run_date}."
        if row["state"] == "resolved":
            self.ctx.audit(actor=user, verb=verb, status="refused", model=job, version=run_date.isoformat(),
                           detail={"reason": "already resolved"})
            return f"The {self.kind(job)} alert for {job} {run_date} is already resolved."
        self.store.db["alerts"].update(row["id"], {"state": state, "acked_by": user})
        self.ctx.audit(actor=user, verb=verb, status="ok", channel=row["channel"], model=job,
                       version=run_date.isoformat(), detail=extra or {})
        await self._show(job, run_date)
        return f"{self.kind(job).capitalize()} alert for {job} {run_date}: {state}."
