"""kill -9 of `mlops-bot serve` in the middle of a deploy, then a new process on the same store: the restart
reconciles what the dead one left (release, lock, the load Triton finished by itself) and the audit chain
verifies. Real processes, real tritonservers, the Slack emulator."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.config import load_config
from bot.sandbox.local import workspace
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from bot.sandbox.tritonserver import free_port, triton_missing
from tests.e2e.test_release_failures import bot_config, fleet, registry, until_loading  # noqa: F401 - fixtures
from tests.e2e.test_release_train import serving

if triton_missing() is not None:
    pytestmark = pytest.mark.skip(reason=triton_missing() or "")

TOKEN, SECRET = "xoxb-crash", "crash-signing-secret"


async def serve(config: Path, slack: SlackEmulator) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url}
    env.pop("SLACK_APP_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            assert proc.poll() is None, "mlops-bot serve exited at start"
            await asyncio.sleep(0.1)
    raise AssertionError("mlops-bot serve never became healthy")


def text_of(slack: SlackEmulator, words: str):
    return next((m["text"] for m in slack.messages("C0MLOPS") if words in m["text"]), None)


async def test_kill_9_mid_deploy_then_a_restart_reconciles_and_the_audit_verifies(fleet, registry, tmp_path):  # noqa: F811
    repos, servers = fleet
    staging = servers["staging"][0]
    bot_config(tmp_path, str(registry), {env: (str(repos[env]), [s.url for s in servers[env]]) for env in repos})
    path = tmp_path / "mlops-bot.yaml"
    users, groups = workspace(load_config(path))
    async with SlackEmulator(bot_token=TOKEN, signing_secret=SECRET, users=users, usergroups=groups, post_rate=20,
                             post_burst=20) as slack:
        first, url = await serve(path, slack)
        try:
            async with SlackEventsClient(f"{url}/slack/events", SECRET, slack) as client:
                await client.command("U0ALICE", "deploy ranker v1")
                await slack.wait_for(lambda: text_of(slack, "ranker v1 staging: verified"), timeout=120)
                await client.command("U0ALICE", "deploy ranker v5")
                await until_loading(staging)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        store = load_config(path).store
        with sqlite3.connect(store) as db:  # what the dead process left: a release deploying, its lock
            assert db.execute("SELECT state FROM releases WHERE version = 'v5'").fetchone() == ("deploying",)
            assert db.execute("SELECT holder FROM locks").fetchall() == [("U0ALICE",)]
            n1 = db.execute("SELECT triton_version FROM environments WHERE env = 'staging'").fetchone()[0]

        second, url = await serve(path, slack)
        try:
            told = await slack.wait_for(lambda: text_of(slack, "<@U0ALICE> was deploying v5 on ranker staging"), timeout=120)
            assert "lock released" in told and f"Serving now: {staging.url}: v{n1}" in told
            assert await serving([staging]) == {staging.url: [n1]}  # the record, not the load that finished alone
            with sqlite3.connect(store) as db:
                assert db.execute("SELECT state FROM releases WHERE version = 'v5'").fetchone() == ("interrupted",)
                assert db.execute("SELECT * FROM locks").fetchall() == []
            async with SlackEventsClient(f"{url}/slack/events", SECRET, slack) as client:
                await client.command("U0ALICE", "deploy ranker v2")  # staging takes operations again
                await slack.wait_for(lambda: text_of(slack, "ranker v2 staging: verified"), timeout=120)
        finally:
            second.terminate()
            second.wait(timeout=30)
    verified = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(path), "audit", "verify"],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
