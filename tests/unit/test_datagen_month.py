"""A month with planted trouble, as the channel would read it: one alert per cause, led by the cause and a few
lines long; no alert for the return to normal; a missing day noticed; quiet days quiet."""
from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.monitors import messages
from bot.monitors.causes import group
from bot.monitors.datagen import Report, parse_report
from bot.monitors.history import gap_before, unreported
from bot.monitors.rules import Breach, FreshnessRule, Verdicts, biggest_mover, default_rules, evaluate
from bot.notifier import Message
from tests.support.datagen_history import make_history, real_record
from tests.support.datagen_month import (
    BUCKET,
    FAILED,
    FEED_DROP,
    FEW_NEW,
    MISSING,
    MONTH,
    NEW_NORMAL,
    PLANTED,
    RAW_SPIKE,
    START,
    planted_month,
)

EXPECTED = {NEW_NORMAL.day}  # someone pressed "Mark expected" on the planned change


def _due(day: date) -> datetime:
    return datetime.combine(day, time(6, 30), UTC)  # 08:30 IST plus the run, in UTC


@pytest.fixture(scope="module")
def month() -> dict[date, Report]:
    return {day: parse_report(record, run_date=day) for day, record in planted_month().items()}


def _alerts(history: dict[date, Report], expected=EXPECTED) -> dict[date, list[Breach]]:
    """What each day would alert, in hindsight: every deadline passed, so a missing day is overdue."""
    verdicts = Verdicts(default_rules(), history, expected=expected)
    found = {}
    for day in MONTH:
        breaches = verdicts.of(day) if day in history else evaluate(
            default_rules(), history, day, now=_due(day) + timedelta(days=1), expected_at=_due(day))
        if breaches:
            found[day] = breaches
    return found


def _message(history: dict[date, Report], day: date, breaches: list[Breach]) -> Message:
    verdicts = Verdicts(default_rules(), history, expected=EXPECTED)
    before = verdicts.baseline_day(day, 1) if day in history else None
    mover = None if before is None or history[day].failed else biggest_mover(history[day], history[before])
    return messages.alert("recsys", day, breaches, mover=mover)


def _lines(message: Message) -> list[str]:
    """Every line a reader sees, buttons aside."""
    texts = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    texts += [e["text"] for b in message.blocks if b["type"] == "context" for e in b["elements"]]
    return "\n".join(texts).splitlines()


def test_each_planted_cause_alerts_on_its_day_only_and_everything_else_is_quiet(month):
    fired = {day: {b.rule_id for b in breaches} for day, breaches in _alerts(month).items()}

    assert fired == {t.day: t.rules for t in PLANTED}
    for trouble in PLANTED:  # its recovery and the day it is the 7-day baseline of stay silent
        assert trouble.day + timedelta(days=1) not in fired
        assert trouble.day + timedelta(days=7) not in fired


@pytest.mark.parametrize("trouble", PLANTED, ids=lambda t: t.planted)
def test_an_alert_leads_with_its_cause_in_at_most_eight_lines_and_hides_nothing(month, trouble):
    breaches = _alerts(month)[trouble.day]
    message = _message(month, trouble.day, breaches)
    lines = _lines(message)

    assert lines[0].startswith(f":rotating_light: datagen *recsys* {trouble.day}: {trouble.lead}"), lines[0]
    assert len(lines) <= 8, lines
    # What the lines do not show one by one is counted, and the full list is one thread reply away.
    listed = "\n".join(_lines(messages.breach_list("recsys", trouble.day, breaches)))
    if len(breaches) > len(lines) - 1:
        assert f"{messages.breaches_count(len(breaches))} from " in lines[-1]
        assert f"in the thread and under `/mlops datagen {trouble.day}`" in lines[-1]
    for breach in breaches:
        assert messages.breach_line(breach) in listed


def test_a_drop_reads_as_one_line_per_rule_with_the_stages_after_it_folded(month):
    lines = _lines(_message(month, FEED_DROP.day, _alerts(month)[FEED_DROP.day]))

    assert lines[0].endswith("; 7 downstream stages follow")
    rules = [line.split("*")[1] for line in lines[1:6]]
    assert rules == ["events_1d", "events_7d", "items_1d", "items_7d", "item_age_bucket_7d"]
    assert "stage.feed_source.items fell 40." in lines[3] and lines[3].endswith("7 downstream stages follow")
    assert lines[5].endswith("more buckets moved alike")
    assert lines[6].startswith(":mag: Biggest mover: *feed source*")  # it explains the cause: shown


