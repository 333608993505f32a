"""The daily and weekly digests and the App Home dashboard, built from the bot's own records.

`DigestService` reads rows, the registry and the on-call schedule and hands plain values (`facts`) to the
pure builders in `messages`. A scheduled digest slot is claimed in `job_runs` by the scheduler, so it is
posted once, also across restarts.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from bot.context import Context
from bot.digest.facts import (
    UNVERIFIED,
    DailyFacts,
    DatagenStatus,
    ModelRow,
    OnCall,
    OpenAlert,
    StagedRelease,
    TrainRow,
    WeeklyFacts,
    unverified_for,
    weekly_facts,
)
from bot.digest.messages import daily, home_view, weekly
from bot.monitors.history import due_at, parser_of
from bot.monitors.service import DatagenService
from bot.oncall.schedule import next_shift, who_is_on_call
from bot.oncall.service import OnCallService
from bot.releases.model import State
from bot.releases.queue import on_the_tracks
from bot.releases.records import release_of
from bot.roles import RoleDirectory
from bot.scheduler import Scheduler
from bot.scheduler import daily as daily_trigger
from bot.serving.artifacts import ArtifactError
from bot.serving.registry import Registry, RegistryError
from bot.store import iso

if TYPE_CHECKING:
    from bot.config import DigestSchedule

log = logging.getLogger(__name__)

# --- reading the records -------------------------------------------------------------------------------------------


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _staged(row: Mapping[str, Any]) -> StagedRelease:
    return StagedRelease(row["id"], row["model"], row["version"], row["state"], row["deployed_by"],
                         _dt(row["deployed_at"]), _dt(row["verified_at"]))


class Releases(Protocol):
    """What the digests read of the release service: the model table and each model's registry."""

    async def status_rows(self) -> list[dict[str, Any]]: ...
    def registry(self, model: str) -> Registry: ...
    def queued(self, model: str) -> list[dict[str, Any]]: ...


