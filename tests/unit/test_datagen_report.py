"""The datagen monitoring record: what the bot reads out of the job's JSON, and how it refuses bad input."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.monitors.datagen import (
    ReportError,
    format_count_pct,
    format_run_time,
    parse_count_pct,
    parse_duration,
    parse_report,
)
from tests.support.datagen_history import EXAMPLES, REAL_RECORD, real_record

STAGES = ["item_moderation", "feed_source", "client_events", "video_length", "play_duration", "item_age",
          "item_events"]


def test_real_record_parses_with_the_numbers_in_the_file():
    report = parse_report(REAL_RECORD.read_bytes())

    assert report.run_date == date(2023, 9, 14)
    assert report.success and not report.failed
    assert list(report.stages) == STAGES
    feed = report.stages["feed_source"]
    assert (feed.events, feed.items, feed.item_loss_pct) == (444220921, 921680, 43.3835)
    assert (report.raw_events, report.raw_items) == (798019767, 2551996)
    assert (report.embedding_join_events, report.embedding_join_items) == (376975889, 728706)
    assert report.embedding_join_item_loss_pct == 0.0222
    assert report.final_rows == 376975889
    assert report.buckets["(0.0, 1.0]"] == (7539, 1.03)
    assert report.buckets_delta_7d["(4.0, 7.0]"] == (-5856, -6.43)
    assert report.new_items_1d == (26612, 3.65)
    assert report.items_diff_7d == (16513, 2.32)
    assert report.run_time == timedelta(hours=3, minutes=21)
    assert report.start_time == datetime(2023, 9, 14, 10, 8, 51)
    assert report.end_time == datetime(2023, 9, 14, 13, 30, 12)


def test_metrics_have_stable_dotted_names():
    metrics = parse_report(real_record()).metrics()

    assert metrics["stage.feed_source.events"] == 444220921
    assert metrics["stage.feed_source.items"] == 921680
    assert metrics["stage.feed_source.item_loss_pct"] == 43.3835
    assert metrics["raw.items"] == 2551996
    assert metrics["embedding_join.items"] == 728706
    assert metrics["final_rows"] == 376975889
    assert metrics["bucket.le_0d.count"] == 0
    assert metrics["bucket.4_7d.count"] == 85162
    assert metrics["bucket.4_7d.share_pct"] == 11.69
    assert metrics["bucket.1_2d.delta_7d_pct"] == 47.0
    assert metrics["bucket.gt_90d.count"] == 0
    assert metrics["new_items_1d_pct"] == 3.65
    assert metrics["items_diff_1d_pct"] == 0.53
    assert metrics["runtime_minutes"] == 201


def test_funnel_runs_from_raw_through_every_stage_to_final_rows():
    funnel = parse_report(real_record()).funnel()

    assert [step.label for step in funnel] == [
        "raw", *(name.replace("_", " ") for name in STAGES), "embedding join", "final rows"]
    assert funnel[2] == ("feed source", 444220921, 921680, 43.3835)
    assert funnel[-1].events == 376975889


def test_a_new_stage_is_discovered_in_file_order_and_unknown_keys_are_kept():
    record = {}
    for key, value in real_record().items():
        record[key] = value
        if key == "item_loss_percentage_item_moderation":
            record |= {"num_events_post_filter_language": 700000000, "num_items_post_filter_language": 2000000,
                       "item_loss_percentage_language": 1.1}
    record["cluster_workers"] = 15

    report = parse_report(record)

    assert list(report.stages)[:3] == ["item_moderation", "language", "feed_source"]
    assert report.metrics()["stage.language.items"] == 2000000
    assert report.model_extra == {"cluster_workers": 15}


def test_run_date_given_by_the_caller_wins_over_the_start_time():
    assert parse_report(real_record(), run_date=date(2023, 9, 15)).run_date == date(2023, 9, 15)


def test_a_failed_run_needs_no_numbers_and_says_why():
    report = parse_report({"SUCCESS": False, "error": "OOM in join_embeddings"}, run_date=date(2023, 9, 14))

    assert report.failed
    assert report.errors == ("OOM in join_embeddings",)
    assert report.metrics() == {}


def test_an_error_field_fails_a_run_that_claims_success():
    report = parse_report({**real_record(), "upload_error_message": "copy to second cloud failed"})

    assert report.failed
    assert report.errors == ("copy to second cloud failed",)


def test_an_empty_error_field_or_an_error_counter_is_not_a_failure():
    report = parse_report({**real_record(), "error": "", "num_error_events": 12})

    assert not report.failed
    assert report.model_extra == {"num_error_events": 12}


def _without(key: str) -> dict:
    record = real_record()
    del record[key]
    return record


def _with(key: str, value: object) -> dict:
    return {**real_record(), key: value}


def _with_bucket(text: str) -> dict:
    record = real_record()
    record["item_age_bucket_formated"]["(1.0, 2.0]"] = text
    return record


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"SUCCESS": true,', "unreadable JSON"),
    (b"\xff\xfe", "unreadable JSON"),
    ("[1, 2]", "unreadable JSON: expected an object, got list"),
    (_without("num_final_rows"), "missing keys num_final_rows"),
    (_without("SUCCESS"), "missing key SUCCESS"),
    (_without("item_loss_percentage_video_length"), "missing key item_loss_percentage_video_length"),
    (_without("datagen_start_time"), "no run date"),
    (_with("num_items_post_filter_feed_source", -5), "negative count in num_items_post_filter_feed_source: -5"),
    (_with("num_raw_events", -1), "negative count in num_raw_events: -1"),
    (_with_bucket("8,8l7 (1.21%)"), "item_age_bucket_formated['(1.0, 2.0]']: expected text like '7,539 (1.03%)', "
                                    "got '8,8l7 (1.21%)'"),
    (_with_bucket("-8,817 (1.21%)"), "negative count in item_age_bucket_formated['(1.0, 2.0]']: -8817"),
    (_with("datagen_run_time", "a while"), "datagen_run_time: expected text like '3.0h:21mins', got 'a while'"),
])
def test_bad_input_gives_one_reason_naming_the_problem(raw, reason):
    with pytest.raises(ReportError) as caught:
        parse_report(raw)
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize(("text", "duration"), [
    ("3.0h:21mins", timedelta(hours=3, minutes=21)),
    ("45mins", timedelta(minutes=45)),
    ("2h", timedelta(hours=2)),
    ("1.0h:5mins", timedelta(hours=1, minutes=5)),
    ("3h 21m", timedelta(hours=3, minutes=21)),
])
def test_run_time_text_is_read_liberally(text, duration):
    assert parse_duration(text) == duration


@given(count=st.integers(-10**12, 10**12), pct=st.floats(-10**6, 10**6, allow_nan=False), signed=st.booleans())
def test_count_and_pct_text_round_trips(count, pct, signed):
    assert parse_count_pct(format_count_pct(count, pct, signed=signed)) == (count, round(pct, 2))


@given(minutes=st.integers(0, 48 * 60))
def test_run_time_text_round_trips(minutes):
    assert parse_duration(format_run_time(timedelta(minutes=minutes))) == timedelta(minutes=minutes)


def test_the_job_renders_counts_the_way_the_record_shows_them():
    record = real_record()
    assert format_count_pct(7539, 1.0346) == record["item_age_bucket_formated"]["(0.0, 1.0]"]
    assert format_count_pct(-5856, -6.4312, signed=True) == record["item_age_buckets_delta_7d"]["(4.0, 7.0]"]
    assert format_count_pct(0, 0.0, signed=True) == record["item_age_buckets_delta_7d"]["(90.0, inf]"]
    assert format_run_time(timedelta(hours=3, minutes=21, seconds=21)) == record["datagen_run_time"]


def test_examples_are_consecutive_days_in_the_real_format():
    files = sorted(EXAMPLES.glob("*.json"))
    days = [date.fromisoformat(path.stem) for path in files]

    assert days == [date(2026, 11, 12) + timedelta(days=i) for i in range(10)]
    for path, day in zip(files, days, strict=True):
        record = json.loads(path.read_text())
        assert list(record) == list(real_record())
        assert parse_report(record, run_date=day).start_time.date() == day
