"""Crash recovery (issue 18): `kill -9` of `mlops-bot serve` during a deploy, a promotion, a rollback, a retrain
and an on-call handoff post, then a new process on the same store.

After each restart: `mlops-bot audit verify` passes, every Slack request the dead process acknowledged (more
than a group commit before the kill) has its audit row, no operation is left running and no lock held, the
channel is told, and a scheduled post is neither lost nor doubled. Real processes throughout: the bot as
`mlops-bot serve`, real tritonservers, the example pipeline as a process, the Slack emulator.

The bot has no clock setting in a real process, so the handoff test writes a rotation whose handoff was due
two minutes ago by the real clock: the new process catches the slot up at start, as after any outage.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import yaml

from bot.config import load_config
from bot.monitors.hook import sign
from bot.oncall.schedule import WEEKDAYS
from bot.retrain.command import CommandRun, process_group_alive
from bot.sandbox.local import workspace
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import Delivery, SlackEventsClient
from bot.sandbox.tritonserver import TritonServer, free_port, triton_missing
from bot.scheduler import MAX_ATTEMPTS, Scheduler, daily
from bot.serving.triton import Fleet
from bot.store import Store
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.e2e.test_release_failures import bot_config, fleet, registry, until_loading  # noqa: F401 - fixtures
from tests.e2e.test_release_train import serving
from tests.support.datagen_history import real_record

TOKEN, SECRET, HOOK_SECRET = "xoxb-crash", "crash-signing-secret", "crash-hook-secret"
CHANNEL = "C0MLOPS"
# Audit rows are committed with their group at the event loop's next turn, a few ms after the ack; a request
# acknowledged within this much of the kill may be lost with its group, anything older may not.
GROUP_COMMIT_S = 0.05
URGENT = 'urgent="crash drill"'  # promotions run at whatever hour the suite does, so always with a reason


@pytest.fixture(scope="module")
def servers(request) -> tuple[dict[str, Path], dict[str, list[TritonServer]]]:
    """One staging and two prod tritonservers for the module (from test_release_failures' `fleet`)."""
    missing = triton_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no tritonserver: {missing}")
        pytest.skip(missing)
    return request.getfixturevalue("fleet")


@pytest.fixture
async def fresh_servers(servers) -> AsyncIterator[tuple[dict[str, Path], dict[str, list[TritonServer]]]]:
    """The module's servers with ranker unloaded everywhere afterwards, so the next test starts from nothing."""
    yield servers
    _, groups = servers
    async with Fleet([s.url for group in groups.values() for s in group]) as everywhere:
        await everywhere.unload("ranker")


# -- the bot as a process, and what Slack saw it acknowledge ------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    log: Path


@dataclass
class Session:
    """One Slack workspace across both processes: what the bot acknowledged, and when it was killed."""

    path: Path
    slack: SlackEmulator
    acked: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic time, trigger_id, text)
    killed_at: float | None = None
    runs: int = 0

    async def serve(self) -> Served:
        self.runs += 1
        log = self.path.parent / f"bot-{self.runs}.log"
        port = free_port()
        env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": self.slack.api_url,
               "MLOPS_DATAGEN_HOOK_SECRET": HOOK_SECRET}
        env.pop("SLACK_APP_TOKEN", None)
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(self.path), "serve", "--host",
                                        "127.0.0.1", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            return Served(process, url, log)
                except aiohttp.ClientError:
                    pass
                assert process.poll() is None, f"mlops-bot serve exited at start:\n{log.read_text()[-3000:]}"
                await asyncio.sleep(0.1)
        raise AssertionError(f"mlops-bot serve never became healthy:\n{log.read_text()[-3000:]}")

    @asynccontextmanager
    async def client(self, bot: Served) -> AsyncIterator[SlackEventsClient]:
        async with SlackEventsClient(f"{bot.url}/slack/events", SECRET, self.slack) as client:
            yield client

    async def command(self, client: SlackEventsClient, user: str, text: str) -> Delivery:
        delivery = await client.command(user, text)
        assert delivery.status == 200, delivery.body
        self.acked.append((time.monotonic(), delivery.trigger_id or "", text))
        return delivery

    def kill(self, bot: Served) -> None:
        self.killed_at = time.monotonic()
        bot.process.send_signal(signal.SIGKILL)
        bot.process.wait()

    @staticmethod
    def stop(bot: Served) -> None:
        if bot.process.poll() is None:
            bot.process.terminate()
            bot.process.wait(timeout=30)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(load_config(self.path).store)

    def assert_recovered(self) -> None:
        """What must hold after any crash and restart, checked once the new process has stopped."""
        verified = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(self.path), "audit", "verify"],
                                  capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert self.killed_at is not None
        with self.db() as db:
            keys = {key for (key,) in db.execute("SELECT key FROM actions WHERE status = 'accepted'")}
            running = db.execute("SELECT kind, model, env, actor FROM operations WHERE state = 'running'").fetchall()
            locks = db.execute("SELECT model, env, holder, reason FROM locks").fetchall()
        settled = [(at, key, text) for at, key, text in self.acked if at < self.killed_at - GROUP_COMMIT_S]
        assert settled, "nothing was acknowledged before the kill, so nothing was checked"
        assert [text for _, key, text in settled if key not in keys] == [], "acknowledged but not in the audit log"
        assert running == [] and locks == []


