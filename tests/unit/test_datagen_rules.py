"""Datagen alert rules: which alerts a month of runs raises, on which days, and which stay silent."""
from __future__ import annotations

import statistics
from datetime import UTC, date, datetime, time, timedelta

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from bot.monitors.datagen import Report, parse_report
from bot.monitors.rules import (
    BoundRule,
    ChangeRule,
    FreshnessRule,
    RecordedChangeRule,
    RuleSet,
    Verdicts,
    backtest,
    biggest_mover,
    default_rules,
    evaluate,
)
from tests.support.datagen_history import EXAMPLES, make_history, real_record

START = date(2026, 10, 1)
DROP = START + timedelta(days=9)      # the feed source keeps 15 % fewer items and events
FAILED = START + timedelta(days=19)
MISSING = START + timedelta(days=24)
DAYS = [START + timedelta(days=i) for i in range(30)]
AFTER_FILTERS = ["stage.feed_source", "stage.client_events", "stage.video_length", "stage.play_duration",
                 "stage.item_age", "stage.item_events", "post_filters", "embedding_join"]


def _parse(records: dict[date, dict]) -> dict[date, Report]:
    return {day: parse_report(record, run_date=day) for day, record in records.items()}


@pytest.fixture(scope="module")
def month() -> dict[date, Report]:
    return _parse(make_history(real_record(), START, 30, drops={DROP: ("feed_source", 15)}, failed={FAILED},
                               missing={MISSING}))


def _due(day: date) -> datetime:
    # 08:30 IST is 03:00 UTC; the run takes about 3.5 h.
    return datetime.combine(day, time(6, 30), UTC)


def _fired(rules, history, day, **kwargs) -> set[str]:
    kwargs.setdefault("now", _due(day) + timedelta(days=1))
    kwargs.setdefault("expected_at", _due(day))
    return {breach.rule_id for breach in evaluate(rules, history, day, **kwargs)}


def test_a_month_raises_exactly_the_teams_alerts_on_the_right_days(month):
    fired = {day: ids for day in DAYS if (ids := _fired(default_rules(), month, day))}

    # The day after the drop and a week after it compare with the last healthy day, not with the drop: the
    # return to normal is quiet.
    assert fired == {
        DROP: {"events_1d", "events_7d", "items_1d", "items_7d", "item_age_bucket_7d"},
        FAILED: {"run_failed"},
        MISSING: {"raw_data_missing"},
    }


def test_the_return_to_normal_compares_with_the_last_healthy_day(month):
    after = [b for b in evaluate([ChangeRule(id="rows", metric="final_rows", warn_pct=0.0001)], month,
                                 DROP + timedelta(days=1))]

    [breach] = after
    assert breach.baseline == month[DROP - timedelta(days=1)].final_rows
    assert f"vs {DROP - timedelta(days=1)}, the last healthy day" in breach.message


def test_a_shift_nobody_marked_expected_alerts_for_the_lookback_then_becomes_the_baseline():
    shift = START + timedelta(days=10)
    history = _parse(make_history(real_record(), START, 20, shifts={shift: ("feed_source", 30)}))
    rule = [ChangeRule(id="feed", metric="stage.feed_source.items", warn_pct=10)]

    fired = [(day - shift).days for day in sorted(history) if _fired(rule, history, day, lookback=3)]

    # Each low day is compared with the last normal one while it is in reach; then no baseline is left (silent),
    # and that silent day is the healthy baseline of the next.
    assert fired == [0, 1, 2]


def test_a_drop_alerts_on_the_stage_and_everything_after_it_not_before(month):
    breaches = [b for b in evaluate(default_rules(), month, DROP) if b.rule_id == "items_1d"]

    assert [b.metric for b in breaches] == [f"{name}.items" for name in AFTER_FILTERS]
    feed = breaches[0]
    assert feed.severity == "warn"
    assert feed.threshold == 10
    assert feed.value == month[DROP].stages["feed_source"].items
    assert feed.baseline == month[DROP - timedelta(days=1)].stages["feed_source"].items
    assert feed.change_pct == pytest.approx(-15, abs=1.5)
    assert feed.message.startswith("stage.feed_source.items fell 1")
    assert "vs the day before" in feed.message


def test_crit_threshold_raises_the_severity(month):
    rule = ChangeRule(id="feed", metric="stage.feed_source.items", warn_pct=5, crit_pct=12)
    later = ChangeRule(id="feed_later", metric="stage.feed_source.items", warn_pct=5, crit_pct=20)

    assert [(b.rule_id, b.severity) for b in evaluate([rule, later], month, DROP)] == [
        ("feed", "crit"), ("feed_later", "warn")]


