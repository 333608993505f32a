import asyncio
import sqlite3

import pytest

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
