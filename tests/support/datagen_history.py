"""Realistic datagen monitoring history, grown from one real record.

Each day is the real record's funnel with small bounded noise: volume within ±1.5 %, each stage's pass
rate within ±0.1 %, each item-age bucket within ±1 %. Day-over-day and week-over-week changes therefore
stay under about 7 %, well below the team's 10 % thresholds, so a test knows exactly which alerts its
injected drops, failures and gaps must raise. Records are rendered in the job's own format (keys, key
order, text such as '7,539 (1.03%)' and '3.0h:21mins'), written independently of the parser so that the
two check each other.

The noise of a day does not depend on which other days are failed or missing: the job's world keeps
turning on those days, only its record is lost.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from bot.monitors.datagen import Report, format_count_pct, format_run_time, parse_report

# The real record lives next to the repository, shared by every checkout of the project.
REAL_RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "datagen" / "2023-09-14.json"  # a copy of shared/fixtures
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "datagen"
_WARMUP_DAYS = 7  # unreported days before `start`, so that the first days have their 1d and 7d deltas


def real_record() -> dict:
    """The real monitoring record of 2023-09-14, as the job wrote it."""
    return json.loads(REAL_RECORD.read_text())


def make_history(
    fixture: Mapping,
    start: date,
    days: int,
    *,
    seed: int = 0,
    drops: Mapping[date, tuple[str, float]] | None = None,
    failed: Set[date] = frozenset(),
    missing: Set[date] = frozenset(),
    shifts: Mapping[date, tuple[str, float]] | None = None,
    bucket_moves: Mapping[date, tuple[str, float]] | None = None,
    new_items_pct: Mapping[date, float] | None = None,
) -> dict[date, dict]:
    """Raw records for `days` days from `start`, keyed by run date.

    `drops` maps a day to (stage, pct): that day the stage keeps pct % fewer items and events, and so does
    everything after it; the stage "raw" scales the raw data itself, and a negative pct is a rise. `shifts` are
    drops that last from their day on. `bucket_moves` maps a day to (bucket label, pct): that bucket grows by
    pct % and the others shrink to make room. `new_items_pct` sets the day's share of new items in the index.
    `failed` days get a record with SUCCESS false and an error; `missing` days none.
    """
    base = parse_report(fixture)
    drops, shifts = drops or {}, shifts or {}
    if unknown := {stage for stage, _ in [*drops.values(), *shifts.values()]} - {"raw", *base.stages}:
        raise ValueError(f"no such stage in the fixture: {', '.join(sorted(unknown))}")
    rng = random.Random(seed)
    world: dict[date, _Day] = {}
    history: dict[date, dict] = {}
    for offset in range(-_WARMUP_DAYS, days):
        day = start + timedelta(days=offset)
        cuts = [drops[day]] if day in drops else []
        cuts += [cut for since, cut in shifts.items() if since <= day]
        world[day] = _simulate(base, day, rng, cuts, (bucket_moves or {}).get(day), (new_items_pct or {}).get(day))
        if offset < 0 or day in missing:
            continue
        history[day] = _failed_record(world[day]) if day in failed else _record(world, day)
    return history


@dataclass(frozen=True)
class _Day:
    """The job's numbers for one day, before rendering. Pairs are (events, items)."""

    start: datetime
    run_time: timedelta
    raw: tuple[int, int]
    stages: dict[str, tuple[int, int]]
    joined: tuple[int, int]
    buckets: dict[str, int]
    new_items_pct: float


