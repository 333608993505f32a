"""SQLite state through sqlite-utils: numbered migrations, the hash-chained audit log, small helpers.

One connection, used from the event loop's thread: every statement here is short, and a single writer
keeps the audit chain ordered without cross-process coordination beyond SQLite's own BEGIN IMMEDIATE.

Group commit: single-row appends (audit rows, delivery keys, slot claims) made while the event loop runs
join one group that is committed at the loop's next turn, so a burst of Slack requests pays for one
commit rather than two each. Audit rows wait in memory until then and are chained and inserted in one
batch; the reads of the log here (`actions`, `verify_chain`, `query`) write them first. An explicit
`transaction()` commits the open group first, so its rollback can never take other rows with it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

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
_INSERT_ACTION = f"INSERT INTO actions ({', '.join(AUDIT_FIELDS)}, prev_hash, hash) VALUES ({', '.join('?' * (len(AUDIT_FIELDS) + 2))})"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


# Built once: json.dumps with options builds an encoder per call, a visible share of an audit row's cost.
_canonical = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_detail = json.JSONEncoder(sort_keys=True, default=str).encode


def row_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """The hash of a row given its values in AUDIT_FIELDS order and the previous row's hash."""
    body = _canonical([prev_hash, *values])
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    row_id: int | None
    reason: str


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits
        conn.execute("PRAGMA foreign_keys=ON")
        self._explicit = False  # inside transaction(); otherwise an open transaction is a commit group
        self._head: str | None = None  # the chain's last hash, known while this connection holds the write lock
        self._pending: list[tuple[Any, ...]] = []  # audit rows of the commit group, not yet chained
        self._scheduled = False  # a commit of the group is scheduled on the loop
        self._closed = False
        self.migrate()

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        self.commit_group()
        self.conn.close()
        self._closed = True

    def migrate(self) -> int:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.transaction():
                for statement in _statements(script):
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        return len(MIGRATIONS)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so a compare-and-set cannot interleave."""
        if self._explicit:  # nested: the outer transaction owns commit/rollback
            yield self.conn
            return
        self.commit_group()
        self.conn.execute("BEGIN IMMEDIATE")
        self._explicit = True
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._explicit = False
            self._head = None

    def commit_group(self) -> None:
        """Write the pending audit rows and commit the group. Outside a transaction only."""
        self._scheduled = False
        # Scheduled with call_soon, so it may run after close() (which committed the group already).
        if self._closed or self._explicit:
            return
        self._flush()
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
            self._head = None

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

    def _begin_group(self) -> None:
        """Open the commit group's transaction for a statement whose result the caller needs now."""
        if self._defer() and not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def _flush(self) -> None:
        """Chain and insert the pending audit rows into the open group (opening it if need be)."""
        if not self._pending:
            return
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        rows, self._pending = self._pending, []
        self._write(rows)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        """Link rows (values in AUDIT_FIELDS order) into the chain and insert them; the write lock is held."""
        head = self._head
        if head is None:  # once per transaction: no other writer can move the head while we hold the lock
            found = self.conn.execute("SELECT hash FROM audit_head WHERE one = 1").fetchone()
            head = found[0] if found else GENESIS
        chained = []
        for values in rows:
            digest = row_hash(head, values)
            chained.append((*values, head, digest))
            head = digest
        self.conn.executemany(_INSERT_ACTION, chained)
        self._head = head

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
        (in a tight batch, which costs far less per row than one statement each); reads here flush first."""
        values = (iso(at or utcnow()), actor, channel, verb, model, env, version, status, _detail(detail or {}), key)
        if self._defer():
            self._pending.append(values)
            return
        with self.transaction():
            self._write([values])

    def verify_chain(self) -> ChainBreak | None:
        """The first row whose content or link no longer matches, or None when the log is intact."""
        self._flush()
        prev_hash, prev_id = GENESIS, 0
        for row_id, *values, linked_to, digest in self.conn.execute(
            f"SELECT id, {', '.join(AUDIT_FIELDS)}, prev_hash, hash FROM actions ORDER BY id"
        ):
            if linked_to != prev_hash:
                return ChainBreak(row_id, f"row {row_id} does not follow row {prev_id}: a row was deleted or edited")
            if row_hash(prev_hash, values) != digest:
                return ChainBreak(row_id, f"row {row_id} was edited after it was written")
            prev_hash, prev_id = digest, row_id
        head = self.conn.execute("SELECT last_id, hash FROM audit_head WHERE one = 1").fetchone()
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
        rows = [dict(r) for r in self.db.query(sql, params)]
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows[::-1]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, with this process's pending audit rows written first."""
        self._flush()
        return [dict(r) for r in self.db.query(sql, params)]

    # -- small helpers -----------------------------------------------------------------------------

    def first_time(self, table: str, key: str, at: datetime | None = None) -> bool:
        """Record `key` in a (key, ts) table; True only the first time: the basis of exactly-once."""
        self._begin_group()
        cursor = self.conn.execute(f"INSERT OR IGNORE INTO {table} (key, ts) VALUES (?, ?)", (key, iso(at or utcnow())))
        return cursor.rowcount == 1

    def claim_press(self, key: str, actor: str, at: datetime) -> tuple[str, datetime] | None:
        """Claim a button press; None the first time, else (who pressed it first, when)."""
        self._begin_group()
        if self.conn.execute("INSERT OR IGNORE INTO presses (key, actor, ts) VALUES (?, ?, ?)", (key, actor, iso(at))).rowcount:
            return None
        first, ts = self.conn.execute("SELECT actor, ts FROM presses WHERE key = ?", (key,)).fetchone()
        return first, datetime.fromisoformat(ts)

    def claim_slot(self, job: str, slot: str, at: datetime | None = None, detail: dict | None = None) -> bool:
        """Claim a scheduled job's slot; False if some earlier run (maybe before a restart) already had it."""
        self._begin_group()
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO job_runs (job, slot, ran_at, detail) VALUES (?, ?, ?, ?)",
            (job, slot, iso(at or utcnow()), json.dumps(detail or {})),
        )
        return cursor.rowcount == 1

    def writable(self) -> bool:
        """A real write, rolled back: catches a read-only file, a full disk or a lock held too long."""
        self.commit_group()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT OR REPLACE INTO slack_requests (key, ts) VALUES ('healthz', '')")
            self.conn.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            return False


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
