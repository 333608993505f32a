"""Benchmark: 40 datagen rules evaluated for every day of a year of history (target: <= 50 ms in all).

Run from the repository root: python -m bench.datagen_rules
"""
from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

from bot.monitors.datagen import parse_report
from bot.monitors.rules import BoundRule, ChangeRule, RecordedChangeRule, Rule, default_rules, evaluate
from tests.support.datagen_history import make_history, real_record

DAYS = 365
START = date(2025, 11, 22)


def forty_rules(stages: list[str]) -> list[Rule]:
    """The team's 8 defaults plus 32 finer rules of the kind a team adds once the defaults are tuned."""
    rules: list[Rule] = list(default_rules())
    for stage in stages:
        for what in ("events", "items"):
            rules.append(ChangeRule(id=f"{stage}_{what}_weekday", metric=f"stage.{stage}.{what}",
                                    baseline="median_same_weekday", weeks=4, warn_pct=8, crit_pct=20))
        rules.append(BoundRule(id=f"{stage}_loss", metric=f"stage.{stage}.item_loss_pct", gt=60, severity="warn"))
    rules += [
        RecordedChangeRule(id="bucket_recorded_7d", metric="bucket.*.delta_7d_pct", warn_pct=10, crit_pct=30),
        RecordedChangeRule(id="items_recorded_1d", metric="items_diff_1d_pct", warn_pct=10),
        RecordedChangeRule(id="items_recorded_7d", metric="items_diff_7d_pct", warn_pct=10),
        ChangeRule(id="final_rows_crit", metric="final_rows", baseline="lag_1d", crit_pct=30),
        ChangeRule(id="shares_7d", metric="bucket.*.share_pct", baseline="lag_7d", warn_pct=15),
        BoundRule(id="embedding_loss", metric="embedding_join.item_loss_pct", gt=1),
        BoundRule(id="slow_run", metric="runtime_minutes", gt=300, severity="crit"),
        BoundRule(id="new_items_crit", metric="new_items_1d_pct", lt=1, severity="crit"),
        BoundRule(id="raw_events_floor", metric="raw.events", lt=5e8),
        ChangeRule(id="runtime_weekday", metric="runtime_minutes", baseline="median_same_weekday", warn_pct=25),
        ChangeRule(id="raw_items_7d", metric="raw.items", baseline="lag_7d", warn_pct=10),
    ]
    return rules


def main() -> None:
    drops = {START + timedelta(days=d): ("feed_source", 15) for d in (40, 200)}
    records = make_history(real_record(), START, DAYS, drops=drops, failed={START + timedelta(days=100)},
                           missing={START + timedelta(days=300)})
    started = time.perf_counter()
    history = {day: parse_report(record, run_date=day) for day, record in records.items()}
    parse_s = time.perf_counter() - started
    rules = forty_rules(list(history[START].stages))
    assert len(rules) == 40
    days = [START + timedelta(days=i) for i in range(DAYS)]

    for label in ("first pass (builds each report's metrics)", "second pass"):
        started = time.perf_counter()
        breaches = 0
        for day in days:
            due = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=6)
            breaches += len(evaluate(rules, history, day, now=due + timedelta(days=1), expected_at=due))
        total = time.perf_counter() - started
        print(f"{label}: {len(rules)} rules x {DAYS} days: {total * 1000:.1f} ms total, "
              f"{total / DAYS * 1e6:.0f} us per day, {breaches} breaches")
    print(f"parsing {len(history)} reports: {parse_s * 1000:.1f} ms ({parse_s / len(history) * 1e6:.0f} us each)")


if __name__ == "__main__":
    main()
