"""The release train: deploy to staging, verify, unblock prod, reject, roll back; locks and reconciliation.

Every operation starts with one transaction that takes the (model, env) lock, records the operation and
compare-and-sets the release's standing in that environment, with its audit row: a double click, a Slack
retry or two people pressing the same button run the work once. It ends, whatever is raised inside it, in
a terminal standing with its lock freed (`_operation`). A lock is live only while its operation runs in this
process; any other is freed on the next look, so no lock outlives its holder.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.context import Context
from bot.notifier import Message, SlackError
from bot.releases import messages
from bot.releases.model import BAD, BUSY, FAILS, Event, Release, State, env_of, next_state, rollback_target, sources
from bot.releases.policy import may_promote, short, unblock_blocker
from bot.releases.verify import verify
from bot.roles import RoleDirectory
from bot.serving.artifacts import ArtifactError, open_store
from bot.serving.registry import Registry, RegistryError, triton_config_json
from bot.serving.triton import Fleet, FleetError, deploy_files
from bot.store import iso

log = logging.getLogger(__name__)

# What the outside systems raise when they fail in a way the operation expected; anything else is a bug or a
# surprise (a malformed model answer), and still ends the operation, named as unexpected.
EXPECTED = (RegistryError, ArtifactError, FleetError)
STATUS_TIMEOUT_S = 5  # a status answer waits this long at most for an endpoint to say what it serves
# Pauses between tries of what Slack refused of a release: about five minutes in all, then it is given up on.
REDELIVERY_S = (1, 2, 4, 8, 15, 30, 60, 60, 60, 60)


class ReleaseError(Exception):
    """A refusal or failure a person can act on; the message says what and what to do next."""


@dataclass(frozen=True)
class Lock:
    holder: str
    reason: str
    kind: str
    expires_at: datetime


@dataclass
class _Unshown:
    """What Slack has not shown yet of one release: the newest card rendering it refused, and thread notes."""

    card: tuple[str, dict | None, str] | None = None  # (env, report, note), as _card was called
    notes: list[str] = field(default_factory=list)  # oldest first; posted in this order, each once
    note_refused: bool = False  # the first note's refusal is audited once, not at every try


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _release(row: dict[str, Any]) -> Release:
    return Release(
        id=row["id"], model=row["model"], version=row["version"], digest=row["digest"], state=State(row["state"]),
        prod_state=State(row["prod_state"]) if row.get("prod_state") else None,
        deployed_by=row["deployed_by"], deployed_at=_dt(row["deployed_at"]), verified_at=_dt(row["verified_at"]),
        approved_by=row["approved_by"], approved_at=_dt(row["approved_at"]), channel=row["channel"], card_ts=row["card_ts"],
        updated_at=_dt(row["updated_at"]),
    )


def _column(env: str) -> str:
    return "prod_state" if env_of(env) == "prod" else "state"


def failure_text(exc: BaseException) -> str:
    """An error as a card shows it: expected failures speak for themselves, others are named as unexpected."""
    return str(exc) if isinstance(exc, EXPECTED) else f"unexpected {type(exc).__name__}: {exc}"


def describe_served(served: dict[str, list[int] | str]) -> str:
    return ", ".join(f"{e}: {', '.join(f'v{n}' for n in v) or 'nothing'}" if isinstance(v, list) else f"{e}: unreachable ({v})"
                     for e, v in served.items())


class ReleaseService:
    def __init__(self, ctx: Context, *, roles: RoleDirectory):
        self.ctx = ctx
        self.config = ctx.config
        self.store = ctx.store
        self.roles = roles  # who may unblock prod
        self._running: set[int] = set()  # operations running in this process: only their locks are live
        self._unshown_of: dict[int, _Unshown] = {}  # by release: what Slack refused, tried again in the background
        self._slack_locks: dict[int, asyncio.Lock] = {}  # one Slack write at a time per release, so none is doubled
        self._redelivering: set[int] = set()

    # -- lookups ----------------------------------------------------------------------------------

    def model_config(self, model: str):
        try:
            return self.config.models[model]
        except KeyError:
            known = ", ".join(sorted(self.config.models)) or "none configured"
            raise ReleaseError(f"unknown model `{model}`; known models: {known}") from None

    def registry(self, model: str) -> Registry:
        return Registry(open_store(self.model_config(model).registry, s3_endpoint_url=self.config.s3.endpoint_url))

    def fleet(self, model: str, env: str, *, timeout: float | None = None) -> Fleet:
        environment = self.model_config(model).environments[env]
        return Fleet(list(environment.endpoints), concurrency=self.config.deploy.endpoint_concurrency,
                     timeout=timeout or self.config.deploy.load_timeout_s)

    def get(self, release_id: int) -> Release:
        rows = self._rows("SELECT * FROM releases WHERE id = ?", release_id)
        if not rows:
            raise ReleaseError(f"release {release_id} does not exist")
        return _release(rows[0])

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return self.store.query(sql, params)

    def environment(self, model: str, env: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM environments WHERE model = ? AND env = ?", model, env)
        return rows[0] if rows else None

    def serving(self, model: str, env: str) -> Release | None:
        """The release the bot records `env` serves."""
        current = self.environment(model, env)
        return self.get(current["release_id"]) if current and current["release_id"] else None

    def lock_of(self, model: str, env: str) -> Lock | None:
        """The lock in force; an operation lock whose operation no longer runs here is freed on the spot."""
        rows = self._rows("SELECT * FROM locks WHERE model = ? AND env = ?", model, env)
        if not rows:
            return None
        r = rows[0]
        if r["kind"] == "operation" and r["operation_id"] not in self._running:
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (model, env))
                self.ctx.audit(actor="mlops-bot", verb="lock.freed", status="ok", model=model, env=env,
                              detail={"holder": r["holder"], "reason": r["reason"], "why": "its operation is not running"})
            return None
        if r["kind"] == "manual" and _dt(r["expires_at"]) <= self.ctx.clock():
            return None
        return Lock(r["holder"], r["reason"], r["kind"], _dt(r["expires_at"]))

    # -- operations: lock + record + compare-and-set in one transaction; always ended -------------

    def _check_free(self, model: str, env: str) -> None:
        held = self.lock_of(model, env)
        if held is not None and held.kind == "operation":
            raise ReleaseError(f"already in progress on {model} {env}: <@{held.holder}> started `{held.reason}`")
        if held is not None:
            raise ReleaseError(f"{model} {env} is locked by <@{held.holder}> ({held.reason}) until {messages.when(held.expires_at)}")

    def _cas(self, release: Release, event: Event, env: str, **fields: Any) -> Release:
        """Move `release`'s standing in `env` by `event` if it still stands where the event may start."""
        column = _column(env)
        new = next_state(env_of(env), release.standing(env), event)
        allowed = sources(env_of(env), event)
        where = " OR ".join([f"{column} IS NULL"] * (None in allowed) + [f"{column} = ?"] * len([s for s in allowed if s]))
        sets = ", ".join(f"{k} = ?" for k in (column, "updated_at", *fields))
        cursor = self.store.conn.execute(
            f"UPDATE releases SET {sets} WHERE id = ? AND ({where})",
            (new.value, iso(self.ctx.clock()), *fields.values(), release.id, *(s.value for s in allowed if s)),
        )
        if cursor.rowcount != 1:
            raise ReleaseError(self._why_not(release.id, event, env))
        return self.get(release.id)

    @asynccontextmanager
    async def _operation(self, kind: str, model: str, env: str, actor: str, reason: str, *,
                         start: Callable[[], Release | None] = lambda: None, detail: dict[str, Any] | None = None,
                         channel: str | None = None) -> AsyncIterator[Release | None]:
        """Run one operation on (model, env): take its lock and record it together with `start` (the
        compare-and-set of its release, if any) and the `started` row; free the lock however it ends. An
        exception that escapes the body leaves no release in a running standing: it fails there (or is
        interrupted, when the bot is stopping) and the card says why."""
        now = self.ctx.clock()
        with self.store.transaction() as conn:
            self._check_free(model, env)
            op = conn.execute("INSERT INTO operations (kind, model, env, actor, state, detail, started_at) "
                              "VALUES (?, ?, ?, ?, 'running', ?, ?)", (kind, model, env, actor, json.dumps({"reason": reason}), iso(now))).lastrowid
            conn.execute("INSERT OR REPLACE INTO locks (model, env, holder, reason, kind, operation_id, expires_at, created_at) "
                         "VALUES (?, ?, ?, ?, 'operation', ?, ?, ?)",
                         (model, env, actor, reason, op, iso(now + timedelta(hours=self.config.deploy.lock_ttl_hours)), iso(now)))
            release = start()
            if release is not None:
                conn.execute("UPDATE operations SET release_id = ?, version = ? WHERE id = ?", (release.id, release.version, op))
            self.ctx.audit(actor=actor, verb=kind, status="started", channel=channel or (release.channel if release else None),
                          model=model, env=env, version=release.version if release else None,
                          detail={**({"release": release.id} if release else {}), **(detail or {})})
        self._running.add(op)
        outcome = "ended"
        try:
            yield release
        except BaseException as exc:
            outcome = "interrupted" if isinstance(exc, asyncio.CancelledError) else "failed"
            if release is not None:
                await self._abandon(release.id, env, actor, exc)
            raise
        finally:
            self._running.discard(op)
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE operation_id = ?", (op,))
                conn.execute("UPDATE operations SET state = ?, ended_at = ? WHERE id = ?", (outcome, iso(self.ctx.clock()), op))

    async def _abandon(self, release_id: int, env: str, actor: str, exc: BaseException) -> None:
        """The last resort of `_operation`: a release still running in `env` fails there, said on its card."""
        release = self.get(release_id)
        standing = release.standing(env)
        if standing not in BUSY:
            return
        cancelled = isinstance(exc, asyncio.CancelledError)
        event = Event.INTERRUPT if cancelled else FAILS[standing]
        if not cancelled:
            log.error("release %s: %s on %s failed unexpectedly", release.id, standing.value, env, exc_info=exc)
        with self.store.transaction():
            release = self._cas(release, event, env)
            self.ctx.audit(actor=actor, verb=_VERBS[FAILS[standing]], status="interrupted" if cancelled else "failed", channel=release.channel,
                          model=release.model, env=env, version=release.version,
                          detail={"release": release.id, "state": release.standing(env).value, "error": failure_text(exc)})
        if not cancelled:  # a stopping bot says nothing more; the next start reconciles and tells
            restored = await self._restore(release.model, env)
            await self._card(release, env, note=f":x: {standing.words.capitalize()} stopped: {failure_text(exc)}. "
                                                 f"{restored} It is in the bot's log; the lock is released.")

    def _why_not(self, release_id: int, event: Event, env: str) -> str:
        current = self.get(release_id)
        standing = current.standing(env)
        if standing in BUSY:
            return f"{current.model} {current.version} is already {standing.words}: started by <@{self._last_actor(current)}>"
        if current.prod_state is State.LIVE and event is Event.PROMOTE:
            return f"{current.model} {current.version} is already live in prod, unblocked by <@{current.approved_by}>"
        if standing is State.SUPERSEDED:
            newer = self._rows("SELECT version FROM releases WHERE model = ? AND id > ? ORDER BY id DESC LIMIT 1", current.model, current.id)
            return f"this card is out of date: {current.model} {current.version} was superseded by {newer[0]['version'] if newer else 'a newer version'}"
        where = f"{standing.words} on {env}" if standing else f"not in {env}"
        return f"cannot {event.value.replace('_', ' ')} {current.model} {current.version}: it is {where}"

    def _last_actor(self, release: Release) -> str:
        rows = self._rows("SELECT actor FROM actions WHERE model = ? AND version = ? AND status = 'started' ORDER BY id DESC LIMIT 1",
                          release.model, release.version)
        return rows[0]["actor"] if rows else "someone"

    def _set_env(self, release: Release, env: str, *, actor: str, approved_by: str | None = None) -> None:
        current = self.environment(release.model, env)
        self.store.conn.execute(
            "INSERT OR REPLACE INTO environments (model, env, version, triton_version, release_id, previous_version, "
            "previous_triton_version, deployed_by, approved_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (release.model, env, release.version, release.triton_version, release.id,
             current["version"] if current else None, current["triton_version"] if current else None,
             actor, approved_by, iso(self.ctx.clock())),
        )

    # -- Slack side -------------------------------------------------------------------------------

    # Slack shows a release; the store holds it. So a card Slack refuses to post or edit, or a note it refuses,
    # is logged and audited, the release goes on, and what Slack refused is tried again in the background until
    # Slack takes it (or, after REDELIVERY_S, given up on with an audit row): the newest rendering of the card,
    # then the notes in the order they were written. Notes written while the card is not in Slack yet wait for
    # it. The writes of one release go one at a time, so nothing is posted twice.

    def _card_ts(self, release: Release) -> str | None:
        row = self.store.conn.execute("SELECT card_ts FROM releases WHERE id = ?", (release.id,)).fetchone()
        return row[0] if row else None

    def _slack_lock(self, release_id: int) -> asyncio.Lock:
        return self._slack_locks.setdefault(release_id, asyncio.Lock())

    async def _card(self, release: Release, env: str, *, report: dict | None = None, note: str = "") -> None:
        if not release.channel:
            return
        async with self._slack_lock(release.id):
            if await self._show(release.id, env, report, note):
                await self._post_notes(release.id)

    async def _show(self, release_id: int, env: str, report: dict | None, note: str) -> bool:
        """Post or edit the card as the release stands now; False when Slack refused it (tried again later)."""
        release = self.get(release_id)
        ts = self._card_ts(release)
        shown_report = report if report is not None else self._report(release)
        card = messages.card(release, env=env, verify_report=shown_report, note=note, blocker=self._blocker(release, shown_report))
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
            self.store.conn.execute("UPDATE releases SET card_ts = ? WHERE id = ?", (shown, release.id))
        if (unshown := self._unshown_of.get(release_id)) is not None:
            unshown.card = None
            self._forget_if_shown(release_id)
        return True

    async def _thread(self, release: Release, text: str) -> None:
        if not release.channel:
            return
        async with self._slack_lock(release.id):
            self._unshown_of.setdefault(release.id, _Unshown()).notes.append(text)
            await self._post_notes(release.id)

    async def _post_notes(self, release_id: int) -> None:
        """Post the release's waiting notes in its card's thread, oldest first; they wait while there is no card."""
        unshown = self._unshown_of.get(release_id)
        if unshown is None:
            return
        release = self.get(release_id)
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
                release = self.get(release_id)
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

    def _report(self, release: Release) -> dict | None:
        row = self.store.conn.execute("SELECT verify_report FROM releases WHERE id = ?", (release.id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def _blocker(self, release: Release, report: dict | None) -> str | None:
        """Why a verified card offers no Unblock button; the registry digest is the one seen at verify."""
        if release.state is not State.VERIFIED:
            return None
        cfg = self.config.models.get(release.model)
        return unblock_blocker(release, staging_only=bool(cfg and cfg.staging_only),
                               registry_digest=(report or {}).get("registry_digest"))

    async def _say(self, channel: str, text: str) -> None:
        try:
            await self.ctx.notifier.post(channel, Message(text))
        except SlackError as exc:
            log.warning("could not post to %s: %s", channel, exc)
            self.ctx.audit(actor="mlops-bot", verb="release.note", status="unshown", channel=channel,
                          detail={"error": exc.error, "text": text[:500]})

    # -- deploy -----------------------------------------------------------------------------------

    async def resolve_version(self, model: str, version: str | None) -> str:
        registry = self.registry(model)
        try:
            if version in (None, "latest"):
                return (await registry.latest(model)).version
            return (await registry.get(model, version)).version
        except EXPECTED as exc:
            raise ReleaseError(str(exc)) from None

    async def _checked_version(self, model: str, version: str | None, actor: str, channel: str | None) -> tuple[str, str]:
        """The version to deploy and its digest, validated before any environment is touched."""
        self.model_config(model)
        try:
            version = await self.resolve_version(model, version)
        except ReleaseError as exc:  # refused before anything started, and audited as any deploy that fails is
            self.ctx.audit(actor=actor, verb="deploy", status="failed", channel=channel, model=model, env="staging",
                          version=version, detail={"error": str(exc)})
            raise
        registry = self.registry(model)
        try:
            await registry.validate(model, version)
            return version, await registry.digest(model, version)
        except EXPECTED as exc:
            self.ctx.audit(actor=actor, verb="deploy", status="failed", channel=channel, model=model, env="staging",
                          version=version, detail={"error": str(exc)})
            raise ReleaseError(str(exc)) from None

    async def deploy(self, model: str, version: str | None, actor: str, channel: str) -> Release:
        """Copy a version to staging, load it on the staging fleet, then verify it; all on one card."""
        version, digest = await self._checked_version(model, version, actor, channel)

        def insert() -> Release:
            now = iso(self.ctx.clock())
            release_id = self.store.conn.execute(
                "INSERT INTO releases (model, version, digest, state, deployed_by, deployed_at, channel, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (model, version, digest, State.DEPLOYING.value, actor, now, channel, now),
            ).lastrowid
            return self.get(release_id)

        async with self._operation("deploy", model, "staging", actor, f"deploying {version}", start=insert,
                                   detail={"digest": digest}, channel=channel) as release:
            await self._card(release, "staging", note=f"Deploying to staging for <@{actor}>…")
            release = await self._deploy_staging(release, actor)
        await self._thread(release, f":package: {model} {version} is serving on staging. Verifying…")
        return await self.verify_release(release, actor, env="staging")

    async def _deploy_staging(self, release: Release, actor: str) -> Release:
        model, version = release.model, release.version

        async def progress(event: str, done: int, total: int, where: str) -> None:
            if event == "copying":
                await self._thread(release, f"Copying {total} files to {where}")
            elif event in ("ready", "failed"):
                await self._thread(release, f"{'Loaded' if event == 'ready' else 'Failed on'} endpoint {done}/{total}: {where}")

        environment = self.model_config(model).environments["staging"]
        try:
            repo = open_store(environment.repository, s3_endpoint_url=self.config.s3.endpoint_url)
            config_json = await deploy_files(self.registry(model), model, version, repo, release.triton_version, on_progress=progress)
            async with self.fleet(model, "staging") as fleet:
                await fleet.load(model, release.triton_version, config_json, on_progress=progress)
        except Exception as exc:  # noqa: BLE001 - whatever failed, staging goes back to what the bot records
            if not isinstance(exc, EXPECTED):
                log.error("deploy of release %s failed unexpectedly", release.id, exc_info=True)
            restored = await self._restore(model, "staging")
            with self.store.transaction():
                release = self._cas(release, Event.DEPLOY_FAILED, "staging")
                self.ctx.audit(actor=actor, verb="deploy", status="failed", channel=release.channel, model=model, env="staging",
                              version=version, detail={"release": release.id, "error": failure_text(exc), "restored": restored})
            await self._card(release, "staging", note=f":x: Deploy failed: {failure_text(exc)}\n{restored} "
                                                      "Fix what is named above and deploy again.")
            raise ReleaseError(f"deploy of {model} {version} to staging failed: {failure_text(exc)}") from None
        superseded = [_release(r) for r in self._rows(
            f"SELECT * FROM releases WHERE model = ? AND id != ? AND state IN ({', '.join('?' * len(sources('staging', Event.SUPERSEDE)))})",
            model, release.id, *(s.value for s in sources("staging", Event.SUPERSEDE) if s))]
        with self.store.transaction():
            for old in superseded:
                self._cas(old, Event.SUPERSEDE, "staging")
            release = self._cas(release, Event.DEPLOYED, "staging")
            self._set_env(release, "staging", actor=actor)
            self.ctx.audit(actor=actor, verb="deploy", status="succeeded", channel=release.channel, model=model, env="staging",
                          version=version, detail={"release": release.id, "superseded": [r.id for r in superseded]})
        for old in superseded:  # their buttons go; a press on a copy not yet refreshed is still refused
            await self._card(old, "staging", note=f"Superseded on staging by {version}, deployed by <@{actor}>.")
        return release

    async def plan_deploy(self, model: str, version: str | None, actor: str) -> str:
        """What `deploy` would do, changing nothing."""
        cfg = self.model_config(model)
        version = await self.resolve_version(model, version)
        registry = self.registry(model)
        try:
            await registry.validate(model, version)
            digest = await registry.digest(model, version)
            files = await registry.files(model, version)
            size = sum([await registry.store.size(registry.key(model, version, f)) for f in files])
        except EXPECTED as exc:
            raise ReleaseError(str(exc)) from None
        self._check_free(model, "staging")
        current = self.serving(model, "staging")
        endpoints = cfg.environments["staging"].endpoints
        return (f"*Dry run*: `/mlops deploy {model} {version}` would copy {len(files)} files ({_size(size)}) of "
                f"{model} {version} (digest `{short(digest)}`) to {cfg.environments['staging'].repository}, load it on "
                f"{len(endpoints)} staging endpoint(s) ({', '.join(endpoints)}) in place of "
                f"{current.version if current else 'nothing'}, then verify it. Nothing was changed.")

    # -- verify -----------------------------------------------------------------------------------

    async def _check(self, release: Release, env: str) -> tuple[bool, str | None, dict[str, Any]]:
        """Run verify against `env`'s fleet: (passed, reason, the report as stored and shown). Whatever it
        raises is a failed check named on the card, never a release stuck verifying."""
        cfg = self.model_config(release.model)
        registry = self.registry(release.model)
        try:
            spec = await registry.verify_spec(release.model, release.version)
        except EXPECTED as exc:
            spec = None
            log.warning("no usable verify.json for %s %s: %s", release.model, release.version, exc)
        prod = self.environment(release.model, "prod")
        baseline = None
        if env == "staging" and prod and prod["triton_version"] and "prod" in cfg.environments:
            baseline = (self.fleet(release.model, "prod"), prod["triton_version"])
        try:
            async with self.fleet(release.model, env) as fleet:
                report = await verify(fleet, release.model, release.triton_version, spec, requests=cfg.verify_requests,
                                      slo_p99_ms=cfg.slo_p99_ms, baseline=baseline)
            shown = {**report.model_dump(mode="json"), "reason": report.reason}
        except Exception as exc:  # noqa: BLE001 - a verify that cannot finish is a failed verify
            log.error("verify of release %s raised", release.id, exc_info=True)
            reason = f"verify could not finish: {failure_text(exc)}"
            shown = {"passed": False, "reason": reason, "checks": [{"name": "verify", "passed": False, "detail": failure_text(exc)}]}
        finally:
            if baseline:
                await baseline[0].close()
        try:
            shown["registry_digest"] = await registry.digest(release.model, release.version)
        except EXPECTED:
            shown["registry_digest"] = None
        return bool(shown["passed"]), shown["reason"], shown

    async def verify_release(self, release: Release, actor: str, *, env: str = "staging") -> Release:
        async with self._operation("verify", release.model, env, actor, f"verifying {release.version}",
                                   start=lambda: self._cas(self.get(release.id), Event.VERIFY, env, verified_at=None)) as release:
            await self._card(release, env)
            passed, reason, report = await self._check(release, env)
            with self.store.transaction():
                release = self._cas(release, Event.PASSED if passed else Event.FAILED, env, verify_report=json.dumps(report),
                                    verified_at=iso(self.ctx.clock()) if passed else None)
                self.ctx.audit(actor=actor, verb="verify", status="passed" if passed else "failed", channel=release.channel,
                              model=release.model, env=env, version=release.version,
                              detail={"release": release.id, "state": release.state.value, **({"reason": reason} if reason else {})})
        blocker = self._blocker(release, report)
        # The thread note first: once the card shows the outcome, its thread is complete.
        await self._thread(release, (f":white_check_mark: Verified, but it cannot be unblocked: {blocker}." if passed and blocker
                                     else ":white_check_mark: Verified: ready to unblock for prod." if passed
                                     else f":x: Verification failed: {reason}. Roll back staging or deploy a fixed version."))
        await self._card(release, env, report=report)
        return release

    async def verify_live(self, release: Release, actor: str) -> Release:
        """Check what prod serves now; the release stays live either way, the report says what to do."""
        async with self._operation("verify", release.model, "prod", actor, f"verifying {release.version}",
                                   detail={"release": release.id}, channel=release.channel):
            passed, reason, report = await self._check(release, "prod")
            with self.store.transaction() as conn:
                conn.execute("UPDATE releases SET verify_report = ? WHERE id = ?", (json.dumps(report), release.id))
                self.ctx.audit(actor=actor, verb="verify", status="passed" if passed else "failed", channel=release.channel,
                              model=release.model, env="prod", version=release.version, detail={"reason": reason})
        await self._thread(release, (f":white_check_mark: Prod re-verified by <@{actor}>: {release.model} {release.version} is healthy."
                                     if passed else f":x: Prod verification of {release.version} failed: {reason}. "
                                     f"Consider `/mlops rollback {release.model} prod`."))
        await self._card(release, "prod", report=report)
        return release

    async def verify_env(self, model: str, env: str, actor: str) -> Release:
        release = self.serving(model, env)
        if release is None:
            raise ReleaseError(f"nothing is deployed to {model} {env} yet; `/mlops deploy {model}` first")
        if env == "prod":
            return await self.verify_live(release, actor)
        return await self.verify_release(release, actor, env=env)

    # -- promote ----------------------------------------------------------------------------------

    async def check_promote(self, release: Release, actor: str, *, urgent: bool = False):
        cfg = self.model_config(release.model)
        try:
            digest = await self.registry(release.model).digest(release.model, release.version)
        except EXPECTED as exc:
            raise ReleaseError(f"cannot read {release.model} {release.version} from the registry: {exc}") from None
        return may_promote(release, actor=actor, is_approver=await self.roles.has(actor, "approvers"),
                           staging_only=cfg.staging_only, current_digest=digest, policy=self.config.deploy,
                           now=self.ctx.clock(), urgent=urgent)

    def _start_promote(self, release: Release, actor: str) -> Release:
        release = self.get(release.id)
        if release.state is not State.VERIFIED:  # staging's verdict is read in the same transaction
            raise ReleaseError(self._why_not(release.id, Event.PROMOTE, "staging"))
        return self._cas(release, Event.PROMOTE, "prod", approved_by=actor, approved_at=iso(self.ctx.clock()))

    async def promote(self, release: Release, actor: str, *, urgent_reason: str | None = None) -> Release:
        """Copy to prod, load on every prod endpoint, verify prod; on failure put prod back as the bot records it."""
        release = self.get(release.id)
        if release.prod_state in BUSY | {State.LIVE}:  # a duplicate press, or a card gone stale
            raise ReleaseError(self._why_not(release.id, Event.PROMOTE, "prod"))
        if release.state in BUSY | {State.SUPERSEDED}:
            raise ReleaseError(self._why_not(release.id, Event.PROMOTE, "staging"))
        decision = await self.check_promote(release, actor, urgent=urgent_reason is not None)
        if not decision.allowed:
            self.ctx.audit(actor=actor, verb="promote", status="denied", channel=release.channel, model=release.model,
                          env="prod", version=release.version, detail={"reason": decision.reason})
            raise ReleaseError(decision.reason)
        async with self._operation("promote", release.model, "prod", actor, f"promoting {release.version}",
                                   start=lambda: self._start_promote(release, actor)) as release:
            if urgent_reason:
                self.ctx.audit(actor=actor, verb="promote.urgent", status="ok", channel=release.channel, model=release.model,
                              env="prod", version=release.version, detail={"reason": urgent_reason})
                await self._thread(release, f":rotating_light: Urgent unblock outside deploy hours by <@{actor}>: {urgent_reason}"
                                   + self._oncall_mention())
            await self._card(release, "prod", note=f"Unblocked by <@{actor}>: deploying to prod…")
            failure = await self._load_prod(release)
            if failure is None:
                previous = self.serving(release.model, "prod")
                with self.store.transaction():
                    if previous is not None and previous.id != release.id and previous.prod_state is State.LIVE:
                        self._cas(previous, Event.SUPERSEDE, "prod")
                    release = self._cas(release, Event.PROMOTED, "prod")
                    self._set_env(release, "prod", actor=release.deployed_by or actor, approved_by=actor)
                    self.ctx.audit(actor=actor, verb="promote", status="succeeded", channel=release.channel, model=release.model,
                                  env="prod", version=release.version, detail={"release": release.id})
            else:
                restored = await self._restore(release.model, "prod")
                with self.store.transaction():
                    release = self._cas(release, Event.PROMOTE_FAILED, "prod")
                    self.ctx.audit(actor=actor, verb="promote", status="failed", channel=release.channel, model=release.model,
                                  env="prod", version=release.version, detail={"release": release.id, "error": failure,
                                                                               "restored": restored})
        if failure is None:
            await self._card(release, "prod", note=f":rocket: Live in prod, unblocked by <@{actor}>.")
            await self._thread(release, f":large_green_circle: {release.model} {release.version} is serving in prod on every endpoint.")
            return release
        loud = (f":rotating_light: <!here> Production verification of *{release.model} {release.version}* failed: {failure}. "
                f"{restored}{self._oncall_mention()}")
        await self._card(release, "prod", note=loud)
        if release.channel:
            await self._say(release.channel, loud)
        raise ReleaseError(f"promotion failed: {failure}. {restored}")

    async def _load_prod(self, release: Release) -> str | None:
        """Copy, load and verify on prod; the failure as people read it, or None."""
        cfg = self.model_config(release.model)
        registry = self.registry(release.model)
        try:
            repo = open_store(cfg.environments["prod"].repository, s3_endpoint_url=self.config.s3.endpoint_url)
            config_json = await deploy_files(registry, release.model, release.version, repo, release.triton_version)
            async with self.fleet(release.model, "prod") as fleet:
                await fleet.load(release.model, release.triton_version, config_json)
            passed, reason, _ = await self._check(release, "prod")
            return None if passed else reason
        except Exception as exc:  # noqa: BLE001 - whatever failed, prod goes back to what it served
            if not isinstance(exc, EXPECTED):
                log.error("promotion of release %s failed unexpectedly", release.id, exc_info=True)
            return failure_text(exc)

    async def plan_promote(self, model: str, actor: str, *, urgent: bool) -> str:
        release = self.serving(model, "staging")
        if release is None:
            raise ReleaseError(f"nothing is on {model} staging; `/mlops deploy {model}` first")
        decision = await self.check_promote(release, actor, urgent=urgent)
        if not decision.allowed:
            raise ReleaseError(decision.reason + ("; add urgent=\"reason\" to unblock anyway" if decision.needs_urgent else ""))
        self._check_free(model, "prod")
        cfg = self.model_config(model)
        registry = self.registry(model)
        try:
            files = await registry.files(model, release.version)
            size = sum([await registry.store.size(registry.key(model, release.version, f)) for f in files])
        except EXPECTED as exc:
            raise ReleaseError(str(exc)) from None
        current = self.serving(model, "prod")
        endpoints = cfg.environments["prod"].endpoints
        return (f"*Dry run*: the policy allows <@{actor}> to unblock {model} {release.version} (digest "
                f"`{short(release.digest)}`, verified {messages.when(release.verified_at)}). It would copy {len(files)} files "
                f"({_size(size)}) to {cfg.environments['prod'].repository}, load it on {len(endpoints)} prod endpoint(s) "
                f"({', '.join(endpoints)}) in place of {current.version if current else 'nothing'}, verify prod, and put "
                "prod back if that fails. Nothing was changed.")

    async def _restore(self, model: str, env: str) -> str:
        """Put every endpoint of (model, env) back on the version the bot records it serves (or unload the model
        where it records nothing): after a failed or cut-short operation, one truth per environment. Says where
        it could not."""
        current = self.environment(model, env)
        back, n = (current["version"], current["triton_version"]) if current and current["triton_version"] else (None, None)
        config = None
        if back:
            try:
                config = await self._config_for(model, back, n)
            except EXPECTED as exc:  # the registry cannot be read, so nothing can be loaded from it
                return await self._unrestorable(model, env, back, n, exc)
        failed: dict[str, str] = {}
        stuck: dict[str, dict[str, str]] = {}
        try:
            async with self.fleet(model, env) as fleet:
                try:
                    await (fleet.load(model, n, config) if back and config else fleet.unload(model))
                finally:
                    # A load that failed stays in Triton's index and keeps the endpoint not ready until it restarts.
                    stuck = {e: f for e, f in (await fleet.failed_loads()).items() if f}
        except FleetError as exc:
            failed = exc.failures
        # An endpoint that is down serves nothing, so putting the others back is still worth doing and saying.
        done = [e for e in self.model_config(model).environments[env].endpoints if e not in failed]
        status = "partial" if failed and done else "failed" if failed else "succeeded"
        self.ctx.audit(actor="mlops-bot", verb="rollback", status=status, model=model, env=env, version=back,
                      detail={"automatic": True, "failed": failed, **({"not_ready": stuck} if stuck else {})})
        what = f"put {env} back on {back}" if back else f"unloaded {model} from {env} (the bot records nothing served there)"
        restart = "".join(f" {e} still holds the failed load of {', '.join(f)}, so it reports not ready until it restarts: "
                          f"restart the tritonserver at {e}." for e, f in stuck.items())
        if not failed:
            return f"The bot {what} by itself.{restart}"
        problems = "; ".join(f"{e}: {m}" for e, m in failed.items())
        if not done:
            return f"Putting {env} back {'on ' + back if back else ''} ALSO FAILED ({problems}); {env} needs a person now.{restart}"
        return f"The bot {what} on {', '.join(done)}; {', '.join(failed)} still needs a person ({problems}).{restart}"

    async def _unrestorable(self, model: str, env: str, back: str, n: int, exc: Exception) -> str:
        """`_restore` when the version to go back to cannot be read from the registry: what the endpoints serve
        decides what to say, since the operation that failed may never have touched them."""
        async with self.fleet(model, env) as fleet:
            served = await fleet.observe(model, settle=True)
        off = {e: v for e, v in served.items() if v != [n]}
        self.ctx.audit(actor="mlops-bot", verb="rollback", status="failed" if off else "unchanged", model=model, env=env,
                      version=back, detail={"automatic": True, "failed": {e: str(v) for e, v in off.items()}, "registry": str(exc)})
        if not off:
            return f"{env} still serves {back} on every endpoint."
        return (f"Putting {env} back on {back} ALSO FAILED: it could not be read from the registry ({exc}); "
                f"{describe_served(off)}; {env} needs a person now.")

    async def _config_for(self, model: str, version: str, n: int) -> str:
        return triton_config_json(await self.registry(model).validate(model, version), model, n)

    def _oncall_mention(self) -> str:
        groups = [r.usergroup for r in self.config.oncall.rotations if r.usergroup]
        return f" <!subteam^{groups[0]}>" if groups else ""

    # -- reject and roll back -----------------------------------------------------------------------

    async def reject(self, release: Release, actor: str) -> Release:
        if self.get(release.id).prod_state in BUSY | {State.LIVE}:
            raise ReleaseError(f"{release.model} {release.version} is already unblocked for prod; roll prod back instead")
        with self.store.transaction():
            release = self._cas(self.get(release.id), Event.REJECT, "staging")
            self.ctx.audit(actor=actor, verb="reject", status="succeeded", channel=release.channel, model=release.model,
                          env="staging", version=release.version, detail={"release": release.id})
        await self._card(release, "staging", note=f"Rejected by <@{actor}>; it will not go to prod.")
        return release

    def _rollback_target(self, model: str, env: str, to_version: str | None, card_release: int | None) -> tuple[Release, Release]:
        """(what `env` serves now, what a rollback would serve): the previous known-good release, or `to_version`."""
        cfg = self.model_config(model)
        if env not in cfg.environments:
            raise ReleaseError(f"{model} has no {env} environment; environments: {', '.join(cfg.environments)}")
        current = self.serving(model, env)
        if current is None:
            raise ReleaseError(f"nothing is deployed to {model} {env}, so there is nothing to roll back")
        if card_release is not None and current.id != card_release:
            raise ReleaseError(f"this card is out of date: {model} {env} now serves {current.version}")
        releases = [_release(r) for r in self._rows("SELECT * FROM releases WHERE model = ? ORDER BY id", model)]
        if to_version:
            named = [r for r in releases if r.version == to_version and r.state not in (State.DEPLOYING, State.DEPLOY_FAILED)]
            if not named:
                raise ReleaseError(f"{model} {to_version} was never deployed here; versions deployed: "
                                   + ", ".join(dict.fromkeys(r.version for r in releases)))
            if named[-1].id == current.id:
                raise ReleaseError(f"{model} {env} already serves {to_version}")
            return current, named[-1]
        target = rollback_target(current, releases, env)
        if target is None:
            raise ReleaseError(f"{model} {env} has no earlier known-good version to go back to (one that served {env} before "
                               f"{current.version} and was neither rolled back nor failed); name one with "
                               f"`/mlops rollback {model} {env} to <version>`")
        return current, target

    async def rollback(self, model: str, env: str, actor: str, *, to_version: str | None, reason: str,
                       card_release: int | None = None) -> str:
        """Serve the previous known-good version again (or `to_version`); returns what happened."""
        current, target = self._rollback_target(model, env, to_version, card_release)
        cfg = self.model_config(model)
        async with self._operation("rollback", model, env, actor, f"rolling back to {target.version}",
                                   detail={"from": current.version, "to": target.version, "reason": reason}):
            try:
                config_json = await self._config_for(model, target.version, target.triton_version)
                repo = open_store(cfg.environments[env].repository, s3_endpoint_url=self.config.s3.endpoint_url)
                if not await repo.list(f"{model}/{target.triton_version}/"):  # pruned or never copied here
                    await deploy_files(self.registry(model), model, target.version, repo, target.triton_version)
                async with self.fleet(model, env) as fleet:
                    await fleet.load(model, target.triton_version, config_json)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the environment goes back to its record
                if not isinstance(exc, EXPECTED):
                    log.error("rollback of %s %s failed unexpectedly", model, env, exc_info=True)
                restored = await self._restore(model, env)
                self.ctx.audit(actor=actor, verb="rollback", status="failed", model=model, env=env, version=target.version,
                              detail={"error": failure_text(exc), "restored": restored})
                raise ReleaseError(f"rollback of {model} {env} to {target.version} failed: {failure_text(exc)}. {restored}") from None
            with self.store.transaction():
                current = self.get(current.id)
                if current.standing(env) in sources(env_of(env), Event.ROLL_BACK):
                    self._cas(current, Event.ROLL_BACK, env)
                target = self.get(target.id)
                if target.standing(env) in sources(env_of(env), Event.RESTORE):
                    target = self._cas(target, Event.RESTORE, env)
                self._set_env(target, env, actor=actor, approved_by=target.approved_by if env == "prod" else None)
                self.ctx.audit(actor=actor, verb="rollback", status="succeeded", model=model, env=env, version=target.version,
                              detail={"from": current.version, "reason": reason})
        await self._card(self.get(current.id), env, note=f":rewind: Rolled back by <@{actor}> to {target.version}: {reason}")
        return f":rewind: {model} {env} is serving {target.version} again (was {current.version}). Reason: {reason}"

    async def plan_rollback(self, model: str, env: str, actor: str, *, to_version: str | None) -> str:
        current, target = self._rollback_target(model, env, to_version, None)
        self._check_free(model, env)
        endpoints = self.model_config(model).environments[env].endpoints
        return (f"*Dry run*: `/mlops rollback {model} {env}` would load {target.version} (digest `{short(target.digest)}`, "
                f"triton version {target.triton_version}) on {len(endpoints)} {env} endpoint(s) ({', '.join(endpoints)}) in "
                f"place of {current.version}, and mark {current.version} rolled back on {env}. Nothing was changed.")

    # -- manual locks -------------------------------------------------------------------------------

    def lock(self, model: str, env: str, actor: str, reason: str) -> str:
        self._check_env(model, env)
        now = self.ctx.clock()
        with self.store.transaction() as conn:
            self._check_free(model, env)
            conn.execute("INSERT OR REPLACE INTO locks (model, env, holder, reason, kind, expires_at, created_at) "
                         "VALUES (?, ?, ?, ?, 'manual', ?, ?)",
                         (model, env, actor, reason, iso(now + timedelta(hours=self.config.deploy.lock_ttl_hours)), iso(now)))
            self.ctx.audit(actor=actor, verb="lock", status="succeeded", model=model, env=env, detail={"reason": reason})
        return f":lock: {model} {env} is locked by <@{actor}>: {reason}. `/mlops unlock {model} {env}` releases it."

    def plan_lock(self, model: str, env: str, actor: str, reason: str) -> str:
        self._check_env(model, env)
        self._check_free(model, env)
        until = self.ctx.clock() + timedelta(hours=self.config.deploy.lock_ttl_hours)
        return (f"*Dry run*: `/mlops lock` would lock {model} {env} for <@{actor}> ({reason}) until {messages.when(until)}: "
                "no deploy, promotion or rollback could start there until then. Nothing was changed.")

    def _held_manual(self, model: str, env: str) -> Lock:
        self._check_env(model, env)
        held = self.lock_of(model, env)
        if held is None:
            raise ReleaseError(f"{model} {env} is not locked")
        if held.kind != "manual":
            raise ReleaseError(f"{model} {env} is held by an operation that is running now (<@{held.holder}>: {held.reason}); "
                               "its lock is freed the moment it ends")
        return held

    def unlock(self, model: str, env: str, actor: str) -> str:
        self._check_env(model, env)
        row = next(iter(self._rows("SELECT * FROM locks WHERE model = ? AND env = ?", model, env)), None)
        if row and row["kind"] == "operation" and row["operation_id"] not in self._running:
            self.lock_of(model, env)  # frees it, with its audit row
            self.ctx.audit(actor=actor, verb="unlock", status="succeeded", model=model, env=env,
                          detail={"was": row["reason"], "holder": row["holder"], "operation": "gone"})
            return (f":unlock: {model} {env} unlocked: freed the lock <@{row['holder']}> held for `{row['reason']}`, "
                    "whose operation is no longer running.")
        held = self._held_manual(model, env)
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'manual'", (model, env))
            self.ctx.audit(actor=actor, verb="unlock", status="succeeded", model=model, env=env, detail={"was": held.reason, "holder": held.holder})
        return f":unlock: {model} {env} unlocked (was locked by <@{held.holder}>: {held.reason})."

    def plan_unlock(self, model: str, env: str, actor: str) -> str:
        held = self._held_manual(model, env)
        return (f"*Dry run*: `/mlops unlock` would free {model} {env}, locked by <@{held.holder}> ({held.reason}) until "
                f"{messages.when(held.expires_at)}. Nothing was changed.")

    def _check_env(self, model: str, env: str) -> None:
        cfg = self.model_config(model)
        if env not in cfg.environments:
            raise ReleaseError(f"{model} has no environment `{env}`; environments: {', '.join(cfg.environments)}")

    # -- status -----------------------------------------------------------------------------------

    async def status_rows(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every (model, env): what the bot records, its standing, the lock, and what the endpoints serve when
        that differs from the record."""
        rows = []
        for name, cfg in sorted(self.config.models.items()):
            if model and name != model:
                continue
            for env in cfg.environments:
                current = self.environment(name, env) or {}
                release = self.get(current["release_id"]) if current.get("release_id") else None
                report = self._report(release) if release else None
                lock = self.lock_of(name, env)
                rows.append({
                    "model": name, "env": env, "version": current.get("version"),
                    "state": release.standing(env).words if release and release.standing(env) else None,
                    "deployed_by": current.get("deployed_by"), "approved_by": current.get("approved_by"),
                    "updated_at": _dt(current.get("updated_at")),
                    "verify": ("passed" if report.get("passed") else f"failed: {report.get('reason')}") if report else None,
                    "lock": lock, "drift": await self.drift(name, env, current.get("triton_version")),
                })
        return rows

    async def drift(self, model: str, env: str, recorded: int | None) -> list[str]:
        """Where the endpoints serve something other than the record, as lines for people."""
        if self._running and self.lock_of(model, env):  # mid-operation the difference is the operation itself
            return []
        async with self.fleet(model, env, timeout=STATUS_TIMEOUT_S) as fleet:
            served = await fleet.observe(model)
        lines = []
        for endpoint, versions in served.items():
            if isinstance(versions, str):
                lines.append(f"{endpoint}: {versions}")  # what the fleet says: "unreachable (connection refused)", …
            elif versions != ([recorded] if recorded else []):
                lines.append(f"recorded v{recorded or '—'}, {endpoint} serves {', '.join(f'v{n}' for n in versions) or 'nothing'}")
        return lines

    def overdue_operations(self) -> list[str]:
        """Operations running past the lock TTL: the bot is not wedged by design, so this is worth a page."""
        cutoff = iso(self.ctx.clock() - timedelta(hours=self.config.deploy.lock_ttl_hours))
        return [f"{r['kind']} {r['model']} {r['env']} by {r['actor']} since {r['started_at']}" for r in self._rows(
            "SELECT * FROM operations WHERE state = 'running' AND started_at < ?", cutoff) if r["id"] in self._running]

    # -- restart --------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Operations cut short by a crash or a stop (run at start, before anything takes a lock): each
        release left running is marked interrupted, each lock freed, and every environment they touched is
        put back on the version the bot records once the loads in flight have finished, so what the
        endpoints serve is what the bot says. The channel is told what each endpoint serves afterwards."""
        touched: dict[tuple[str, str], dict[str, int | None]] = {}  # what was going on, and its release
        for op in self._rows("SELECT * FROM operations WHERE state IN ('running', 'interrupted') ORDER BY id"):
            doing = json.loads(op["detail"]).get("reason") or op["kind"]
            touched.setdefault((op["model"], op["env"]), {})[f"<@{op['actor']}> was {doing}"] = op["release_id"]
            with self.store.transaction() as conn:
                if op["release_id"]:
                    self._interrupt(self.get(op["release_id"]), op["env"])
                conn.execute("UPDATE operations SET state = 'reconciled', ended_at = coalesce(ended_at, ?) WHERE id = ?",
                             (iso(self.ctx.clock()), op["id"]))
        for lock in self._rows("SELECT * FROM locks WHERE kind = 'operation'"):
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (lock["model"], lock["env"]))
                self.ctx.audit(actor="mlops-bot", verb="reconcile", status="interrupted", model=lock["model"], env=lock["env"],
                              detail={"was": lock["reason"], "holder": lock["holder"]})
            touched.setdefault((lock["model"], lock["env"]), {}).setdefault(f"<@{lock['holder']}> was {lock['reason']}", None)
        for (model, env), doing in touched.items():
            await self._reconcile_env(model, env, doing)

    def _interrupt(self, release: Release, env: str) -> None:
        standing = release.standing(env)
        if standing in BUSY:
            self._cas(release, Event.INTERRUPT, env)
            self.ctx.audit(actor="mlops-bot", verb="reconcile", status="interrupted", model=release.model, env=env,
                          version=release.version, detail={"release": release.id, "was": standing.value})

    async def _reconcile_env(self, model: str, env: str, doing: dict[str, int | None]) -> None:
        cfg = self.config.models.get(model)
        if cfg is None or env not in cfg.environments:
            return
        current = self.environment(model, env)
        recorded = current["triton_version"] if current else None
        async with self.fleet(model, env) as fleet:
            before = await fleet.observe(model, settle=True)
        restored = ""
        if any(v != ([recorded] if recorded else []) for v in before.values() if isinstance(v, list)):
            restored = await self._restore(model, env) + " "
        async with self.fleet(model, env) as fleet:
            after = describe_served(await fleet.observe(model))
        text = (f":warning: The bot restarted while {' and '.join(doing)} on {model} {env}. Marked interrupted; lock released. "
                f"Endpoints then served {describe_served(before)}. {restored}Serving now: {after}. Verify or deploy again.")
        for release_id in {r for r in doing.values() if r}:
            await self._card(self.get(release_id), env, note=text)
        await self._say(self.config.channels.main, text)


def _size(n: int) -> str:
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


_VERBS = {
    Event.DEPLOYED: "deploy", Event.DEPLOY_FAILED: "deploy", Event.VERIFY: "verify", Event.PASSED: "verify",
    Event.FAILED: "verify", Event.PROMOTE: "promote", Event.PROMOTED: "promote", Event.PROMOTE_FAILED: "promote",
    Event.REJECT: "reject", Event.ROLL_BACK: "rollback", Event.RESTORE: "rollback", Event.SUPERSEDE: "deploy",
    Event.INTERRUPT: "reconcile",
}
