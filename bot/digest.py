"""The daily and weekly digests and the App Home dashboard, built from the bot's own records.

The builders are pure: `DigestService` reads rows, the registry and the on-call schedule and hands plain
values to `daily`, `weekly` and `home_view`. A scheduled digest slot is claimed in `job_runs` by the
scheduler, so it is posted once, also across restarts. Sections stay under Slack's 3000 characters; a
digest of more than 50 blocks continues in its own thread (`Notifier.post`).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from bot.config import Role
from bot.context import Context
from bot.datagen.history import due_at
from bot.datagen.report import parse_report
from bot.datagen.service import DatagenService
from bot.notifier import Message
from bot.oncall.schedule import Shift, next_shift, who_is_on_call
from bot.oncall.service import OnCallService
from bot.releases.messages import ReleaseRef, btn, context, section, when
from bot.releases.model import State
from bot.scheduler import Scheduler
from bot.scheduler import daily as daily_trigger
from bot.serving.artifacts import ArtifactError
from bot.serving.registry import Registry, RegistryError
from bot.store import iso

if TYPE_CHECKING:
    from bot.config import DigestSchedule

log = logging.getLogger(__name__)

MAX_SECTION = 3000
UNVERIFIED = (State.STAGED, State.VERIFY_FAILED, State.INTERRUPTED)
# Audit rows that only echo another row (the press before its outcome) or are plumbing, not news.
QUIET_STATUSES = ("accepted",)
QUIET_VERBS = ("help", "datagen.chart", "slack.request")
NOISIEST = 3


@dataclass(frozen=True)
class ModelRow:
    model: str
    env: str
    version: str | None
    state: str | None
    deployed_by: str | None
    approved_by: str | None
    updated_at: datetime | None
    trained_at: datetime | None


@dataclass(frozen=True)
class DatagenStatus:
    job: str
    run_date: date | None  # the newest stored record up to `expected`; None when there is none
    expected: date  # the newest run date whose record is due by now
    failed: bool
    alert: str | None  # the run date's alert state, if it raised one


@dataclass(frozen=True)
class StagedRelease:
    id: int
    model: str
    version: str
    state: str
    deployed_by: str | None
    deployed_at: datetime | None
    verified_at: datetime | None


@dataclass(frozen=True)
class OpenAlert:
    source: str
    key: str
    state: str
    severity: str
    summary: str
    opened_at: datetime


@dataclass(frozen=True)
class OnCall:
    rotation: str
    now: Shift | None
    next: Shift | None


@dataclass(frozen=True)
class DailyFacts:
    now: datetime
    models: list[ModelRow]
    datagen: list[DatagenStatus]
    pending: list[StagedRelease]
    unverified: list[StagedRelease]
    unverified_hours: float
    alerts: list[OpenAlert]
    actions: list[Mapping[str, Any]]


@dataclass(frozen=True)
class WeeklyFacts:
    since: datetime
    until: datetime
    alerts_per_rule: Counter[str]
    deploys: Counter[str]
    promotions: Counter[str]
    rollbacks: Counter[str]
    staging_to_prod: list[timedelta]


# --- pure rules --------------------------------------------------------------------------------------------


def unverified_for(releases: Iterable[StagedRelease], now: datetime, hours: float) -> list[StagedRelease]:
    """Versions sitting on staging unverified (or failed) for longer than `hours`."""
    cutoff = now - timedelta(hours=hours)
    return [r for r in releases if r.state in UNVERIFIED and r.deployed_at is not None and r.deployed_at <= cutoff]


def alert_rules(source: str, detail: Mapping[str, Any]) -> list[str]:
    """The rules an alert row fired for: datagen breaches by rule id, Alertmanager by alertname."""
    if source == "datagen":
        return sorted({f"datagen/{b['rule_id']}" for b in detail.get("breaches", [])})
    return [f"{source}/{detail.get('alertname') or 'unnamed'}"]


def weekly_facts(actions: Iterable[Mapping[str, Any]], alerts: Iterable[Mapping[str, Any]],
                 deployed_at: Mapping[tuple[str, str], datetime], since: datetime, until: datetime) -> WeeklyFacts:
    """Counts over [since, until): alerts opened per rule, deploys / promotions / rollbacks per model, and
    staging → prod times (a version's staging deploy to its successful promotion)."""
    per_rule: Counter[str] = Counter()
    for a in alerts:
        if since <= a["opened_at"] < until:
            per_rule.update(alert_rules(a["source"], a["detail"]))
    deploys, promotions, rollbacks = Counter[str](), Counter[str](), Counter[str]()
    lead_times = []
    for row in actions:
        if row["status"] != "succeeded" or not (since <= row["ts"] < until):
            continue
        if row["verb"] == "deploy":
            deploys[row["model"]] += 1
        elif row["verb"] == "rollback":
            rollbacks[row["model"]] += 1
        elif row["verb"] == "promote":
            promotions[row["model"]] += 1
            staged = deployed_at.get((row["model"], row["version"]))
            if staged is not None and staged <= row["ts"]:
                lead_times.append(row["ts"] - staged)
    return WeeklyFacts(since, until, per_rule, deploys, promotions, rollbacks, lead_times)


def duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return " ".join(f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n) or "under a minute"


# --- Block Kit ---------------------------------------------------------------------------------------------


def sections(title: str, lines: list[str], empty: str) -> list[dict[str, Any]]:
    """`title` and its lines packed into as few sections as fit Slack's 3000 characters each."""
    blocks, text = [], f"*{title}*"
    for line in lines or [f"_{empty}_"]:
        line = line[: MAX_SECTION - len(title) - 8]
        if len(text) + 1 + len(line) > MAX_SECTION:
            blocks.append(section(text))
            text = f"*{title}* (continued)"
        text += "\n" + line
    return [*blocks, section(text)]


def model_line(row: ModelRow) -> str:
    if row.version is None:
        return f"*{row.model}* · {row.env}: not deployed"
    who = f"deployed by <@{row.deployed_by}>" if row.deployed_by else "deployed by —"
    if row.approved_by:
        who += f", unblocked by <@{row.approved_by}>"
    trained = f" · trained {when(row.trained_at)}" if row.trained_at else ""
    return (f"*{row.model}* · {row.env}: `{row.version}` {(row.state or '?').replace('_', ' ')} · {who} "
            f"{when(row.updated_at)}{trained}")


def datagen_line(status: DatagenStatus) -> str:
    if status.run_date is None:
        return f":grey_question: *{status.job}*: no record stored yet"
    late = status.run_date < status.expected
    icon = ":x:" if status.failed else ":warning:" if late or status.alert not in (None, "resolved") else ":white_check_mark:"
    words = "the run failed" if status.failed else "ran"
    line = f"{icon} *{status.job}* {status.run_date}: {words}"
    if status.alert:
        line += f", alert {status.alert}"
    if late:
        line += f"; no record for {status.expected} yet"
    return line


def pending_line(r: StagedRelease) -> str:
    by = f"deployed by <@{r.deployed_by}>" if r.deployed_by else ""
    return f"*{r.model} {r.version}* verified {when(r.verified_at)}, {by}: waiting for an approver to unblock prod"


def unverified_line(r: StagedRelease, now: datetime) -> str:
    since = duration(now - r.deployed_at) if r.deployed_at else "a while"
    who = f"<@{r.deployed_by}>" if r.deployed_by else "whoever deployed it"
    return f"*{r.model} {r.version}* has been on staging for {since} ({State(r.state).words}): {who}, verify it or roll it back"


def alert_line(a: OpenAlert) -> str:
    icon = ":red_circle:" if a.severity in ("crit", "critical", "page") else ":large_orange_circle:"
    summary = a.summary if len(a.summary) <= 200 else a.summary[:199] + "…"
    return f"{icon} {a.source} · {summary} ({a.state}, since {when(a.opened_at)})"


def action_line(row: Mapping[str, Any]) -> str:
    what = " ".join(str(row[k]) for k in ("model", "env", "version") if row.get(k))
    return f"{when(row['ts'])} <@{row['actor']}> {row['verb']} {what} · {row['status']}".replace("  ", " ")


def newsworthy(row: Mapping[str, Any]) -> bool:
    return row["status"] not in QUIET_STATUSES and row["verb"] not in QUIET_VERBS


def daily(facts: DailyFacts) -> Message:
    news = [row for row in facts.actions if newsworthy(row)]
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Daily digest · {facts.now:%a %d %b %Y}"}},
        *sections("Models in service", [model_line(r) for r in facts.models], "no models configured"),
        *sections("Datagen", [datagen_line(s) for s in facts.datagen], "no datagen jobs configured"),
        *sections("Approvals pending", [pending_line(r) for r in facts.pending], "nothing waiting for an approver"),
        *sections(f"On staging unverified for more than {facts.unverified_hours:g} h",
                  [unverified_line(r, facts.now) for r in facts.unverified], "nothing left unverified on staging"),
        *sections("Open alerts", [alert_line(a) for a in facts.alerts], "no open alerts"),
        *sections(f"Last 24 h: {len(news)} actions", [action_line(r) for r in news], "nothing happened"),
    ]
    text = (f"Daily digest: {len(facts.pending)} approvals pending, {len(facts.unverified)} unverified on staging, "
            f"{len(facts.alerts)} open alerts")
    return Message(text=text, blocks=blocks)


