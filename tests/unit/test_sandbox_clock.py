"""`/clock` in the sandbox: the times it understands, and which scheduled slots a move runs, in which order."""
from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from bot.sandbox.clock import due_between, parse_target
from bot.scheduler import Scheduler, daily
from bot.store import Store

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def nothing(slot: datetime) -> None:
    return None


def test_steps_and_local_times():
    assert parse_target("+3d", NOW) == NOW + timedelta(days=3)
    assert parse_target("+2h30m", NOW) == NOW + timedelta(hours=2, minutes=30)
    assert parse_target("2026-12-07 10:05 America/Los_Angeles", NOW) == datetime(2026, 12, 7, 18, 5, tzinfo=UTC)
    assert parse_target("2026-12-07 10:05", NOW) == datetime(2026, 12, 7, 10, 5, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "+3", "+3d garbage", "2026-12-07", "2026-12-07 10:05 Mars/Olympus"])
def test_what_is_no_time_is_refused_with_the_usage(text):
    with pytest.raises(ValueError, match=r"/clock \+3d"):
        parse_target(text, NOW)


def test_slots_run_in_order_of_due_time_and_frequent_jobs_at_most_hourly(tmp_path):
    scheduler = Scheduler(Store(str(tmp_path / "s.db")), lambda: NOW)
    scheduler.add("digest", daily(time(9, 0), "America/Los_Angeles"), nothing)
    scheduler.add("poll", IntervalTrigger(minutes=10, start_date=datetime(2000, 1, 1, tzinfo=UTC), timezone=UTC), nothing)
    due = due_between(scheduler, NOW, NOW + timedelta(days=1))
    assert due == sorted(due)
    assert [slot for slot, job in due if job == "digest"] == [datetime(2026, 12, 3, 17, 0, tzinfo=UTC)]
    polls = [slot for slot, job in due if job == "poll"]
    assert len(polls) == 24 and polls[0] == NOW + timedelta(minutes=10)
    assert all(later - earlier == timedelta(hours=1) for earlier, later in zip(polls, polls[1:], strict=False))