@asynccontextmanager
async def session(path: Path) -> AsyncIterator[Session]:
    users, groups = workspace(load_config(path))
    async with SlackEmulator(bot_token=TOKEN, signing_secret=SECRET, users=users, usergroups=groups, post_rate=20,
                             post_burst=20) as slack:
        yield Session(path, slack)


@contextmanager
def running(crash: Session, bot: Served) -> Iterator[Served]:
    """Whatever the test does, no bot process outlives it."""
    try:
        yield bot
    finally:
        crash.stop(bot)


def channel_text(slack: SlackEmulator, words: str) -> str | None:
    return next((m["text"] for m in slack.messages(CHANNEL) if words in m["text"]), None)


async def card_says(slack: SlackEmulator, words: str, timeout: float = 120) -> str:
    """The channel message saying `words`; on a timeout, what the bot answered people instead."""
    try:
        return await slack.wait_for(lambda: channel_text(slack, words), timeout=timeout)
    except TimeoutError:
        answers = [r["body"].get("text") for r in slack.responses] + [e["text"] for e in slack.ephemerals]
        raise AssertionError(f"nothing in {CHANNEL} says {words!r}; answers to people: {answers}") from None


def release_config(tmp_path: Path, registry_path: Path, servers) -> Path:  # noqa: F811 - `registry` is a fixture
    repos, groups = servers
    bot_config(tmp_path, str(registry_path), {env: (str(repos[env]), [s.url for s in groups[env]]) for env in repos},
               digests={"daily": None, "weekly": None})
    return tmp_path / "mlops-bot.yaml"


# -- the release train ----------------------------------------------------------------------------------


async def test_kill_9_mid_deploy_puts_staging_back_on_the_version_it_recorded(fresh_servers, registry, tmp_path):  # noqa: F811
    _, groups = fresh_servers
    staging = groups["staging"]
    async with session(release_config(tmp_path, registry, fresh_servers)) as crash:
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0ALICE", "deploy ranker v1")
                await card_says(crash.slack, "ranker v1 staging: verified")
                await crash.command(client, "U0BOB", "deploy ranker v5")
                await until_loading(staging[0])
            crash.kill(first)

        with running(crash, await crash.serve()):
            told = await card_says(crash.slack, "<@U0BOB> was deploying v5 on ranker staging")
            assert "The bot put staging back on v1 by itself." in told and "lock released" in told
            assert await card_says(crash.slack, "ranker v5 staging: interrupted")
            with crash.db() as db:
                n1, n5 = (n for (n,) in db.execute("SELECT id FROM releases ORDER BY id"))
                assert db.execute("SELECT state FROM releases ORDER BY id").fetchall() == [("verified",), ("interrupted",)]
                assert db.execute("SELECT state FROM operations WHERE kind = 'deploy' ORDER BY id").fetchall() == [
                    ("ended",), ("reconciled",)]
            assert await serving(staging) == {staging[0].url: [n1]}  # the record, not the load that finished alone
        crash.assert_recovered()


