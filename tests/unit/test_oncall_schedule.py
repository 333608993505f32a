from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.oncall.schedule import (
    Override,
    Rotation,
    Shift,
    handoff_times,
    next_shift,
    shifts,
    validate_override,
    who_is_on_call,
)

LA = ZoneInfo("America/Los_Angeles")
KOLKATA = ZoneInfo("Asia/Kolkata")
HOUR = timedelta(hours=1)


def rotation(**changes) -> Rotation:
    fields = dict(
        name="ranker",
        members=["UANA", "UBEN", "UCHO"],
        shift="weekly",
        handoff_weekday="monday",
        handoff_time="10:00",
        tz="America/Los_Angeles",
        start=date(2026, 1, 5),
        channel="#ml-oncall",
        usergroup="SONCALL",
        duties=["check feature skew", "refresh the PageRank source"],
    )
    return Rotation.model_validate(fields | changes)


def la(*args) -> datetime:
    return datetime(*args, tzinfo=LA)


def hours(shift: Shift) -> float:
    return (shift.end - shift.start) / HOUR


# --- DST and zones -------------------------------------------------------------------------------------


def test_weekly_handoff_stays_at_10_local_across_spring_forward():
    weeks = shifts(rotation(), la(2026, 2, 23, 12), la(2026, 3, 20))
    mondays = [la(2026, 2, 23, 10), la(2026, 3, 2, 10), la(2026, 3, 9, 10), la(2026, 3, 16, 10)]
    assert [s.start.astimezone(LA) for s in weeks] == mondays
    assert [hours(s) for s in weeks] == [168, 167, 168, 168]


def test_weekly_handoff_stays_at_10_local_across_fall_back():
    weeks = shifts(rotation(), la(2026, 10, 20), la(2026, 11, 3))
    assert [s.start.astimezone(LA).hour for s in weeks] == [10, 10, 10]
    assert [hours(s) for s in weeks] == [168, 169, 168]
    assert weeks[1].start == datetime(2026, 10, 26, 17, tzinfo=UTC)  # PDT
    assert weeks[1].end == datetime(2026, 11, 2, 18, tzinfo=UTC)  # PST


def test_shift_times_are_utc_instants():
    current = who_is_on_call(rotation(), la(2026, 7, 1))
    assert current.start.utcoffset() == timedelta(0)
    assert current.start == datetime(2026, 6, 29, 17, tzinfo=UTC)


def test_kolkata_has_no_dst_so_every_daily_shift_is_24_hours():
    daily = rotation(shift="daily", handoff_weekday=None, handoff_time="08:30", tz="Asia/Kolkata")
    year = shifts(daily, datetime(2026, 1, 5, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert {hours(s) for s in year} == {24}
    assert {(s.start.hour, s.start.minute) for s in year} == {(3, 0)}  # 08:30 IST is 03:00 UTC
    assert len(year) == 361  # 5 Jan to 31 Dec


def test_handoff_time_skipped_by_spring_forward_happens_an_hour_later_on_the_wall_clock():
    nightly = rotation(shift="daily", handoff_weekday=None, handoff_time="02:30")
    times = handoff_times(nightly, la(2026, 3, 7), la(2026, 3, 10))
    assert [t.astimezone(LA) for t in times] == [la(2026, 3, 7, 2, 30), la(2026, 3, 8, 3, 30), la(2026, 3, 9, 2, 30)]
    assert [hours(s) for s in shifts(nightly, la(2026, 3, 7, 3), la(2026, 3, 9, 2))] == [24, 23]


def test_handoff_time_repeated_by_fall_back_means_its_first_occurrence():
    nightly = rotation(shift="daily", handoff_weekday=None, handoff_time="01:30")
    [handoff] = handoff_times(nightly, la(2026, 11, 1), la(2026, 11, 1, 12))
    assert handoff == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)  # 01:30 PDT, not 01:30 PST


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(["America/Los_Angeles", "Asia/Kolkata", "Europe/London", "Australia/Lord_Howe"]),
    shift=st.sampled_from(["weekly", "daily", "3d", "14d"]),
    hhmm=st.sampled_from(["00:00", "01:30", "02:30", "10:00", "23:45"]),
    offset_days=st.integers(0, 700),
    span_days=st.integers(1, 60),
)
def test_shifts_tile_time_and_start_at_the_local_handoff(zone, shift, hhmm, offset_days, span_days):
    weekday = None if shift == "daily" else "friday"
    rot = rotation(tz=zone, shift=shift, handoff_weekday=weekday, handoff_time=hhmm, start=date(2025, 1, 1))
    begin = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=offset_days)
    end = begin + timedelta(days=span_days)
    found = shifts(rot, begin, end)
    assert found[0].start <= begin and found[-1].end >= end
    assert all(a.end == b.start for a, b in pairwise(found))
    assert [s.start for s in found if s.start >= begin] == handoff_times(rot, begin, end)
    wall, tz = time.fromisoformat(hhmm), ZoneInfo(zone)
    for s in found:
        local = s.start.astimezone(tz)
        if shift == "weekly":
            assert local.weekday() == 4
        intended = datetime.combine(local.date(), wall, tzinfo=tz)
        skipped = intended.astimezone(UTC).astimezone(tz).time() != wall
        # The handoff time itself, or a later time that day when a DST change skipped it.
        assert local.time() == wall or (skipped and local.time() > wall)
        assert who_is_on_call(rot, s.start) == s
        assert who_is_on_call(rot, s.end - timedelta(microseconds=1)) == s


