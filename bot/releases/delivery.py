"""A release in Slack: its card, the notes in the card's thread, and what Slack refused of them, tried again.

Slack shows a release; the store holds it. So a card Slack refuses to post or edit, or a note it refuses, is
logged and audited, the release goes on, and what Slack refused is tried again in the background until Slack
takes it (or, after REDELIVERY_S, given up on with an audit row): the newest rendering of the card, then the
notes in the order they were written. Notes written while the card is not in Slack yet wait for it. The
writes of one release go one at a time, so nothing is posted twice.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.context import Context
from bot.notifier import Message, SlackError
from bot.releases import messages
from bot.releases.model import Release, State
from bot.releases.policy import unblock_blocker
from bot.releases.records import Records

log = logging.getLogger(__name__)

# Pauses between tries of what Slack refused of a release: about five minutes in all, then it is given up on.
REDELIVERY_S = (1, 2, 4, 8, 15, 30, 60, 60, 60, 60)


@dataclass
class _Unshown:
    """What Slack has not shown yet of one release: the newest card rendering it refused, and thread notes."""

    card: tuple[str, dict | None, str] | None = None  # (env, report, note), as card() was called
    notes: list[str] = field(default_factory=list)  # oldest first; posted in this order, each once
    note_refused: bool = False  # the first note's refusal is audited once, not at every try


class Delivery:
    def __init__(self, ctx: Context, records: Records):
        self.ctx = ctx
        self.records = records
        self._unshown_of: dict[int, _Unshown] = {}  # by release: what Slack refused, tried again in the background
        self._slack_locks: dict[int, asyncio.Lock] = {}  # one Slack write at a time per release, so none is doubled
        self._redelivering: set[int] = set()
        # A line about the release's place in the train (its engineer, versions waiting behind it), set by the train.
        self.train_line: Callable[[Release], str] = lambda release: ""

    async def card(self, release: Release, env: str, *, report: dict | None = None, note: str = "") -> None:
        """Post or edit the release's card as it stands now, with `note` on it (and `report`, else the stored one)."""
        if not release.channel:
            return
        async with self._slack_lock(release.id):
            if await self._show(release.id, env, report, note):
                await self._post_notes(release.id)

    async def thread(self, release: Release, text: str) -> None:
        """A note in the card's thread, after the notes before it."""
        if not release.channel:
            return
        async with self._slack_lock(release.id):
            self._unshown_of.setdefault(release.id, _Unshown()).notes.append(text)
            await self._post_notes(release.id)

    async def say(self, channel: str, text: str) -> None:
        """A message in the channel itself, once: not tied to a card, so not tried again."""
        try:
            await self.ctx.notifier.post(channel, Message(text))
        except SlackError as exc:
            log.warning("could not post to %s: %s", channel, exc)
            self.ctx.audit(actor="mlops-bot", verb="release.note", status="unshown", channel=channel,
                           detail={"error": exc.error, "text": text[:500]})

    async def failed(self, release: Release, what: str) -> None:
        """A failed staging deploy, said in the failed-releases channel too (the main one when none is set)."""
        await self.say(self.ctx.config.channels.failed_releases,
                       f":x: *{release.model} {release.version}* on staging, deployed by <@{release.deployed_by}>: {what}. "
                       "Its card's thread says what to fix.")

    def blocker(self, release: Release, report: dict | None) -> str | None:
        """Why a verified card offers no Unblock button; the registry digest is the one seen at verify."""
        if release.state is not State.VERIFIED:
            return None
        cfg = self.ctx.config.models.get(release.model)
        return unblock_blocker(release, staging_only=bool(cfg and cfg.staging_only),
                               registry_digest=(report or {}).get("registry_digest"))

    def _card_ts(self, release: Release) -> str | None:
        row = self.ctx.store.conn.execute("SELECT card_ts FROM releases WHERE id = ?", (release.id,)).fetchone()
        return row[0] if row else None

    def _slack_lock(self, release_id: int) -> asyncio.Lock:
        return self._slack_locks.setdefault(release_id, asyncio.Lock())

    async def _show(self, release_id: int, env: str, report: dict | None, note: str) -> bool:
        """Post or edit the card as the release stands now; False when Slack refused it (tried again later)."""
        release = self.records.get(release_id)
        ts = self._card_ts(release)
        shown_report = report if report is not None else self.records.report(release)
        card = messages.card(release, env=env, verify_report=shown_report, note=note, blocker=self.blocker(release, shown_report),
                             train=self.train_line(release))
        try:
            shown = await (self.ctx.notifier.edit_or_repost(release.channel, ts, card) if ts
                           else self.ctx.notifier.post(release.channel, card))
        except SlackError as exc:
            unshown = self._unshown_of.setdefault(release_id, _Unshown())
            if unshown.card is None:
                self._unshown(release, "card", exc)
            unshown.card = (env, report, note)  # a newer rendering replaces an older one never shown
            self._redeliver(release_id)
            return False
        if shown != ts:
            self.ctx.store.conn.execute("UPDATE releases SET card_ts = ? WHERE id = ?", (shown, release.id))
        if (unshown := self._unshown_of.get(release_id)) is not None:
            unshown.card = None
            self._forget_if_shown(release_id)
        return True

    async def _post_notes(self, release_id: int) -> None:
        """Post the release's waiting notes in its card's thread, oldest first; they wait while there is no card."""
        unshown = self._unshown_of.get(release_id)
        if unshown is None:
            return
        release = self.records.get(release_id)
        ts = self._card_ts(release)
        while unshown.notes and ts:
            try:
                await self.ctx.notifier.reply(release.channel, ts, messages.note(unshown.notes[0]))
            except SlackError as exc:
                if not unshown.note_refused:
                    self._unshown(release, "note", exc)
                    unshown.note_refused = True
                self._redeliver(release_id)
                return
            unshown.notes.pop(0)
            unshown.note_refused = False
        self._forget_if_shown(release_id)

    def _forget_if_shown(self, release_id: int) -> None:
        unshown = self._unshown_of.get(release_id)
        if unshown is not None and unshown.card is None and not unshown.notes:
            del self._unshown_of[release_id]

    def _redeliver(self, release_id: int) -> None:
        if release_id not in self._redelivering:
            self._redelivering.add(release_id)
            self.ctx.spawn(self._redelivery(release_id), name=f"release {release_id}: show in Slack")

    async def _redelivery(self, release_id: int) -> None:
        """Try again what Slack refused of one release, with growing pauses, until all of it is shown."""
        try:
            for pause in REDELIVERY_S:
                await asyncio.sleep(pause)
                async with self._slack_lock(release_id):
                    unshown = self._unshown_of.get(release_id)
                    if unshown is not None and (unshown.card is None or await self._show(release_id, *unshown.card)):
                        await self._post_notes(release_id)
                if release_id not in self._unshown_of:
                    return
            unshown = self._unshown_of.pop(release_id, None)
            if unshown is not None:
                release = self.records.get(release_id)
                log.error("gave up showing release %s in Slack: card %s, %d notes", release_id,
                          "refused" if unshown.card else "shown", len(unshown.notes))
                self.ctx.audit(actor="mlops-bot", verb="release.card" if unshown.card else "release.note", status="undelivered",
                               channel=release.channel, model=release.model, version=release.version,
                               detail={"release": release_id, "card": unshown.card is not None, "notes": unshown.notes})
        finally:
            self._redelivering.discard(release_id)

    def _unshown(self, release: Release, what: str, exc: SlackError) -> None:
        log.warning("could not show the %s of release %s", what, release.id, exc_info=True)
        self.ctx.audit(actor="mlops-bot", verb=f"release.{what}", status="unshown", channel=release.channel, model=release.model,
                       version=release.version, detail={"release": release.id, "error": exc.error})
