"""The sandbox's movable clock: `/clock +3d` or `/clock 2026-12-07 10:05 America/Los_Angeles`.

The bot reads the time only through the clock injected into its Runtime, so moving this one moves the bot.
Moving it forward runs the scheduled work that fell due in between, in order of due time, with the clock
set to each job's due time while it runs: handoffs, reminders, digests, datagen polls (late-data alerts).
Jobs that fire every few minutes (the datagen poll, the on-call tick) run at most once per hour skipped, a
3-day move would otherwise run them hundreds of times for the same result. The clock never moves back:
the store's records and the once-only bookkeeping of scheduled posts only make sense forward.
"""
from __future__ import annotations

import asyncio
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.runtime import Runtime
from bot.scheduler import Scheduler
from bot.store import utcnow

USAGE = "/clock +3d | +2h30m | YYYY-MM-DD HH:MM [IANA zone, default UTC]"
COALESCE = timedelta(hours=1)
_STEP = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class SandboxClock:
    """The real time plus an offset; pinned to a due time while that job runs."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.pinned: datetime | None = None

    def __call__(self) -> datetime:
        return self.pinned or utcnow() + self.offset


def parse_target(text: str, now: datetime) -> datetime:
    """The instant `/clock TEXT` names; ValueError with the usage if it names none."""
    text = text.strip()
    if text.startswith("+"):
        steps = _STEP.findall(text[1:])
        if not steps or "".join(n + u for n, u in steps) != text[1:]:
            raise ValueError(f"not a step like +3d or +2h30m: {text!r}; {USAGE}")
        return now + sum((timedelta(**{_UNITS[u]: int(n)}) for n, u in steps), timedelta(0))
    parts = text.split()
    try:
        zone = ZoneInfo(parts[2]) if len(parts) == 3 else UTC
        if len(parts) not in (2, 3):
            raise ValueError
        return datetime.fromisoformat(f"{parts[0]} {parts[1]}").replace(tzinfo=zone).astimezone(UTC)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"not a time: {text!r}; {USAGE}") from None


def due_between(scheduler: Scheduler, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """(due time, job) of every slot in (start, end], oldest first; frequent jobs thinned to one per COALESCE."""
    due = []
    for job_id, job in scheduler.jobs.items():
        kept: datetime | None = None
        cursor = job.trigger.get_next_fire_time(None, start + timedelta(microseconds=1))
        while cursor is not None and cursor <= end:
            if kept is None or cursor - kept >= COALESCE:
                due.append((cursor, job_id))
                kept = cursor
            cursor = job.trigger.get_next_fire_time(cursor, cursor + timedelta(microseconds=1))
    return sorted(due)


async def _idle(runtime: Runtime, timeout: float = 60) -> None:
    """Wait for the background work a job started, so the next job runs after it as it would in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (runtime.tasks.names or runtime.hooks.pending()) and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def move(runtime: Runtime, clock: SandboxClock, text: str) -> tuple[datetime, Counter[str]]:
    """Move the clock to the time `/clock TEXT` names, running what fell due on the way: the new time, and how
    many times each job ran. ValueError (with the usage) for a time it cannot move to."""
    now = clock()
    target = parse_target(text, now)
    if target < now:
        raise ValueError(f"the clock only moves forward; it is {now:%Y-%m-%d %H:%M} UTC")
    ran: Counter[str] = Counter()
    try:
        for slot, job_id in due_between(runtime.scheduler, now, target):
            clock.pinned = slot
            if await runtime.scheduler.run_job(job_id, slot):
                ran[job_id] += 1
            await _idle(runtime)
    finally:
        clock.pinned = None
        clock.offset = target - utcnow()
    return target, ran