# --- rotation order, start, shift lengths ---------------------------------------------------------------


def test_first_shift_starts_on_the_first_handoff_weekday_on_or_after_start():
    rot = rotation(start=date(2026, 1, 7))  # a Wednesday
    assert who_is_on_call(rot, la(2026, 1, 12, 9, 59)) is None
    first = who_is_on_call(rot, la(2026, 1, 12, 10))
    assert (first.user, first.start.astimezone(LA)) == ("UANA", la(2026, 1, 12, 10))
    assert next_shift(rot, la(2026, 1, 8)) == first


def test_members_take_turns_in_order_and_wrap():
    users = [s.user for s in shifts(rotation(), la(2026, 1, 5, 10), la(2026, 2, 16))]
    assert users == ["UANA", "UBEN", "UCHO", "UANA", "UBEN", "UCHO"]


def test_n_day_shifts_anchor_on_the_start_date():
    rot = rotation(shift="3d", handoff_weekday=None, members=["UANA", "UBEN"], start=date(2026, 3, 6))
    found = shifts(rot, la(2026, 3, 6, 10), la(2026, 3, 15, 10))
    assert [(s.start.astimezone(LA).date().day, s.user) for s in found] == [(6, "UANA"), (9, "UBEN"), (12, "UANA")]
    assert [hours(s) for s in found] == [71, 72, 72]  # the first one spans spring-forward


def test_next_shift_at_a_handoff_instant_is_the_one_after():
    rot = rotation()
    handoff = la(2026, 2, 2, 10)
    assert who_is_on_call(rot, handoff).start == handoff
    assert next_shift(rot, handoff).start == la(2026, 2, 9, 10)


def test_handoff_times_include_the_window_start_and_exclude_its_end():
    rot = rotation()
    assert handoff_times(rot, la(2026, 2, 2, 10), la(2026, 2, 16, 10)) == [
        la(2026, 2, 2, 10).astimezone(UTC),
        la(2026, 2, 9, 10).astimezone(UTC),
    ]
    assert handoff_times(rot, la(2026, 2, 2, 10, 1), la(2026, 2, 9, 9)) == []


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        who_is_on_call(rotation(), datetime(2026, 2, 2, 12))


# --- overrides ------------------------------------------------------------------------------------------