class DigestService:
    def __init__(self, ctx: Context, *, scheduler: Scheduler, roles: RoleDirectory, releases: Releases, datagen: DatagenService,
                 oncall: OnCallService):
        self.ctx = ctx
        self.roles = roles
        self.releases = releases
        self._datagen = datagen
        self._oncall = oncall
        self.config = ctx.config.digests
        schedules: dict[str, tuple[DigestSchedule | None, Any]] = {
            "digest.daily": (self.config.daily, self.post_daily), "digest.weekly": (self.config.weekly, self.post_weekly)}
        for job_id, (schedule, post) in schedules.items():
            if schedule is not None:
                # Resumable: a post cut short by a crash runs again at start, and _posted() keeps it from doubling.
                scheduler.add(job_id, daily_trigger(schedule.at, schedule.tz, schedule.weekday), post, resumable=True)

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self.ctx.store.db.query(sql, params)]

    # -- reading the records ------------------------------------------------------------------------------

    async def _trained_at(self, model: str, version: str) -> datetime | None:
        try:
            return (await self.releases.registry(model).metadata(model, version)).created_at
        except (RegistryError, ArtifactError, ValueError) as exc:
            log.info("no training time for %s %s: %s", model, version, exc)
            return None

    async def models(self) -> list[ModelRow]:
        rows = []
        for r in await self.releases.status_rows():
            trained = await self._trained_at(r["model"], r["version"]) if r["version"] else None
            rows.append(ModelRow(r["model"], r["env"], r["version"], r["state"], r["deployed_by"], r["approved_by"],
                                 r["updated_at"], trained, r["lock"], tuple(r["drift"])))
        return rows

    def datagen(self, now: datetime) -> list[DatagenStatus]:
        """The newest run of every monitor, the datagen jobs first."""
        statuses = []
        for name, job in self._datagen.jobs.items():
            expected = now.astimezone(ZoneInfo(job.tz)).date()
            if due_at(job, expected) > now:
                expected -= timedelta(days=1)
            row = next(iter(self._rows("SELECT run_date, raw FROM datagen_reports WHERE job = ? AND run_date <= ? "
                                       "ORDER BY run_date DESC LIMIT 1", name, expected.isoformat())), None)
            if row is None:
                statuses.append(DatagenStatus(name, None, expected, False, None))
                continue
            day = date.fromisoformat(row["run_date"])
            alert = self._datagen.alert_row(name, day)
            statuses.append(DatagenStatus(name, day, expected, parser_of(job)(row["raw"], run_date=day).failed,
                                          alert["state"] if alert else None))
        return statuses

    def staged(self, states: Iterable[State]) -> list[StagedRelease]:
        states = [s.value for s in states]
        return [_staged(r) for r in self._rows(
            f"SELECT * FROM releases WHERE state IN ({', '.join('?' * len(states))}) "
            "AND coalesce(prod_state, '') NOT IN ('live', 'promoting') ORDER BY id", *states)]

    def trains(self) -> list[TrainRow]:
        """Every release between staging and prod, with its engineer (who deployed it: the author, for the train's
        own deploys) and the registry versions queued behind it."""
        found = []
        for release in map(release_of, self._rows(
                "SELECT * FROM releases WHERE state IN ('deploying', 'staged', 'verifying', 'verified') "
                "OR prod_state IN ('promoting', 'canary') ORDER BY id")):
            if not on_the_tracks(release):
                continue
            waiting = tuple(r["version"] for r in self.releases.queued(release.model))
            found.append(TrainRow(release.deployed_by, release.model, release.version,
                                  (release.prod_state or release.state).words, release.deployed_at, waiting))
        return found

    def open_alerts(self) -> list[OpenAlert]:
        return [OpenAlert(r["source"], r["key"], r["state"], r["severity"], r["summary"], _dt(r["opened_at"]))
                for r in self._rows("SELECT * FROM alerts WHERE state IN ('open', 'acked', 'retrying') ORDER BY id")]

    async def daily_facts(self, now: datetime) -> DailyFacts:
        hours = self.config.unverified_staging_hours
        return DailyFacts(
            now=now, models=await self.models(), datagen=self.datagen(now), pending=self.staged([State.VERIFIED]),
            unverified=unverified_for(self.staged(UNVERIFIED), now, hours), unverified_hours=hours,
            alerts=self.open_alerts(), trains=self.trains(),
            actions=[{**r, "ts": _dt(r["ts"])} for r in self.ctx.store.actions(since=now - timedelta(days=1))
                     if _dt(r["ts"]) <= now],
        )

    def weekly_facts(self, now: datetime) -> WeeklyFacts:
        since = now - timedelta(days=7)
        actions = [{**r, "ts": _dt(r["ts"])} for r in self.ctx.store.actions(since=since)]
        alerts = [{**r, "opened_at": _dt(r["opened_at"]), "detail": json.loads(r["detail"])}
                  for r in self._rows("SELECT * FROM alerts WHERE opened_at >= ?", iso(since))]
        rows = self._rows("SELECT model, version, deployed_at FROM releases WHERE deployed_at IS NOT NULL ORDER BY id")
        deployed = {(r["model"], r["version"]): _dt(r["deployed_at"]) for r in rows}
        return weekly_facts(actions, alerts, deployed, since, now)

    # -- posting ------------------------------------------------------------------------------------------

    def _channel(self, schedule: DigestSchedule | None) -> str:
        return (schedule.channel if schedule else None) or self.ctx.config.channels.main

    def _posted(self, verb: str, slot: datetime) -> bool:
        return bool(
            self.ctx.store.query(
                "SELECT 1 FROM actions WHERE verb = ? AND status = 'posted' AND json_extract(detail, '$.slot') = ? LIMIT 1",
                (verb, iso(slot)),
            )
        )

    async def post_daily(self, slot: datetime) -> str | None:
        if self._posted("digest.daily", slot):
            return None
        channel = self._channel(self.config.daily)
        ts = await self.ctx.notifier.post(channel, daily(await self.daily_facts(slot)))
        self.ctx.audit(actor="mlops-bot", verb="digest.daily", status="posted", channel=channel, detail={"slot": iso(slot)})
        return ts

    async def post_weekly(self, slot: datetime) -> str | None:
        if self._posted("digest.weekly", slot):
            return None
        channel = self._channel(self.config.weekly)
        ts = await self.ctx.notifier.post(channel, weekly(self.weekly_facts(slot)))
        self.ctx.audit(actor="mlops-bot", verb="digest.weekly", status="posted", channel=channel, detail={"slot": iso(slot)})
        return ts

    # -- App Home -----------------------------------------------------------------------------------------

    async def approvals_for(self, user: str) -> list[StagedRelease]:
        """Verified releases `user` may unblock: an approver, not their own deploy under four-eyes."""
        if not await self.roles.has(user, "approvers"):
            return []
        four_eyes = self.ctx.config.deploy.four_eyes
        return [
            r
            for r in self.staged([State.VERIFIED])
            if not (four_eyes and r.deployed_by == user) and not self.ctx.config.models[r.model].staging_only
        ]

    def operations_of(self, user: str) -> list[dict[str, Any]]:
        ops = [
            {"what": f"{r['reason']} on {r['model']} {r['env']}", "since": _dt(r["created_at"])}
            for r in self._rows("SELECT * FROM locks WHERE holder = ? AND kind = 'operation' ORDER BY created_at", user)
        ]
        ops += [
            {"what": f"retraining {r['model']} ({r['backend']} run {r['run_id']}, {r['state']})", "since": _dt(r["started_at"])}
            for r in self._rows("SELECT * FROM retrain_runs WHERE requested_by = ? AND ended_at IS NULL ORDER BY id", user)
        ]
        return ops

    def oncall(self, now: datetime) -> list[OnCall]:
        found = []
        for rotation in self.ctx.config.oncall.rotations:
            overrides = self._oncall.overrides(rotation)
            found.append(OnCall(rotation.name, who_is_on_call(rotation, now, overrides), next_shift(rotation, now, overrides)))
        return found

    async def home(self, user: str, page: int = 0) -> dict[str, Any]:
        now = self.ctx.clock()
        return home_view(
            user=user,
            now=now,
            models=await self.models(),
            oncall=self.oncall(now),
            alerts=self.open_alerts(),
            approvals=await self.approvals_for(user),
            operations=self.operations_of(user),
            trains=self.trains(),
            page=page,
        )

    async def publish(self, user: str, page: int = 0) -> None:
        await self.ctx.notifier.publish_home(user, await self.home(user, page))
