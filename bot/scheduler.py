"""Scheduled posts on APScheduler 3, with once-only bookkeeping in SQLite.

APScheduler decides *when* to wake up; which slot a wake-up belongs to is computed from the job's trigger
and the runtime's clock, and claimed in the `job_runs` table before the job runs. So a slot is posted once
even across restarts, a slot missed while the bot was down is posted at start when still within its grace,
and tests drive the same code with an injected clock through `run_due(now)`.

A claim is taken before the job runs, so a process killed mid-job would lose that slot for good. A job added
with `resumable=True` (one that can tell, from its own records, what it already did for a slot) has its
claim marked finished when it ends; an unfinished claim that no job of this process is running was left by
a process that died, and runs again, at most MAX_ATTEMPTS times so a job that kills the bot cannot make it
crash-loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from bot.store import Store, iso

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3

JobFunc = Callable[[datetime], Awaitable[None]]


@dataclass(frozen=True)
class Job:
    id: str
    trigger: BaseTrigger
    func: JobFunc
    grace: timedelta
    resumable: bool = False


def daily(at: time, tz: str, weekday: str | None = None) -> CronTrigger:
    return CronTrigger(hour=at.hour, minute=at.minute, day_of_week=weekday[:3] if weekday else "*", timezone=tz)


def last_slot(trigger: BaseTrigger, now: datetime, grace: timedelta) -> datetime | None:
    """The latest fire time of `trigger` in (now - grace, now], or None."""
    slot, cursor = None, trigger.get_next_fire_time(None, now - grace)
    while cursor is not None and cursor <= now:
        slot, cursor = cursor, trigger.get_next_fire_time(cursor, cursor + timedelta(microseconds=1))
    return slot


class Scheduler:
    def __init__(self, store: Store, clock: Callable[[], datetime]):
        self.store = store
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._running: set[tuple[str, str]] = set()  # (job, slot) running in this process

    def add(self, job_id: str, trigger: BaseTrigger, func: JobFunc, *, grace: timedelta = timedelta(hours=6),
            resumable: bool = False) -> None:
        self.jobs[job_id] = Job(job_id, trigger, func, grace, resumable)

    @property
    def running(self) -> bool:
        return self._aps.running

    def start(self) -> None:
        for job in self.jobs.values():
            self._aps.add_job(self.run_job, job.trigger, args=[job.id], id=job.id, coalesce=True, max_instances=1)
        self._aps.start()

    def shutdown(self) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=False)

    async def run_due(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """Run every job whose latest slot is due and unclaimed; at start this catches up missed slots."""
        ran = []
        for job_id in self.jobs:
            slot = await self.run_job(job_id, now)
            if slot:
                ran.append((job_id, slot))
        return ran

    async def run_job(self, job_id: str, now: datetime | None = None) -> datetime | None:
        job = self.jobs[job_id]
        now = now or self.clock()
        slot = last_slot(job.trigger, now, job.grace)
        if slot is None:
            return None
        key = (job.id, iso(slot))
        if key in self._running:  # APScheduler and the catch-up at start woke up for the same slot
            return None
        claimed = self.store.claim_slot(job.id, key[1], now, {"finished": False, "attempt": 1} if job.resumable else None)
        if not claimed and not (job.resumable and self._take_over(key, now)):
            return None
        self._running.add(key)
        try:
            await job.func(slot)
        except asyncio.CancelledError:
            raise  # a stopping bot cut it short: left unfinished, so the next start runs it again
        except Exception:
            # One failed post must not stop the schedule; the slot stays claimed so it is not spammed.
            log.exception("scheduled job %s failed for slot %s", job.id, slot)
        finally:
            self._running.discard(key)
        if job.resumable:
            self.store.conn.execute("UPDATE job_runs SET detail = json_set(detail, '$.finished', json('true')) "
                                    "WHERE job = ? AND slot = ?", key)
        return slot

    def _take_over(self, key: tuple[str, str], now: datetime) -> bool:
        """Claim again a slot whose job a dead process left unfinished (this process is not running it)."""
        row = self.store.conn.execute("SELECT detail FROM job_runs WHERE job = ? AND slot = ?", key).fetchone()
        detail = json.loads(row[0]) if row else {}
        if detail.get("finished") is not False:
            return False
        attempt = int(detail.get("attempt", 1))
        if attempt >= MAX_ATTEMPTS:
            log.error("scheduled job %s for slot %s was cut short %d times; not running it again", *key, attempt)
            return False
        log.warning("scheduled job %s for slot %s was cut short by a stop or a crash; running it again", *key)
        return self.store.conn.execute(
            "UPDATE job_runs SET ran_at = ?, detail = ? WHERE job = ? AND slot = ? AND detail = ?",
            (iso(now), json.dumps({"finished": False, "attempt": attempt + 1}), *key, row[0])).rowcount == 1
