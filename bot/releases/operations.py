"""Operations and their locks: one operation at a time on each (model, env), and none left running.

Every operation starts with one transaction that takes the (model, env) lock, records the operation and
compare-and-sets the release's standing in that environment, with its audit row: a double click, a Slack
retry or two people pressing the same button run the work once. It ends, whatever is raised inside it, in
a terminal standing with its lock freed (`operation`). A lock is live only while its operation runs in this
process; any other is freed on the next look, so no lock outlives its holder.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.context import Context
from bot.releases import messages
from bot.releases.delivery import Delivery
from bot.releases.model import BUSY, FAILS, Event, Release, State
from bot.releases.records import Records, ReleaseError, parse_dt
from bot.releases.restore import Restorer
from bot.releases.systems import failure_text
from bot.store import iso

log = logging.getLogger(__name__)

# The audit verb of the operation a running standing belongs to, for the row of one that failed unexpectedly.
_VERB_OF = {State.DEPLOYING: "deploy", State.VERIFYING: "verify", State.PROMOTING: "promote"}


@dataclass(frozen=True)
class Lock:
    holder: str
    reason: str
    kind: str  # "operation" (held while one runs) or "manual" (/mlops lock, until it expires or is unlocked)
    expires_at: datetime


class Operations:
    def __init__(self, ctx: Context, records: Records, restorer: Restorer, delivery: Delivery):
        self.ctx = ctx
        self.records = records
        self.restorer = restorer
        self.delivery = delivery
        self.running: set[int] = set()  # operations running in this process: only their locks are live

    def lock_of(self, model: str, env: str) -> Lock | None:
        """The lock in force; an operation lock whose operation no longer runs here is freed on the spot."""
        rows = self.records.rows("SELECT * FROM locks WHERE model = ? AND env = ?", model, env)
        if not rows:
            return None
        r = rows[0]
        if r["kind"] == "operation" and r["operation_id"] not in self.running:
            with self.ctx.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (model, env))
                self.ctx.audit(actor="mlops-bot", verb="lock.freed", status="ok", model=model, env=env,
                               detail={"holder": r["holder"], "reason": r["reason"], "why": "its operation is not running"})
            return None
        if r["kind"] == "manual" and parse_dt(r["expires_at"]) <= self.ctx.clock():
            return None
        return Lock(r["holder"], r["reason"], r["kind"], parse_dt(r["expires_at"]))

    def check_free(self, model: str, env: str) -> None:
        held = self.lock_of(model, env)
        if held is not None and held.kind == "operation":
            raise ReleaseError(f"already in progress on {model} {env}: <@{held.holder}> started `{held.reason}`")
        if held is not None:
            raise ReleaseError(f"{model} {env} is locked by <@{held.holder}> ({held.reason}) "
                               f"until {messages.when(held.expires_at)}")

    @asynccontextmanager
    async def operation(self, kind: str, model: str, env: str, actor: str, reason: str, *,
                        start: Callable[[], Release | None] = lambda: None, detail: dict[str, Any] | None = None,
                        channel: str | None = None) -> AsyncIterator[Release | None]:
        """Run one operation on (model, env): take its lock and record it together with `start` (the
        compare-and-set of its release, if any) and the `started` row; free the lock however it ends. An
        exception that escapes the body leaves no release in a running standing: it fails there (or is
        interrupted, when the bot is stopping) and the card says why."""
        now = self.ctx.clock()
        ttl = timedelta(hours=self.ctx.config.deploy.lock_ttl_hours)
        with self.ctx.store.transaction() as conn:
            self.check_free(model, env)
            op = conn.execute("INSERT INTO operations (kind, model, env, actor, state, detail, started_at) "
                              "VALUES (?, ?, ?, ?, 'running', ?, ?)",
                              (kind, model, env, actor, json.dumps({"reason": reason}), iso(now))).lastrowid
            conn.execute("INSERT OR REPLACE INTO locks (model, env, holder, reason, kind, operation_id, expires_at, created_at) "
                         "VALUES (?, ?, ?, ?, 'operation', ?, ?, ?)", (model, env, actor, reason, op, iso(now + ttl), iso(now)))
            release = start()
            if release is not None:
                conn.execute("UPDATE operations SET release_id = ?, version = ? WHERE id = ?", (release.id, release.version, op))
            self.ctx.audit(actor=actor, verb=kind, status="started", channel=channel or (release.channel if release else None),
                           model=model, env=env, version=release.version if release else None,
                           detail={**({"release": release.id} if release else {}), **(detail or {})})
        self.running.add(op)
        outcome = "ended"
        try:
            yield release
        except BaseException as exc:
            outcome = "interrupted" if isinstance(exc, asyncio.CancelledError) else "failed"
            if release is not None:
                await self._abandon(release.id, env, actor, exc)
            raise
        finally:
            self.running.discard(op)
            with self.ctx.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE operation_id = ?", (op,))
                conn.execute("UPDATE operations SET state = ?, ended_at = ? WHERE id = ?", (outcome, iso(self.ctx.clock()), op))

    async def _abandon(self, release_id: int, env: str, actor: str, exc: BaseException) -> None:
        """The last resort of `operation`: a release still running in `env` fails there, said on its card."""
        release = self.records.get(release_id)
        standing = release.standing(env)
        if standing not in BUSY:
            return
        cancelled = isinstance(exc, asyncio.CancelledError)
        event = Event.INTERRUPT if cancelled else FAILS[standing]
        if not cancelled:
            log.error("release %s: %s on %s failed unexpectedly", release.id, standing.value, env, exc_info=exc)
        with self.ctx.store.transaction():
            release = self.records.cas(release, event, env)
            self.ctx.audit(actor=actor, verb=_VERB_OF[standing], status="interrupted" if cancelled else "failed",
                           channel=release.channel, model=release.model, env=env, version=release.version,
                           detail={"release": release.id, "state": release.standing(env).value, "error": failure_text(exc)})
        if not cancelled:  # a stopping bot says nothing more; the next start reconciles and tells
            restored = await self.restorer.restore(release.model, env)
            await self.delivery.card(release, env, note=f":x: {standing.words.capitalize()} stopped: {failure_text(exc)}. "
                                                        f"{restored} It is in the bot's log; the lock is released.")

    def overdue_operations(self) -> list[str]:
        """Operations running past the lock TTL: the bot is not wedged by design, so this is worth a page."""
        cutoff = iso(self.ctx.clock() - timedelta(hours=self.ctx.config.deploy.lock_ttl_hours))
        return [f"{r['kind']} {r['model']} {r['env']} by {r['actor']} since {r['started_at']}" for r in self.records.rows(
            "SELECT * FROM operations WHERE state = 'running' AND started_at < ?", cutoff) if r["id"] in self.running]