def test_override_splits_a_shift_and_takes_precedence():
    cover = Override(start=la(2026, 2, 4, 18), end=la(2026, 2, 5, 9), user="UCHO")
    found = shifts(rotation(), la(2026, 2, 3), la(2026, 2, 8), [cover])
    assert [(s.user, s.overridden) for s in found] == [("UBEN", False), ("UCHO", True), ("UBEN", False)]
    assert found[1].start == cover.start and found[1].end == cover.end
    assert found[0].start == la(2026, 2, 2, 10) and found[2].end == la(2026, 2, 9, 10)
    assert who_is_on_call(rotation(), la(2026, 2, 5, 0), [cover]).user == "UCHO"
    assert next_shift(rotation(), la(2026, 2, 5, 0), [cover]) == found[2]


def test_override_across_a_handoff_is_split_at_the_handoff():
    cover = Override(start=la(2026, 2, 8, 12), end=la(2026, 2, 10, 12), user="UANA")
    found = shifts(rotation(), la(2026, 2, 8), la(2026, 2, 11), [cover])
    assert [(s.user, s.overridden, s.start.astimezone(LA)) for s in found] == [
        ("UBEN", False, la(2026, 2, 2, 10)),
        ("UANA", True, la(2026, 2, 8, 12)),
        ("UANA", True, la(2026, 2, 9, 10)),
        ("UCHO", False, la(2026, 2, 10, 12)),
    ]


def test_later_override_wins_where_two_overlap():
    first = Override(start=la(2026, 2, 3), end=la(2026, 2, 6), user="UANA")
    second = Override(start=la(2026, 2, 5), end=la(2026, 2, 7), user="UCHO")
    found = shifts(rotation(), la(2026, 2, 3), la(2026, 2, 7), [first, second])
    overridden = [(s.user, s.start.astimezone(LA), s.end.astimezone(LA)) for s in found if s.overridden]
    assert overridden == [("UANA", la(2026, 2, 3), la(2026, 2, 5)), ("UCHO", la(2026, 2, 5), la(2026, 2, 7))]
    flipped = shifts(rotation(), la(2026, 2, 3), la(2026, 2, 7), [second, first])
    assert [(s.user, s.end.astimezone(LA)) for s in flipped if s.overridden] == [
        ("UANA", la(2026, 2, 6)),
        ("UCHO", la(2026, 2, 7)),
    ]


def test_override_before_the_rotation_starts_puts_someone_on_call():
    early = Override(start=la(2026, 1, 1), end=la(2026, 1, 2), user="UBEN")
    assert who_is_on_call(rotation(), la(2026, 1, 1, 12), [early]).user == "UBEN"
    assert who_is_on_call(rotation(), la(2026, 1, 3), [early]) is None
    assert next_shift(rotation(), la(2025, 12, 31), [early]).user == "UBEN"


def test_override_is_stored_in_utc_and_must_end_after_it_starts():
    assert Override(start=la(2026, 2, 3), end=la(2026, 2, 4), user="UANA").start == datetime(2026, 2, 3, 8, tzinfo=UTC)
    with pytest.raises(ValidationError, match="end after it starts"):
        Override(start=la(2026, 2, 4), end=la(2026, 2, 3), user="UANA")


# --- member changes -------------------------------------------------------------------------------------


def test_member_change_mid_shift_keeps_the_running_shift_and_changes_the_next():
    before = rotation()
    after = rotation(member_changes=[{"effective": "2026-02-04", "members": ["UDEV", "UANA"]}])
    window = (la(2026, 1, 5, 10), la(2026, 2, 23, 10))
    old, new = shifts(before, *window), shifts(after, *window)
    # Shifts started before Wed 4 Feb (including the one running that day) are unchanged.
    assert new[:5] == old[:5]
    assert [s.user for s in new[5:]] == ["UDEV", "UANA"]
    assert new[5].start == la(2026, 2, 9, 10)


def test_member_change_on_a_handoff_day_applies_to_that_handoff():
    rot = rotation(member_changes=[{"effective": "2026-02-09", "members": ["UDEV"]}])
    assert who_is_on_call(rot, la(2026, 2, 9, 9, 59)).user == "UBEN"
    assert who_is_on_call(rot, la(2026, 2, 9, 10)).user == "UDEV"
    assert who_is_on_call(rot, la(2026, 5, 1)).user == "UDEV"