def _simulate(base: Report, day: date, rng: random.Random, cuts: list[tuple[str, float]],
              bucket_move: tuple[str, float] | None, new_items_pct: float | None) -> _Day:
    def jitter(spread: float) -> float:
        return 1 + rng.uniform(-spread, spread)

    def kept_at(step: str) -> float:
        return math.prod(1 - pct / 100 for stage, pct in cuts if stage == step)

    kept = kept_at("raw")
    raw = (round(base.raw_events * jitter(0.015) * kept), round(base.raw_items * jitter(0.015) * kept))
    events, items = raw[0] / kept, raw[1] / kept
    before = (base.raw_events, base.raw_items)
    stages = {}
    for name, stage in base.stages.items():
        kept *= kept_at(name)
        # A filter only removes: its pass rate is jittered but never above 1.
        events *= min(1.0, stage.events / before[0] * jitter(0.001))
        items *= min(1.0, stage.items / before[1] * jitter(0.001))
        before = (stage.events, stage.items)
        stages[name] = (round(events * kept), round(items * kept))
    last = stages[name]
    joined = (round(last[0] * min(1.0, base.embedding_join_events / before[0] * jitter(0.0001))),
              round(last[1] * min(1.0, base.embedding_join_items / before[1] * jitter(0.0001))))
    weights = {label: share.count * jitter(0.01) for label, share in base.buckets.items()}
    if bucket_move is not None:
        weights[bucket_move[0]] *= 1 + bucket_move[1] / 100
    total = sum(weights.values())
    buckets = {label: int(joined[1] * weight / total) for label, weight in weights.items()}
    buckets[max(buckets, key=buckets.__getitem__)] += joined[1] - sum(buckets.values())  # they sum to the index
    start = datetime.combine(day, base.start_time.time()) + timedelta(seconds=round(rng.uniform(-300, 300)))
    run_time = base.run_time + timedelta(minutes=round(rng.uniform(-10, 10)))
    new_items = base.new_items_1d.pct + rng.uniform(-0.2, 0.2)  # drawn every day: the days after keep their noise
    return _Day(start=start, run_time=run_time, raw=raw, stages=stages, joined=joined, buckets=buckets,
                new_items_pct=new_items if new_items_pct is None else new_items_pct)


def _record(world: Mapping[date, _Day], day: date) -> dict:
    today, yesterday, week_ago = world[day], world[day - timedelta(days=1)], world[day - timedelta(days=7)]
    raw_events, raw_items = today.raw
    record: dict = {"datagen_start_time": _job_time(today.start), "num_raw_events": raw_events,
                    "num_raw_items": raw_items}
    previous_items = raw_items
    for name, (events, items) in today.stages.items():
        record[f"num_events_post_filter_{name}"] = events
        record[f"num_items_post_filter_{name}"] = items
        record[f"item_loss_percentage_{name}"] = round((previous_items - items) / raw_items * 100, 4)
        previous_items = items
    filtered_events, filtered_items = list(today.stages.values())[-1]
    joined_events, joined_items = today.joined
    new_items = round(joined_items * today.new_items_pct / 100)
    record |= {
        "num_events_post_filters": filtered_events,
        "num_unique_items_post_filters": filtered_items,
        "num_items_post_embed_join": joined_items,
        "item_loss_post_embedding_join": round((filtered_items - joined_items) / filtered_items * 100, 4),
        "num_events_post_embedding_join": joined_events,
        "num_final_rows": joined_events,
        "item_age_bucket_formated": {
            label: format_count_pct(count, count / joined_items * 100) for label, count in today.buckets.items()
        },
        "item_age_buckets_delta_7d": {
            label: _delta(count, week_ago.buckets[label]) for label, count in today.buckets.items()
        },
        "new_items_in_index_1d_delta": format_count_pct(new_items, new_items / joined_items * 100),
        "common_items_in_index_1d_delta": format_count_pct(
            joined_items - new_items, (joined_items - new_items) / joined_items * 100),
        "item_diff_1d_delta": _delta(filtered_items, list(yesterday.stages.values())[-1][1]),
        "item_diff_7d_delta": _delta(filtered_items, list(week_ago.stages.values())[-1][1]),
        "datagen_run_time": format_run_time(today.run_time),
        "datagen_end_time": _job_time(today.start + today.run_time),
        "SUCCESS": True,
    }
    return record


def _failed_record(today: _Day) -> dict:
    # The job dies in the embedding join and writes only what it knows at that point.
    return {
        "datagen_start_time": _job_time(today.start),
        "num_raw_events": today.raw[0],
        "num_raw_items": today.raw[1],
        "datagen_run_time": format_run_time(timedelta(minutes=47)),
        "datagen_end_time": _job_time(today.start + timedelta(minutes=47)),
        "error": "Py4JJavaError: Job aborted due to stage failure: ExecutorLostFailure "
                 "(executor 12 exited caused by one of the running tasks) in stage join_embeddings",
        "SUCCESS": False,
    }


def _delta(now: int, then: int) -> str:
    return format_count_pct(now - then, (now - then) / then * 100 if then else 0.0, signed=True)


def _job_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d::%H:%M:%S")
