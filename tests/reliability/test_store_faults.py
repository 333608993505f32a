"""The store's disk fails under the bot (issue 18, items 1 and 2): full, read-only while running, read-only at start.

Real faults only: the SQLite file lives on a tmpfs of its own that a ballast file fills up (and freeing it gives
the space back), or on a loop-mounted ext4 that is forced read-only the way `errors=remount-ro` does it when a
disk fails (`mount -o remount,abort`). A plain `mount -o remount,ro` is refused by the kernel (EBUSY) while the
bot holds the file open for writing, so it is used where it can happen: before a start. The bot runs whole
against the Slack emulator. Needs root for the mounts; under CI=true a missing capability fails the run.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from bot.config import load_config
from bot.sandbox.local import BOT_TOKEN, SIGNING_SECRET, local_bot
from bot.store import Store
from tests.conftest import ROOT, Clock, write_config

TEAM = "C0MLOPS"
REFUSED = "cannot write its audit log right now"


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the store fault tests on real mounts: {why}")
    pytest.skip(why)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


def _mount(*argv: str) -> None:
    if os.geteuid() != 0:
        _unavailable("mounting a file system for the store needs root")
    done = _run("mount", *argv)
    if done.returncode != 0:
        _unavailable(f"mount {' '.join(argv)}: {done.stderr.strip()}")


def _umount(point: Path) -> None:
    if _run("umount", str(point)).returncode != 0:
        _run("umount", "-l", str(point))  # still busy: detach it, so no test leaves a mount behind


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 16 MiB tmpfs of the store's own: room for the store, and quick to fill."""
    point = tmp_path / "vol"
    point.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point))
    yield point
    _umount(point)


@pytest.fixture
def ext4(tmp_path: Path):
    """A 32 MiB ext4 on a loop device, mounted errors=remount-ro as a production volume would be."""
    if shutil.which("mkfs.ext4") is None:
        _unavailable("mkfs.ext4 is not installed (e2fsprogs)")
    image, point = tmp_path / "disk.img", tmp_path / "vol"
    point.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        _unavailable(f"mkfs.ext4: {made.stderr.strip()}")
    _mount("-o", "loop,errors=remount-ro", str(image), str(point))
    yield point
    _umount(point)