def weekly(facts: WeeklyFacts) -> Message:
    models = sorted(set(facts.deploys) | set(facts.promotions) | set(facts.rollbacks))
    per_model = [f"*{m}*: {facts.deploys[m]} deploys to staging, {facts.promotions[m]} to prod, "
                 f"{facts.rollbacks[m]} rollbacks" for m in models]
    rules = [f"{n} × {rule}" for rule, n in facts.alerts_per_rule.most_common()]
    noisiest = ", ".join(f"*{rule}* ({n})" for rule, n in facts.alerts_per_rule.most_common(NOISIEST))
    lead = facts.staging_to_prod
    mean = (f"mean time from staging to prod: *{duration(sum(lead, timedelta()) / len(lead))}* over {len(lead)} releases"
            if lead else "mean time from staging to prod: no release reached prod this week")
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Weekly digest · {facts.since:%d %b} – {facts.until:%d %b %Y}"}},
        section(f"Noisiest alert rules: {noisiest}" if noisiest else "No alerts fired this week."),
        *sections("Alerts per rule", rules, "no alerts"),
        *sections("Releases per model", per_model, "no deploys or rollbacks"),
        section(mean),
    ]
    text = (f"Weekly digest: {sum(facts.alerts_per_rule.values())} alerts, {sum(facts.deploys.values())} deploys, "
            f"{sum(facts.rollbacks.values())} rollbacks")
    return Message(text=text, blocks=blocks)


