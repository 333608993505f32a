"""What the store keeps of a canary: its plan (which endpoints serve what, for how long), the counters at its
start, every step's measurements and verdict, and how it ended. A person's decision (Promote to all, Abort) is
taken by compare-and-set, so of two presses only the first decides."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.releases.canary.judge import Group, Step, Verdict
from bot.releases.records import parse_dt
from bot.serving.triton_metrics import Counters
from bot.store import Store, iso

RUNNING = "running"  # loading, analysing, or waiting for a person's decision
ENDED = ("promoted", "promote_failed", "aborted")


@dataclass(frozen=True)
class Canary:
    id: int
    release_id: int
    model: str
    baseline_release_id: int
    canary_endpoints: list[str]
    baseline_endpoints: list[str]
    percent: float
    interval_s: float
    duration_s: float
    started_by: str
    started_at: datetime
    start_counters: dict[str, Counters] | None
    state: str
    decision: str | None
    decided_by: str | None
    outcome: str | None

    @property
    def ends_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration_s)

    @property
    def steps_planned(self) -> int:
        return max(1, -int(-self.duration_s // self.interval_s))

    def step_due(self, step: int) -> datetime:
        """When step `step` (from 1) runs: every interval, the last one at the end of the window."""
        return min(self.started_at + timedelta(seconds=step * self.interval_s), self.ends_at)


@dataclass(frozen=True)
class StoredStep:
    step: int
    at: datetime
    verdict: Verdict
    canary: Group
    baseline: Group
    reasons: list[str]


def _canary_of(row: dict[str, Any]) -> Canary:
    counters = json.loads(row["start_counters"]) if row["start_counters"] else None
    return Canary(
        id=row["id"], release_id=row["release_id"], model=row["model"], baseline_release_id=row["baseline_release_id"],
        canary_endpoints=json.loads(row["canary_endpoints"]), baseline_endpoints=json.loads(row["baseline_endpoints"]),
        percent=row["percent"], interval_s=row["interval_s"], duration_s=row["duration_s"], started_by=row["started_by"],
        started_at=parse_dt(row["started_at"]),
        start_counters={e: Counters(**c) for e, c in counters.items()} if counters is not None else None,
        state=row["state"], decision=row["decision"], decided_by=row["decided_by"], outcome=row["outcome"],
    )


class Runs:
    def __init__(self, store: Store):
        self.store = store

    def insert(self, *, release_id: int, model: str, baseline_release_id: int, canary_endpoints: list[str],
               baseline_endpoints: list[str], percent: float, interval_s: float, duration_s: float, started_by: str,
               started_at: datetime) -> Canary:
        cid = self.store.conn.execute(
            "INSERT INTO canaries (release_id, model, baseline_release_id, canary_endpoints, baseline_endpoints, percent, "
            "interval_s, duration_s, started_by, started_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (release_id, model, baseline_release_id, json.dumps(canary_endpoints), json.dumps(baseline_endpoints), percent,
             interval_s, duration_s, started_by, iso(started_at), RUNNING)).lastrowid
        return self.get(cid)

    def get(self, cid: int) -> Canary:
        return _canary_of(self.store.query("SELECT * FROM canaries WHERE id = ?", (cid,))[0])

    def latest(self, model: str) -> Canary | None:
        rows = self.store.query("SELECT * FROM canaries WHERE model = ? ORDER BY id DESC LIMIT 1", (model,))
        return _canary_of(rows[0]) if rows else None

    def running(self) -> list[Canary]:
        return [_canary_of(r) for r in self.store.query("SELECT * FROM canaries WHERE state = ? ORDER BY id", (RUNNING,))]

    def of_release(self, release_id: int) -> Canary | None:
        rows = self.store.query("SELECT * FROM canaries WHERE release_id = ? ORDER BY id DESC LIMIT 1", (release_id,))
        return _canary_of(rows[0]) if rows else None

    def started(self, cid: int, counters: dict[str, Counters], at: datetime) -> Canary:
        """The counters the analysis measures from, and its clock, once the canary endpoints serve the version."""
        self.store.conn.execute("UPDATE canaries SET start_counters = ?, started_at = ? WHERE id = ?",
                                (json.dumps({e: asdict(c) for e, c in counters.items()}), iso(at), cid))
        return self.get(cid)

    def decide(self, cid: int, decision: str, actor: str, at: datetime) -> bool:
        """Take the decision if none is taken yet: True for the first, False for every later one."""
        cursor = self.store.conn.execute(
            "UPDATE canaries SET decision = ?, decided_by = ?, decided_at = ? WHERE id = ? AND state = ? AND decision IS NULL",
            (decision, actor, iso(at), cid, RUNNING))
        return cursor.rowcount == 1

    def end(self, cid: int, state: str, outcome: str, at: datetime) -> None:
        assert state in ENDED
        self.store.conn.execute("UPDATE canaries SET state = ?, outcome = ?, ended_at = ? WHERE id = ?",
                                (state, outcome, iso(at), cid))

    def add_step(self, cid: int, number: int, at: datetime, step: Step, endpoints: dict[str, Counters | str]) -> None:
        self.store.conn.execute(
            "INSERT OR REPLACE INTO canary_steps (canary_id, step, at, verdict, canary, baseline, reasons, endpoints) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, number, iso(at), step.verdict.value, json.dumps(asdict(step.canary)), json.dumps(asdict(step.baseline)),
             json.dumps(list(step.reasons)),
             json.dumps({e: asdict(c) if isinstance(c, Counters) else c for e, c in endpoints.items()})))

    def steps(self, cid: int) -> list[StoredStep]:
        return [StoredStep(step=r["step"], at=parse_dt(r["at"]), verdict=Verdict(r["verdict"]),
                           canary=Group(**json.loads(r["canary"])), baseline=Group(**json.loads(r["baseline"])),
                           reasons=json.loads(r["reasons"]))
                for r in self.store.query("SELECT * FROM canary_steps WHERE canary_id = ? ORDER BY step", (cid,))]