def fill(point: Path) -> None:
    """Take every free block of the file system, as a runaway log file would."""
    chunk = b"\0" * (1 << 16)
    with open(point / "ballast", "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        for size in (4096, 512, 1):  # the last partial blocks too
            try:
                while True:
                    f.write(chunk[:size])
            except OSError:
                pass
    st = os.statvfs(point)
    assert st.f_bavail == 0


def free(point: Path) -> None:
    (point / "ballast").unlink()


def config_on(tmp_path: Path, volume: Path) -> Path:
    """The example config with its store on `volume` (the repositories stay on the test's own disk)."""
    path = write_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["store"] = str(volume / "mlops-bot.db")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


async def healthz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
        return resp.status, await resp.json()


async def answer(bot, user: str, text: str) -> str:
    """What the person sees: the ack's own reply, else the next ephemeral or channel message."""
    slack = bot.slack
    before = len(slack.ephemerals), len(slack.messages(TEAM))
    delivery = await bot.client.command(user, text, channel=TEAM)
    assert delivery.status == 200
    if delivery.body:
        return delivery.json()["text"]
    ephemeral, posted = await slack.wait_for(
        lambda: (slack.ephemerals[before[0]:], slack.messages(TEAM)[before[1]:]) if (
            len(slack.ephemerals) > before[0] or len(slack.messages(TEAM)) > before[1]) else None)
    return (ephemeral or posted)[0]["text"]


def locks(db: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT model, env, holder, reason FROM locks").fetchall()
    finally:
        conn.close()


def audit_verify(config_path: Path) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "bot.cli", "--config", str(config_path), "audit", "verify")


async def test_full_disk_refuses_work_keeps_every_row_and_the_chain_verifies(tmpfs: Path, tmp_path: Path) -> None:
    config_path = config_on(tmp_path, tmpfs)
    db = tmpfs / "mlops-bot.db"
    async with local_bot(load_config(config_path), clock=Clock(), post_rate=100, post_burst=100) as bot:
        assert "is locked by <@U0ALICE>" in await answer(bot, "U0ALICE", "lock ranker staging before the outage")
        assert "unlock" in (await answer(bot, "U0ALICE", "unlock ranker staging")).lower()
        card_ts = bot.slack.messages(TEAM)[-1]["ts"]

        fill(tmpfs)
        status, health = await healthz(bot.url)
        assert status == 503, health
        assert health["store_writable"] is False and health["ok"] is False
        assert health["reason"].startswith("disk full") and str(db) in health["reason"]

        # A mutating command: refused before it runs, with the reason, to the person only.
        delivery = await bot.client.command("U0ALICE", "lock ranker staging during the outage", channel=TEAM)
        said = delivery.json()
        assert said["response_type"] == "ephemeral"
        assert REFUSED in said["text"] and "disk full" in said["text"] and "Nothing was done" in said["text"]
        assert "/healthz" in said["text"]
        # A button press: acked, and told the same through its response_url.
        await bot.client.press("U0BOB", "release.rollback", "{}", channel=TEAM, message_ts=card_ts)
        told = await bot.slack.wait_for(lambda: [e for e in bot.slack.ephemerals if REFUSED in e["text"]])
        assert told[0]["user"] == "U0BOB"
        # A modal's submission: kept open, the reason on its input, so what was typed is not lost.
        view = {"type": "modal", "callback_id": "release.rollback", "private_metadata": "{}",
                "title": {"type": "plain_text", "text": "Roll back"},
                "blocks": [{"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Why?"},
                            "element": {"type": "plain_text_input", "action_id": "reason"}}]}
        submitted = await bot.client.submit_view("U0BOB", view, {"reason": {"reason": "bad canary"}})
        assert submitted.json()["response_action"] == "errors"
        assert REFUSED in submitted.json()["errors"]["reason"]
        # Reads still answer.
        assert REFUSED not in await answer(bot, "U0CAROL", "help lock")
        assert locks(db) == []  # nothing was done

        free(tmpfs)
        status, health = await healthz(bot.url)
        assert status == 200 and health["store_writable"] is True and "reason" not in health
        assert "is locked by <@U0ALICE>" in await answer(bot, "U0ALICE", "lock ranker staging after the outage")
        assert locks(db) == [("ranker", "staging", "U0ALICE", "after the outage")]
        assert bot.runtime.store.verify_chain() is None

    verified = audit_verify(config_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "hash chain verified" in verified.stdout
    # What was asked while the disk was full is in the log too, written once it had room again.
    rows = Store(db).actions()
    refused = [(r["actor"], r["detail"]["kind"]) for r in rows if r["status"] == "store_unwritable"]
    assert refused == [("U0ALICE", "command"), ("U0BOB", "block_actions"), ("U0BOB", "view_submission")]
    assert [r["actor"] for r in rows if r["verb"] == "help"] == ["U0CAROL"]
    assert [r["detail"]["reason"] for r in rows if (r["verb"], r["status"]) == ("lock", "succeeded")] == [
        "before the outage", "after the outage"]


async def test_a_group_commit_the_disk_refuses_is_kept_whole_and_written_once_there_is_room(tmpfs: Path) -> None:
    """The mechanism of the broken chain: the group's rows were taken out of memory before their COMMIT, and the
    chain head cached for them outlived the rollback, so the next row linked to a row that never was."""
    db = tmpfs / "state.db"
    store = Store(db)
    for i in range(3):
        store.audit(actor="U0ALICE", verb="help", status="ok", detail={"i": i})
    await asyncio.sleep(0)  # the loop's next turn commits the group

    fill(tmpfs)  # between a request and its group's commit
    for i in range(3, 40):
        store.audit(actor="U0ALICE", verb="lock", status="ok", detail={"i": i, "pad": "x" * 300})
    assert store.first_time("slack_requests", "trigger:during")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not store.first_time("slack_requests", "trigger:during")  # a retry of it is still known
    assert not store.writable()

    ran = False
    with pytest.raises(sqlite3.OperationalError, match="disk full"):
        with store.transaction() as conn:  # an action after the failure: refused before its body runs
            ran = True
            conn.execute("INSERT INTO locks VALUES ('ranker', 'prod', 'U0BOB', 'x', 'manual', NULL, '', '')")
    assert not ran

    free(tmpfs)
    assert store.writable()
    assert [r["detail"]["i"] for r in store.actions()] == list(range(40))
    assert store.verify_chain() is None
    store.close()
    again = Store(db)  # what is on disk, as `mlops-bot audit verify` reads it
    assert again.verify_chain() is None
    assert again.query("SELECT key FROM slack_requests WHERE key = 'trigger:during'") == [{"key": "trigger:during"}]
    assert again.query("SELECT count(*) AS n FROM actions") == [{"n": 40}]
    again.close()


async def test_a_store_gone_read_only_while_running_refuses_work_and_the_next_start_says_why(
    ext4: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    config_path = config_on(tmp_path, ext4)
    db = ext4 / "mlops-bot.db"
    async with local_bot(load_config(config_path), clock=Clock(), post_rate=100, post_burst=100) as bot:
        assert "is locked by <@U0ALICE>" in await answer(bot, "U0ALICE", "lock ranker staging before")
        # What ext4 does when its disk fails under errors=remount-ro: read-only at once, files still open.
        aborted = _run("mount", "-o", "remount,abort", str(ext4))
        assert aborted.returncode == 0, aborted.stderr

        status, health = await healthz(bot.url)
        assert status == 503 and health["store_writable"] is False
        assert health["reason"] == f"read-only file system at {db}"
        said = await answer(bot, "U0ALICE", "unlock ranker staging")
        assert REFUSED in said and "read-only file system" in said
        assert locks(db) == [("ranker", "staging", "U0ALICE", "before")]  # still locked: nothing was done
    # Rows that can never be written on this disk are not lost silently: the stop logs each one whole.
    unstored = [json.loads(r.getMessage().split(": ", 1)[1]) for r in caplog.records
                if r.getMessage().startswith("unstored audit row: ")]
    assert any(row["status"] == "store_unwritable" and row["actor"] == "U0ALICE" for row in unstored)

    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}
    started = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config_path), "serve", "--host",
                              "127.0.0.1", "--port", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 2, started.stderr
    assert started.stderr == f"mlops-bot: cannot write the store {db}: read-only file system\n"


