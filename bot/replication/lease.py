"""The single-writer lease: one row in the store naming the instance that may act, until when.

It lives in the replicated store, so another machine sees it only through a restore of the replica, about a
sync interval behind. That is enough to keep a second bot started on the same replica from acting while the
first renews, and to let it take over once the first has stopped renewing for a whole lease. It is not a
consensus protocol: clocks are trusted to agree within a few seconds, and an active bot cut off from S3 keeps
acting on its own disk (see README: Durable store).
"""
from __future__ import annotations

import os
import socket
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from bot.store import Store, iso, read_only


def instance_id() -> str:
    """MLOPS_BOT_INSTANCE (a StatefulSet pod's stable name) or host:pid: a restarted pod reclaims its own lease."""
    return os.environ.get("MLOPS_BOT_INSTANCE") or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Lease:
    holder: str
    heartbeat: datetime
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        return now < self.expires_at


def read(conn: sqlite3.Connection) -> Lease | None:
    try:
        row = conn.execute("SELECT holder, heartbeat, expires_at FROM lease WHERE one = 1").fetchone()
    except sqlite3.OperationalError:  # a store from before the lease table
        return None
    return None if row is None else Lease(row[0], datetime.fromisoformat(row[1]), datetime.fromisoformat(row[2]))


def read_file(path: Path) -> Lease | None:
    return read_only(path, read)


def take(store: Store, holder: str, now: datetime, ttl_s: float) -> Lease | None:
    """Take or renew the lease; None when it is taken, else the live lease someone else holds."""
    with store.transaction() as conn:
        current = read(conn)
        if current is not None and current.holder != holder and current.live(now):
            return current
        conn.execute("INSERT OR REPLACE INTO lease (one, holder, heartbeat, expires_at) VALUES (1, ?, ?, ?)",
                     (holder, iso(now), iso(now + timedelta(seconds=ttl_s))))
    return None


def release(store: Store, holder: str, now: datetime) -> None:
    """At a clean stop: expire our lease now, so a standby need not wait out the rest of it."""
    with store.transaction() as conn:
        conn.execute("UPDATE lease SET expires_at = ? WHERE one = 1 AND holder = ?", (iso(now), holder))