def test_direction_limits_a_change_rule_to_rises_or_falls(month):
    up = ChangeRule(id="up", metric="final_rows", warn_pct=10, direction="up")
    down = ChangeRule(id="down", metric="final_rows", warn_pct=10, direction="down")
    rise = _parse(make_history(real_record(), START, 30, drops={DROP: ("feed_source", -15)}))

    assert _fired([up, down], month, DROP) == {"down"}
    assert _fired([up, down], rise, DROP) == {"up"}


def test_a_day_marked_expected_still_alerts_itself_and_is_the_new_normal_after_it():
    shift = START + timedelta(days=10)
    history = _parse(make_history(real_record(), START, 30, shifts={shift: ("feed_source", 15)}))
    rules = default_rules()
    funnel = {"events_1d", "events_7d", "items_1d", "items_7d", "item_age_bucket_7d"}

    assert _fired(rules, history, shift, expected={shift}) == funnel
    # Compared with the new normal, never with the days before it: quiet from the next day on, 7-day rules included.
    assert [d for d in DAYS if d > shift and _fired(rules, history, d, expected={shift})] == []
    # Unmarked, the lower numbers are compared with the last normal day for as long as one is in reach.
    assert _fired(rules, history, shift + timedelta(days=1)) == funnel


def test_a_day_after_a_failed_or_missing_day_compares_with_the_day_before_it(month):
    verdicts = Verdicts(default_rules(), month)

    for gap in (FAILED, MISSING):
        assert verdicts.baseline_day(gap + timedelta(days=1), 1) == gap - timedelta(days=1)
        assert verdicts.baseline_day(gap + timedelta(days=7), 7) == gap - timedelta(days=1)
    assert verdicts.baseline_day(DROP + timedelta(days=1), 1) == DROP - timedelta(days=1)


def test_median_of_same_weekdays_shrugs_off_one_bad_week():
    drop = START + timedelta(days=21)
    history = _parse(make_history(real_record(), START, 30, drops={drop: ("feed_source", 15)}))
    median = ChangeRule(id="median", metric="final_rows", baseline="median_same_weekday", weeks=3, warn_pct=10)
    lag = ChangeRule(id="lag_7d", metric="final_rows", baseline="lag_7d", warn_pct=10)

    assert _fired([median, lag], history, drop) == {"median", "lag_7d"}
    assert _fired([median], history, drop + timedelta(days=7)) == set()
    [breach] = evaluate([median], history, drop)
    assert breach.baseline == statistics.median(history[drop - timedelta(weeks=k)].final_rows for k in (1, 2, 3))
    assert f"median of the last 3 {drop:%A}s" in breach.message


def test_a_failed_run_raises_only_the_failure_even_with_numbers_in_it(month):
    failed = real_record() | {"SUCCESS": False, "num_final_rows": 1, "error": "disk full"}
    history = dict(month) | {FAILED: parse_report(failed, run_date=FAILED)}

    breaches = evaluate(default_rules(), history, FAILED)

    assert [(b.rule_id, b.severity) for b in breaches] == [("run_failed", "crit")]
    assert breaches[0].message == f"datagen run for {FAILED} failed: disk full"


def test_raw_data_not_found_only_after_the_grace_period(month):
    rules = default_rules()
    due = _due(MISSING)

    assert _fired(rules, month, MISSING, now=due + timedelta(hours=2, minutes=59)) == set()
    [breach] = evaluate(rules, month, MISSING, now=due + timedelta(hours=3), expected_at=due)
    assert breach.rule_id == "raw_data_missing"
    assert breach.severity == "crit"
    assert breach.message.startswith(f"raw data not found: no datagen report for {MISSING} by")
    assert _fired(rules, month, MISSING, now=None, expected_at=None) == set()


def test_a_late_report_clears_the_missing_data_alert(month):
    late = make_history(real_record(), MISSING, 1, seed=7)
    history = dict(month) | _parse(late)

    assert _fired(default_rules(), history, MISSING, now=_due(MISSING) + timedelta(hours=5)) == set()


def test_new_items_floor_fires_under_three_percent(month):
    record = real_record() | {"new_items_in_index_1d_delta": "20,411 (2.8%)"}
    history = dict(month) | {DROP + timedelta(days=2): parse_report(record, run_date=DROP + timedelta(days=2))}

    breaches = [b for b in evaluate(default_rules(), history, DROP + timedelta(days=2))
                if b.rule_id == "new_items_floor"]

    assert [(b.metric, b.value, b.threshold) for b in breaches] == [("new_items_1d_pct", 2.8, 3)]
    assert breaches[0].message == "new_items_1d_pct is 2.80, below 3"