def _leave_store_as_a_crash_does(db: Path) -> None:
    """A bot killed with its store open: the -wal and -shm files stay, so SQLite opens it even read-only."""
    code = ("import os, sys; from bot.store import Store; s = Store(sys.argv[1]); "
            "s.audit(actor='U0ALICE', verb='help', status='ok'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, cwd=ROOT)
    assert Path(f"{db}-shm").exists()


@pytest.mark.parametrize(("command", "crashed"), [("serve", False), ("serve", True), ("sandbox", True)])
def test_start_on_a_read_only_store_is_one_line_and_exit_2(
    tmpfs: Path, tmp_path: Path, command: str, crashed: bool,
) -> None:
    config_path = config_on(tmp_path, tmpfs)
    db = tmpfs / "mlops-bot.db"
    if crashed:
        _leave_store_as_a_crash_does(db)
    else:
        store = Store(db)
        store.audit(actor="U0ALICE", verb="help", status="ok")
        store.close()
    _mount("-o", "remount,ro", str(tmpfs))

    argv = [sys.executable, "-m", "bot.cli", "--config", str(config_path), command]
    argv += ["--host", "127.0.0.1", "--port", "0"] if command == "serve" else ["--state-dir", str(tmpfs)]
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}
    started = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert started.returncode == 2, started.stderr
    assert started.stderr == f"mlops-bot: cannot write the store {db}: read-only file system\n"
    assert started.stdout == ""
