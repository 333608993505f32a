import asyncio
import json
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db")
    for i in range(5):
        s.audit(actor="U0ALICE", verb="deploy", status="ok", model="ranker", version=f"v{i}", detail={"i": i})
    yield s
    s.close()


def tamper(path, sql, *params):
    """What someone with the file could do: drop the append-only triggers and change history."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER actions_no_update")
    conn.execute("DROP TRIGGER actions_no_delete")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def test_intact_log_verifies(store):
    assert store.verify_chain() is None
    assert [r["version"] for r in store.actions(limit=2)] == ["v3", "v4"]


def test_rows_cannot_be_changed_through_sql(store):
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("UPDATE actions SET status = 'ok' WHERE id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("DELETE FROM actions WHERE id = 2")


def test_edited_row_is_found(store, tmp_path):
    tamper(tmp_path / "state.db", "UPDATE actions SET actor = 'U0MALLORY' WHERE id = 3")
    broken = Store(tmp_path / "state.db").verify_chain()
    assert broken is not None and broken.row_id == 3 and "edited" in broken.reason


def test_deleted_row_is_found(store, tmp_path):
    tamper(tmp_path / "state.db", "DELETE FROM actions WHERE id = 2")
    broken = Store(tmp_path / "state.db").verify_chain()
    assert broken is not None and broken.row_id == 3


def test_deleted_newest_row_is_found(store, tmp_path):
    tamper(tmp_path / "state.db", "DELETE FROM actions WHERE id = 5")
    broken = Store(tmp_path / "state.db").verify_chain()
    assert broken is not None and "deleted" in broken.reason


def test_migrations_apply_once(tmp_path):
    Store(tmp_path / "s.db").close()
    again = Store(tmp_path / "s.db")
    assert again.conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == again.migrate()


def test_first_time_and_slots_are_exactly_once(store):
    assert store.first_time("slack_requests", "trigger:1")
    assert not store.first_time("slack_requests", "trigger:1")
    assert store.claim_slot("digest.daily", "2026-11-22T17:00")
    assert not store.claim_slot("digest.daily", "2026-11-22T17:00")


async def test_rows_written_on_the_loop_are_committed_in_order_and_survive_a_rollback(tmp_path):
    store = Store(tmp_path / "state.db")
    other = sqlite3.connect(tmp_path / "state.db")  # what `mlops-bot audit` in another process sees
    for i in range(3):
        store.audit(actor="U0ALICE", verb="help", status="ok", detail={"i": i})
    assert [r["detail"]["i"] for r in store.actions()] == [0, 1, 2]  # readers here see the group at once
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO locks VALUES ('ranker', 'prod', 'U0BOB', 'x', 'manual', NULL, '', '')")
        store.audit(actor="U0BOB", verb="lock", status="ok")
        raise RuntimeError("the compare-and-set lost")
    store.audit(actor="U0ALICE", verb="help", status="ok", detail={"i": 3})
    await asyncio.sleep(0)  # the loop's next turn commits the group
    await asyncio.sleep(0)
    assert [v for (v,) in other.execute("SELECT verb FROM actions ORDER BY id")] == ["help"] * 4
    assert store.verify_chain() is None
    other.close()
    store.close()


# -- whatever the store is given, it hashes what it stores (issue 18, item 6) ------------------------------
# Slack sends `"user": {"id": 5}` as easily as "U0ALICE": a row hashed with 5 and stored as '5' never verified.

FIELDS = ("actor", "channel", "verb", "model", "env", "version", "status", "key")
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Keys of mixed types, lone surrogates (JSON's "\ud800"): each once failed a whole commit group.
details = st.none() | st.dictionaries(st.text(max_size=6) | st.integers() | st.booleans(), json_values, max_size=5)
field_values = scalars | st.text(st.characters(codec=None, categories=None), max_size=8)
rows = st.fixed_dictionaries({name: field_values for name in FIELDS} | {"detail": details})


def _as_stored_json(detail):
    """What a JSON round trip makes of a detail: keys become strings (the last of equal ones wins)."""
    return json.loads(json.dumps(detail if detail is not None else {}, default=str))


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(rows, min_size=1, max_size=4), on_loop=st.booleans())
def test_any_values_round_trip_through_the_store_and_verify(batch, on_loop):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        store = Store(path)

        async def on_the_loop():  # the group commit's path: chained at the loop's next turn
            for row in batch:
                store.audit(**row)
            await asyncio.sleep(0)

        if on_loop:
            asyncio.run(on_the_loop())
        else:
            for row in batch:
                store.audit(**row)
        assert store.verify_chain() is None
        stored = store.actions()
        store.close()
        reopened = Store(path)  # what is on disk verifies, as `mlops-bot audit verify` reads it
        assert reopened.verify_chain() is None
        reopened.close()

    assert len(stored) == len(batch)
    for given_row, row in zip(batch, stored, strict=True):
        expected = _as_stored_json(given_row["detail"])
        assert json.dumps(row["detail"], sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN != NaN
        for name in FIELDS:
            value = given_row[name]
            if value is None:
                assert row[name] == ("" if name in ("actor", "verb", "status") else None)
            elif isinstance(value, str):
                assert row[name] == value.encode("utf-8", "replace").decode()  # a lone surrogate cannot be stored
            else:
                assert row[name] == str(value)


async def test_a_claim_in_the_group_is_seen_by_the_next_statement_on_the_connection(tmp_path):
    """Claims wait in memory with the group, yet SQL run through `store.conn` right after sees them: a
    scheduled job marks its own slot finished in the same turn it claimed it."""
    store = Store(tmp_path / "state.db")
    assert store.claim_slot("digest.daily", "2026-11-22T17:00")
    updated = store.conn.execute("UPDATE job_runs SET detail = '{\"finished\": true}' WHERE job = ? AND slot = ?",
                                 ("digest.daily", "2026-11-22T17:00"))
    assert updated.rowcount == 1
    assert store.claim_press("release.promote:1", "U0CAROL", datetime(2026, 11, 22, tzinfo=UTC)) is None
    first = store.claim_press("release.promote:1", "U0BOB", datetime(2026, 11, 23, tzinfo=UTC))
    assert first == ("U0CAROL", datetime(2026, 11, 22, tzinfo=UTC))
    assert store.db["presses"].count == 1
    store.close()