def test_the_raw_data_spike_is_caused_at_raw_with_every_stage_following(month):
    lines = _lines(_message(month, RAW_SPIKE.day, _alerts(month)[RAW_SPIKE.day]))

    assert "raw.events rose 2" in lines[1] and lines[1].endswith("9 downstream stages follow")
    assert any(line.startswith(":mag: Biggest mover: *raw*") for line in lines)


@pytest.mark.parametrize("trouble", [BUCKET, FEW_NEW, FAILED], ids=lambda t: t.planted)
def test_the_biggest_mover_is_left_out_where_it_explains_nothing(month, trouble):
    text = "\n".join(_lines(_message(month, trouble.day, _alerts(month)[trouble.day])))

    assert "Biggest mover" not in text


def test_unmarked_the_planned_change_alerts_until_no_old_day_is_in_reach(month):
    fired = sorted(day for day in _alerts(month, expected=set()) if day > NEW_NORMAL.day)

    assert fired == [day for day in MONTH if day > NEW_NORMAL.day]  # the old level stays in reach for a week


def test_a_missing_day_is_noticed_when_the_next_record_arrives(month):
    arrived = MISSING.day + timedelta(days=1)
    reported = {day for day in month if day <= arrived}

    assert gap_before(reported, arrived, 7) == [MISSING.day]
    [breach] = evaluate(default_rules(), month, MISSING.day, now=_due(arrived), expected_at=_due(MISSING.day),
                        grace=timedelta(hours=1))
    assert breach.rule_id == "raw_data_missing"
    deadline = _due(MISSING.day) + timedelta(hours=1)
    assert breach.message == (
        f"raw data not found: no datagen report for {MISSING.day} by "
        f"<!date^{int(deadline.timestamp())}^{{date_short_pretty}} {{time}}|{deadline:%Y-%m-%d %H:%M} UTC> "
        f"(due <!date^{int(_due(MISSING.day).timestamp())}^{{date_short_pretty}} {{time}}|"
        f"{_due(MISSING.day):%Y-%m-%d %H:%M} UTC>, grace 1h)")
    assert breach.message in messages.cause_line(group([breach], 5)[0])
    summary = messages.summary("recsys", month[arrived], None, None, usual_runtime=None, breaches=0,
                               missing=[MISSING.day])
    assert f"no record for {MISSING.day}" in json.dumps(summary.blocks)


def test_a_restart_after_the_deadlines_finds_every_day_missed_while_down(month):
    down_from = MISSING.day - timedelta(days=2)  # the bot stopped; records went on being written but unseen
    seen = {day: report for day, report in month.items() if day < down_from}
    restart = _due(MISSING.day + timedelta(days=1)) + timedelta(hours=4)

    missed = unreported(seen, restart.date(), 7)
    overdue = [day for day in missed if evaluate(default_rules(), seen, day, now=restart, expected_at=_due(day))]

    assert overdue == [down_from + timedelta(days=k) for k in range(4)]
    assert unreported(month, restart.date(), 7) == [MISSING.day]  # with the records read, only the real gap


def test_no_gap_is_seen_before_the_first_record(month):
    assert gap_before({START}, START, 7) == [] and unreported({START}, START + timedelta(days=2), 7) == [
        START + timedelta(days=1), START + timedelta(days=2)]


def test_the_rules_grace_wins_over_the_jobs_and_the_alert_says_which_it_waited(month):
    rules = [FreshnessRule(id="late", grace=timedelta(hours=2))]

    [breach] = evaluate(rules, month, MISSING.day, now=_due(MISSING.day) + timedelta(hours=2),
                        expected_at=_due(MISSING.day), grace=timedelta(hours=1))
    assert evaluate(rules, month, MISSING.day, now=_due(MISSING.day) + timedelta(hours=1, minutes=59),
                    expected_at=_due(MISSING.day), grace=timedelta(hours=1)) == []
    assert breach.message.endswith("grace 2h)")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), stage=st.sampled_from(["item_moderation", "feed_source", "client_events",
                                                          "play_duration", "item_events"]),
       pct=st.floats(15, 60), offset=st.integers(8, 12))
def test_any_one_day_drop_alerts_once_led_by_its_stage_and_its_recovery_is_quiet(seed, stage, pct, offset):
    day = START + timedelta(days=offset)
    history = {d: parse_report(r, run_date=d) for d, r in make_history(
        real_record(), START, 21, seed=seed, drops={day: (stage, pct)}).items()}
    verdicts = Verdicts(default_rules(), history)

    assert [d for d in sorted(history) if verdicts.of(d)] == [day]
    lines = _lines(_message(history, day, verdicts.of(day)))
    assert lines[0].startswith(f":rotating_light: datagen *recsys* {day}: *{stage.replace('_', ' ')}* ")
    assert len(lines) <= 8