async def test_kill_9_mid_promotion_puts_prod_back_and_leaves_staging_alone(fresh_servers, registry, tmp_path):  # noqa: F811
    _, groups = fresh_servers
    prod, staging = groups["prod"], groups["staging"]
    async with session(release_config(tmp_path, registry, fresh_servers)) as crash:
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0ALICE", "deploy ranker v1")
                await card_says(crash.slack, "ranker v1 staging: verified")
                await crash.command(client, "U0CAROL", f"promote ranker {URGENT}")
                await card_says(crash.slack, "ranker v1 prod: live")
                await crash.command(client, "U0ALICE", "deploy ranker v5")
                await card_says(crash.slack, "ranker v5 staging: verified")
                await crash.command(client, "U0CAROL", f"promote ranker {URGENT}")
                await until_loading(prod[0])
            crash.kill(first)
        with crash.db() as db:
            n1, n5 = (n for (n,) in db.execute("SELECT id FROM releases WHERE version IN ('v1', 'v5') ORDER BY version"))
            assert db.execute("SELECT prod_state FROM releases WHERE id = ?", (n5,)).fetchone() == ("promoting",)
            assert db.execute("SELECT holder FROM locks").fetchall() == [("U0CAROL",)]

        with running(crash, await crash.serve()):
            told = await card_says(crash.slack, "<@U0CAROL> was promoting v5 on ranker prod")
            assert "The bot put prod back on v1 by itself." in told and "lock released" in told
            assert f"Serving now: {prod[0].url}: v{n1}, {prod[1].url}: v{n1}" in told
            assert await card_says(crash.slack, "ranker v5 prod: interrupted")
            assert await serving(prod) == {s.url: [n1] for s in prod}
            assert await serving(staging) == {staging[0].url: [n5]}  # staging keeps the version it verified
            with crash.db() as db:
                assert db.execute("SELECT state, prod_state FROM releases WHERE id = ?", (n5,)).fetchone() == (
                    "verified", "interrupted")
                assert dict(db.execute("SELECT env, version FROM environments")) == {"staging": "v5", "prod": "v1"}
                assert db.execute("SELECT state FROM operations WHERE kind = 'promote' ORDER BY id").fetchall() == [
                    ("ended",), ("reconciled",)]
        crash.assert_recovered()


async def test_kill_9_mid_rollback_puts_prod_back_on_its_record_and_frees_the_lock(fresh_servers, registry, tmp_path):  # noqa: F811
    _, groups = fresh_servers
    prod = groups["prod"]
    async with session(release_config(tmp_path, registry, fresh_servers)) as crash:
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                # v5 (slow to load) goes live first, so rolling back from v1 loads it again and takes a while.
                await crash.command(client, "U0ALICE", "deploy ranker v5")
                await card_says(crash.slack, "ranker v5 staging: verified")
                await crash.command(client, "U0CAROL", f"promote ranker {URGENT}")
                await card_says(crash.slack, "ranker v5 prod: live")
                await crash.command(client, "U0ALICE", "deploy ranker v1")
                await card_says(crash.slack, "ranker v1 staging: verified")
                await crash.command(client, "U0CAROL", f"promote ranker {URGENT}")
                await card_says(crash.slack, "ranker v1 prod: live")
                await crash.command(client, "U0BOB", 'rollback ranker prod reason="p99 doubled"')
                await until_loading(prod[0])
            crash.kill(first)
        with crash.db() as db:
            n5, n1 = (n for (n,) in db.execute("SELECT id FROM releases ORDER BY id"))
            assert db.execute("SELECT holder, reason FROM locks").fetchall() == [("U0BOB", "rolling back to v5")]

        with running(crash, await crash.serve()) as second:
            told = await card_says(crash.slack, "<@U0BOB> was rolling back to v5 on ranker prod")
            assert "The bot put prod back on v1 by itself." in told and "lock released" in told
            assert await serving(prod) == {s.url: [n1] for s in prod}
            with crash.db() as db:
                assert db.execute("SELECT version FROM environments WHERE env = 'prod'").fetchone() == ("v1",)
                assert db.execute("SELECT prod_state FROM releases WHERE id = ?", (n1,)).fetchone() == ("live",)
                assert db.execute("SELECT * FROM locks").fetchall() == []
            async with crash.client(second) as client:  # the freed lock lets the same rollback run again
                await crash.command(client, "U0BOB", 'rollback ranker prod reason="p99 doubled"')
                await card_says(crash.slack, "ranker prod is serving v5 again (was v1)")
            assert await serving(prod) == {s.url: [n5] for s in prod}
        crash.assert_recovered()
        with crash.db() as db:
            assert db.execute("SELECT state FROM operations WHERE kind = 'rollback' ORDER BY id").fetchall() == [
                ("reconciled",), ("ended",)]


# -- a retrain run ------------------------------------------------------------------------------------------


def retrain_config(tmp_path: Path) -> tuple[Path, Path]:
    registry_path = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry_path, ignore=shutil.ignore_patterns("__pycache__"))
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model["registry"] = str(registry_path)
    # Nothing listens on these: a retrain never calls the endpoints.
    model["environments"] = {env: {"repository": str(tmp_path / "repos" / env),
                                   "endpoints": [f"http://127.0.0.1:{free_port()}"]} for env in ("staging", "prod")}
    model["retrain"] = {"backend": "command", "command": [str(ROOT / "examples" / "pipelines" / "train.sh"), "15"]}
    return write_config(tmp_path, models={"ranker": model}, datagen={"jobs": {}},
                        digests={"daily": None, "weekly": None}), registry_path


def retrain_cards(slack: SlackEmulator) -> list[dict]:
    return [m for m in slack.messages(CHANNEL) if "retrain-" in json.dumps(m["blocks"])]


async def test_kill_9_mid_retrain_follows_the_same_run_to_its_end(tmp_path):
    path, registry_path = retrain_config(tmp_path)
    async with session(path) as crash:
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0ALICE", "retrain ranker epochs=25")  # about 5 s of "training"
                card = await crash.slack.wait_for(
                    lambda: next((c for c in retrain_cards(crash.slack) if ": running" in c["text"]), None), timeout=30)
            await asyncio.sleep(0.5)  # the request is acknowledged well before the kill
            crash.kill(first)
        with crash.db() as db:
            [(run_id, handle)] = db.execute("SELECT run_id, handle FROM retrain_runs").fetchall()
        pipeline = CommandRun.attach(Path(json.loads(handle)["run_dir"]))
        assert process_group_alive(pipeline.pgid)  # the kill took the bot, not the training run

        with running(crash, await crash.serve()):
            ready = await crash.slack.wait_for(
                lambda: (c := crash.slack.find_message(CHANNEL, card["ts"])) and "is ready" in c["text"] and c,
                timeout=60)
            # The thread notes may follow the card edit by a moment (chat.postMessage is held to 1/s a channel).
            thread = await crash.slack.wait_for(lambda: (t := json.dumps(
                [m["blocks"] for m in crash.slack.replies(CHANNEL, card["ts"])])) and "is ready" in t and t, timeout=30)
            assert "The bot restarted; following this run again." in thread
            assert thread.index("The bot restarted") < thread.index("is ready")
            assert "Deploy to staging" in json.dumps(ready["blocks"])
        crash.assert_recovered()
        with crash.db() as db:
            [(state, version)] = db.execute("SELECT state, version FROM retrain_runs").fetchall()
            statuses = [s for (s,) in db.execute("SELECT status FROM actions WHERE verb = 'retrain' ORDER BY id")]
        assert state == "success" and ready["text"] == f"ranker {version} is ready"
        # One pipeline: one run directory, one training log, one published version naming this run.
        assert [p.name for p in (tmp_path / "retrain-runs").iterdir()] == [run_id]
        assert pipeline.log_path.read_text().count("training ranker") == 1
        published = [p.name for p in (registry_path / "ranker").iterdir() if p.name not in ("v1", "v2", "v3", "v4")]
        assert published == [version]
        assert json.loads((registry_path / "ranker" / version / "metadata.json").read_text())["pipeline_run_id"] == run_id
        assert statuses == ["accepted", "started", "succeeded"]
        assert len(retrain_cards(crash.slack)) == 1


async def test_a_pipeline_started_just_before_the_kill_is_followed_not_failed(tmp_path):
    """A kill between starting the pipeline and recording it (the row still `starting`, no handle) is a few ms
    wide, too narrow to hit with a signal: the row is put in that state after a real kill mid-run."""
    path, registry_path = retrain_config(tmp_path)
    async with session(path) as crash:
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0ALICE", "retrain ranker epochs=25")
                card = await crash.slack.wait_for(
                    lambda: next((c for c in retrain_cards(crash.slack) if ": running" in c["text"]), None), timeout=30)
            await asyncio.sleep(0.5)
            crash.kill(first)
        with crash.db() as db:
            db.execute("UPDATE retrain_runs SET state = 'starting', handle = '{}'")

        with running(crash, await crash.serve()):
            ready = await crash.slack.wait_for(
                lambda: (c := crash.slack.find_message(CHANNEL, card["ts"])) and (
                    "is ready" in c["text"] or ": failed" in c["text"]) and c, timeout=60)
            assert "is ready" in ready["text"], ready["blocks"]  # not "failed: start it again" while it trains on
        crash.assert_recovered()
        with crash.db() as db:
            [(run_id, version)] = db.execute("SELECT run_id, version FROM retrain_runs").fetchall()
        assert [p.name for p in (tmp_path / "retrain-runs").iterdir()] == [run_id]
        assert json.loads((registry_path / "ranker" / version / "metadata.json").read_text())["pipeline_run_id"] == run_id


# -- the on-call handoff ------------------------------------------------------------------------------------


def handoff_config(tmp_path: Path) -> Path:
    """A weekly rotation whose handoff was due two minutes ago by the real clock (the bot's clock in a process)."""
    due = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=0, microsecond=0)
    rotation = {"name": "recsys", "members": ["U0ALICE", "U0BOB", "U0CAROL"], "shift": "weekly",
                "handoff_weekday": WEEKDAYS[due.weekday()], "handoff_time": due.strftime("%H:%M"), "tz": "UTC",
                "start": (due.date() - timedelta(weeks=3)).isoformat(), "channel": CHANNEL, "usergroup": "S0ONCALL"}
    return write_config(tmp_path, models={}, datagen={"jobs": {}}, oncall={"rotations": [rotation]},
                        digests={"daily": None, "weekly": None})


def handoffs(slack: SlackEmulator) -> list[dict]:
    return [m for m in slack.messages(CHANNEL) if m["text"].startswith("On-call handoff")]


@pytest.mark.parametrize("cut", ["while posting it", "after posting it"])
async def test_kill_9_during_the_handoff_post_posts_it_once_after_the_restart(tmp_path, cut):
    async with session(handoff_config(tmp_path)) as crash:
        # Slack holds the request: the handoff card itself, or the user group update that follows its post.
        crash.slack.inject_fault("chat.postMessage" if cut == "while posting it" else "usergroups.users.list", "timeout")
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0BOB", "oncall")  # a person's request in the same moments
            with crash.db() as db:
                for _ in range(300):
                    row = db.execute("SELECT ts FROM oncall_handoffs").fetchone()
                    if row is not None and (cut == "while posting it" or row[0]):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"the handoff never got as far as {cut}:\n{first.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)  # well past the group commit of the rows written so far
            crash.kill(first)
        assert len(handoffs(crash.slack)) == (0 if cut == "while posting it" else 1)

        with running(crash, await crash.serve()):
            [card] = await crash.slack.wait_for(lambda: handoffs(crash.slack), timeout=30)
            await crash.slack.wait_for(lambda: crash.slack.topics.get(CHANNEL), timeout=30)  # the job ran to its end
            await asyncio.sleep(1)  # and nothing else is coming
            assert len(handoffs(crash.slack)) == 1
            assert "Acknowledge handoff" in json.dumps(card["blocks"])
        crash.assert_recovered()
        with crash.db() as db:
            assert db.execute("SELECT ts FROM oncall_handoffs").fetchall() == [(card["ts"],)]
            posted = db.execute("SELECT count(*) FROM actions WHERE verb = 'oncall.handoff' AND status = 'posted'").fetchone()
        assert posted == (1,)


def digest_config(tmp_path: Path) -> Path:
    """A daily digest that was due two minutes ago by the real clock."""
    due = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=0, microsecond=0)
    return write_config(tmp_path, models={}, datagen={"jobs": {}}, oncall={"rotations": []},
                        digests={"daily": {"at": due.strftime("%H:%M"), "tz": "UTC", "channel": CHANNEL}, "weekly": None})


async def test_kill_9_while_the_daily_digest_is_posted_posts_it_once_after_the_restart(tmp_path):
    async with session(digest_config(tmp_path)) as crash:
        crash.slack.inject_fault("chat.postMessage", "timeout")  # Slack holds the digest's post
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0BOB", "silence")  # a person's request in the same moments
            with crash.db() as db:  # the job claimed its slot and is held in its post
                for _ in range(300):
                    if db.execute("SELECT 1 FROM job_runs WHERE job = 'digest.daily'").fetchone():
                        break
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            crash.kill(first)
        digests = lambda: [m for m in crash.slack.messages(CHANNEL) if m["text"].startswith("Daily digest")]  # noqa: E731
        assert digests() == []
        with running(crash, await crash.serve()):
            await crash.slack.wait_for(digests, timeout=30)
            await asyncio.sleep(1)  # and nothing else is coming
            assert len(digests()) == 1
        crash.assert_recovered()
        with crash.db() as db:
            assert db.execute("SELECT count(*) FROM actions WHERE verb = 'digest.daily' AND status = 'posted'").fetchone() == (1,)


# -- the datagen summary ------------------------------------------------------------------------------------


def datagen_config(tmp_path: Path) -> Path:
    """The example datagen job, reading from an empty directory: only what the test pushes is ever seen."""
    job = yaml.safe_load(EXAMPLE_CONFIG.read_text())["datagen"]["jobs"]["recsys"]
    job["source"] = str(tmp_path / "datagen" / "{date}.json")
    return write_config(tmp_path, models={}, datagen={"jobs": {"recsys": {**job, "models": []}}},
                        oncall={"rotations": []}, digests={"daily": None, "weekly": None})


async def push_record(bot: Served, day: date) -> int:
    body = json.dumps(real_record()).encode()
    query, stamp = f"job=recsys&date={day}", str(int(time.time()))
    async with aiohttp.ClientSession() as http, http.post(f"{bot.url}/hooks/datagen?{query}", data=body, headers={
            "X-Datagen-Timestamp": stamp,
            "X-Datagen-Signature": sign(HOOK_SECRET, stamp, "POST", "/hooks/datagen", query, body)}) as resp:
        return resp.status


async def test_kill_9_while_the_datagen_summary_is_posted_posts_it_once_after_the_restart(tmp_path):
    day = datetime.now(ZoneInfo("Asia/Kolkata")).date() - timedelta(days=1)
    async with session(datagen_config(tmp_path)) as crash:
        summaries = lambda: [m for m in crash.slack.messages(CHANNEL) if m["text"].startswith(f"datagen recsys {day}")]  # noqa: E731
        with running(crash, await crash.serve()) as first:
            async with crash.client(first) as client:
                await crash.command(client, "U0BOB", "silence")  # a person's request in the same moments
            crash.slack.inject_fault("chat.postMessage", "timeout")  # Slack holds the summary's post
            assert await push_record(first, day) == 200  # stored and queued: the sender is done with it
            with crash.db() as db:  # the summary's slot is claimed and its post held
                for _ in range(300):
                    if db.execute("SELECT 1 FROM job_runs WHERE job = 'datagen.summary.recsys'").fetchone():
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"the summary was never claimed:\n{first.log.read_text()[-3000:]}")
            await asyncio.sleep(0.5)
            crash.kill(first)
        assert summaries() == []
        with running(crash, await crash.serve()):
            [summary] = await crash.slack.wait_for(summaries, timeout=30)
            await crash.slack.wait_for(lambda: crash.slack.replies(CHANNEL, summary["ts"]), timeout=30)  # its details
            await asyncio.sleep(1)  # and nothing else is coming
            assert len(summaries()) == 1
        crash.assert_recovered()
        with crash.db() as db:
            [(detail,)] = db.execute("SELECT detail FROM job_runs WHERE job = 'datagen.summary.recsys'").fetchall()
        assert json.loads(detail)["ts"] == summary["ts"]


async def test_a_scheduled_job_cut_short_every_time_is_given_up_after_three_attempts(tmp_path):
    """A handoff that itself brings the bot down (each process dies in it) must not make the bot crash-loop
    until the slot's grace is over: each new process is a new Scheduler on the same store."""
    store = Store(tmp_path / "mlops-bot.db")
    now = datetime(2026, 11, 23, 18, 5, tzinfo=UTC)
    attempts = []

    async def dies(slot: datetime) -> None:
        attempts.append(slot)
        raise asyncio.CancelledError  # the process stops inside the job

    for _ in range(5):
        scheduler = Scheduler(store, lambda: now)
        scheduler.add("oncall.recsys.handoff", daily(now.replace(minute=0).time(), "UTC"), dies, resumable=True)
        with suppress(asyncio.CancelledError):
            await scheduler.run_due()
    assert len(attempts) == MAX_ATTEMPTS == 3
    store.close()
