"""Durable store (issue 15): the bot replicating its store with the real litestream binary to a real moto_server,
killed with kill -9, its disk deleted, and a second bot on an empty directory taking over from the replica.

The second bot finds the first's lease in what it restored, waits as a standby until that lease expires (so
the lease is short here), then restores again and acts. Real processes throughout: the bot as `mlops-bot serve`,
litestream as its child, moto_server, the Slack emulator.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import boto3
import pytest

from bot.config import load_config
from bot.replication import Replica, ReplicaError, litestream_binary
from bot.sandbox.tritonserver import free_port
from tests.conftest import write_config
from tests.reliability.test_crash_recovery import CHANNEL, running, session
from tests.support.s3 import AWS_ENV, MotoServer

BUCKET = "mlops-store"
# Long enough that the lease the second bot restores is still live when it looks, even on a loaded machine:
# the last renewal replicated (renewed every third of a lease, up to EXPOSURE_S behind) plus the restore and
# the process start must fit in it, or the second bot never is a standby and the test proves less.
LEASE_S = 8.0
# A commit reaches the replica within Litestream's monitor interval (1 s: it reads the WAL) plus its sync
# interval (1 s: it uploads); an action acknowledged longer ago than this before the kill must survive it.
EXPOSURE_S = 2.0


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    try:
        litestream_binary()
        import moto.server  # noqa: F401
    except (ReplicaError, ImportError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the durable store's stand-ins are missing: {exc}")
        pytest.skip(str(exc))
    with MotoServer() as server:
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def aws(monkeypatch):
    """The bot's children inherit os.environ: moto's credentials, never a developer's own."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


def replicated_config(directory: Path, disk: Path, moto: MotoServer, prefix: str, **overrides) -> Path:
    directory.mkdir(exist_ok=True)
    return write_config(directory, store=str(disk / "mlops-bot.db"), store_replica=f"s3://{BUCKET}/{prefix}",
                        store_lease_s=LEASE_S, s3={"endpoint_url": moto.endpoint_url, "region": "us-east-1"},
                        models={}, datagen={"jobs": {}}, oncall={"rotations": []},
                        **{"digests": {"daily": None, "weekly": None}, **overrides})


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=60)


async def healthz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
        return resp.status, await resp.json()


