"""What the digests and the App Home report, as plain values, and the pure rules that count them."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from bot.oncall.schedule import Shift
from bot.releases.model import State

UNVERIFIED = (State.STAGED, State.VERIFY_FAILED, State.INTERRUPTED)


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
    lock: Any = None  # the releases' Lock in force, if any
    drift: tuple[str, ...] = ()  # where the endpoints serve something other than the record


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
class TrainRow:
    """A release between staging and prod, with who drives it (its train engineer) and what waits behind it."""

    engineer: str | None
    model: str
    version: str
    state: str  # as people read it
    since: datetime | None
    waiting: tuple[str, ...] = ()


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
    trains: list[TrainRow] = field(default_factory=list)


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


def by_engineer(trains: Iterable[TrainRow]) -> list[tuple[str | None, list[TrainRow]]]:
    """The trains grouped by their engineer, engineers in name order, each one's trains oldest first."""
    grouped: dict[str | None, list[TrainRow]] = {}
    for train in trains:
        grouped.setdefault(train.engineer, []).append(train)
    return sorted(grouped.items(), key=lambda item: item[0] or "")


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
