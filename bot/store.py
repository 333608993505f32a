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
import hashlib
import json
import logging
import os
import reprlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

log = logging.getLogger(__name__)

# Each entry is applied once, in order, inside one transaction; never edit a released entry, append one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        channel TEXT,
        verb TEXT NOT NULL,
        model TEXT,
        env TEXT,
        version TEXT,
        status TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        key TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX actions_model ON actions(model, id);
    CREATE INDEX actions_ts ON actions(ts);
    CREATE TRIGGER actions_no_update BEFORE UPDATE ON actions
        BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END;
    CREATE TRIGGER actions_no_delete BEFORE DELETE ON actions
        BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END;
    -- The chain's head, so deleting the newest rows is caught too; kept by a trigger in the same statement.
    CREATE TABLE audit_head (one INTEGER PRIMARY KEY CHECK (one = 1), last_id INTEGER NOT NULL, hash TEXT NOT NULL);
    CREATE TRIGGER actions_head AFTER INSERT ON actions
        BEGIN INSERT OR REPLACE INTO audit_head (one, last_id, hash) VALUES (1, NEW.id, NEW.hash); END;

    CREATE TABLE slack_requests (key TEXT PRIMARY KEY, ts TEXT NOT NULL);

    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        state TEXT NOT NULL,
        deployed_by TEXT,
        deployed_at TEXT,
        verified_at TEXT,
        verify_report TEXT,
        approved_by TEXT,
        approved_at TEXT,
        reason TEXT,
        channel TEXT,
        card_ts TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX releases_model ON releases(model, id);
    CREATE TABLE environments (
        model TEXT NOT NULL,
        env TEXT NOT NULL,
        version TEXT,
        triton_version INTEGER,
        release_id INTEGER,
        previous_version TEXT,
        previous_triton_version INTEGER,
        deployed_by TEXT,
        approved_by TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (model, env)
    );
    CREATE TABLE locks (
        model TEXT NOT NULL,
        env TEXT NOT NULL,
        holder TEXT NOT NULL,
        reason TEXT NOT NULL,
        kind TEXT NOT NULL,
        operation_id INTEGER,
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (model, env)
    );
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        env TEXT NOT NULL,
        version TEXT,
        release_id INTEGER,
        actor TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        started_at TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE TABLE retrain_runs (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        backend TEXT NOT NULL,
        run_id TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        handle TEXT NOT NULL DEFAULT '{}',
        version TEXT,
        channel TEXT,
        card_ts TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE TABLE datagen_reports (
        job TEXT NOT NULL,
        run_date TEXT NOT NULL,
        raw TEXT NOT NULL,
        source TEXT NOT NULL,
        ingested_at TEXT NOT NULL,
        expected INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job, run_date)
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        summary TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        channel TEXT,
        ts TEXT,
        acked_by TEXT,
        opened_at TEXT NOT NULL,
        resolved_at TEXT,
        UNIQUE (source, key)
    );
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        matcher TEXT NOT NULL,
        until TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE oncall_overrides (
        id INTEGER PRIMARY KEY,
        rotation TEXT NOT NULL,
        user TEXT NOT NULL,
        start TEXT NOT NULL,
        end TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        deleted_at TEXT
    );
    CREATE TABLE job_runs (
        job TEXT NOT NULL,
        slot TEXT NOT NULL,
        ran_at TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (job, slot)
    );
    """,
    # 2: on-call handoffs (with the message as posted, so Acknowledge edits exactly that), cover requests
    # (taken by compare-and-set) and the Slack state last set per rotation (to skip unchanged calls).
    """
    CREATE TABLE oncall_handoffs (
        id INTEGER PRIMARY KEY,
        rotation TEXT NOT NULL,
        slot TEXT NOT NULL,
        outgoing TEXT,
        incoming TEXT NOT NULL,
        channel TEXT NOT NULL,
        ts TEXT,
        message TEXT NOT NULL DEFAULT '{}',
        posted_at TEXT NOT NULL,
        acked_by TEXT,
        acked_at TEXT,
        reminded_at TEXT,
        UNIQUE (rotation, slot)
    );
    CREATE TABLE oncall_cover_requests (
        id INTEGER PRIMARY KEY,
        rotation TEXT NOT NULL,
        requester TEXT NOT NULL,
        start TEXT NOT NULL,
        end TEXT NOT NULL,
        channel TEXT NOT NULL,
        ts TEXT,
        taken_by TEXT,
        taken_at TEXT,
        override_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE TABLE oncall_slack_state (
        rotation TEXT PRIMARY KEY,
        usergroup_users TEXT,
        topic TEXT,
        updated_at TEXT NOT NULL
    );
    """,
    # 3: retrain runs keep why they were asked for, how they ended and who cancelled them, so a card
    # redrawn after a restart says the same as before.
    """
    ALTER TABLE retrain_runs ADD COLUMN reason TEXT;
    ALTER TABLE retrain_runs ADD COLUMN detail TEXT;
    ALTER TABLE retrain_runs ADD COLUMN cancelled_by TEXT;
    CREATE INDEX retrain_runs_model ON retrain_runs(model, state);
    """,
    # 4: a release's standing per environment (releases.state is its standing on staging, prod_state in
    # prod), so an operation in one environment never rewrites the other's; button presses claimed once.
    """
    ALTER TABLE releases ADD COLUMN prod_state TEXT;
    UPDATE releases SET prod_state = state, state = 'verified' WHERE state IN ('promoting', 'live', 'promote_failed');
    CREATE TABLE presses (key TEXT PRIMARY KEY, actor TEXT NOT NULL, ts TEXT NOT NULL);
    """,
    # 5: the Slack work a webhook accepted, kept until it is done (bot/hooks.py): hooks answer once it is
    # committed, and what a stop or a crash cut short runs after the next start.
    """
    CREATE TABLE hook_queue (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        queued_at TEXT NOT NULL,
        error TEXT,
        failed_at TEXT
    );
    CREATE INDEX hook_queue_key ON hook_queue(state, key, id);
    """,
]

GENESIS = "0" * 64
AUDIT_FIELDS = ("ts", "actor", "channel", "verb", "model", "env", "version", "status", "detail", "key")
_REQUIRED = frozenset({"actor", "verb", "status"})  # NOT NULL columns besides ts and detail
_INSERT_ACTION = f"INSERT INTO actions ({', '.join(AUDIT_FIELDS)}, prev_hash, hash) VALUES ({', '.join('?' * (len(AUDIT_FIELDS) + 2))})"
# The probe's committed write: one row, replaced each time, under a key no Slack delivery can have.
_PROBE_SQL = "INSERT OR REPLACE INTO slack_requests (key, ts) VALUES ('store.probe', ?)"
_PROBE = ("store.probe",)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


# Built once: json.dumps with options builds an encoder per call, a visible share of an audit row's cost.
_canonical = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_detail = json.JSONEncoder(sort_keys=True, default=str).encode
_detail_unsorted = json.JSONEncoder(default=str).encode


def row_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """The hash of a row given its values in AUDIT_FIELDS order and the previous row's hash."""
    body = _canonical([prev_hash, *values])
    return hashlib.sha256(body.encode()).hexdigest()


def _text(value: Any) -> str | None:
    """A value as its TEXT column will hold it. Hashing 5 while SQLite stores '5' left a row that never verified."""
    if value is None:
        return None
    text = str.__str__(value) if isinstance(value, str) else str(value)  # a str enum binds as its value, not str()
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800) cannot be bound: it would fail the whole group
        text = text.encode("utf-8", "replace").decode()
    return text


