"""A monitor's stored records and when each is due: the history the rules read and the summary compares.

Pure rules of timing, and the reads and writes of `datagen_reports` (which holds every monitor's records, the
datagen job's and those of `monitors`: one name space); no Slack.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import DatagenJob, Monitor, Watched
from bot.monitors.datagen import Report, parse_report
from bot.monitors.record import Record, parse_record
from bot.serving.artifacts import open_store
from bot.store import Store, iso

Parser = Callable[..., Record]  # (raw, *, run_date) -> the record; ReportError when it cannot be read


def due_at(job: Watched, run_date: date) -> datetime:
    """When the record of `run_date` should exist: a datagen job's start in its zone plus its typical run time;
    a monitor's first scheduled slot of that day."""
    if isinstance(job, Monitor):
        midnight = datetime.combine(run_date, time(0), ZoneInfo(job.tz))
        return job.schedule.trigger().get_next_fire_time(None, midnight).astimezone(UTC)
    assert isinstance(job, DatagenJob)
    start = datetime.combine(run_date, job.expected_at, ZoneInfo(job.tz))
    return (start + timedelta(minutes=job.typical_runtime_minutes)).astimezone(UTC)


def parser_of(job: Watched) -> Parser:
    """The datagen job's record keeps its own parser; any other monitor's is one JSON object of numbers."""
    return parse_report if isinstance(job, DatagenJob) else parse_record


def run_date_at(job: Watched, now: datetime) -> date:
    return now.astimezone(ZoneInfo(job.tz)).date()


def source_uri(job: DatagenJob | Monitor, run_date: date) -> str:
    assert job.source is not None  # a source monitor's, or a datagen job's
    return job.source.format(date=run_date.isoformat())


def load_history(store: Store, job: str, parse: Parser = parse_report) -> tuple[dict[date, Any], set[date]]:
    """Every stored record of `job` by run date (read by `parse`), and the days marked expected."""
    reports, expected = {}, set()
    for day_text, raw, marked in store.conn.execute(
            "SELECT run_date, raw, expected FROM datagen_reports WHERE job = ?", (job,)):
        day = date.fromisoformat(day_text)
        reports[day] = parse(raw, run_date=day)
        if marked:
            expected.add(day)
    return reports, expected


def stored_raw(store: Store, job: str, run_date: date) -> str | None:
    row = store.conn.execute("SELECT raw FROM datagen_reports WHERE job = ? AND run_date = ?",
                             (job, run_date.isoformat())).fetchone()
    return row[0] if row else None


def save_record(store: Store, job: str, run_date: date, text: str, source: str, *, actor: str, at: datetime) -> bool:
    """Store a readable record with its audit row; False when the very same record is already stored."""
    if stored_raw(store, job, run_date) == text:
        return False
    with store.transaction() as conn:
        # A rerun of the job replaces its record; the day's "expected" mark stays.
        conn.execute(
            "INSERT INTO datagen_reports (job, run_date, raw, source, ingested_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(job, run_date) DO UPDATE SET raw = excluded.raw, source = excluded.source, "
            "ingested_at = excluded.ingested_at",
            (job, run_date.isoformat(), text, source, iso(at)))
        store.audit(actor=actor, verb="datagen.ingest", status="ok", model=job, version=run_date.isoformat(),
                    detail={"source": source}, at=at)
    return True


async def read_source(uri: str, s3_endpoint_url: str | None) -> bytes:
    folder, _, name = uri.rpartition("/")
    return await open_store(folder, s3_endpoint_url=s3_endpoint_url).read(name)


def gap_before(reported: Collection[date], run_date: date, lookback: int) -> list[date]:
    """The days right before `run_date` that have no record, oldest first: back to the previous record, at most
    `lookback` days, and none before the first record (a job's history starts somewhere)."""
    first = min(reported, default=run_date)
    days = []
    for k in range(1, lookback + 1):
        day = run_date - timedelta(days=k)
        if day in reported or day < first:
            break
        days.append(day)
    return days[::-1]


def unreported(reported: Collection[date], today: date, lookback: int) -> list[date]:
    """Every day of the last `lookback` up to `today` that has no record, after the first record."""
    first = min(reported, default=today)
    return [day for k in range(lookback - 1, -1, -1)
            if (day := today - timedelta(days=k)) > first and day not in reported]


def usual_runtime(history: Mapping[date, Report], run_date: date, days: int = 14) -> timedelta | None:
    """The median run time of the successful runs in the `days` before `run_date`."""
    times = sorted(r.run_time for d, r in history.items()
                   if run_date - timedelta(days=days) <= d < run_date and not r.failed and r.run_time is not None)
    return times[len(times) // 2] if times else None
