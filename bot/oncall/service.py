"""On-call in Slack: handoffs with a shift summary, reminders, overrides and cover requests, @oncall and topic.

Each rotation gets three scheduled jobs (slots claimed in `job_runs`, so each runs once, also across
restarts, and one missed while the bot was down runs at start within its grace):
- `handoff` at each shift change: the handoff card, then the Slack state sync; a handoff a crash cut short is
  run again at the next start and posts the card only if no card was recorded for its slot;
- `day-before`, 24 h before each shift change: a DM to whoever will be on call;
- `tick`, every 15 minutes: the Slack state sync (overrides start and end between handoffs) and the one
  reminder to acknowledge a handoff left unacknowledged for an hour.
The user group and the topic follow the schedule through slack_state.py.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from bot.context import Context
from bot.notifier import Message, SlackError
from bot.oncall import messages
from bot.oncall.grammar import AskCover, CreateOverride, OnCallRequest, ShowNow, ShowSchedule, Undo
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
from bot.oncall.slack_state import BOT, SlackState
from bot.oncall.summary import summarize
from bot.scheduler import Scheduler
from bot.store import iso

log = logging.getLogger(__name__)

HANDOFF_GRACE = timedelta(hours=12)
DAY_BEFORE = timedelta(hours=24)
DAY_BEFORE_GRACE = timedelta(hours=6)
ACK_WITHIN = timedelta(hours=1)
TICK_EVERY_MINUTES = 15


# The audit verb of each request's outcome.
_VERBS = {ShowNow: "oncall", ShowSchedule: "oncall.schedule", CreateOverride: "oncall.override",
          AskCover: "oncall.cover", Undo: "oncall.undo"}


class OnCallError(Exception):
    """A request that cannot be done; the message tells the person why and what to do instead."""


class HandoffTrigger(BaseTrigger):
    """Fires at the rotation's handoffs shifted by `offset`: the pure schedule's instants, which also covers
    N-day shifts and reads DST-skipped handoff times the way `schedule` does."""

    def __init__(self, rotation: Rotation, offset: timedelta = timedelta(0)):
        self.rotation = rotation
        self.offset = offset

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        after = now if previous_fire_time is None else max(now, previous_fire_time + timedelta(microseconds=1))
        start = after - self.offset
        found = handoff_times(self.rotation, start, start + timedelta(days=self.rotation.shift_days + 1))
        return found[0] + self.offset if found else None


class OnCallService:
    def __init__(self, ctx: Context, *, scheduler: Scheduler):
        self.ctx = ctx
        self.rotations = {r.name: r for r in ctx.config.oncall.rotations}
        self.slack_state = SlackState(ctx, self.rotations)
        tick = CronTrigger(minute=f"*/{TICK_EVERY_MINUTES}", timezone=UTC)
        for name, rotation in self.rotations.items():
            add = scheduler.add
            # Resumable: post_handoff knows from oncall_handoffs whether a crashed process got the card out.
            add(f"oncall.{name}.handoff", HandoffTrigger(rotation), partial(self.post_handoff, rotation), grace=HANDOFF_GRACE,
                resumable=True)
            add(f"oncall.{name}.day-before", HandoffTrigger(rotation, -DAY_BEFORE), partial(self.remind_day_before, rotation),
                grace=DAY_BEFORE_GRACE)
            add(f"oncall.{name}.tick", tick, partial(self.tick, rotation), grace=timedelta(minutes=TICK_EVERY_MINUTES))

    # -- records ----------------------------------------------------------------------------------

    def overrides(self, rotation: Rotation) -> list[Override]:
        """Live overrides in creation order (the schedule lets the later one win where two overlap)."""
        rows = self.ctx.store.conn.execute(
            "SELECT user, start, end FROM oncall_overrides WHERE rotation = ? AND deleted_at IS NULL ORDER BY id",
            (rotation.name,),
        )
        return [Override(user=user, start=_at(start), end=_at(end)) for user, start, end in rows]

    def _row(self, sql: str, *params: Any) -> dict[str, Any] | None:
        return next(iter(self.ctx.store.db.query(sql, params)), None)

    def summary(self, since: datetime, until: datetime, now: datetime) -> messages.ShiftSummary:
        db = self.ctx.store.db
        return summarize(
            actions=self.ctx.store.actions(since=since),
            alerts=db.query(
                "SELECT * FROM alerts WHERE source IN ('datagen', 'pipelines') AND (opened_at >= ? OR resolved_at IS NULL) "
                "ORDER BY id",
                [iso(since)],
            ),
            releases=db.query("SELECT * FROM releases WHERE state IN ('staged', 'verify_failed', 'verified') ORDER BY id"),
            locks=db.query("SELECT * FROM locks ORDER BY model, env"),
            since=since,
            until=until,
            now=now,
        )

    # -- scheduled jobs ---------------------------------------------------------------------------

    async def post_handoff(self, rotation: Rotation, slot: datetime) -> None:
        now = self.ctx.clock()
        overrides = self.overrides(rotation)
        incoming = who_is_on_call(rotation, slot, overrides)
        if incoming is None:  # only before the rotation's first shift, which no handoff precedes
            return
        earlier = self._row("SELECT * FROM oncall_handoffs WHERE rotation = ? AND slot = ?", rotation.name, iso(slot))
        if earlier is not None and earlier["ts"]:  # posted by a process that died before the job ended
            await self.sync_slack(rotation, now)
            return
        outgoing = who_is_on_call(rotation, slot - timedelta.resolution, overrides)
        summary = self.summary(_previous_handoff(rotation, slot), slot, now)
        with self.ctx.store.transaction() as conn:
            if earlier is None:
                handoff_id = conn.execute(
                    "INSERT INTO oncall_handoffs (rotation, slot, outgoing, incoming, channel, posted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (rotation.name, iso(slot), outgoing and outgoing.user, incoming.user, rotation.channel, iso(now)),
                ).lastrowid
            else:
                # Its post was cut short by a crash, with no ts recorded: Slack most likely never took it (a post
                # Slack took in the last moments before the crash would show twice; Slack has no idempotent post).
                handoff_id = earlier["id"]
                conn.execute("UPDATE oncall_handoffs SET outgoing = ?, incoming = ?, posted_at = ? WHERE id = ?",
                             (outgoing and outgoing.user, incoming.user, iso(now), handoff_id))
        card = messages.handoff_message(
            rotation.name, outgoing and outgoing.user, incoming, next_shift(rotation, slot, overrides), rotation.duties,
            summary, str(handoff_id), usergroup=rotation.usergroup,
        )
        audit = {"actor": BOT, "verb": "oncall.handoff", "channel": rotation.channel}
        detail = {"rotation": rotation.name, "slot": iso(slot), "handoff": handoff_id, "incoming": incoming.user}
        try:
            ts = await self.ctx.notifier.post(rotation.channel, card)
        except SlackError as exc:
            self.ctx.audit(**audit, status="failed", detail={**detail, "error": exc.error})
            return
        self.ctx.store.conn.execute(
            "UPDATE oncall_handoffs SET ts = ?, message = ? WHERE id = ?", (ts, json.dumps(asdict(card)), handoff_id)
        )
        self.ctx.audit(**audit, status="posted", detail={**detail, "outgoing": outgoing and outgoing.user, "ts": ts})
        await self.sync_slack(rotation, now)

    async def remind_day_before(self, rotation: Rotation, slot: datetime) -> None:
        shift = who_is_on_call(rotation, slot + DAY_BEFORE, self.overrides(rotation))
        if shift is None:
            return
        audit = {"actor": BOT, "verb": "oncall.reminder", "detail": {"rotation": rotation.name, "user": shift.user,
                                                                      "shift_start": iso(shift.start)}}
        try:
            await self.ctx.notifier.dm(shift.user, messages.reminder_message(shift.user, shift, rotation_name=rotation.name))
        except SlackError as exc:
            self.ctx.audit(**audit, status="failed")
            log.warning("day-before reminder to %s failed: %s", shift.user, exc.error)
            return
        self.ctx.audit(**audit, status="sent")

    async def tick(self, rotation: Rotation, slot: datetime) -> None:
        now = self.ctx.clock()
        await self.sync_slack(rotation, now)
        await self.remind_unacknowledged(rotation, now)

    async def remind_unacknowledged(self, rotation: Rotation, now: datetime) -> None:
        """One DM to the incoming person when the current handoff is still unacknowledged an hour after it was posted."""
        latest = self._row("SELECT * FROM oncall_handoffs WHERE rotation = ? ORDER BY slot DESC LIMIT 1", rotation.name)
        if latest is None or latest["ts"] is None or latest["acked_by"] or latest["reminded_at"]:
            return
        if _at(latest["posted_at"]) > now - ACK_WITHIN:
            return
        claimed = self.ctx.store.conn.execute(
            "UPDATE oncall_handoffs SET reminded_at = ? WHERE id = ? AND reminded_at IS NULL AND acked_by IS NULL",
            (iso(now), latest["id"]),
        ).rowcount
        if not claimed:
            return
        user, slot = latest["incoming"], _at(latest["slot"])
        shift = who_is_on_call(rotation, slot, self.overrides(rotation)) or Shift(slot, slot, user, False)
        audit = {"actor": BOT, "verb": "oncall.ack_reminder", "detail": {"handoff": latest["id"], "user": user}}
        try:
            await self.ctx.notifier.dm(user, messages.ack_reminder(rotation.name, user, shift))
        except SlackError as exc:
            self.ctx.audit(**audit, status="failed")
            log.warning("acknowledge reminder to %s failed: %s", user, exc.error)
            return
        self.ctx.audit(**audit, status="sent")

    # -- Slack state ------------------------------------------------------------------------------

    async def sync_slack(self, rotation: Rotation, now: datetime) -> None:
        """Point the user group and the channel topic at whoever is on call, writing only what changed."""
        shift = who_is_on_call(rotation, now, self.overrides(rotation))
        if shift is not None:  # before the first shift: leave the group alone rather than empty it
            await self.slack_state.sync(rotation, shift, now)

    # -- /mlops oncall ----------------------------------------------------------------------------

    async def handle(self, request: OnCallRequest, actor: str, channel: str, response_url: str) -> None:
        """Run one parsed `/mlops oncall` request and answer the person who typed it (ephemerally)."""
        now = self.ctx.clock()
        try:
            match request:
                case ShowNow(rotation):
                    overrides = self.overrides(rotation)
                    answer = messages.now_and_next(
                        rotation.name, who_is_on_call(rotation, now, overrides), next_shift(rotation, now, overrides),
                        usergroup=rotation.usergroup,
                    )
                case ShowSchedule(rotation, weeks):
                    answer = messages.schedule_table(
                        rotation.name, shifts(rotation, now, now + timedelta(weeks=weeks), self.overrides(rotation))
                    )
                case CreateOverride():
                    answer = await self.create_override(request, actor, now)
                case AskCover():
                    answer = await self.ask_cover(request, actor, now)
                case Undo(override_id):
                    answer = await self.undo(override_id, actor, now)
        except OnCallError as exc:
            self.ctx.audit(actor=actor, verb=_VERBS[type(request)], status="rejected", channel=channel,
                           detail={"error": str(exc)})
            answer = Message(f":warning: {exc}")
        await self.ctx.notifier.respond(response_url, answer)

    async def create_override(self, ask: CreateOverride, actor: str, now: datetime) -> Message:
        rotation = ask.rotation
        with self.ctx.store.transaction() as conn:
            if problem := validate_override(rotation, ask.start, ask.end, ask.user, now, self.overrides(rotation)):
                raise OnCallError(problem)
            override_id = self._insert_override(conn, rotation, ask.user, ask.start, ask.end, actor, now)
            self.ctx.audit(actor=actor, verb="oncall.override", status="succeeded", channel=rotation.channel,
                           detail={"override": override_id, "rotation": rotation.name, "user": ask.user,
                                   "start": iso(ask.start), "end": iso(ask.end)})
        notice = messages.override_notice(rotation.name, override_id, ask.user, ask.start, ask.end, actor)
        await self._announce(rotation, notice)
        await self.sync_slack(rotation, now)
        return Message(f"Override #{override_id} created. {notice.text}")

    async def ask_cover(self, ask: AskCover, actor: str, now: datetime) -> Message:
        rotation = ask.rotation
        # The requester stands in for the eventual taker: same range checks, and only members ask.
        if problem := validate_override(rotation, ask.start, ask.end, actor, now, self.overrides(rotation)):
            raise OnCallError(problem)
        with self.ctx.store.transaction() as conn:
            request_id = conn.execute(
                "INSERT INTO oncall_cover_requests (rotation, requester, start, end, channel, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rotation.name, actor, iso(ask.start), iso(ask.end), rotation.channel, iso(now)),
            ).lastrowid
        card = messages.cover_request(actor, ask.start, ask.end, str(request_id), rotation_name=rotation.name)
        try:
            ts = await self.ctx.notifier.post(rotation.channel, card)
        except SlackError as exc:
            self.ctx.store.conn.execute("DELETE FROM oncall_cover_requests WHERE id = ?", (request_id,))
            raise OnCallError(f"Could not post the cover request in <#{rotation.channel}> ({exc.error}); try again.") from exc
        self.ctx.store.conn.execute("UPDATE oncall_cover_requests SET ts = ? WHERE id = ?", (ts, request_id))
        self.ctx.audit(actor=actor, verb="oncall.cover", status="requested", channel=rotation.channel,
                       detail={"request": request_id, "rotation": rotation.name, "start": iso(ask.start), "end": iso(ask.end)})
        return Message(f"Asked <#{rotation.channel}> to cover for you; the first member to press *Take* gets it.")

    async def undo(self, override_id: int, actor: str, now: datetime) -> Message:
        with self.ctx.store.transaction() as conn:
            row = self._row("SELECT * FROM oncall_overrides WHERE id = ?", override_id)
            if row is None or row["deleted_at"]:
                raise OnCallError(f"There is no override #{override_id} to undo (see `/mlops oncall schedule`).")
            if row["created_by"] != actor:
                raise OnCallError(f"Only <@{row['created_by']}>, who created override #{override_id}, can undo it.")
            if _at(row["end"]) <= now:
                raise OnCallError(f"Override #{override_id} is already over; past shifts keep who actually had them.")
            # One in progress ends now, so the time already covered stays on record as covered.
            ended_early = _at(row["start"]) < now
            column = "end" if ended_early else "deleted_at"
            conn.execute(f"UPDATE oncall_overrides SET {column} = ? WHERE id = ?", (iso(now), override_id))
            self.ctx.audit(actor=actor, verb="oncall.undo", status="succeeded", detail={"override": override_id,
                                                                                        "ended_early": ended_early})
        rotation = self.rotations.get(row["rotation"])
        notice = messages.override_undone(row["rotation"], override_id, row["user"], actor, ended_early=ended_early)
        if rotation is not None:
            await self._announce(rotation, notice)
            await self.sync_slack(rotation, now)
        return notice

    # -- buttons ----------------------------------------------------------------------------------

    async def acknowledge(self, handoff_id: int, user: str, channel: str) -> None:
        now = self.ctx.clock()
        try:
            row = self._row("SELECT * FROM oncall_handoffs WHERE id = ?", handoff_id)
            if row is None or row["ts"] is None:
                raise OnCallError("This handoff is not in the bot's records; nothing to acknowledge.")
            if user != row["incoming"]:
                raise OnCallError(f"This handoff is for <@{row['incoming']}>; only they can acknowledge it.")
            with self.ctx.store.transaction() as conn:
                claimed = conn.execute(
                    "UPDATE oncall_handoffs SET acked_by = ?, acked_at = ? WHERE id = ? AND acked_by IS NULL",
                    (user, iso(now), handoff_id),
                ).rowcount
                if not claimed:
                    raise OnCallError("You already acknowledged this handoff.")
                self.ctx.audit(actor=user, verb="oncall.ack_handoff", status="succeeded", channel=row["channel"],
                               detail={"handoff": handoff_id, "rotation": row["rotation"]})
        except OnCallError as exc:
            await self._refuse(user, channel, "oncall.ack_handoff", exc, {"handoff": handoff_id})
            return
        posted = Message(**json.loads(row["message"]))
        await self.ctx.notifier.update(row["channel"], row["ts"], messages.handoff_acknowledged(posted, user, now))

    async def take(self, request_id: int, user: str, channel: str) -> None:
        """First taker wins: the check and the write happen in one BEGIN IMMEDIATE transaction."""
        now = self.ctx.clock()
        try:
            with self.ctx.store.transaction() as conn:
                row = self._row("SELECT * FROM oncall_cover_requests WHERE id = ?", request_id)
                if row is None or row["ts"] is None:
                    raise OnCallError("This cover request is not in the bot's records.")
                if row["taken_by"]:
                    raise OnCallError(f"Already taken by <@{row['taken_by']}>.")
                if user == row["requester"]:
                    raise OnCallError("You asked for this cover; someone else on the rotation has to take it.")
                rotation = self.rotations.get(row["rotation"])
                if rotation is None:
                    raise OnCallError(f"The {row['rotation']} rotation is no longer configured.")
                start, end = max(_at(row["start"]), now), _at(row["end"])
                if end <= now:
                    raise OnCallError("This cover request has already ended.")
                if problem := validate_override(rotation, start, end, user, now, self.overrides(rotation)):
                    raise OnCallError(problem)
                conn.execute(
                    "UPDATE oncall_cover_requests SET taken_by = ?, taken_at = ? WHERE id = ? AND taken_by IS NULL",
                    (user, iso(now), request_id),
                )
                # The requester owns the override: it is their shift, so they may undo it.
                override_id = self._insert_override(conn, rotation, user, start, end, row["requester"], now)
                conn.execute("UPDATE oncall_cover_requests SET override_id = ? WHERE id = ?", (override_id, request_id))
                self.ctx.audit(actor=user, verb="oncall.take", status="succeeded", channel=row["channel"],
                               detail={"request": request_id, "override": override_id, "start": iso(start), "end": iso(end)})
        except OnCallError as exc:
            await self._refuse(user, channel, "oncall.take", exc, {"request": request_id})
            return
        await self.ctx.notifier.update(row["channel"], row["ts"], messages.cover_taken(row["requester"], start, end, user))
        await self.sync_slack(rotation, now)

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _insert_override(conn: Any, rotation: Rotation, user: str, start: datetime, end: datetime, by: str,
                         now: datetime) -> int:
        return conn.execute(
            "INSERT INTO oncall_overrides (rotation, user, start, end, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (rotation.name, user, iso(start), iso(end), by, iso(now)),
        ).lastrowid

    async def _announce(self, rotation: Rotation, notice: Message) -> None:
        """Tell the channel; the change is made either way, so a failed post is logged, not raised."""
        try:
            await self.ctx.notifier.post(rotation.channel, notice)
        except SlackError as exc:
            log.warning("could not announce in %s: %s", rotation.channel, exc.error)

    async def _refuse(self, user: str, channel: str, verb: str, exc: OnCallError, detail: dict[str, Any]) -> None:
        self.ctx.audit(actor=user, verb=verb, status="rejected", channel=channel, detail={**detail, "error": str(exc)})
        await self.ctx.notifier.ephemeral(channel, user, Message(f":warning: {exc}"))


def _previous_handoff(rotation: Rotation, slot: datetime) -> datetime:
    """Where the outgoing shift began: the rotation's handoff before `slot` (a shift-length back for the first)."""
    length = timedelta(days=rotation.shift_days)
    earlier = handoff_times(rotation, slot - length - timedelta(hours=2), slot)
    return earlier[-1] if earlier else slot - length


def _at(stored: str) -> datetime:
    return datetime.fromisoformat(stored)
