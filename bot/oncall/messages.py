"""Block Kit for on-call: handoffs, reminders, the schedule, cover requests and the channel topic.

Times are Slack date tokens, so every reader sees them in their own zone; the fallback after `|` is
ISO 8601 UTC for clients that cannot render tokens. Lists that could outgrow Slack's limits (50 blocks
per message, 3000 characters per section) end in "and N more".
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from bot.notifier import Message, RowId
from bot.oncall.schedule import Shift

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
ACK_HANDOFF = "oncall.ack_handoff"
TAKE_COVER = "oncall.take"

# Room kept in every section for the "and N more" line.
_MORE_ROOM = len("\nand 999999 more")


class HandoffRef(BaseModel):
    """The Acknowledge button's value."""

    handoff: RowId


class CoverRef(BaseModel):
    """The Take button's value."""

    request: RowId


@dataclass(frozen=True)
class ReleaseEvent:
    """A deploy, promotion or rollback of one model version."""

    model: str
    version: str
    who: str
    when: datetime
    env: str | None = None


@dataclass(frozen=True)
class RetrainRun:
    model: str
    outcome: str
    when: datetime
    version: str | None = None


@dataclass(frozen=True)
class DatagenAlert:
    title: str
    fired: datetime
    still_open: bool


@dataclass(frozen=True)
class PipelineIncident:
    title: str
    fired: datetime
    still_open: bool
    retried_by: str | None = None


@dataclass(frozen=True)
class StagedVersion:
    """A version sitting on staging that nobody has verified."""

    model: str
    version: str
    deployed_by: str
    since: datetime


@dataclass(frozen=True)
class PendingApproval:
    model: str
    version: str
    requested_by: str
    since: datetime


@dataclass(frozen=True)
class HeldLock:
    model: str
    env: str
    holder: str
    reason: str
    expires: datetime | None = None


@dataclass(frozen=True)
class ShiftSummary:
    """What happened during the outgoing shift, from the bot's own records."""

    deploys: list[ReleaseEvent] = field(default_factory=list)
    promotions: list[ReleaseEvent] = field(default_factory=list)
    rollbacks: list[ReleaseEvent] = field(default_factory=list)
    retrains: list[RetrainRun] = field(default_factory=list)
    datagen_alerts: list[DatagenAlert] = field(default_factory=list)
    pipeline_incidents: list[PipelineIncident] = field(default_factory=list)
    unverified_staging: list[StagedVersion] = field(default_factory=list)
    approvals_pending: list[PendingApproval] = field(default_factory=list)
    locks_held: list[HeldLock] = field(default_factory=list)


def date_token(at: datetime) -> str:
    """A Slack date token that renders `at` in the reader's zone."""
    fallback = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def handoff_message(
    rotation_name: str,
    outgoing: str | None,
    incoming: Shift,
    next_shift: Shift | None,
    duties: list[str],
    summary: ShiftSummary,
    handoff_id: str,
    *,
    usergroup: str | None = None,
) -> Message:
    who = f"<@{incoming.user}> takes the first shift" if outgoing is None else f"<@{outgoing}> → <@{incoming.user}>"
    title = f"On-call handoff ({rotation_name}): {who}"
    shift_line = f"*Shift*: {_window(incoming)}{' (covering)' if incoming.overridden else ''}"
    next_line = (
        f"*Next*: <@{next_shift.user}> from {date_token(next_shift.start)}"
        if next_shift
        else "*Next*: nobody scheduled"
    )
    blocks = [_section(f"*{title}*"), _section(f"{shift_line}\n{next_line}")]
    if usergroup:
        blocks.append(_context(f"<!subteam^{usergroup}> now reaches <@{incoming.user}>"))
    blocks += _bulleted("*Duties*", duties)
    blocks.append({"type": "divider"})
    blocks += _summary_sections(summary)
    blocks.append(_actions(_button("Acknowledge handoff", ACK_HANDOFF, {"handoff": handoff_id})))
    return Message(text=title, blocks=blocks)


def handoff_acknowledged(handoff: Message, by: str, at: datetime) -> Message:
    """The posted handoff with its button replaced by who acknowledged it and when."""
    kept = [block for block in handoff.blocks if not _has_action(block, ACK_HANDOFF)]
    kept.append(_context(f":white_check_mark: Acknowledged by <@{by}> {date_token(at)}"))
    return Message(text=f"{handoff.text} (acknowledged by <@{by}>)", blocks=kept)


