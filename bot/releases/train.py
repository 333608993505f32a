"""The train running itself: new registry versions of an `auto_deploy: staging` model deploy to staging by
themselves, as their author (the train engineer) would with `/mlops deploy`, one train per model.

Two ways in: a poll of each such registry every `train.poll_seconds` (one listing of the model's folder per
pass) and POST /hooks/registry (registry_hook.py), which looks at once. Either way a version is taken once,
recorded in `train_queue` before anything is deployed, so a restart never deploys it again. A version whose
config.pbtxt or metadata.json is not there yet is still being uploaded: it is looked at again on the next
pass. One that is there but does not validate is broken, and fails with its reasons. The versions that were
in a registry before auto_deploy was turned on for its model are noted as there, never deployed.

While a release of the model is on the tracks (queue.py), taken versions wait behind it, listed on its card;
when it ends, the newest goes and the older ones are skipped, each said in the thread. A person may still
deploy by hand: the card then says it jumped the queue.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import datetime
from typing import Any

from bot.context import Context
from bot.notices import Notices
from bot.notifier import SlackError
from bot.releases.delivery import Delivery
from bot.releases.deploy import Deploys
from bot.releases.model import Release
from bot.releases.queue import Plan, Version, on_the_tracks, plan, waiting_text
from bot.releases.records import Records, ReleaseError, parse_dt, release_of
from bot.releases.systems import Systems
from bot.serving.artifacts import ArtifactError
from bot.serving.registry import CONFIG, METADATA, Metadata, RegistryError
from bot.store import iso

log = logging.getLogger(__name__)

BOT = "mlops-bot"
USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
LOOKS_AT_ONCE = 8  # registries listed side by side in one pass


def folders(keys: list[str], model: str) -> dict[str, set[str]]:
    """Each version of `model` and its files, from one listing of the model's folder. A dot-folder is a version
    still being written under a hidden name (the example pipeline renames it when done): not a version yet."""
    found: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == model and parts[1] and not parts[1].startswith("."):
            found.setdefault(parts[1], set()).add(parts[2])
    return found


def uploaded(files: set[str]) -> bool:
    """Whether a version's upload is done as far as the train can tell: its config and metadata are there."""
    return CONFIG in files and METADATA in files


