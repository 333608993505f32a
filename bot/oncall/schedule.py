"""Who is on call when: rotations, overrides and the shifts they produce.

Pure and clock-free: every function takes the instants it reasons about as aware datetimes and returns
aware UTC datetimes. Handoffs are local wall-clock times in the rotation's IANA zone, so a weekly
Monday 10:00 handoff stays at 10:00 local across DST changes (that week's shift is 167 or 169 hours).

Wall-clock times that a DST change skips or repeats follow zoneinfo's PEP 495 rules with fold=0:
- a handoff time that does not exist that day (02:30 on a spring-forward day in America/Los_Angeles)
  is read with the offset in force before the change, so the handoff happens at 03:30 local,
  the same elapsed time after midnight;
- a handoff time that happens twice (01:30 on a fall-back day) means its first occurrence.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Annotated, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)

_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
_USERGROUP_ID = re.compile(r"S[A-Z0-9]{2,}")
_CHANNEL = re.compile(r"[CG][A-Z0-9]{2,}|#[a-z0-9][a-z0-9._-]{0,79}")
_SHIFT = re.compile(r"weekly|daily|([1-9][0-9]{0,2})d")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _user_id(value: str) -> str:
    if not _USER_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a Slack user id (U… or W…, e.g. U024BE7LH)")
    return value


SlackUserId = Annotated[str, AfterValidator(_user_id)]


class MemberChange(BaseModel):
    """From `effective` on, `members` is the rotation's order; its first member takes the first shift
    starting on or after that date. Shifts that started earlier keep their person."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    effective: date
    members: list[SlackUserId] = Field(min_length=1)


class Rotation(BaseModel):
    """One on-call rotation, as written under `oncall.rotations` in mlops-bot.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    members: list[SlackUserId] = Field(min_length=1)
    shift: str = "weekly"
    handoff_weekday: Weekday | None = None
    handoff_time: time
    tz: str
    start: date
    channel: str
    usergroup: str | None = None
    duties: list[str] = []
    member_changes: list[MemberChange] = []

    @field_validator("shift")
    @classmethod
    def _known_shift(cls, value: str) -> str:
        if not _SHIFT.fullmatch(value):
            raise ValueError(f"{value!r} is not a shift length: use weekly, daily or <N>d (e.g. 14d)")
        return value

    @field_validator("handoff_weekday", mode="before")
    @classmethod
    def _weekday_name(cls, value: object) -> object:
        # Accept "Mon" or "mon" as well as "monday", the way the digest schedules are written.
        if isinstance(value, str):
            name = value.strip().lower()
            return next((day for day in WEEKDAYS if name in (day, day[:3])), value)
        return value

    @field_validator("handoff_time", mode="before")
    @classmethod
    def _wall_clock(cls, value: object) -> time:
        if isinstance(value, time) and value.tzinfo is None:
            return value
        # YAML 1.1 reads an unquoted 10:00 as the integer 600, which pydantic would take as seconds.
        if not isinstance(value, str) or not (match := _HHMM.fullmatch(value)):
            raise ValueError(f'expected a quoted local time "HH:MM" (e.g. "10:00"), got {value!r}')
        return time(int(match[1]), int(match[2]))

    @field_validator("tz")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. America/Los_Angeles)") from None
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not _CHANNEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a channel: use its id (C…) or #name")
        return value

    @field_validator("usergroup")
    @classmethod
    def _usergroup(cls, value: str | None) -> str | None:
        if value is not None and not _USERGROUP_ID.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slack user group id (S…, e.g. S0614TZR7)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Rotation:
        if self.shift == "weekly" and self.handoff_weekday is None:
            raise ValueError("a weekly rotation needs handoff_weekday (e.g. monday)")
        if self.shift == "daily" and self.handoff_weekday is not None:
            raise ValueError("a daily rotation hands off every day: remove handoff_weekday")
        previous = self.start
        for index, change in enumerate(self.member_changes):
            if change.effective <= previous:
                raise ValueError(
                    f"member_changes[{index}].effective ({change.effective}) must be after "
                    f"{'start' if index == 0 else f'member_changes[{index - 1}].effective'} ({previous})"
                )
            previous = change.effective
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def shift_days(self) -> int:
        return {"weekly": 7, "daily": 1}.get(self.shift) or int(self.shift.removesuffix("d"))

    @property
    def first_day(self) -> date:
        """The local date of the first handoff: `start`, or the first handoff weekday on or after it."""
        if self.handoff_weekday is None:
            return self.start
        return self.start + timedelta(days=(WEEKDAYS.index(self.handoff_weekday) - self.start.weekday()) % 7)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class Override(BaseModel):
    """`user` is on call from `start` to `end` whatever the rotation says."""

    model_config = ConfigDict(frozen=True)

    start: Annotated[AwareDatetime, AfterValidator(_to_utc)]
    end: Annotated[AwareDatetime, AfterValidator(_to_utc)]
    user: SlackUserId

    @model_validator(mode="after")
    def _ordered(self) -> Override:
        if self.end <= self.start:
            raise ValueError("an override must end after it starts")
        return self


@dataclass(frozen=True)
class Shift:
    """A span with one person on call. Shifts never cross a rotation handoff, so an override spanning
    one shows up as two shifts."""

    start: datetime
    end: datetime
    user: str
    overridden: bool


def handoff_times(rotation: Rotation, between_start: datetime, between_end: datetime) -> list[datetime]:
    """The rotation's own shift boundaries in [between_start, between_end), as UTC instants."""
    _require_aware(between_start, between_end)
    index = _index_at(rotation, between_start)
    if index < 0 or _boundary(rotation, index) < between_start:
        index += 1
    times = []
    while (at := _boundary(rotation, index)) < between_end:
        if at >= between_start:
            times.append(at)
        index += 1
    return times