def reminder_message(user: str, shift: Shift, *, rotation_name: str | None = None) -> Message:
    """The DM sent the day before a shift starts."""
    rotation = f" for {rotation_name}" if rotation_name else ""
    text = f"<@{user}>, you are on call{rotation} from {date_token(shift.start)} until {date_token(shift.end)}."
    return Message(text=text, blocks=[_section(text)])


def ack_reminder(rotation_name: str, user: str, shift: Shift, handoff_link: str | None = None) -> Message:
    """The one nudge sent when the handoff is still unacknowledged an hour after the shift started."""
    handoff = f"<{handoff_link}|handoff>" if handoff_link else "handoff"
    text = (
        f"<@{user}>, you have been on call for {rotation_name} since {date_token(shift.start)} "
        f"and the {handoff} is not acknowledged yet: read it and press *Acknowledge handoff*."
    )
    return Message(text=text, blocks=[_section(text)])


def now_and_next(
    rotation_name: str, current: Shift | None, upcoming: Shift, *, usergroup: str | None = None
) -> Message:
    """The answer to `/mlops oncall`."""
    if current is None:
        now = "nobody yet"
    else:
        covering = " (covering)" if current.overridden else ""
        now = f"<@{current.user}>{covering} until {date_token(current.end)}"
    upcoming_line = f"<@{upcoming.user}> {_window(upcoming)}"
    blocks = [_section(f"*On call for {rotation_name}*: {now}\n*Next*: {upcoming_line}")]
    if usergroup:
        blocks.append(_context(f"Reach whoever is on call with <!subteam^{usergroup}>"))
    return Message(text=f"On call for {rotation_name}: {now}. Next: {upcoming_line}", blocks=blocks)


def schedule_table(rotation_name: str, shifts: Sequence[Shift]) -> Message:
    """The answer to `/mlops oncall schedule [weeks]`: one line per shift."""
    title = f"*On-call schedule for {rotation_name}*"
    lines = [f"{_window(s)}  <@{s.user}>{' _(override)_' if s.overridden else ''}" for s in shifts]
    blocks = _bulleted(title, lines, max_blocks=MAX_BLOCKS)
    return Message(text=f"On-call schedule for {rotation_name}: {len(lines)} shifts", blocks=blocks)


def cover_request(
    requester: str, start: datetime, end: datetime, request_id: str, *, rotation_name: str | None = None
) -> Message:
    rotation = f" {rotation_name}" if rotation_name else ""
    text = f"<@{requester}> needs someone to cover{rotation} on-call from {date_token(start)} until {date_token(end)}."
    blocks = [_section(text), _actions(_button("Take", TAKE_COVER, {"request": request_id}))]
    return Message(text=text, blocks=blocks)


def cover_taken(requester: str, start: datetime, end: datetime, taker: str) -> Message:
    """The cover request edited in place once someone took it; the button is gone."""
    text = f"<@{taker}> is covering for <@{requester}> from {date_token(start)} until {date_token(end)}."
    return Message(text=text, blocks=[_section(f":white_check_mark: {text}")])


def override_notice(rotation_name: str, override_id: int, user: str, start: datetime, end: datetime, by: str) -> Message:
    """Posted in the rotation's channel when someone creates an override."""
    text = (
        f"<@{by}> put <@{user}> on call for {rotation_name} from {date_token(start)} until {date_token(end)} "
        f"(override #{override_id}; undo with `/mlops oncall undo {override_id}`)."
    )
    return Message(text=text, blocks=[_section(text)])


def override_undone(rotation_name: str, override_id: int, user: str, by: str, *, ended_early: bool) -> Message:
    how = "ended it early" if ended_early else "undid it"
    text = (f"<@{by}> {how}: override #{override_id} (<@{user}> on call for {rotation_name}). "
            "The rotation's schedule applies again.")
    return Message(text=text, blocks=[_section(text)])