def test_overrides_still_win_over_changed_members():
    rot = rotation(member_changes=[{"effective": "2026-02-09", "members": ["UDEV"]}])
    cover = Override(start=la(2026, 2, 10), end=la(2026, 2, 11), user="UANA")
    assert who_is_on_call(rot, la(2026, 2, 10, 12), [cover]).user == "UANA"


# --- validate_override ----------------------------------------------------------------------------------

NOW = la(2026, 2, 3, 9)


def test_valid_override_has_no_reason():
    assert validate_override(rotation(), la(2026, 2, 4), la(2026, 2, 5), "UCHO", NOW, []) is None


def test_override_ending_before_it_starts_is_refused():
    reason = validate_override(rotation(), la(2026, 2, 5), la(2026, 2, 4), "UCHO", NOW, [])
    assert "ends" in reason and "before it starts" in reason and "Thu 5 Feb 2026 00:00 PST" in reason


def test_override_in_the_past_is_refused():
    reason = validate_override(rotation(), la(2026, 2, 2), la(2026, 2, 4), "UCHO", NOW, [])
    assert "past" in reason and "Mon 2 Feb 2026" in reason


def test_non_member_may_not_cover():
    reason = validate_override(rotation(), la(2026, 2, 4), la(2026, 2, 5), "UZED", NOW, [])
    assert "<@UZED> is not on the ranker rotation" in reason and "<@UANA>" in reason


def test_member_who_joins_later_may_cover_once_they_are_on_the_roster():
    rot = rotation(member_changes=[{"effective": "2026-02-09", "members": ["UDEV", "UANA"]}])
    assert validate_override(rot, la(2026, 2, 4), la(2026, 2, 5), "UDEV", NOW, []) is not None
    assert validate_override(rot, la(2026, 2, 10), la(2026, 2, 11), "UDEV", NOW, []) is None


def test_overlapping_override_names_whose_it_is():
    existing = [Override(start=la(2026, 2, 4, 12), end=la(2026, 2, 6), user="UANA")]
    reason = validate_override(rotation(), la(2026, 2, 4), la(2026, 2, 5), "UCHO", NOW, existing)
    assert "overlaps <@UANA>'s override" in reason and "Wed 4 Feb 2026 12:00 PST" in reason
    # Touching end to start is not an overlap.
    assert validate_override(rotation(), la(2026, 2, 6), la(2026, 2, 7), "UCHO", NOW, existing) is None


# --- config validation ----------------------------------------------------------------------------------


def errors(**changes) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as caught:
        rotation(**changes)
    return {e["loc"]: e["msg"] for e in caught.value.errors()}


def test_unquoted_yaml_time_is_explained():
    loaded = yaml.safe_load("handoff_time: 10:00")
    assert "quoted local time" in errors(**loaded)[("handoff_time",)]


def test_rotation_errors_point_at_the_key():
    found = errors(
        members=["UANA", "bob"],
        tz="Pacific/Atlantis",
        shift="fortnightly",
        usergroup="@oncall",
        member_changes=[{"effective": "2026-03-01", "members": ["UANA", "eve"]}],
    )
    assert "'bob' is not a Slack user id" in found[("members", 1)]
    assert "IANA time zone" in found[("tz",)]
    assert "weekly, daily or <N>d" in found[("shift",)]
    assert "user group id" in found[("usergroup",)]
    assert "'eve'" in found[("member_changes", 0, "members", 1)]


def test_weekly_rotation_needs_a_weekday_and_members():
    assert "needs handoff_weekday" in errors(handoff_weekday=None)[()]
    assert ("members",) in errors(members=[])


def test_member_changes_must_move_forward_in_time():
    found = errors(
        member_changes=[
            {"effective": "2026-03-01", "members": ["UANA"]},
            {"effective": "2026-02-01", "members": ["UBEN"]},
        ]
    )
    assert "member_changes[1].effective (2026-02-01) must be after member_changes[0].effective" in found[()]


def test_weekday_may_be_abbreviated_like_the_digest_schedules():
    assert rotation(handoff_weekday="Wed").handoff_weekday == "wednesday"
    assert "'monday'" in errors(handoff_weekday="funday")[("handoff_weekday",)]
