"""`mlops-bot serve` as a real process, driven by signed requests like Slack's, against the Slack emulator."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse

import aiohttp
import pytest

from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from bot.sandbox.tritonserver import free_port

SECRET = "e2e-signing-secret"
TOKEN = "xoxb-e2e"


@pytest.fixture(scope="module")
async def served(tmp_path_factory):
    from tests.conftest import write_config

    directory = tmp_path_factory.mktemp("serve")
    config = write_config(directory)
    slack = SlackEmulator(bot_token=TOKEN, signing_secret=SECRET)
    await slack.start()
    port = free_port()
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url}
    env.pop("SLACK_APP_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read())
            await asyncio.sleep(0.1)
    client = SlackEventsClient(f"{url}/slack/events", SECRET, slack)
    yield url, slack, client, directory / "mlops-bot.db"
    await client.close()
    proc.terminate()
    proc.wait(timeout=30)
    await slack.stop()


def rows_with(db, row: tuple, verb: str) -> list[tuple]:
    """The bot commits audit rows in groups at its loop's next turn, just after the ack: allow it a moment."""
    deadline = time.monotonic() + 5
    while row not in (rows := action_rows(db, verb)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return rows


def action_rows(db, verb: str | None = None) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT verb, status, actor FROM actions" + (" WHERE verb = ?" if verb else "")
        return conn.execute(sql, (verb,) if verb else ()).fetchall()
    finally:
        conn.close()


async def test_signed_help_is_answered_with_the_verbs(served):
    url, slack, client, db = served
    delivery = await client.command("U0ALICE", "help")
    assert delivery.status == 200
    body = delivery.json()
    assert body["response_type"] == "ephemeral"
    # Slack's mrkdwn needs < and > escaped, or it reads <model> as a link.
    assert "/mlops deploy &lt;model&gt;" in body["text"] and "/mlops help &lt;verb&gt;" in body["text"]
    assert ("help", "ok", "U0ALICE") in rows_with(db, ("help", "ok", "U0ALICE"), "help")


async def test_unknown_verb_gets_the_closest_verb(served):
    _, _, client, db = served
    delivery = await client.command("U0ALICE", "deplyo ranker")
    assert delivery.json()["text"] == "Unknown verb `deplyo`. Did you mean `deploy`? `/mlops help` lists the verbs."
    assert ("unknown", "invalid", "U0ALICE") in rows_with(db, ("unknown", "invalid", "U0ALICE"), "unknown")


async def test_bad_arguments_get_the_verbs_usage(served):
    _, _, client, _ = served
    delivery = await client.command("U0ALICE", "deploy nosuchmodel")
    text = delivery.json()["text"]
    assert "unknown model `nosuchmodel`; known models: ranker" in text and "Usage: `/mlops deploy &lt;model&gt;" in text


def _command_body(user: str, text: str, trigger: str) -> bytes:
    return urllib.parse.urlencode({"command": "/mlops", "text": text, "user_id": user, "channel_id": "C0MLOPS",
                                   "team_id": "T0SANDBOX", "trigger_id": trigger, "response_url": ""}).encode()


async def rejected_count(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('mlops_slack_requests_total{kind="rejected",status="401"}'))


async def test_forged_stale_and_replayed_requests_are_refused(served):
    url, _, client, db = served
    before = await rejected_count(url)
    body = _command_body("U0MALLORY", "help", "forged.1")
    forged = client.sign(body)
    forged["X-Slack-Signature"] = "v0=" + "0" * 64
    assert (await client.send_raw(body, forged)).status == 401
    stale = client.sign(body, timestamp=int(time.time()) - 6 * 60)
    assert (await client.send_raw(body, stale)).status == 401
    genuine = client.sign(_command_body("U0ALICE", "help", "replay.1"))
    replayed = _command_body("U0ALICE", "lock ranker prod", "replay.1")
    assert (await client.send_raw(replayed, genuine)).status == 401
    # Counted at once; audited in summary when the minute's window closes (tests/reliability/test_edge.py).
    assert await rejected_count(url) == before + 3
    # nothing ran: no row by the forger, and the replayed lock was never attempted
    assert not [r for r in action_rows(db) if r[2] == "U0MALLORY" or r[0] == "lock"]


async def test_a_slack_retry_is_acknowledged_and_processed_once(served):
    _, _, client, db = served
    first = await client.command("U0BOB", "help lock")
    again = await client.redeliver(first, retry_num=1)
    assert first.status == again.status == 200
    assert "lock &lt;model&gt; &lt;env&gt;" in first.json()["text"]
    assert again.body == ""
    rows_with(db, ("help", "ok", "U0BOB"), "help")
    assert [r for r in action_rows(db, "help") if r[2] == "U0BOB"] == [("help", "ok", "U0BOB")]


async def test_role_middleware_refuses_and_audits(served):
    _, _, client, db = served
    delivery = await client.command("U0DAVE", "promote ranker")
    text = delivery.json()["text"]
    assert "You need the *approvers* role" in text and "<@U0CAROL>" in text
    assert ("promote", "denied", "U0DAVE") in rows_with(db, ("promote", "denied", "U0DAVE"), "promote")


async def test_health_and_metrics(served):
    url, *_ = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["store_writable"] is True
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
    assert 'mlops_slack_requests_total{kind="command",status="200"}' in text
    assert "mlops_ack_latency_seconds_bucket" in text
    assert 'mlops_actions_total{status="ok",verb="help"}' in text