def topic_text(user: str, until: datetime, tz: str) -> str:
    """The channel topic. Topics do not render date tokens, so the date is written in the rotation's zone."""
    local = until.astimezone(ZoneInfo(tz))
    return f"on-call: <@{user}> until {local:%a} {local.day} {local:%b}"


def _summary_sections(summary: ShiftSummary) -> list[dict]:
    open_alerts = sum(alert.still_open for alert in summary.datagen_alerts)
    return [
        *_bulleted("*Deploys to staging*", [_release(e) for e in summary.deploys]),
        *_bulleted("*Promotions to prod*", [_release(e) for e in summary.promotions]),
        *_bulleted("*Rollbacks*", [_release(e) for e in summary.rollbacks]),
        *_bulleted("*Retrains*", [_retrain(r) for r in summary.retrains]),
        *_bulleted(
            f"*Datagen alerts* ({len(summary.datagen_alerts)} fired, {open_alerts} still open)",
            [_alert(a) for a in summary.datagen_alerts],
        ),
        *(_bulleted(  # only where pipelines are watched and something happened: most teams watch none
            f"*Pipeline incidents* ({len(summary.pipeline_incidents)}, "
            f"{sum(i.still_open for i in summary.pipeline_incidents)} still open)",
            [_incident(i) for i in summary.pipeline_incidents],
        ) if summary.pipeline_incidents else []),
        *_bulleted(
            "*Left on staging unverified*",
            [
                f"*{v.model}* `{v.version}` by <@{v.deployed_by}> since {date_token(v.since)}"
                for v in summary.unverified_staging
            ],
        ),
        *_bulleted(
            "*Approvals pending*",
            [
                f"*{p.model}* `{p.version}` asked by <@{p.requested_by}> {date_token(p.since)}"
                for p in summary.approvals_pending
            ],
        ),
        *_bulleted("*Locks held*", [_lock(lock) for lock in summary.locks_held]),
    ]


def _release(event: ReleaseEvent) -> str:
    env = f" in {event.env}" if event.env else ""
    return f"*{event.model}* `{event.version}`{env} by <@{event.who}> {date_token(event.when)}"


def _retrain(run: RetrainRun) -> str:
    version = f" → `{run.version}`" if run.version else ""
    return f"*{run.model}*: {run.outcome}{version} {date_token(run.when)}"


def _alert(alert: DatagenAlert) -> str:
    state = " — *still open*" if alert.still_open else ""
    return f"{alert.title} (fired {date_token(alert.fired)}){state}"


def _incident(incident: PipelineIncident) -> str:
    retried = f" — retried by <@{incident.retried_by}>" if incident.retried_by else ""
    state = " — *still open*" if incident.still_open else ""
    return f"{incident.title} (fired {date_token(incident.fired)}){retried}{state}"


def _lock(lock: HeldLock) -> str:
    expires = f" until {date_token(lock.expires)}" if lock.expires else ""
    return f"*{lock.model}* in {lock.env} held by <@{lock.holder}>{expires}: {lock.reason}"


def _window(shift: Shift) -> str:
    return f"{date_token(shift.start)} – {date_token(shift.end)}"


def _bulleted(title: str, lines: Sequence[str], max_blocks: int = 1) -> list[dict]:
    """`title` and one bullet per line, packed into at most `max_blocks` sections; "none" when empty."""
    if not lines:
        return [_section(f"{title}\nnone")]
    budget = MAX_SECTION_TEXT - _MORE_ROOM
    texts = [title]
    shown = 0
    for line in lines:
        bullet = _clip(f"• {line}", budget - len(title) - 1)
        if len(texts[-1]) + 1 + len(bullet) <= budget:
            texts[-1] = f"{texts[-1]}\n{bullet}"
        elif len(texts) < max_blocks:
            texts.append(bullet)
        else:
            break
        shown += 1
    if shown < len(lines):
        texts[-1] += f"\nand {len(lines) - shown} more"
    return [_section(text) for text in texts]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _actions(*elements: dict) -> dict:
    return {"type": "actions", "elements": list(elements)}


def _button(label: str, action_id: str, value: dict[str, str]) -> dict:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": json.dumps(value, separators=(",", ":")),
        "style": "primary",
    }


def _has_action(block: dict, action_id: str) -> bool:
    return block.get("type") == "actions" and any(e.get("action_id") == action_id for e in block["elements"])
