"""The audit log's hash chain: how a row's values are stored, hashed and linked, and where a chain breaks."""

from __future__ import annotations

import hashlib
import json
import reprlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
AUDIT_FIELDS = ("ts", "actor", "channel", "verb", "model", "env", "version", "status", "detail", "key")
_REQUIRED = frozenset({"actor", "verb", "status"})  # NOT NULL columns besides ts and detail
INSERT_ACTION = (f"INSERT INTO actions ({', '.join(AUDIT_FIELDS)}, prev_hash, hash) "
                 f"VALUES ({', '.join('?' * (len(AUDIT_FIELDS) + 2))})")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


# Built once: json.dumps with options builds an encoder per call, a visible share of an audit row's cost.
_canonical = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_detail = json.JSONEncoder(sort_keys=True, default=str).encode
_detail_unsorted = json.JSONEncoder(default=str).encode


def row_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """The hash of a row given its values in AUDIT_FIELDS order and the previous row's hash."""
    body = _canonical([prev_hash, *values])
    return hashlib.sha256(body.encode()).hexdigest()


def text_value(value: Any) -> str | None:
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
            text = text_value(fields.get(name))
            values.append("" if text is None and name in _REQUIRED else text)  # NOT NULL would fail the group
    return tuple(values)


@dataclass(frozen=True)
class ChainBreak:
    row_id: int | None
    reason: str



def first_break(rows: Iterable[Sequence[Any]], head: tuple[int, str] | None) -> ChainBreak | None:
    """The first row (id, *AUDIT_FIELDS values, prev_hash, hash) whose content or link no longer matches, given
    the rows in id order and the recorded head (last id, its hash); None when the log is intact."""
    prev_hash, prev_id = GENESIS, 0
    for row_id, *values, linked_to, digest in rows:
        if linked_to != prev_hash:
            return ChainBreak(row_id, f"row {row_id} does not follow row {prev_id}: a row was deleted or edited")
        if row_hash(prev_hash, values) != digest:
            return ChainBreak(row_id, f"row {row_id} was edited after it was written")
        prev_hash, prev_id = digest, row_id
    if head and (head[0], head[1]) != (prev_id, prev_hash):
        return ChainBreak(prev_id + 1, f"the log ends at row {prev_id} but row {head[0]} was written: rows were deleted")
    return None


def chain_break(conn: sqlite3.Connection) -> ChainBreak | None:
    """first_break over the store's rows and recorded head, read through `conn`."""
    rows = conn.execute(f"SELECT id, {', '.join(AUDIT_FIELDS)}, prev_hash, hash FROM actions ORDER BY id")
    return first_break(rows, conn.execute("SELECT last_id, hash FROM audit_head WHERE one = 1").fetchone())
