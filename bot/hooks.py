"""What the webhooks share: a bounded body read, and the durable queue of the Slack work they accepted.

A hook answers as soon as what it took is committed to SQLite (`hook_queue`); a worker does the Slack part
in the background. So a sender never waits on Slack's pacing (Alertmanager gives up after 10 s and sends
again), a failure while posting can never turn into the sender's 500, and work accepted before a stop or a
crash is done after the next start. Items of one key (an alert group, a datagen job) run one at a time in
the order they came; different keys run side by side, up to `concurrency`.

An item is deleted once its work is done. One whose work raised is kept with `state = 'failed'` and the
error, logged with its traceback and audited, and not retried: the Slack client has already retried what
is worth retrying (429, 5xx, dropped connections), and a rerun could post twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import time as walltime
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.store import Store, iso

log = logging.getLogger(__name__)

# A 10,000-alert Alertmanager group is about 4.4 MB; refusing it only makes Alertmanager send it again.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BODY_ENV = "MLOPS_HOOK_MAX_BYTES"
DRAIN_BYTES = 64 * 1024 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    def __init__(self, size: int | None, limit: int):
        said = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(f"the body is {said}, over the limit of {limit} bytes (set {MAX_BODY_ENV} to raise it)")
        self.size = size  # None: no Content-Length, and the stream went past the limit
        self.limit = limit


def max_body_bytes(env: dict[str, str] | None = None) -> int:
    """The hooks' body limit: MLOPS_HOOK_MAX_BYTES (bytes, or with a K/M suffix in KiB/MiB), else 16 MiB."""
    given = (os.environ if env is None else env).get(MAX_BODY_ENV, "").strip().upper().removesuffix("B")
    if not given:
        return MAX_BODY_BYTES
    scale = {"K": 1024, "M": 1024 * 1024}.get(given[-1], 1)
    try:
        limit = int(float(given[:-1] if scale > 1 else given) * scale)
    except ValueError:
        limit = 0
    if limit <= 0:
        log.error("%s=%r is not a size (like 16777216 or 16M); using %d bytes", MAX_BODY_ENV,
                  os.environ.get(MAX_BODY_ENV) if env is None else env.get(MAX_BODY_ENV), MAX_BODY_BYTES)
        return MAX_BODY_BYTES
    return limit


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing one over `limit` without holding more than the limit in memory.

    Read from the stream rather than with `request.read()`, whose limit is the app's client_max_size (1 MiB)
    and answers 413 without a word to the log or the audit. The rest of a body over the limit is read and
    dropped (up to DRAIN_BYTES more), so the sender gets the 413 cleanly instead of a reset connection.
    """
    declared = request.content_length
    if declared is not None and declared > limit + DRAIN_BYTES:
        raise BodyTooLarge(declared, limit)
    parts, size = [], 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit + DRAIN_BYTES:
            raise BodyTooLarge(None, limit)
        if size <= limit:
            parts.append(chunk)
    if size > limit:
        raise BodyTooLarge(size, limit)
    return b"".join(parts)


HOOK_MAX_SKEW = 300  # seconds; a signed hook older than this is a replay


def sign(secret: str, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    """The webhook signature: `v1=` and the hex HMAC-SHA256 of the lines `v1`, timestamp, method, path and
    query (as sent: percent-encoding kept, no `?`), then the body after a final newline.

    Everything that decides what is stored is signed, so a captured request replayed with another query
    (`date=`, `job=`) does not verify. A newline cannot occur in a request line, so no two requests share
    a signed string.
    """
    head = "\n".join(("v1", timestamp, method.upper(), path, query)) + "\n"
    digest = hmac.new(secret.encode(), head.encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signed(secret: str, request: web.Request, body: bytes, prefix: str) -> bool:
    """Whether `request` carries a fresh, valid `sign` signature in its X-<prefix>-Timestamp and
    X-<prefix>-Signature headers (wall-clock time: the sender's clock is real, whatever the bot's)."""
    stamp = request.headers.get(f"X-{prefix}-Timestamp", "")
    given = request.headers.get(f"X-{prefix}-Signature", "")
    # isascii: str.isdigit() is true of '²', which int() refuses.
    fresh = stamp.isascii() and stamp.isdigit() and abs(walltime.time() - int(stamp)) <= HOOK_MAX_SKEW
    url = request.rel_url
    expected = sign(secret, stamp, request.method, url.raw_path, url.raw_query_string, body)
    return fresh and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def not_stored(hook: str, exc: sqlite3.Error) -> web.Response:
    """The answer when the store cannot take what a hook brought: 503, so the sender tries again later."""
    log.error("%s: could not store what was sent (%s: %s); answered 503 so it is sent again", hook, type(exc).__name__, exc)
    return web.json_response({"error": f"the bot cannot store this right now ({type(exc).__name__}); "
                                       "nothing was kept, send it again"}, status=503)


class HookQueue:
    concurrency = 4
    stop_grace = 5.0  # seconds a stop waits for the items being posted; the rest run after the next start
    record_retry = 5.0  # seconds between tries to record outcomes the store refused

    def __init__(self, store: Store, audit: Callable[..., None], clock: Callable[[], datetime]):
        self.store = store
        self.audit = audit
        self.clock = clock
        self._handlers: dict[str, Handler] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        # Items whose work ended but whose row the store refused to update: never taken again in this process.
        self._unrecorded: dict[int, str | None] = {}  # id -> None (done) or the error (failed)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    def handle(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def put(self, kind: str, key: str, payload: dict[str, Any]) -> int:
        """Queue work and commit it (or, inside the caller's transaction, commit with it); the item's id.
        Raises sqlite3.Error when the store cannot take it: the hook then answers 503 (see `not_stored`)."""
        with self.store.transaction() as conn:
            cursor = conn.execute("INSERT INTO hook_queue (kind, key, payload, queued_at) VALUES (?, ?, ?, ?)",
                                  (kind, key, json.dumps(payload), iso(self.clock())))
        self._wake.set()
        return int(cursor.lastrowid or 0)

    def pending(self) -> int:
        """Items not done yet, the ones being posted included."""
        return self.store.conn.execute("SELECT count(*) FROM hook_queue WHERE state = 'queued'").fetchone()[0]

    async def settled(self, timeout: float = 30) -> None:
        """Wait until every queued item is done or failed (tests use it)."""
        async with asyncio.timeout(timeout):
            while self.pending():
                await asyncio.sleep(0.01)

    # -- the worker --------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._stopping = False
            self._worker = asyncio.create_task(self._run(), name="hook-queue")

    async def stop(self) -> None:
        """Take nothing new; give the items being posted `stop_grace` s, then cut them short (they stay queued)."""
        if self._worker is None:
            return
        self._stopping = True
        self._wake.set()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=self.stop_grace)
        left = [self._worker, *self._running.values()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if self._running:
            log.warning("stopped with %d hook items still being posted; they run after the next start", len(self._running))
        self._running.clear()
        self._record()
        self._worker = None

    def _next(self) -> tuple[int, str, str, str] | None:
        """The oldest queued item whose key has no older item queued, not already running."""
        busy = len(self._running) + len(self._unrecorded)
        rows = self.store.conn.execute(
            "SELECT id, kind, key, payload FROM hook_queue q WHERE state = 'queued' AND NOT EXISTS ("
            "  SELECT 1 FROM hook_queue p WHERE p.state = 'queued' AND p.key = q.key AND p.id < q.id"
            ") ORDER BY id LIMIT ?", (busy + 1,)).fetchall()
        return next((row for row in rows if row[0] not in self._running and row[0] not in self._unrecorded), None)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                self._record()
                item = self._next() if len(self._running) < self.concurrency else None
            except sqlite3.Error:  # the store cannot even be read: the worker waits, it does not die
                log.exception("the hook queue cannot read the store; trying again in %.0f s", self.record_retry)
                await asyncio.sleep(self.record_retry)
                continue
            if item is not None:
                self._running[item[0]] = asyncio.create_task(self._work(*item), name=f"hook-queue.{item[1]}.{item[0]}")
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.record_retry if self._unrecorded else None)

    async def _work(self, item_id: int, kind: str, key: str, payload: str) -> None:
        try:
            handler = self._handlers.get(kind)
            if handler is None:
                raise LookupError(f"no handler for hook items of kind {kind!r}")
            await handler(json.loads(payload))
        except asyncio.CancelledError:
            raise  # a stop cut it short: it stays queued
        except Exception as exc:
            log.exception("hook item %d (%s, %s) failed", item_id, kind, key)
            error = f"{type(exc).__name__}: {exc}"[:500]
            self.audit(actor="mlops-bot", verb="hooks.post", status="error",
                       detail={"item": item_id, "kind": kind, "key": key[:200], "error": error})
            self._unrecorded[item_id] = error
        else:
            self._unrecorded[item_id] = None
        finally:
            self._running.pop(item_id, None)
            self._wake.set()

    def _record(self) -> None:
        """Delete the items done and mark the ones failed; what the store refuses is tried again later."""
        while self._unrecorded:
            item_id, error = next(iter(self._unrecorded.items()))
            try:
                with self.store.transaction() as conn:
                    if error is None:
                        conn.execute("DELETE FROM hook_queue WHERE id = ?", (item_id,))
                    else:
                        conn.execute("UPDATE hook_queue SET state = 'failed', error = ?, failed_at = ? WHERE id = ?",
                                     (error, iso(self.clock()), item_id))
            except sqlite3.Error as exc:
                # Kept in memory and not taken again; a restart before it is recorded runs it once more.
                log.warning("cannot record the outcome of hook item %d yet: %s", item_id, exc)
                return
            del self._unrecorded[item_id]