def oncall_line(o: OnCall) -> str:
    now = f"<@{o.now.user}> until {when(o.now.end)}" if o.now else "nobody"
    following = f"<@{o.next.user}> from {when(o.next.start)}" if o.next else "—"
    return f"*{o.rotation}*: now {now} · next {following}"


def operation_line(op: Mapping[str, Any]) -> str:
    return f":hourglass_flowing_sand: {op['what']} since {when(op['since'])}"


def home_view(*, user: str, now: datetime, models: list[ModelRow], oncall: list[OnCall], alerts: list[OpenAlert],
              approvals: list[StagedRelease], operations: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The App Home of `user`: the model table, on call, open alerts, their approvals and running work."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "MLOps dashboard"}},
        context(f"for <@{user}> · as of {when(now)}"),
        *sections("Models in service", [model_line(r) for r in models], "no models configured"),
        *sections("On call", [oncall_line(o) for o in oncall], "no rotations configured"),
        *sections("Open alerts", [alert_line(a) for a in alerts[:20]]
                  + ([f"and {len(alerts) - 20} more"] if len(alerts) > 20 else []), "no open alerts"),
        {"type": "divider"},
        section("*Waiting for you to unblock*" if approvals else "*Waiting for you to unblock*\n_nothing_"),
    ]
    for r in approvals[:10]:
        blocks.append({**section(pending_line(r)), "accessory": btn("Unblock prod", "release.promote", ReleaseRef(release=r.id), "primary")})
    blocks += sections("Your running operations", [operation_line(op) for op in operations], "none")
    return {"type": "home", "blocks": blocks[:100]}


# --- the service -------------------------------------------------------------------------------------------


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _staged(row: Mapping[str, Any]) -> StagedRelease:
    return StagedRelease(row["id"], row["model"], row["version"], row["state"], row["deployed_by"],
                         _dt(row["deployed_at"]), _dt(row["verified_at"]))


class Releases(Protocol):
    """What the digests read of the release service: the model table and each model's registry."""

    async def status_rows(self) -> list[dict[str, Any]]: ...
    def registry(self, model: str) -> Registry: ...


class Roles(Protocol):
    """Who holds a role (user groups resolved through Slack)."""

    async def has(self, user: str, role: Role) -> bool: ...


