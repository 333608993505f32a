"""`/mlops oncall` words → typed requests: mentions as Slack escapes them, dates in the rotation's zone."""
from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from bot.oncall.grammar import AskCover, CreateOverride, OnCallInputError, ShowNow, ShowSchedule, Undo, parse
from bot.oncall.schedule import Rotation


def rotation(name: str = "recsys", channel: str = "C0MLOPS") -> Rotation:
    return Rotation(name=name, members=["U0ALICE", "U0BOB"], handoff_weekday="monday", handoff_time=time(10),
                    tz="America/Los_Angeles", start=date(2026, 1, 5), channel=channel)


ROTATIONS = [rotation()]


def test_an_escaped_mention_and_a_date_mean_the_handoff_time_in_the_rotations_zone():
    request = parse(["override", "<@U0BOB|bob>", "2026-03-09", "2026-03-16"], {}, "C0MLOPS", ROTATIONS)
    assert isinstance(request, CreateOverride) and request.user == "U0BOB"
    # 10:00 PDT, the day after the spring-forward change, is 17:00 UTC.
    assert request.start.astimezone(UTC) == datetime(2026, 3, 9, 17, tzinfo=UTC)


def test_local_and_offset_datetimes():
    request = parse(["cover", "2026-03-10T14:00", "2026-03-10T23:00Z"], {}, "C0X", ROTATIONS)
    assert isinstance(request, AskCover)
    assert request.start.astimezone(UTC) == datetime(2026, 3, 10, 21, tzinfo=UTC)
    assert request.end == datetime(2026, 3, 10, 23, tzinfo=UTC)


def test_the_other_sub_commands():
    assert parse([], {}, "C0MLOPS", ROTATIONS) == ShowNow(ROTATIONS[0])
    assert parse(["schedule", "6"], {}, "C0MLOPS", ROTATIONS) == ShowSchedule(ROTATIONS[0], 6)
    assert parse(["undo", "#12"], {}, "C0MLOPS", []) == Undo(12)


def test_with_several_rotations_the_channel_or_the_option_picks_one():
    both = [rotation(), rotation("search", "C0SEARCH")]
    assert parse([], {}, "C0SEARCH", both) == ShowNow(both[1])
    assert parse([], {"rotation": "recsys"}, "C0SEARCH", both) == ShowNow(both[0])
    with pytest.raises(OnCallInputError, match="rotation=NAME"):
        parse([], {}, "C0OTHER", both)


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["override", "bob", "2026-03-09", "2026-03-10"], "mention them with @"),
        (["override", "U0BOB", "monday", "2026-03-10"], "`monday` is not a date"),
        (["override", "U0BOB", "2026-03-09"], "needs who, from and to"),
        (["schedule", "52"], "from 1 to 12"),
        (["undo"], "by its number"),
        (["swap"], "`swap` is not an oncall sub-command"),
    ],
)
def test_bad_words_say_what_to_write(words: list[str], says: str):
    with pytest.raises(OnCallInputError, match=says):
        parse(words, {}, "C0MLOPS", ROTATIONS)
