"""`/mlops oncall ...`: the words of the command in, a typed request out.

Pure and Slack-free: bad input raises `OnCallInputError`, which the router answers with the verb's usage.
Whether a well-formed request may happen (past or overlapping ranges, who may cover) depends on the time
and the stored overrides, so the service decides that.

Times: FROM and TO are read in the rotation's zone. A date alone means the rotation's handoff time that
day, so `override @bob 2026-03-09 2026-03-16` on a Monday-10:00 rotation is exactly one shift; a local
datetime (2026-03-10T14:00) is taken as written; one with an offset (…T14:00Z, …T14:00+05:30) as that instant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from bot.oncall.schedule import Rotation

USAGE = "oncall [schedule [weeks] | override @user FROM TO | cover FROM TO | undo ID] [rotation=NAME]"
SUMMARY = "who is on call now and next, the schedule, overrides and cover requests"
DETAILS = (
    "`/mlops oncall`: who is on call now and who is next.\n"
    "`/mlops oncall schedule [weeks]`: the next weeks' shifts (default 4, at most 12).\n"
    "`/mlops oncall override @user FROM TO`: put a rotation member on call for that time.\n"
    "`/mlops oncall cover FROM TO`: ask the channel to cover for you; the first to press *Take* gets it.\n"
    "`/mlops oncall undo ID`: undo an override you created (one in progress ends now).\n"
    "FROM/TO are in the rotation's zone: a date (2026-03-10) means the handoff time that day, "
    "a datetime (2026-03-10T14:00) that local time. With several rotations add `rotation=NAME`."
)
DEFAULT_WEEKS = 4
MAX_WEEKS = 12

# How Slack escapes a mention in command text: <@U024BE7LH|alice> (or <@U024BE7LH> without a name).
_MENTION = re.compile(r"<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>")
_USER_ID = re.compile(r"@?([UW][A-Z0-9]{2,})")


class OnCallInputError(ValueError):
    """The command's words cannot be read; the message says which and how to write them."""


@dataclass(frozen=True)
class ShowNow:
    rotation: Rotation


@dataclass(frozen=True)
class ShowSchedule:
    rotation: Rotation
    weeks: int


@dataclass(frozen=True)
class CreateOverride:
    rotation: Rotation
    user: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class AskCover:
    rotation: Rotation
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Undo:
    override_id: int


OnCallRequest = ShowNow | ShowSchedule | CreateOverride | AskCover | Undo


def parse(args: list[str], options: dict[str, str], channel: str, rotations: list[Rotation]) -> OnCallRequest:
    sub, rest = (args[0].lower(), args[1:]) if args else ("", [])
    if sub == "undo":
        if len(rest) != 1 or not rest[0].lstrip("#").isdecimal():
            raise OnCallInputError("say which override to undo by its number, e.g. `undo 12`")
        return Undo(int(rest[0].lstrip("#")))
    rotation = pick_rotation(rotations, options.get("rotation"), channel)
    if sub == "":
        return ShowNow(rotation)
    if sub == "schedule":
        return ShowSchedule(rotation, _weeks(rest))
    if sub == "override":
        if len(rest) != 3:
            raise OnCallInputError("an override needs who, from and to, e.g. `override @bob 2026-03-10 2026-03-12`")
        start, end = when(rest[1], rotation), when(rest[2], rotation)
        return CreateOverride(rotation, user_id(rest[0]), start, end)
    if sub == "cover":
        if len(rest) != 2:
            raise OnCallInputError("a cover request needs from and to, e.g. `cover 2026-03-10 2026-03-12`")
        return AskCover(rotation, when(rest[0], rotation), when(rest[1], rotation))
    raise OnCallInputError(f"`{sub}` is not an oncall sub-command")


def pick_rotation(rotations: list[Rotation], name: str | None, channel: str) -> Rotation:
    """The named rotation; else the only one; else the one whose channel the command came from."""
    if not rotations:
        raise OnCallInputError("no on-call rotation is configured (oncall.rotations in mlops-bot.yaml)")
    names = ", ".join(r.name for r in rotations)
    if name is not None:
        found = next((r for r in rotations if r.name == name), None)
        if found is None:
            raise OnCallInputError(f"there is no rotation `{name}`; rotations: {names}")
        return found
    if len(rotations) == 1:
        return rotations[0]
    here = [r for r in rotations if r.channel == channel]
    if len(here) == 1:
        return here[0]
    raise OnCallInputError(f"say which rotation with `rotation=NAME`; rotations: {names}")


def user_id(word: str) -> str:
    """A user id from a Slack-escaped mention or a bare id."""
    if match := _MENTION.fullmatch(word) or _USER_ID.fullmatch(word):
        return match[1]
    raise OnCallInputError(f"`{word}` is not a person: mention them with @ so Slack sends their id")


def when(word: str, rotation: Rotation) -> datetime:
    """FROM or TO, read in the rotation's zone (see the module docstring)."""
    try:
        if len(word) == len("2026-03-10"):
            return datetime.combine(date.fromisoformat(word), rotation.handoff_time, tzinfo=rotation.zone)
        moment = datetime.fromisoformat(word)
    except ValueError:
        raise OnCallInputError(
            f"`{word}` is not a date or time: write 2026-03-10 (that day at the {rotation.handoff_time:%H:%M} "
            f"handoff) or 2026-03-10T14:00 ({rotation.tz} time)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=rotation.zone)


def _weeks(rest: list[str]) -> int:
    if not rest:
        return DEFAULT_WEEKS
    if len(rest) == 1 and rest[0].isdecimal() and 1 <= int(rest[0]) <= MAX_WEEKS:
        return int(rest[0])
    raise OnCallInputError(f"weeks must be a number from 1 to {MAX_WEEKS}, e.g. `schedule 6`")