def shifts(
    rotation: Rotation, between_start: datetime, between_end: datetime, overrides: Iterable[Override] = ()
) -> list[Shift]:
    """Every shift overlapping [between_start, between_end), whole (not clipped), in time order.

    Overrides are applied in the order given, the caller's creation order: where two overlap, the later
    one wins. Before the rotation's first handoff only overrides put anyone on call.
    """
    _require_aware(between_start, between_end)
    overrides = tuple(overrides)
    result: list[Shift] = []
    for seg_start, seg_end, base_user in _segments(rotation, between_start, between_end, overrides):
        cuts = {seg_start, seg_end} | {t for o in overrides for t in (o.start, o.end) if seg_start < t < seg_end}
        piece: Shift | None = None
        for start, end in pairwise(sorted(cuts)):
            cover = next((o for o in reversed(overrides) if o.start <= start < o.end), None)
            user = cover.user if cover else base_user
            if user is None:
                piece = None
                continue
            if piece is not None and piece.user == user and piece.overridden == (cover is not None):
                result.pop()
                start = piece.start
            piece = Shift(start, end, user, cover is not None)
            result.append(piece)
    return [s for s in result if s.end > between_start and s.start < between_end]


def who_is_on_call(rotation: Rotation, at: datetime, overrides: Iterable[Override] = ()) -> Shift | None:
    """The shift in effect at `at`; None before the rotation starts when no override covers `at`."""
    found = shifts(rotation, at, at + timedelta.resolution, overrides)
    return found[0] if found else None


def next_shift(rotation: Rotation, at: datetime, overrides: Iterable[Override] = ()) -> Shift:
    """The first shift starting after `at` (the rotation never ends, so there always is one)."""
    _require_aware(at)
    window_end = _boundary(rotation, _index_at(rotation, at) + 2)
    return next(s for s in shifts(rotation, at, window_end, overrides) if s.start > at)


def member_for(rotation: Rotation, index: int) -> str:
    """Who the rotation puts on call for its `index`-th shift (0 is the first)."""
    roster, first_index = _roster(rotation, index)
    return roster[(index - first_index) % len(roster)]


def validate_override(
    rotation: Rotation, start: datetime, end: datetime, user: str, now: datetime, existing: Iterable[Override]
) -> str | None:
    """Why an override may not be created, or None if it may.

    Only members of the roster in effect when the override starts may cover: the user group, reminders
    and the duties checklist assume the person on call is on the rotation. An override may not start
    before `now`, so past shifts keep the person who actually had them.
    """
    _require_aware(start, end, now)
    if end <= start:
        return f"The override ends ({_local(rotation, end)}) before it starts ({_local(rotation, start)})."
    if start < now:
        return (
            f"The override starts in the past ({_local(rotation, start)}); "
            f"it can only change who is on call from now on."
        )
    roster, _ = _roster(rotation, max(_index_at(rotation, start), 0))
    if user not in roster:
        return (
            f"<@{user}> is not on the {rotation.name} rotation, so cannot cover; "
            f"members are {', '.join(f'<@{m}>' for m in roster)}."
        )
    for other in existing:
        if other.start < end and start < other.end:
            return (
                f"It overlaps <@{other.user}>'s override from {_local(rotation, other.start)} "
                f"to {_local(rotation, other.end)}."
            )
    return None


def _roster(rotation: Rotation, index: int) -> tuple[list[str], int]:
    """The member list in effect for shift `index` and the index of the first shift it applied to."""
    roster, first_index = rotation.members, 0
    for change in rotation.member_changes:
        change_index = _first_index_on_or_after(rotation, change.effective)
        if change_index > index:
            break
        roster, first_index = change.members, change_index
    return roster, first_index


def _segments(
    rotation: Rotation, between_start: datetime, between_end: datetime, overrides: tuple[Override, ...]
) -> list[tuple[datetime, datetime, str | None]]:
    """The rotation's whole shifts overlapping the window, plus the time before its first handoff
    (nobody on call) when the window or an override reaches back there."""
    segments: list[tuple[datetime, datetime, str | None]] = []
    first = _boundary(rotation, 0)
    earliest = min([between_start, *(o.start for o in overrides)])
    if earliest < first:
        segments.append((earliest, first, None))
    index = max(_index_at(rotation, between_start), 0)
    while (start := _boundary(rotation, index)) < between_end:
        segments.append((start, _boundary(rotation, index + 1), member_for(rotation, index)))
        index += 1
    return segments


def _boundary(rotation: Rotation, index: int) -> datetime:
    """The start of the rotation's `index`-th shift as a UTC instant (fold=0, see module docstring)."""
    day = rotation.first_day + timedelta(days=index * rotation.shift_days)
    return datetime.combine(day, rotation.handoff_time, tzinfo=rotation.zone).astimezone(UTC)


def _index_at(rotation: Rotation, at: datetime) -> int:
    """The index of the shift in effect at `at`; -1 before the first handoff."""
    local_day = at.astimezone(rotation.zone).date()
    index = (local_day - rotation.first_day).days // rotation.shift_days
    while _boundary(rotation, index) > at:
        index -= 1
    while _boundary(rotation, index + 1) <= at:
        index += 1
    return max(index, -1)


def _first_index_on_or_after(rotation: Rotation, day: date) -> int:
    return max(0, -(-(day - rotation.first_day).days // rotation.shift_days))


def _local(rotation: Rotation, at: datetime) -> str:
    local = at.astimezone(rotation.zone)
    return f"{local:%a} {local.day} {local:%b %Y %H:%M %Z}"


def _require_aware(*instants: datetime) -> None:
    if any(i.tzinfo is None or i.utcoffset() is None for i in instants):
        raise ValueError("on-call times must be timezone-aware datetimes")