async def test_kill_9_and_a_lost_disk_lose_only_the_last_moments(moto, aws, tmp_path):
    due = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=0, microsecond=0)
    digest = {"daily": {"at": due.strftime("%H:%M"), "tz": "UTC", "channel": CHANNEL}, "weekly": None}
    first_config = replicated_config(tmp_path / "one", tmp_path / "disk-one", moto, "failover", digests=digest)
    second_config = replicated_config(tmp_path / "two", tmp_path / "disk-two", moto, "failover", digests=digest)
    digests = lambda: [m for m in crash.slack.messages(CHANNEL) if m["text"].startswith("Daily digest")]  # noqa: E731

    async with session(first_config) as crash:
        with running(crash, await crash.serve()) as first:
            await crash.slack.wait_for(digests, timeout=30)  # the slot missed "while down" is caught up at start
            async with crash.client(first) as client:
                for _ in range(20):
                    await crash.command(client, "U0BOB", "silence")
                await asyncio.sleep(EXPOSURE_S + 0.5)  # the burst is on the replica by now
                status, health = await healthz(first.url)
                assert status == 200 and health["replication"]["replicating"], health
                lag = health["replication"]["lag_seconds"]
                stop = time.monotonic() + 1.5
                while time.monotonic() < stop:  # and commands keep coming up to the kill
                    await crash.command(client, "U0BOB", "silence")
            shipper = litestream_child(first.process.pid)
            os.kill(shipper, signal.SIGKILL)  # the machine is lost: its litestream has no last word either
            crash.kill(first)
        shutil.rmtree(tmp_path / "disk-one")  # and its disk with it

        crash.path = second_config
        started = time.monotonic()
        with running(crash, await crash.serve()) as second:  # healthy only once it holds the lease
            took_over = time.monotonic() - started
            log = second.log.read_text()
            assert "restored" in log and "standby" in log, log
            await asyncio.sleep(1)  # anything the restored store would post twice has had its chance
            assert len(digests()) == 1
            status, health = await healthz(second.url)
            assert status == 200 and health["replication"]["replicating"], health

        verified = cli(second_config, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        with crash.db() as db:
            keys = {key for (key,) in db.execute("SELECT key FROM actions WHERE status = 'accepted'")}
            posted = db.execute("SELECT count(*) FROM actions WHERE verb = 'digest.daily' AND status = 'posted'").fetchone()
            rows = db.execute("SELECT count(*), max(hash) FROM actions").fetchone()
        assert posted == (1,)
        # The second bot carried the replica on: a third restore has everything it wrote, to its clean stop.
        third = tmp_path / "disk-three" / "mlops-bot.db"
        assert Replica.from_config(load_config(second_config)).restore(third)  # type: ignore[union-attr]
        with sqlite3.connect(third) as db:
            assert db.execute("SELECT count(*), max(hash) FROM actions").fetchone() == rows
        assert crash.killed_at is not None
        lost = [crash.killed_at - at for at, key, _ in crash.acked if key not in keys]
        window = max(lost, default=0.0)
        print(f"\n{len(crash.acked)} commands acknowledged, {len(lost)} lost; loss window {window:.2f} s before the kill "
              f"(bound {EXPOSURE_S:.1f} s; /healthz said lag {lag} s); second bot acting {took_over:.1f} s after it started")
        assert window <= EXPOSURE_S, f"an action acknowledged {window:.2f} s before the kill was lost"
        assert len(lost) < len(crash.acked) - 20  # the burst and most of what followed survived


async def test_an_empty_replica_and_no_store_start_fresh(moto, aws, tmp_path):
    config = replicated_config(tmp_path, tmp_path / "disk", moto, "fresh")
    async with session(config) as crash:
        with running(crash, await crash.serve()) as bot:
            status, health = await healthz(bot.url)
            assert status == 200 and health["replication"]["replica"] == f"s3://{BUCKET}/fresh", health
            assert "restored" not in bot.log.read_text()
            async with aiohttp.ClientSession() as http, http.get(f"{bot.url}/metrics") as resp:
                assert "mlops_replication_up 1.0" in await resp.text()


@pytest.mark.parametrize("problem", ["no such bucket", "cannot reach S3"])
def test_a_replica_that_cannot_be_used_stops_the_start_with_what_to_fix(moto, aws, tmp_path, problem):
    config = replicated_config(tmp_path, tmp_path / "disk", moto, "broken")
    text = config.read_text()
    if problem == "no such bucket":
        config.write_text(text.replace(f"s3://{BUCKET}/", "s3://no-such-bucket/"))
    else:
        config.write_text(text.replace(moto.endpoint_url, f"http://127.0.0.1:{free_port()}"))
    done = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "serve", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLACK_BOT_TOKEN": "xoxb-x", "SLACK_SIGNING_SECRET": "s"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [said] = [line for line in done.stderr.splitlines() if line.startswith("mlops-bot serve:")]
    assert problem in said and ("endpoint_url" in said or "create the bucket" in said), said


def litestream_child(bot_pid: int) -> int:
    for task in Path(f"/proc/{bot_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if "litestream" in Path(f"/proc/{pid}/cmdline").read_text():
                return int(pid)
    raise AssertionError("no litestream child")


async def test_litestream_dying_is_said_on_healthz_and_it_is_restarted(moto, aws, tmp_path):
    config = replicated_config(tmp_path, tmp_path / "disk", moto, "restarted")
    async with session(config) as crash:
        with running(crash, await crash.serve()) as bot:
            dead = litestream_child(bot.process.pid)
            os.kill(dead, signal.SIGKILL)
            for _ in range(50):
                status, health = await healthz(bot.url)
                if "litestream exited" in health.get("degraded", ""):
                    break
                await asyncio.sleep(0.05)
            assert status == 200 and "litestream exited" in health["degraded"], health  # degraded, still serving
            for _ in range(100):
                status, health = await healthz(bot.url)
                if health["replication"]["restarts"] == 1 and health["replication"]["replicating"]:
                    break
                await asyncio.sleep(0.1)
            assert health["replication"]["restarts"] == 1 and health["replication"]["replicating"], health
            assert litestream_child(bot.process.pid) != dead
            assert "litestream exited" in bot.log.read_text()
            shipper = litestream_child(bot.process.pid)
            crash.kill(bot)
        for _ in range(100):  # the bot's death stops its litestream: no orphan goes on shipping
            if not Path(f"/proc/{shipper}").exists() or "Z" in Path(f"/proc/{shipper}/stat").read_text().split()[2]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("litestream outlived the bot")


async def test_a_second_bot_on_a_live_lease_is_a_standby_until_the_first_stops(moto, aws, tmp_path):
    due = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=0, microsecond=0)
    digest = {"daily": {"at": due.strftime("%H:%M"), "tz": "UTC", "channel": CHANNEL}, "weekly": None}
    first_config = replicated_config(tmp_path / "one", tmp_path / "disk-one", moto, "standby", digests=digest)
    second_config = replicated_config(tmp_path / "two", tmp_path / "disk-two", moto, "standby", digests=digest)
    digests = lambda: [m for m in crash.slack.messages(CHANNEL) if m["text"].startswith("Daily digest")]  # noqa: E731
    async with session(first_config) as crash:
        with running(crash, await crash.serve()) as first:
            await crash.slack.wait_for(digests, timeout=30)
            await asyncio.sleep(EXPOSURE_S)  # the lease and the digest's slot are on the replica
            port = free_port()
            env = {**os.environ, "SLACK_BOT_TOKEN": "xoxb-crash", "SLACK_SIGNING_SECRET": "crash-signing-secret",
                   "SLACK_API_URL": crash.slack.api_url}
            log = tmp_path / "standby.log"
            with log.open("w") as out:
                standby = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(second_config), "serve",
                                            "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                           stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                for _ in range(100):
                    try:
                        status, health = await healthz(url)
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                assert status == 503 and health["standby"] and health["lease_holder"], health
                await asyncio.sleep(LEASE_S)  # the first renews; the standby stays one, and posts nothing
                assert (await healthz(url))[0] == 503
                assert len(digests()) == 1
                crash.stop(first)  # a clean stop releases the lease at once
                stopped = time.monotonic()
                for _ in range(150):
                    with contextlib.suppress(aiohttp.ClientError):
                        if (await healthz(url))[0] == 200:
                            break
                    await asyncio.sleep(0.1)
                took_over = time.monotonic() - stopped
                status, health = await healthz(url)
                assert status == 200 and health["replication"]["replicating"], (health, log.read_text()[-2000:])
                print(f"\nstandby acting {took_over:.1f} s after the active stopped")
                await asyncio.sleep(1)
                assert len(digests()) == 1  # the slot the first posted is on the restored store
            finally:
                standby.terminate()
                standby.wait(timeout=30)


async def test_a_bot_back_on_its_old_disk_starts_from_the_replica_another_bot_wrote_since(moto, aws, tmp_path):
    first_config = replicated_config(tmp_path / "one", tmp_path / "disk-one", moto, "returning")
    second_config = replicated_config(tmp_path / "two", tmp_path / "disk-two", moto, "returning")
    async with session(first_config) as crash:
        answered = lambda n: lambda: len(crash.slack.responses) >= n  # noqa: E731 - the command's work is done
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0BOB", "silence")
                await crash.slack.wait_for(answered(1), timeout=10)
        crash.path = second_config  # the first stopped; the second takes over from the replica and acts
        with running(crash, await crash.serve()) as second:
            async with crash.client(second) as client:
                later = await crash.command(client, "U0BOB", "silence")
                await crash.slack.wait_for(answered(2), timeout=10)
            assert "restored" in second.log.read_text()  # what the first committed to its clean stop
        crash.path = first_config  # the first comes back on its disk, which lacks what the second did
        with running(crash, await crash.serve()) as back:
            assert "taking over from" in back.log.read_text()
        with crash.db() as db:
            keys = {key for (key,) in db.execute("SELECT key FROM actions WHERE status = 'accepted'")}
        assert later.trigger_id in keys
        verified = cli(first_config, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_store_replica_that_is_no_s3_url_is_a_config_error(tmp_path):
    config = write_config(tmp_path, store_replica="s3:/my-bucket")
    done = cli(config, "check-config")
    assert done.returncode == 2 and "store_replica: expected s3://bucket/prefix, got 's3:/my-bucket'" in done.stderr, done.stderr
