"""Silences: for a while, alerts for a datagen job or for a model's environment are stored, not posted.

The Silence buttons on alerts and `/mlops silence` write them; the datagen and Alertmanager intakes ask
`current` before they post.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.context import Context
from bot.releases.messages import when
from bot.store import iso

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
    """What a silence covers, as people say it: a datagen job, a pipeline, or a model's environment (Alertmanager)."""
    if source in ("datagen", "pipelines"):
        return f"{'datagen' if source == 'datagen' else 'pipeline'} `{matcher}`"
    return matcher.replace("/", " ")


@dataclass(frozen=True)
class Silence:
    id: int
    source: str  # "datagen", "pipelines" or "alertmanager"
    matcher: str  # a datagen job, a DAG id, or "model/env" for Alertmanager
    until: datetime
    created_by: str


class Silences:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def _active(self, where: str = "", params: tuple = ()) -> list[Silence]:
        rows = self.ctx.store.query(
            f"SELECT id, source, matcher, until, created_by FROM silences WHERE until > ? {where} ORDER BY until DESC",
            (iso(self.ctx.clock()), *params))
        return [Silence(r["id"], r["source"], r["matcher"], datetime.fromisoformat(r["until"]), r["created_by"]) for r in rows]

    def active(self) -> list[Silence]:
        return sorted(self._active(), key=lambda s: s.until)

    def current(self, source: str, matcher: str) -> Silence | None:
        """The longest-lasting silence now in force for these alerts, if any."""
        found = self._active("AND source = ? AND matcher = ?", (source, matcher))
        return found[0] if found else None

    def add(self, source: str, matcher: str, until: datetime, user: str) -> int:
        row = self.ctx.store.db["silences"].insert({"source": source, "matcher": matcher, "until": iso(until),
                                                    "created_by": user, "created_at": iso(self.ctx.clock())})
        return int(row.last_pk)

    def silence(self, source: str, matcher: str, span: timedelta, user: str, channel: str) -> str:
        """`/mlops silence`: hold back these alerts for `span`; returns the channel's announcement."""
        until = self.ctx.clock() + span
        with self.ctx.store.transaction():
            silence_id = self.add(source, matcher, until, user)
            self.ctx.audit(actor=user, channel=channel, verb="silence", status="ok",
                           detail={"silence": silence_id, "source": source, "matcher": matcher, "until": iso(until)})
        return (f":no_bell: <@{user}> silenced alerts for {describe(source, matcher)} until {when(until)} (#{silence_id}): "
                f"they are stored, not posted. `/mlops silence end {silence_id}` ends it early.")

    def plan(self, source: str | None, matcher: str, span: timedelta, *, end: int | None = None) -> str:
        """What `/mlops silence` would do, as mrkdwn, writing nothing; SilenceError when it would be refused."""
        if end is not None:
            found = self._active("AND id = ?", (end,))
            if not found:
                raise SilenceError(f"there is no active silence #{end}; `/mlops silence` lists them")
            ended = found[0]
            return (f"*Dry run*: `/mlops silence end {end}` would end silence #{end} (by <@{ended.created_by}>, until "
                    f"{when(ended.until)}): alerts for {describe(ended.source, ended.matcher)} would be posted again. "
                    "Nothing was changed.")
        if source is None:
            return "*Dry run*: `/mlops silence` alone only lists the silences; it changes nothing.\n" + self.listing()
        until = self.ctx.clock() + span
        said = (f"*Dry run*: `/mlops silence` would hold back alerts for {describe(source, matcher)} until {when(until)}: "
                "they would be stored, not posted.")
        already = self.current(source, matcher)
        if already is not None:
            said += (f" Silence #{already.id} by <@{already.created_by}> already holds them back until "
                     f"{when(already.until)}; this would add another.")
        return said + " Nothing was changed."

    def listing(self) -> str:
        lines = [f"• #{s.id} {describe(s.source, s.matcher)} until {when(s.until)}, by <@{s.created_by}>"
                 for s in self.active()]
        if not lines:
            return "No silences are in force."
        return "Silences in force:\n" + "\n".join(lines) + "\n`/mlops silence end ID` ends one early."

    def end(self, silence_id: int, user: str, channel: str) -> str:
        """End a silence now, so later alerts are posted again; returns the channel's announcement."""
        now = self.ctx.clock()
        found = self._active("AND id = ?", (silence_id,))
        if not found:
            reason = f"there is no active silence #{silence_id}; `/mlops silence` lists them"
            self.ctx.audit(actor=user, channel=channel, verb="silence.end", status="refused",
                           detail={"silence": silence_id, "reason": reason})
            raise SilenceError(reason)
        ended = found[0]
        with self.ctx.store.transaction() as conn:
            conn.execute("UPDATE silences SET until = ? WHERE id = ?", (iso(now), silence_id))
            self.ctx.audit(actor=user, channel=channel, verb="silence.end", status="ok",
                           detail={"silence": silence_id, "source": ended.source, "matcher": ended.matcher})
        return (
            f":bell: <@{user}> ended silence #{silence_id}: alerts for {describe(ended.source, ended.matcher)} are posted again."
        )