class Train:
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, delivery: Delivery, deploys: Deploys):
        self.ctx = ctx
        self.records = records
        self.systems = systems
        self.delivery = delivery
        self.deploys = deploys
        self._looks: dict[str, asyncio.Lock] = {}  # one look at a model's registry at a time (poll and hook)
        self._moves: dict[str, asyncio.Lock] = {}  # one move of a model's queue at a time
        self._departing: set[str] = set()  # models whose next version is starting, its release not recorded yet
        self._down = Notices(ctx, "train.registry")  # registry URI -> why it cannot be reached, said once until it answers
        self._poll: asyncio.Task[None] | None = None
        delivery.train_line = self.card_line

    def models(self) -> list[str]:
        return [m for m, cfg in self.ctx.config.models.items() if cfg.auto_deploy == "staging"]

    # -- the poll ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling (the active instance only); a version taken before a crash but never deployed is queued again."""
        self.ctx.store.conn.execute("UPDATE train_queue SET state = 'queued' WHERE state = 'taken' AND release_id IS NULL")
        if self.models() and self._poll is None:
            self._poll = asyncio.create_task(self._polling(), name="train.poll")

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None

    async def _polling(self) -> None:
        while True:
            try:
                await self.look_all()
            except Exception:  # one bad pass must not end the poll
                log.exception("a pass over the registries failed")
            await asyncio.sleep(self.ctx.config.train.poll_seconds)

    async def look_all(self) -> None:
        """One pass: each registry listed once, a few side by side. Models sharing a registry are listed together
        (one listing of its root, however many models it holds); a model alone in its registry lists its folder."""
        gate = asyncio.Semaphore(LOOKS_AT_ONCE)
        by_root: dict[str, list[str]] = {}
        for model in self.models():
            by_root.setdefault(self.ctx.config.models[model].registry, []).append(model)

        async def one(models: list[str]) -> None:
            async with gate:
                if len(models) == 1:
                    await self.look(models[0])
                    return
                store = self.systems.registry(models[0]).store
                try:
                    keys = await store.list()
                except ArtifactError as exc:
                    await self._unreachable(store.uri, exc)
                    return
                await self._reachable(store.uri)
                of: dict[str, list[str]] = {}
                for key in keys:
                    of.setdefault(key.split("/", 1)[0], []).append(key)
                for model in models:
                    await self.look(model, keys=of.get(model, []))

        await asyncio.gather(*(one(models) for models in by_root.values()))

    # -- taking versions --------------------------------------------------------------------------------------

    async def look(self, model: str, *, named: str | None = None, keys: list[str] | None = None) -> None:
        """List the model's registry once (unless `keys`, its listing, is given), take the versions uploaded since
        the last look, and move the queue. `named`: the version a hook announced (taken as the hook's, and never
        counted as already there)."""
        async with self._looks.setdefault(model, asyncio.Lock()):
            registry = self.systems.registry(model)
            if keys is None:
                try:
                    keys = await registry.store.list(model)
                except ArtifactError as exc:
                    await self._unreachable(registry.store.uri, exc)
                    return
                await self._reachable(registry.store.uri)
            found = folders(keys, model)
            known = {r["version"] for r in self.records.rows("SELECT version FROM train_queue WHERE model = ?", model)}
            if not self.records.rows("SELECT 1 FROM train_watch WHERE model = ?", model):
                self._first_look(model, [v for v in found if v not in known and v != named])
                known = set(found) - {named}
            taken = [version for version in sorted(v for v in found if v not in known and uploaded(found[v]))
                     if await self._take(model, version, "hook" if version == named else "poll")]
            await self._advance(model, taken)

    def _first_look(self, model: str, there: list[str]) -> None:
        now = iso(self.ctx.clock())
        with self.ctx.store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO train_watch (model, since) VALUES (?, ?)", (model, now))
            conn.executemany("INSERT OR IGNORE INTO train_queue (model, version, seen_at, source, state) "
                             "VALUES (?, ?, ?, 'existing', 'existing')", [(model, v, now) for v in there])
            self.ctx.audit(actor=BOT, verb="train.watch", status="started", model=model,
                           detail={"already_there": sorted(there)})

    async def _take(self, model: str, version: str, source: str) -> bool:
        """Record one new, fully uploaded version: queued (with its engineer; True), or broken (with why)."""
        registry = self.systems.registry(model)
        try:
            await registry.validate(model, version)
            metadata = await registry.metadata(model, version)
        except ArtifactError as exc:  # the registry stopped answering mid-look: the next pass takes it
            log.info("could not read %s %s yet: %s", model, version, exc)
            return False
        except RegistryError as exc:
            await self._broken(model, version, source, exc)
            return False
        engineer, why = await self.engineer(model, metadata)
        with self.ctx.store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO train_queue (model, version, created_at, seen_at, source, engineer, state, "
                         "reason) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                         (model, version, iso(metadata.created_at), iso(self.ctx.clock()), source, engineer, why))
            self.ctx.audit(actor=BOT, verb="train.take", status="queued", model=model, env="staging", version=version,
                           detail={"source": source, "engineer": engineer, **({"note": why} if why else {})})
        return True

    async def _broken(self, model: str, version: str, source: str, exc: RegistryError) -> None:
        owner = self.ctx.config.models[model].owner
        with self.ctx.store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO train_queue (model, version, seen_at, source, engineer, state, reason) "
                         "VALUES (?, ?, ?, ?, ?, 'broken', ?)", (model, version, iso(self.ctx.clock()), source, owner, str(exc)))
            self.ctx.audit(actor=BOT, verb="deploy", status="failed", model=model, env="staging", version=version,
                           detail={"source": source, "error": str(exc), "automatic": True})
        problems = "\n".join(f"• {p}" for p in exc.problems)
        text = (f":x: *{model} {version}* arrived in the registry but cannot be deployed to staging:\n{problems}\n"
                f"{f'<@{owner}>: ' if owner else ''}upload a fixed version under a new name; this one is not tried again.")
        for channel in dict.fromkeys((self.ctx.config.channels.main, self.ctx.config.channels.failed_releases)):
            await self.delivery.say(channel, text)

    async def engineer(self, model: str, metadata: Metadata) -> tuple[str, str | None]:
        """Who drives this version's train: metadata.json's `author` (a Slack user id, or an email Slack knows),
        else the model's owner; and why the author was not used, when it was named but could not be."""
        owner = self.ctx.config.models[model].owner or BOT
        author = (metadata.model_extra or {}).get("author")
        if author in (None, ""):
            return owner, None
        author = str(author).strip()
        if USER_ID.fullmatch(author):
            return author, None
        if "@" not in author:
            return owner, f"metadata.json's author `{author}` is neither a Slack user id nor an email"
        try:
            found = await self.ctx.notifier.user_by_email(author)
        except SlackError as exc:
            return owner, f"could not look up {author} in Slack ({exc.error})"
        return (found, None) if found else (owner, f"no one in the Slack workspace has the email {author}")

    # -- the queue --------------------------------------------------------------------------------------------

    def on_tracks(self, model: str) -> Release | None:
        """The model's release between staging and prod, if any (the newest, should there be more)."""
        rows = self.records.rows("SELECT * FROM releases WHERE model = ? AND (state IN ('deploying', 'staged', "
                                 "'verifying', 'verified') OR prod_state IN ('promoting', 'canary')) ORDER BY id DESC", model)
        return next((r for r in map(release_of, rows) if on_the_tracks(r)), None)

    async def _live_created(self, model: str) -> datetime | None:
        """When what prod serves was made (its metadata), so nothing older is ever sent after it."""
        live = self.records.serving(model, "prod")
        if live is None:
            return None
        taken = self.records.rows("SELECT created_at FROM train_queue WHERE model = ? AND version = ?", model, live.version)
        if taken and taken[0]["created_at"]:
            return parse_dt(taken[0]["created_at"])
        try:
            return (await self.systems.registry(model).metadata(model, live.version)).created_at
        except (ArtifactError, RegistryError):
            return None

    def ended(self, model: str) -> None:
        """A release of `model` may have ended its train (unblocked, rejected, rolled back): move the queue now
        rather than at the next pass."""
        if model in self.models():
            self.ctx.spawn(self._advance(model), name=f"train: next of {model}")

    async def _advance(self, model: str, taken: list[str] | None = None) -> None:
        """Move the queue: the newest version goes when no train is on the tracks; the older ones are skipped.
        `taken`: versions just queued, said in the thread of the train they wait behind."""
        async with self._moves.setdefault(model, asyncio.Lock()):
            if model not in self._departing:
                await self._move(model, taken or [])

    async def _move(self, model: str, taken: list[str]) -> None:
        rows = {r["version"]: r for r in self.records.queued(model)}
        if not rows:
            return
        tracks = self.on_tracks(model)
        queued = [Version(v, parse_dt(r["created_at"]) or self.ctx.clock()) for v, r in rows.items()]
        decided = plan(queued, on_tracks=tracks is not None, live_created=None if tracks else await self._live_created(model))
        if tracks is not None:
            if taken:
                await self._show_waiting(tracks, taken)
            return
        go = rows[decided.go.version] if decided.go else None
        ended = self.records.rows("SELECT * FROM releases WHERE model = ? ORDER BY id DESC LIMIT 1", model)
        with self.ctx.store.transaction() as conn:
            reasons = []
            for v in decided.skipped:
                newer = decided.go is not None and v.created_at <= decided.go.created_at
                reasons.append(why := f"{decided.go.version} is newer and goes instead" if decided.go and newer
                               else "prod already serves a newer version")
                conn.execute("UPDATE train_queue SET state = 'skipped', reason = ? WHERE model = ? AND version = ?",
                             (why, model, v.version))
                self.ctx.audit(actor=BOT, verb="train.skip", status="skipped", model=model, env="staging", version=v.version,
                               detail={"reason": why})
            if go is not None:
                conn.execute("UPDATE train_queue SET state = 'taken' WHERE model = ? AND version = ?", (model, go["version"]))
        if ended and decided.skipped:  # said where the train that just ended is followed
            await self.delivery.thread(release_of(ended[0]), ":fast_forward: Skipped, never deployed: " + "; ".join(
                f"{v.version} ({r})" for v, r in zip(decided.skipped, reasons, strict=True)))
        if go is not None:
            self._departing.add(model)
            self.ctx.spawn(self._deploy(go, decided), name=f"train: deploy {model} {go['version']}")

    async def _show_waiting(self, tracks: Release, taken: list[str]) -> None:
        """The card of the release on the tracks lists what waits behind it; versions newly waiting are said."""
        for version in taken:
            self.ctx.audit(actor=BOT, verb="train.wait", status="queued", model=tracks.model, env="staging",
                           version=version, detail={"behind": tracks.version, "release": tracks.id})
        await self.delivery.card(tracks, "prod" if tracks.prod_state else "staging")
        await self.delivery.thread(tracks, f":railway_car: {', '.join(taken)} of {tracks.model} "
                                           f"{'waits' if len(taken) == 1 else 'wait'} behind {tracks.version}: one train at a "
                                           "time. The newest goes to staging when this one ends.")

    async def _deploy(self, row: dict[str, Any], decided: Plan) -> None:
        model, version, engineer = row["model"], row["version"], row["engineer"] or BOT

        def started(release: Release) -> None:
            self.ctx.store.conn.execute("UPDATE train_queue SET release_id = ? WHERE model = ? AND version = ?",
                                        (release.id, model, version))
            self._departing.discard(model)  # the release is recorded: it is on the tracks from here

        skipped = [v.version for v in decided.skipped]
        note = (f":railway_car: From the registry ({row['source']}): train engineer <@{engineer}>."
                + (f" {row['reason']}; the model's owner drives it." if row["reason"] else "")
                + (f" Skipped as older: {', '.join(skipped)}." if skipped else ""))
        try:
            await self.deploys.deploy(model, version, engineer, self.ctx.config.channels.main, note=note, started=started)
        except ReleaseError as exc:  # said on its card (and in the failed-releases channel) by the deploy
            log.info("automatic deploy of %s %s failed: %s", model, version, exc)
        finally:
            self._departing.discard(model)
        await self._advance(model)  # a version that failed ended its train: the next may go

    async def by_hand(self, model: str, version: str | None, actor: str, channel: str) -> Release:
        """`/mlops deploy` by a person: it goes at once, and for an auto_deploy model it takes the version from the
        queue (never deployed twice) and says so on its card when it went ahead of the train."""
        if model not in self.models():
            return await self.deploys.deploy(model, version, actor, channel)
        tracks = self.on_tracks(model)
        waiting = [r["version"] for r in self.records.queued(model)]
        jumped = ", ".join(([f"{tracks.version} on the tracks"] if tracks else []) +
                           ([waiting_text(waiting)] if waiting else []))
        reason = f":fast_forward: Deployed by hand: jumped the queue ({jumped})." if jumped else None

        def started(release: Release) -> None:
            self.ctx.store.conn.execute(
                "INSERT INTO train_queue (model, version, seen_at, source, engineer, state, release_id, reason) "
                "VALUES (?, ?, ?, 'hand', ?, 'taken', ?, ?) ON CONFLICT (model, version) DO UPDATE SET "
                "state = 'taken', source = 'hand', engineer = excluded.engineer, release_id = excluded.release_id, "
                "reason = excluded.reason", (model, release.version, iso(self.ctx.clock()), actor, release.id, reason))

        return await self.deploys.deploy(model, version, actor, channel, note=reason or "", started=started)

    def card_line(self, release: Release) -> str:
        """The card's line about the train: who drives it, how it came, what waits behind it."""
        taken = self.records.rows("SELECT * FROM train_queue WHERE release_id = ?", release.id)
        parts = []
        if taken and taken[0]["source"] in ("poll", "hook"):
            parts.append(f":railway_car: train engineer <@{taken[0]['engineer']}> · from the registry ({taken[0]['source']})")
        elif taken and taken[0]["reason"]:
            parts.append(":fast_forward: jumped the queue")
        if on_the_tracks(release) and (waiting := [r["version"] for r in self.records.queued(release.model)]):
            parts.append(waiting_text(waiting))
        return " · ".join(parts)

    # -- an unreachable registry, said once --------------------------------------------------------------------

    async def _unreachable(self, uri: str, exc: ArtifactError) -> None:
        if self._down.get(uri) is not None:
            return
        self._down.set(uri, str(exc))
        self.ctx.audit(actor=BOT, verb="train.registry", status="unreachable", detail={"registry": uri, "error": str(exc)})
        await self.delivery.say(self.ctx.config.channels.main, (
            f":warning: The registry {uri} cannot be read: {exc}. New versions there wait until it answers; the bot "
            f"keeps looking every {self.ctx.config.train.poll_seconds:g} s and says so here when it does."))

    async def _reachable(self, uri: str) -> None:
        if self._down.get(uri) is None:
            return
        self._down.set(uri, None)
        self.ctx.audit(actor=BOT, verb="train.registry", status="reachable", detail={"registry": uri})
        await self.delivery.say(self.ctx.config.channels.main,
                                f":white_check_mark: The registry {uri} answers again; new versions there go to staging.")