def _detail_text(detail: Any) -> str:
    """The detail as stored JSON; never raises, so no value can fail the commit group it joins."""
    if detail is None:
        return "{}"
    for encode in (_detail, _sorted_after_all):
        try:
            return encode(detail)
        except TypeError:  # keys of mixed types cannot be sorted: try them as the strings JSON makes them
            continue
        except (ValueError, RecursionError):  # circular or absurdly deep
            break
    return _detail({"unencodable": reprlib.repr(detail)})


def _sorted_after_all(detail: Any) -> str:
    return _detail(json.loads(_detail_unsorted(detail)))


def audit_values(at: datetime, fields: dict[str, Any]) -> tuple[Any, ...]:
    """A row's values in AUDIT_FIELDS order, exactly as the columns store them, so its hash is of what is stored."""
    values: list[Any] = [iso(at)]
    for name in AUDIT_FIELDS[1:]:
        if name == "detail":
            values.append(_detail_text(fields.get("detail")))
        else:
            text = _text(fields.get(name))
            values.append("" if text is None and name in _REQUIRED else text)  # NOT NULL would fail the group
    return tuple(values)


@dataclass(frozen=True)
class ChainBreak:
    row_id: int | None
    reason: str


class StoreUnwritable(sqlite3.OperationalError):
    """The store cannot take a write now (disk full, read-only, I/O error): the action asking is refused whole."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot write the store {path}: {reason}")
        self.path, self.reason = str(path), reason


# What a failed write says about the disk rather than about the statement (a constraint, a typo).
_STORAGE_ERRORS = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_LOCKED",
                   "SQLITE_PERM", "SQLITE_NOMEM", "SQLITE_PROTOCOL")


def _storage_error(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, sqlite3.OperationalError) and name.startswith(_STORAGE_ERRORS)


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
            if _storage_error(exc):
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
                log.error("unstored audit row: %s", json.dumps(dict(zip(AUDIT_FIELDS, values)), sort_keys=True))
        self._conn.close()
        self._closed = True

    def migrate(self) -> int:
        self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.transaction():
                for statement in _statements(script):
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
            if _storage_error(exc) and not isinstance(exc, StoreUnwritable):
                raise self._unwritable(exc) from exc
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()  # SQLite rolls back itself after SQLITE_FULL or an I/O error, not always
                if _storage_error(exc):
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
            if _storage_error(exc):
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
        self._conn.executemany(_INSERT_ACTION, chained)
        self._head = head  # valid only until this transaction ends: _rollback and every commit forget it

    def _execute(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """A write outside the group (no loop, or inside transaction()); a disk that refuses it says so."""
        try:
            return self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if _storage_error(exc):
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
        if self._memory:
            return None
        try:
            st = os.statvfs(self.path.parent)
        except OSError as exc:
            return f"cannot read its file system: {exc.strerror}"
        if st.f_flag & os.ST_RDONLY:
            return "read-only file system"
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            return f"disk full ({free // 1024} KiB free)"
        return None

    def _reason(self, exc: sqlite3.Error) -> str:
        """What a person can act on: the file system's own words where SQLite only says "disk I/O error"."""
        if problem := self._fs_problem():
            return problem
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name == "SQLITE_FULL":
            return "disk full"
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return "locked by another process"
        if name.startswith(("SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) and not self._memory:
            # An emergency read-only remount (ext4 errors=remount-ro) shows in no flag: try the directory.
            probe = self.path.parent / f".{self.path.name}.probe"
            try:
                with open(probe, "wb") as f:
                    f.write(b"x")
                    os.fsync(f.fileno())
            except OSError as os_exc:
                return (os_exc.strerror or str(os_exc)).lower()
            finally:
                try:
                    probe.unlink(missing_ok=True)
                except OSError:
                    pass
        return f"{exc} ({name})" if name else str(exc)

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
        prev_hash, prev_id = GENESIS, 0
        for row_id, *values, linked_to, digest in self._conn.execute(
            f"SELECT id, {', '.join(AUDIT_FIELDS)}, prev_hash, hash FROM actions ORDER BY id"
        ):
            if linked_to != prev_hash:
                return ChainBreak(row_id, f"row {row_id} does not follow row {prev_id}: a row was deleted or edited")
            if row_hash(prev_hash, values) != digest:
                return ChainBreak(row_id, f"row {row_id} was edited after it was written")
            prev_hash, prev_id = digest, row_id
        head = self._conn.execute("SELECT last_id, hash FROM audit_head WHERE one = 1").fetchone()
        if head and (head[0], head[1]) != (prev_id, prev_hash):
            return ChainBreak(prev_id + 1, f"the log ends at row {prev_id} but row {head[0]} was written: rows were deleted")
        return None

    def actions(
        self, *, limit: int | None = None, model: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        where, params = [], []
        self._flush()
        if model:
            where.append("model = ?")
            params.append(model)
        if since:
            where.append("ts >= ?")
            params.append(iso(since))
        sql = "SELECT * FROM actions" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = [dict(r) for r in self._db.query(sql, params)]
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows[::-1]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, with this process's pending audit rows written first."""
        self._flush()
        return [dict(r) for r in self._db.query(sql, params)]

    # -- small helpers -----------------------------------------------------------------------------
    # On the loop, a claim is answered from the table and the group's own claims, and written with the group.

    def first_time(self, table: str, key: str, at: datetime | None = None) -> bool:
        """Record `key` in a (key, ts) table; True only the first time: the basis of exactly-once."""
        sql = f"INSERT OR IGNORE INTO {table} (key, ts) VALUES (?, ?)"
        key = _text(key)  # bound now and again with the group: a value sqlite3 cannot bind would fail every try
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
        key, actor = _text(key), _text(actor)
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
        job, slot = _text(job), _text(slot)
        params = (job, slot, iso(at or utcnow()), json.dumps(detail or {}))
        if not self._defer():
            return self._execute(sql, params).rowcount == 1
        if ("job_runs", job, slot) in self._claims or self._conn.execute(
                "SELECT 1 FROM job_runs WHERE job = ? AND slot = ?", (job, slot)).fetchone():
            return False
        self._claims[("job_runs", job, slot)] = (sql, params)
        return True


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


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (which contain ';') whole."""
    statements, buffer = [], ""
    for line in script.strip().splitlines():
        if line.strip().startswith("--"):
            continue
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements
