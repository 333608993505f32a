"""SQLite state through sqlite-utils: numbered migrations, the hash-chained audit log, small helpers.

One connection, used from the event loop's thread: every statement here is short, and a single writer
keeps the audit chain ordered without cross-process coordination beyond SQLite's own BEGIN IMMEDIATE.

Group commit: single-row appends (audit rows, delivery keys, presses, slot claims) made while the event
loop runs join one group that is committed at the loop's next turn, so a burst of Slack requests pays for
one commit rather than two each. The group waits in memory until then (claims are answered from the table
and the group), and its audit rows are chained and inserted in one batch; the reads here (`actions`,
`verify_chain`, `query`) write it first. An explicit `transaction()` commits the group first, so its
rollback can never take other rows with it.

A write the disk refuses (full, read-only, I/O error) is never dropped and never half-chained: the group is
rolled back whole, tried once more, then kept in memory and tried again every `retry_interval` s, and the
chain head cached for it is forgotten. Meanwhile the store says why it cannot be written (`write_problem()`),
so the runtime refuses Slack work before it starts, and `transaction()` refuses its caller before its body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from .chain import AUDIT_FIELDS, GENESIS, INSERT_ACTION, ChainBreak, audit_values, chain_break, iso, row_hash, text_value, utcnow
from .disk import StoreUnwritable, failure_reason, fs_problem, storage_error
from .migrations import MIGRATIONS, statements

T = TypeVar("T")

log = logging.getLogger(__package__)  # "bot.store": the start check silences it by that name

# The probe's committed write: one row, replaced each time, under a key no Slack delivery can have.
_PROBE_SQL = "INSERT OR REPLACE INTO slack_requests (key, ts) VALUES ('store.probe', ?)"
_PROBE = ("store.probe",)


class Store:
    # Below this much free space the disk counts as full: a commit group needs room for its WAL frames.
    min_free_bytes = 1 << 20
    # While the store cannot be written, how often to try again (the pending group, then a probe write).
    retry_interval = 1.0

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._memory = str(path) == ":memory:"
        self._explicit = False  # inside transaction()
        self._head: str | None = None  # the chain's last hash, known while this connection holds the write lock
        # The commit group, in memory until the loop's next turn: audit rows not yet chained, and the claims
        # (delivery keys, presses, slots) answered from memory meanwhile. No transaction stays open between
        # turns, so nobody else's statement can join a group and be rolled back with it when a commit fails.
        self._pending: list[tuple[Any, ...]] = []
        self._claims: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
        self._scheduled = False  # a commit of the group is scheduled on the loop
        self._closed = False
        self.write_error: str | None = None  # why the store cannot be written now (None: it can, as far as known)
        self._retry: asyncio.TimerHandle | None = None
        try:
            if not self._memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db = sqlite_utils.Database(conn)
            self._conn = conn
            if not self._memory:
                self._db.enable_wal()
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits
            conn.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        except OSError as exc:
            raise StoreUnwritable(self.path, exc.strerror or str(exc)) from None
        except sqlite3.OperationalError as exc:
            if isinstance(exc, StoreUnwritable):
                raise
            if storage_error(exc):
                raise StoreUnwritable(self.path, self._reason(exc)) from exc
            raise

    # Everyone else's SQL goes through these. A claim still in the group is written first, so their statement
    # sees it (a slot's job marks its own claim finished) without ever joining the group's transaction.
    @property
    def conn(self) -> sqlite3.Connection:
        if self._claims and not self._explicit and self.write_error is None:
            self._write_group()
        return self._conn

    @property
    def db(self) -> sqlite_utils.Database:
        _ = self.conn  # the same flush
        return self._db

    def close(self) -> None:
        if self._closed:
            return
        if self._retry is not None:
            self._retry.cancel()
        self._write_group()
        if self._pending or self._claims:
            # Never lost silently: what the disk would not take goes to the log, whole, to be restored from there.
            log.error("the store %s could not be written (%s): %d audit rows and %d claims were not stored; each "
                      "row follows as JSON", self.path, self.write_error, len(self._pending), len(self._claims))
            for values in self._pending:
                log.error("unstored audit row: %s", json.dumps(dict(zip(AUDIT_FIELDS, values, strict=True)), sort_keys=True))
        self._conn.close()
        self._closed = True

    def migrate(self) -> int:
        self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.transaction():
                for statement in statements(script):
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        return len(MIGRATIONS)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so a compare-and-set cannot interleave.

        The open group is written first, so this rollback can never take other rows with it; when it cannot be
        written, the transaction is refused before its body runs (StoreUnwritable), with nothing changed."""
        if self._explicit:  # nested: the outer transaction owns commit/rollback
            yield self._conn
            return
        if (self._pending or self._claims) and not self._write_group():
            raise StoreUnwritable(self.path, self.write_error or "unknown")
        self._begin()
        self._explicit = True
        try:
            yield self._conn
        except BaseException as exc:
            self._rollback()
            if storage_error(exc) and not isinstance(exc, StoreUnwritable):
                raise self._unwritable(exc) from exc
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()  # SQLite rolls back itself after SQLITE_FULL or an I/O error, not always
                if storage_error(exc):
                    raise self._unwritable(exc) from exc
                raise
            self._written()
        finally:
            self._explicit = False
            self._head = None

    def _begin(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if storage_error(exc):
                raise self._unwritable(exc) from exc
            raise

    def _rollback(self) -> None:
        self._head = None  # the cached head may name a row that is gone now: it broke the chain for good
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:  # the disk failed the rollback too; SQLite ends the transaction regardless
                log.warning("rollback on %s failed", self.path, exc_info=True)

    def commit_group(self) -> None:
        """Write the group at the loop's next turn. While the store is known unwritable, the retry timer does it."""
        self._scheduled = False
        if self.write_error is None:
            self._write_group()

    def _write_group(self) -> bool:
        """Write the claims and chain the audit rows in one transaction, trying once more at once if it fails;
        then everything stays in memory, in order, for the next try. True when nothing is left to write."""
        if self._closed or self._explicit or not (self._pending or self._claims):
            return not (self._pending or self._claims)
        if self._conn.in_transaction:  # someone's BEGIN left open: their commit decides, not ours
            return False
        failure: sqlite3.Error | None = None
        for _ in range(2):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for sql, params in self._claims.values():
                    self._conn.execute(sql, params)
                self._write(self._pending)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                failure = exc
                continue
            self._head = None
            written = len(self._pending)
            self._pending, self._claims = [], {}
            self._written(written)
            return True
        assert failure is not None
        self._unwritable(failure)
        return False

    def _defer(self) -> bool:
        """Join the commit group if a loop will commit it at its next turn; False means write now."""
        if self._explicit:
            return False
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False  # no loop (CLI): the caller's statement autocommits
            loop.call_soon(self.commit_group)
            self._scheduled = True
        return True

    def _flush(self) -> None:
        """Commit the group before a read of this store, so the reader sees its own writes (if the disk takes them)."""
        if (self._pending or self._claims) and self.write_error is None:
            self._write_group()

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        """Link rows (values in AUDIT_FIELDS order) into the chain and insert them; the write lock is held."""
        if not rows:
            return
        head = self._head
        if head is None:  # once per transaction: no other writer can move the head while we hold the lock
            found = self._conn.execute("SELECT hash FROM audit_head WHERE one = 1").fetchone()
            head = found[0] if found else GENESIS
        chained = []
        for values in rows:
            digest = row_hash(head, values)
            chained.append((*values, head, digest))
            head = digest
        self._conn.executemany(INSERT_ACTION, chained)
        self._head = head  # valid only until this transaction ends: _rollback and every commit forget it

    def _execute(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """A write outside the group (no loop, or inside transaction()); a disk that refuses it says so."""
        try:
            return self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if storage_error(exc):
                raise self._unwritable(exc) from exc
            raise

    # -- whether the store can be written ----------------------------------------------------------

    def write_problem(self) -> str | None:
        """Why a write would fail now ("disk full (0 KiB free) at FILE"), or None. Cheap enough for every request:
        the last failure if there is one, else the file system's flags and free space (one statvfs)."""
        if self.write_error is None and (problem := self._fs_problem()):
            self._set_error(problem)
        return self.describe()

    def describe(self) -> str | None:
        return None if self.write_error is None else f"{self.write_error} at {self.path}"

    def probe(self) -> str | None:
        """Check for real: the file system, then one small committed write carrying whatever is pending.
        Returns what write_problem() does. /healthz and the retry timer call it."""
        if self._closed or self._explicit:
            return self.describe()
        if problem := self._fs_problem():
            self._set_error(problem)
            return self.describe()
        self._claims[_PROBE] = (_PROBE_SQL, (iso(utcnow()),))
        self._write_group()
        self._claims.pop(_PROBE, None)  # a probe that could not be written is not worth writing later
        return self.describe()

    def writable(self) -> bool:
        """A real committed write (a rolled-back one passes on a full disk: WAL pages are only written at commit)."""
        return self.probe() is None

    def _fs_problem(self) -> str | None:
        return None if self._memory else fs_problem(self.path.parent, self.min_free_bytes)

    def _reason(self, exc: sqlite3.Error) -> str:
        return self._fs_problem() or failure_reason(exc, None if self._memory else self.path)

    def _unwritable(self, exc: sqlite3.Error) -> StoreUnwritable:
        self._set_error(self._reason(exc))
        return StoreUnwritable(self.path, self.write_error or str(exc))

    def _set_error(self, reason: str) -> None:
        if self.write_error is None:
            log.error("the store %s cannot be written: %s; Slack work is refused and audit rows are kept in memory "
                      "until it can", self.path, reason)
        self.write_error = reason
        self._schedule_retry()

    def _written(self, rows: int = 0) -> None:
        """A commit went through: the store is writable again unless the file system still says otherwise."""
        if self.write_error is None:
            return
        problem = self._fs_problem()
        if problem is None:
            log.warning("the store %s can be written again (%d waiting audit rows written)", self.path, rows)
            self.write_error = None
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
        else:
            self.write_error = problem

    def _schedule_retry(self) -> None:
        if self._retry is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (CLI, start-time check): the caller reports the failure
        self._retry = loop.call_later(self.retry_interval, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self._closed or self.write_error is None:
            return
        if self._explicit:
            self._schedule_retry()
            return
        self.probe()  # reschedules itself while the store still cannot be written

    # -- audit log ---------------------------------------------------------------------------------

    def audit(
        self,
        *,
        actor: str,
        verb: str,
        status: str,
        channel: str | None = None,
        model: str | None = None,
        env: str | None = None,
        version: str | None = None,
        detail: dict[str, Any] | None = None,
        key: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append a row. On the event loop it is chained and written with its group at the loop's next turn
        (in a tight batch, which costs far less per row than one statement each); reads here flush first.
        Values are stored (and hashed) as their columns hold them: text, whatever type they came as."""
        values = audit_values(at or utcnow(), {"actor": actor, "channel": channel, "verb": verb, "model": model,
                                               "env": env, "version": version, "status": status, "detail": detail,
                                               "key": key})
        if self._defer():
            self._pending.append(values)
            return
        with self.transaction():
            self._write([values])

    def verify_chain(self) -> ChainBreak | None:
        """The first row whose content or link no longer matches, or None when the log is intact."""
        self._flush()
        return chain_break(self._conn)

    async def verify_chain_aside(self) -> ChainBreak | None:
        """verify_chain on a read-only connection of its own in a worker thread: a long log never stalls the loop."""
        self._flush()
        if self._memory:
            return chain_break(self._conn)
        return await asyncio.to_thread(_verify_file, self.path)

    def actions(
        self, *, limit: int | None = None, model: str | None = None, env: str | None = None,
        since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The newest `limit` rows matching the filters, oldest first."""
        where, params = self._filters(model, env, since)
        sql = f"SELECT * FROM actions{where} ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = [dict(r) for r in self._db.query(sql, params)]
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows[::-1]

    def count_actions(self, *, model: str | None = None, env: str | None = None, since: datetime | None = None) -> int:
        where, params = self._filters(model, env, since)
        return self._conn.execute(f"SELECT count(*) FROM actions{where}", params).fetchone()[0]

    def _filters(self, model: str | None, env: str | None, since: datetime | None) -> tuple[str, list[Any]]:
        self._flush()
        found = [(f"{name} = ?", value) for name, value in (("model", model), ("env", env)) if value]
        if since:
            found.append(("ts >= ?", iso(since)))
        return (" WHERE " + " AND ".join(c for c, _ in found) if found else ""), [v for _, v in found]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, with this process's pending audit rows written first."""
        self._flush()
        return [dict(r) for r in self._db.query(sql, params)]

    # -- small helpers -----------------------------------------------------------------------------
    # On the loop, a claim is answered from the table and the group's own claims, and written with the group.

    def first_time(self, table: str, key: str, at: datetime | None = None) -> bool:
        """Record `key` in a (key, ts) table; True only the first time: the basis of exactly-once."""
        sql = f"INSERT OR IGNORE INTO {table} (key, ts) VALUES (?, ?)"
        key = text_value(key)  # bound now and again with the group: a value sqlite3 cannot bind would fail every try
        params = (key, iso(at or utcnow()))
        if not self._defer():
            return self._execute(sql, params).rowcount == 1
        if (table, key) in self._claims or self._conn.execute(f"SELECT 1 FROM {table} WHERE key = ?",
                                                               (key,)).fetchone():
            return False
        self._claims[(table, key)] = (sql, params)
        return True

    def claim_press(self, key: str, actor: str, at: datetime) -> tuple[str, datetime] | None:
        """Claim a button press; None the first time, else (who pressed it first, when)."""
        sql = "INSERT OR IGNORE INTO presses (key, actor, ts) VALUES (?, ?, ?)"
        key, actor = text_value(key), text_value(actor)
        params = (key, actor, iso(at))
        if not self._defer():
            if self._execute(sql, params).rowcount:
                return None
            found = self._conn.execute("SELECT actor, ts FROM presses WHERE key = ?", (key,)).fetchone()
        elif claimed := self._claims.get(("presses", key)):
            found = claimed[1][1:]
        elif not (found := self._conn.execute("SELECT actor, ts FROM presses WHERE key = ?", (key,)).fetchone()):
            self._claims[("presses", key)] = (sql, params)
            return None
        first, ts = found
        return first, datetime.fromisoformat(ts)

    def claim_slot(self, job: str, slot: str, at: datetime | None = None, detail: dict | None = None) -> bool:
        """Claim a scheduled job's slot; False if some earlier run (maybe before a restart) already had it."""
        sql = "INSERT OR IGNORE INTO job_runs (job, slot, ran_at, detail) VALUES (?, ?, ?, ?)"
        job, slot = text_value(job), text_value(slot)
        params = (job, slot, iso(at or utcnow()), json.dumps(detail or {}))
        if not self._defer():
            return self._execute(sql, params).rowcount == 1
        if ("job_runs", job, slot) in self._claims or self._conn.execute(
                "SELECT 1 FROM job_runs WHERE job = ? AND slot = ?", (job, slot)).fetchone():
            return False
        self._claims[("job_runs", job, slot)] = (sql, params)
        return True


def read_only(path: Path, read: Callable[[sqlite3.Connection], T]) -> T:
    """`read` on a connection of its own that cannot write: a check beside the bot never changes its store."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return read(conn)
    finally:
        conn.close()


def _verify_file(path: Path) -> ChainBreak | None:
    return read_only(path, chain_break)


def unwritable_reason(path: str | Path) -> str | None:
    """Why the store at `path` cannot be written (opened, migrated, one committed write), or None: the start check."""
    try:
        store = Store(path)
    except StoreUnwritable as exc:
        return exc.reason
    try:
        store.probe()
        return store.write_error
    finally:
        store.close()