class DigestService:
    def __init__(self, ctx: Context, *, scheduler: Scheduler, roles: Roles, releases: Releases, datagen: DatagenService,
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
                                 r["updated_at"], trained))
        return rows

    def datagen(self, now: datetime) -> list[DatagenStatus]:
        statuses = []
        for name, job in self.ctx.config.datagen.jobs.items():
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
            statuses.append(DatagenStatus(name, day, expected, parse_report(row["raw"], run_date=day).failed,
                                          alert["state"] if alert else None))
        return statuses

    def staged(self, states: Iterable[State]) -> list[StagedRelease]:
        states = [s.value for s in states]
        return [_staged(r) for r in self._rows(
            f"SELECT * FROM releases WHERE state IN ({', '.join('?' * len(states))}) "
            "AND coalesce(prod_state, '') NOT IN ('live', 'promoting') ORDER BY id", *states)]

    def open_alerts(self) -> list[OpenAlert]:
        return [OpenAlert(r["source"], r["key"], r["state"], r["severity"], r["summary"], _dt(r["opened_at"]))
                for r in self._rows("SELECT * FROM alerts WHERE state IN ('open', 'acked') ORDER BY id")]

    async def daily_facts(self, now: datetime) -> DailyFacts:
        hours = self.config.unverified_staging_hours
        return DailyFacts(
            now=now, models=await self.models(), datagen=self.datagen(now), pending=self.staged([State.VERIFIED]),
            unverified=unverified_for(self.staged(UNVERIFIED), now, hours), unverified_hours=hours,
            alerts=self.open_alerts(),
            actions=[{**r, "ts": _dt(r["ts"])} for r in self.ctx.store.actions(since=now - timedelta(days=1))
                     if _dt(r["ts"]) <= now],
        )

    def weekly_facts(self, now: datetime) -> WeeklyFacts:
        since = now - timedelta(days=7)
        actions = [{**r, "ts": _dt(r["ts"])} for r in self.ctx.store.actions(since=since)]
        alerts = [{**r, "opened_at": _dt(r["opened_at"]), "detail": json.loads(r["detail"])}
                  for r in self._rows("SELECT * FROM alerts WHERE opened_at >= ?", iso(since))]
        deployed = {(r["model"], r["version"]): _dt(r["deployed_at"])
                    for r in self._rows("SELECT model, version, deployed_at FROM releases WHERE deployed_at IS NOT NULL ORDER BY id")}
        return weekly_facts(actions, alerts, deployed, since, now)

    # -- posting ------------------------------------------------------------------------------------------

    def _channel(self, schedule: DigestSchedule | None) -> str:
        return (schedule.channel if schedule else None) or self.ctx.config.channels.main

    def _posted(self, verb: str, slot: datetime) -> bool:
        return bool(self.ctx.store.query("SELECT 1 FROM actions WHERE verb = ? AND status = 'posted' AND "
                                         "json_extract(detail, '$.slot') = ? LIMIT 1", (verb, iso(slot))))

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
        return [r for r in self.staged([State.VERIFIED])
                if not (four_eyes and r.deployed_by == user) and not self.ctx.config.models[r.model].staging_only]

    def operations_of(self, user: str) -> list[dict[str, Any]]:
        ops = [{"what": f"{r['reason']} on {r['model']} {r['env']}", "since": _dt(r["created_at"])}
               for r in self._rows("SELECT * FROM locks WHERE holder = ? AND kind = 'operation' ORDER BY created_at", user)]
        ops += [{"what": f"retraining {r['model']} ({r['backend']} run {r['run_id']}, {r['state']})", "since": _dt(r["started_at"])}
                for r in self._rows("SELECT * FROM retrain_runs WHERE requested_by = ? AND ended_at IS NULL ORDER BY id", user)]
        return ops

    def oncall(self, now: datetime) -> list[OnCall]:
        found = []
        for rotation in self.ctx.config.oncall.rotations:
            overrides = self._oncall.overrides(rotation)
            found.append(OnCall(rotation.name, who_is_on_call(rotation, now, overrides), next_shift(rotation, now, overrides)))
        return found

    async def home(self, user: str) -> dict[str, Any]:
        now = self.ctx.clock()
        return home_view(user=user, now=now, models=await self.models(), oncall=self.oncall(now),
                         alerts=self.open_alerts(), approvals=await self.approvals_for(user),
                         operations=self.operations_of(user))

    async def publish(self, user: str) -> None:
        await self.ctx.notifier.publish_home(user, await self.home(user))