def test_recorded_bucket_change_uses_the_jobs_own_7_day_field():
    report = parse_report(real_record())
    both = RecordedChangeRule(id="buckets", metric="bucket.*.delta_7d_pct", warn_pct=10, crit_pct=30)
    falls = RecordedChangeRule(id="falls", metric="bucket.*.delta_7d_pct", warn_pct=10, direction="down")

    breaches = evaluate([both, falls], {report.run_date: report}, report.run_date)

    assert [(b.rule_id, b.metric, b.severity) for b in breaches] == [
        ("buckets", "bucket.1_2d.delta_7d_pct", "crit"),
        ("buckets", "bucket.2_4d.delta_7d_pct", "warn"),
        ("buckets", "bucket.7_14d.delta_7d_pct", "warn"),
        ("buckets", "bucket.30_60d.delta_7d_pct", "warn"),
        ("falls", "bucket.7_14d.delta_7d_pct", "warn"),
    ]


def test_a_bucket_filling_up_from_empty_is_caught(month):
    day = DROP + timedelta(days=3)
    record = make_history(real_record(), day, 1, seed=3)[day]
    record["item_age_bucket_formated"]["(90.0, inf]"] = "12,000 (1.6%)"
    history = dict(month) | {day: parse_report(record, run_date=day)}

    [breach] = [b for b in evaluate(default_rules(), history, day) if b.rule_id == "item_age_bucket_7d"]

    assert (breach.metric, breach.value, breach.baseline) == ("bucket.gt_90d.count", 12000, 0)


def test_biggest_mover_points_at_the_stage_that_dropped(month):
    move = biggest_mover(month[DROP], month[DROP - timedelta(days=1)])

    assert move.stage == "feed source"
    assert move.items == month[DROP].stages["feed_source"].items
    assert move.pass_rate_change_pct == pytest.approx(-15, abs=0.5)


def test_backtest_counts_the_days_each_rule_fired(month):
    assert backtest(default_rules(), month, 90) == {
        "events_1d": 1, "events_7d": 1, "items_1d": 1, "items_7d": 1, "item_age_bucket_7d": 1,
        "new_items_floor": 0, "raw_data_missing": 1, "run_failed": 1}
    assert set(backtest(default_rules(), month, 5).values()) == {0}  # the quiet last days


def test_the_example_reports_alert_on_the_drop_and_not_on_the_day_after():
    history = {date.fromisoformat(p.stem): parse_report(p.read_bytes()) for p in EXAMPLES.glob("*.json")}

    fired = {day: ids for day in sorted(history) if (ids := _fired(default_rules(), history, day))}

    assert fired == {date(2026, 11, 18): {"events_1d", "items_1d"}}


def test_example_rules_yaml_is_the_default_rule_set():
    loaded = yaml.safe_load((EXAMPLES / "rules.yaml").read_text())["rules"]

    assert TypeAdapter(RuleSet).validate_python(loaded) == default_rules()


@pytest.mark.parametrize(("rules", "problem"), [
    ([{"id": "a", "kind": "failed"}, {"id": "a", "kind": "freshness"}], "duplicate rule ids: a"),
    ([{"id": "a", "kind": "change", "metric": "final_rows"}], "give warn_pct, crit_pct or both"),
    ([{"id": "a", "kind": "change", "metric": "x", "warn_pct": 20, "crit_pct": 10}], "crit_pct must not be below"),
    ([{"id": "a", "kind": "bound", "metric": "x"}], "give lt, gt or both"),
    ([{"id": "a", "kind": "trend", "metric": "x"}], "does not match any of the expected tags"),
    ([{"id": "a", "kind": "change", "metric": "x", "warn_pct": 10, "baseline": "lag_2d"}], "lag_1d"),
])
def test_bad_rules_are_refused_with_a_reason(rules, problem):
    with pytest.raises(ValidationError, match=problem):
        TypeAdapter(RuleSet).validate_python(rules)


def test_freshness_grace_reads_like_the_run_time():
    rule = TypeAdapter(RuleSet).validate_python([{"id": "late", "kind": "freshness", "grace": "1h:30mins"}])[0]

    assert rule == FreshnessRule(id="late", grace=timedelta(hours=1, minutes=30))


def test_bound_gt_catches_a_slow_run(month):
    day = DROP + timedelta(days=4)
    record = make_history(real_record(), day, 1)[day] | {"datagen_run_time": "6.0h:5mins"}
    history = dict(month) | {day: parse_report(record, run_date=day)}

    [breach] = evaluate([BoundRule(id="slow", metric="runtime_minutes", gt=300, severity="crit")], history, day)

    assert (breach.value, breach.threshold, breach.severity) == (365, 300, "crit")
