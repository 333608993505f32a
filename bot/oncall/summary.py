"""What happened during a shift, from the bot's own records: rows in, a `ShiftSummary` out.

Pure: the service reads the rows and passes them here with the shift's window and the current time.
Events (releases, retrains, alerts fired) count when they happened inside [since, until); standing state
(versions left on staging, pending approvals, locks, alerts still open) is as it is `now`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from bot.oncall.messages import (
    DatagenAlert,
    HeldLock,
    PendingApproval,
    PipelineIncident,
    ReleaseEvent,
    RetrainRun,
    ShiftSummary,
    StagedVersion,
)

Row = Mapping[str, Any]

RELEASE_VERBS = ("deploy", "promote", "rollback")
RETRAIN_OUTCOMES = ("succeeded", "failed")
UNVERIFIED_STATES = ("staged", "verify_failed")
AWAITING_APPROVAL = "verified"


def summarize(
    *,
    actions: Iterable[Row],
    alerts: Iterable[Row],
    releases: Iterable[Row],
    locks: Iterable[Row],
    since: datetime,
    until: datetime,
    now: datetime,
) -> ShiftSummary:
    """`actions` are audit rows, `alerts`, `releases` and `locks` rows of those tables, all as stored."""
    during = [a for a in actions if since <= _at(a["ts"]) < until]
    alerts = list(alerts)  # read once per source
    events: dict[str, list[ReleaseEvent]] = {verb: [] for verb in RELEASE_VERBS}
    for row in during:
        # Only outcomes: a deploy is audited when it starts and again when it ends.
        if row["verb"] in RELEASE_VERBS and row["status"] == "succeeded":
            events[row["verb"]].append(
                ReleaseEvent(row["model"] or "?", row["version"] or "?", row["actor"], _at(row["ts"]), row["env"])
            )
    retrains = [
        RetrainRun(row["model"] or "?", row["status"], _at(row["ts"]), row["version"])
        for row in during
        if row["verb"] == "retrain" and row["status"] in RETRAIN_OUTCOMES
    ]
    datagen = [
        DatagenAlert(row["summary"], _at(row["opened_at"]), still_open=row["resolved_at"] is None)
        for row in alerts
        if row["source"] == "datagen"
        and (since <= _at(row["opened_at"]) < until or row["resolved_at"] is None)
    ]
    retried = {(r["model"], (r["detail"] or {}).get("run")): r["actor"]
               for r in during if r["verb"] == "pipelines.retry" and r["status"] == "ok"}
    pipelines = [
        PipelineIncident(row["summary"], _at(row["opened_at"]), still_open=row["resolved_at"] is None,
                         retried_by=retried.get(tuple(row["key"].split(":", 1))))  # run alerts: "<dag>:<run id>"
        for row in alerts
        if row["source"] == "pipelines"
        and (since <= _at(row["opened_at"]) < until or row["resolved_at"] is None)
    ]
    releases = list(releases)
    return ShiftSummary(
        deploys=events["deploy"],
        promotions=events["promote"],
        rollbacks=events["rollback"],
        retrains=retrains,
        datagen_alerts=datagen,
        pipeline_incidents=pipelines,
        unverified_staging=[
            StagedVersion(r["model"], r["version"], r["deployed_by"] or "?", _at(r["deployed_at"] or r["updated_at"]))
            for r in releases
            if r["state"] in UNVERIFIED_STATES
        ],
        approvals_pending=[
            PendingApproval(r["model"], r["version"], r["deployed_by"] or "?", _at(r["verified_at"] or r["updated_at"]))
            for r in releases
            if r["state"] == AWAITING_APPROVAL
        ],
        locks_held=[
            HeldLock(r["model"], r["env"], r["holder"], r["reason"], _at(r["expires_at"]))
            for r in locks
            if _at(r["expires_at"]) > now
        ],
    )


def _at(stored: str) -> datetime:
    return datetime.fromisoformat(stored)
