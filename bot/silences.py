"""Silences: for a while, alerts for a datagen job or for a model's environment are stored, not posted.

The Silence buttons on alerts and `/mlops silence` write them; the datagen and Alertmanager intakes ask
`current` before they post.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.store import iso

if TYPE_CHECKING:
    from bot.runtime import Runtime

LONGEST = timedelta(days=7)
_DURATION = re.compile(r"(\d{1,4})([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class SilenceError(ValueError):
    """A silence that cannot be set or ended; the message says why."""


def parse_duration(text: str) -> timedelta:
    """`30m`, `4h`, `2d`: from a minute up to LONGEST, so nothing is forgotten under a silence for good."""
    found = _DURATION.fullmatch(text.strip().lower())
    if not found:
        raise SilenceError(f"`{text}` is not a duration; write it like 30m, 4h or 2d")
    span = timedelta(**{_UNITS[found[2]]: int(found[1])})
    if not timedelta(0) < span <= LONGEST:
        raise SilenceError("a silence lasts from 1m up to 7d")
    return span


def describe(source: str, matcher: str) -> str:
    """What a silence covers, as people say it: a datagen job, or a model's environment (Alertmanager)."""
    return f"datagen `{matcher}`" if source == "datagen" else matcher.replace("/", " ")


@dataclass(frozen=True)
class Silence:
    id: int
    source: str  # "datagen" or "alertmanager"
    matcher: str  # a datagen job, or "model/env" for Alertmanager
    until: datetime
    created_by: str


class Silences:
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def _active(self, where: str = "", params: tuple = ()) -> list[Silence]:
        rows = self.rt.store.query(
            f"SELECT id, source, matcher, until, created_by FROM silences WHERE until > ? {where} ORDER BY until DESC",
            (iso(self.rt.clock()), *params))
        return [Silence(r["id"], r["source"], r["matcher"], datetime.fromisoformat(r["until"]), r["created_by"]) for r in rows]

    def active(self) -> list[Silence]:
        return sorted(self._active(), key=lambda s: s.until)

    def current(self, source: str, matcher: str) -> Silence | None:
        """The longest-lasting silence now in force for these alerts, if any."""
        found = self._active("AND source = ? AND matcher = ?", (source, matcher))
        return found[0] if found else None

    def add(self, source: str, matcher: str, until: datetime, user: str) -> int:
        row = self.rt.store.db["silences"].insert({"source": source, "matcher": matcher, "until": iso(until),
                                                   "created_by": user, "created_at": iso(self.rt.clock())})
        return int(row.last_pk)

    def end(self, silence_id: int, user: str) -> Silence:
        """End a silence now; later alerts are posted again."""
        now = self.rt.clock()
        found = self._active("AND id = ?", (silence_id,))
        if not found:
            raise SilenceError(f"there is no active silence #{silence_id}; `/mlops silence` lists them")
        with self.rt.store.transaction() as conn:
            conn.execute("UPDATE silences SET until = ? WHERE id = ?", (iso(now), silence_id))
            self.rt.audit(actor=user, verb="silence.end", status="ok", detail={"silence": silence_id,
                                                                               "source": found[0].source,
                                                                               "matcher": found[0].matcher})
        return found[0]
