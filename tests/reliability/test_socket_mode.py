"""Socket Mode, the default transport: `mlops-bot serve` as a real process with SLACK_APP_TOKEN set, its
WebSocket to the Slack emulator, and Slack's half of the protocol (envelopes, acks, retries, disconnects)
played by bot/sandbox/socket_mode.py. Every envelope must run exactly once: not lost across a refresh, a
dropped connection or a bot too slow to ack, and not run twice when Slack redelivers it to the same or
another process.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.socket_mode import SocketModeEventsClient
from tests.conftest import ROOT, write_config
from tests.e2e.test_serve import free_port

BOT_TOKEN = "xoxb-socket"
APP_TOKEN = "xapp-1-A0SANDBOX-1-socketmodetest"
SIGNING_SECRET = "socket-signing-secret"
HELP_TOPICS = ["deploy", "verify", "promote", "reject", "rollback", "status", "models", "lock", "unlock", "retrain"]


class Served:
    """One `mlops-bot serve` process in Socket Mode; its output goes to a file for when a test fails."""

    def __init__(self, config: Path, slack: SlackEmulator, log: Path) -> None:
        self.config, self.slack, self.log = config, slack, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "SLACK_APP_TOKEN": APP_TOKEN, "SLACK_API_URL": self.slack.api_url}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "--config", str(self.config), "serve", "--host", "127.0.0.1",
                 "--port", str(self.port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlops-bot serve exited {self.proc.returncode}:\n{self.output()}")
                await asyncio.sleep(0.1)
        raise RuntimeError(f"mlops-bot serve never answered /healthz:\n{self.output()}")

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    async def stop(self) -> int | None:
        """SIGTERM, waiting without blocking the loop: the emulator must answer the bot's goodbye."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.resume()
        self.proc.terminate()
        deadline = time.monotonic() + 40
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def slack() -> AsyncIterator[SlackEmulator]:
    emulator = SlackEmulator(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, app_token=APP_TOKEN)
    assert emulator.socket_mode is not None
    # Slack's retries come at once, after a minute and after five; seconds here, the same shape.
    emulator.socket_mode.retry_delays = (0.0, 1.0, 2.0)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mlops-bot.db"


StartBot = Callable[[], Awaitable[Served]]


@pytest.fixture
async def serve(slack: SlackEmulator, tmp_path: Path) -> AsyncIterator[StartBot]:
    """`await serve()` starts one more bot process on the same config and store, connected over the socket."""
    config = write_config(tmp_path)
    running: list[Served] = []

    async def start() -> Served:
        bot = Served(config, slack, tmp_path / f"serve-{len(running) + 1}.log")
        running.append(bot)
        await bot.start()
        assert slack.socket_mode is not None
        await slack.socket_mode.wait_for_connections(len(running), timeout=30)
        return bot

    yield start
    for bot in running:
        await bot.stop()


@pytest.fixture
async def client(slack: SlackEmulator) -> AsyncIterator[SocketModeEventsClient]:
    async with SocketModeEventsClient(slack) as c:
        yield c


def audit_rows(db: Path, verb: str | None = None) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM actions" + (" WHERE verb = ?" if verb else "") + " ORDER BY id"
        return [dict(r) for r in conn.execute(sql, (verb,) if verb else ())]
    finally:
        conn.close()


async def rows_for(db: Path, keys: list[str], verb: str, timeout: float = 10) -> Counter[str]:
    """How many `verb` rows each delivery key has, once every key has one (rows are group-committed)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = Counter(r["key"] for r in audit_rows(db, verb) if r["key"] in keys)
        if set(counts) >= set(keys) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.05)


def ack_answers(slack: SlackEmulator, user: str) -> list[str]:
    return [e["text"] for e in slack.ephemerals if e["source"] == "socket_mode_ack" and e["user"] == user]


async def test_a_slash_command_runs_over_the_socket_and_its_ack_carries_the_answer(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    await serve()
    [conn] = slack.socket_mode.open_connections
    assert slack.calls_to("apps.connections.open")[-1].ok  # with the xapp- token, in the Authorization header

    help_ = await client.command("U0ALICE", "help")

    assert help_.status == 200
    envelope = help_.envelope
    assert envelope.type == "slash_commands" and envelope.accepts_response_payload
    assert [(a.connection, a.retry_attempt, a.retry_reason) for a in envelope.attempts] == [(conn.id, 0, "")]
    assert [a.connection for a in envelope.acks] == [conn.id]
    assert help_.json()["response_type"] == "ephemeral"
    # The ack's payload is the command's answer, shown to the user as Slack shows it.
    [shown] = ack_answers(slack, "U0ALICE")
    assert "/mlops deploy &lt;model&gt;" in shown and "/mlops help &lt;verb&gt;" in shown
    assert (await rows_for(store, [help_.trigger_id], "help")) == {help_.trigger_id: 1}

    lock = await client.command("U0ALICE", 'lock ranker prod reason="socket mode drill"')

    assert lock.status == 200 and lock.body == ""  # acked at once; the answer comes as a post
    posted = await slack.wait_for(lambda: [m for m in slack.messages("C0MLOPS") if "is locked by <@U0ALICE>" in m["text"]])
    assert len(posted) == 1 and "socket mode drill" in posted[0]["text"]
    assert (await rows_for(store, [lock.trigger_id], "lock")) == {lock.trigger_id: 1}
    [locked] = [r for r in audit_rows(store, "lock") if r["status"] == "succeeded"]
    assert (locked["actor"], locked["model"], locked["env"]) == ("U0ALICE", "ranker", "prod")


async def test_a_button_press_runs_over_the_socket(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    await serve()
    await client.command("U0ALICE", "retrain ranker epochs=500")
    card = await slack.wait_for(lambda: next(
        (m for m in slack.messages("C0MLOPS") if "Retrain ranker" in m["text"] and "Cancel" in json.dumps(m["blocks"])),
        None), timeout=20)

    press = await client.press_button("U0BOB", "C0MLOPS", card["ts"], "Cancel")

    assert press.status == 200 and press.body == ""
    assert press.envelope.type == "interactive" and not press.envelope.accepts_response_payload
    assert press.envelope.payload["type"] == "block_actions"
    try:
        await slack.wait_for(lambda: "Cancelled by <@U0BOB>" in json.dumps(slack.find_message("C0MLOPS", card["ts"])),
                             timeout=20)
    except TimeoutError:
        raise AssertionError(f"not cancelled; told {[e['text'] for e in slack.ephemerals]}") from None
    assert (await rows_for(store, [press.trigger_id], "retrain.cancel")) == {press.trigger_id: 1}
    assert [r["actor"] for r in audit_rows(store, "retrain") if r["status"] == "cancelled"] == ["U0BOB"]


async def test_a_refresh_reconnects_without_losing_or_repeating_an_envelope(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    await serve()
    [old] = slack.socket_mode.open_connections

    # Envelopes sent before, during and after Slack asks the bot to move to a new connection.
    early = [asyncio.create_task(client.command("U0CAROL", f"help {t}")) for t in HELP_TOPICS[:3]]
    await asyncio.sleep(0)
    await slack.socket_mode.disconnect("refresh_requested", old)
    late = [asyncio.create_task(client.command("U0CAROL", f"help {t}")) for t in HELP_TOPICS[3:]]
    deliveries = await asyncio.gather(*early, *late)

    [new] = await slack.socket_mode.wait_for_connections(1)
    assert new.id != old.id and old.closed is not None
    assert [d.status for d in deliveries] == [200] * len(HELP_TOPICS)
    keys = [d.trigger_id for d in deliveries]
    assert (await rows_for(store, keys, "help")) == {k: 1 for k in keys}
    assert len(ack_answers(slack, "U0CAROL")) == len(HELP_TOPICS)
    # Nothing was sent on the old connection once it was told to go.
    assert old.disconnected is not None
    assert not [a for e in slack.socket_mode.envelopes for a in e.attempts
                if a.connection == old.id and a.at > old.disconnected]


async def test_a_dropped_connection_reconnects_without_losing_or_repeating_an_envelope(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    await serve()
    [old] = slack.socket_mode.open_connections

    await slack.socket_mode.drop(old)  # no disconnect, no close frame: the network just went away
    deliveries = await asyncio.gather(*(client.command("U0CAROL", f"help {t}") for t in HELP_TOPICS[:4]))

    [new] = await slack.socket_mode.wait_for_connections(1)
    assert new.id != old.id
    assert [d.status for d in deliveries] == [200] * 4, [d.envelope.attempts for d in deliveries]
    keys = [d.trigger_id for d in deliveries]
    assert (await rows_for(store, keys, "help")) == {k: 1 for k in keys}
    assert len(ack_answers(slack, "U0CAROL")) == 4


async def test_a_redelivered_envelope_runs_once(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    await serve()
    lock = await client.command("U0ALICE", "lock ranker staging")

    again = await client.redeliver(lock, retry_num=1, reason="timeout")  # Slack never saw the first ack

    assert again.status == 200 and again.body == ""
    assert [(a.retry_attempt, a.retry_reason) for a in lock.envelope.attempts] == [(0, ""), (1, "timeout")]
    assert len(lock.envelope.acks) == 2
    assert (await rows_for(store, [lock.trigger_id], "lock")) == {lock.trigger_id: 1}
    await asyncio.sleep(0.5)  # time for a second run to post, were there one
    assert len([m for m in slack.messages("C0MLOPS") if "ranker staging is locked" in m["text"]]) == 1

    # A retry whose first attempt never reached the bot is new to it: it runs, once.
    first_seen = await client.command("U0BOB", "help lock", retry_num=2)
    assert first_seen.status == 200 and "lock &lt;model&gt;" in first_seen.json()["text"]
    assert (await rows_for(store, [first_seen.trigger_id], "help")) == {first_seen.trigger_id: 1}


async def test_an_unacked_envelope_is_redelivered_and_runs_once(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    bot = await serve()
    bot.pause()  # a bot stalled past Slack's 3 s (a long GC pause, a starved CPU)
    try:
        pending = asyncio.create_task(client.command("U0ALICE", 'lock ranker prod reason="stalled bot"'))
        envelope = await slack.wait_for(lambda: next(iter(slack.socket_mode.envelopes), None))
        await slack.wait_for(lambda: len(envelope.attempts) >= 2, timeout=10)
    finally:
        bot.resume()
    lock = await pending

    assert lock.status == 200
    assert [(a.retry_attempt, a.retry_reason) for a in envelope.attempts[:2]] == [(0, ""), (1, "timeout")]
    assert envelope.attempts[1].at - envelope.attempts[0].at >= slack.socket_mode.ack_timeout
    assert (await rows_for(store, [lock.trigger_id], "lock")) == {lock.trigger_id: 1}
    await asyncio.sleep(0.5)
    assert len([m for m in slack.messages("C0MLOPS") if "ranker prod is locked" in m["text"]]) == 1


async def test_two_bot_processes_share_the_envelopes_and_each_runs_once(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    first, _ = await serve(), await serve()
    conns = slack.socket_mode.open_connections
    assert len(conns) == 2

    deliveries = await asyncio.gather(*(client.command("U0CAROL", f"help {t}") for t in HELP_TOPICS))

    assert [d.status for d in deliveries] == [200] * len(HELP_TOPICS)
    keys = [d.trigger_id for d in deliveries]
    assert (await rows_for(store, keys, "help")) == {k: 1 for k in keys}
    assert all(c.received for c in conns), "every connection should have had some of the envelopes"

    # One process stalls with an envelope; Slack's retry goes to the other, which runs it. When the first
    # wakes up it reads the original too, and must not run it again.
    stalled = conns[0]  # the first process's: it connected before the second started
    first.pause()
    try:
        client.connection = stalled
        lock = await client.command("U0ALICE", 'lock ranker prod reason="two bots"')
    finally:
        client.connection = None
        first.resume()
    assert lock.status == 200
    attempts = [a.connection for a in lock.envelope.attempts]
    assert attempts[0] == stalled.id and conns[1].id in attempts[1:], attempts
    # The woken process read what waited for it, and acked each copy.
    await slack.wait_for(lambda: len(lock.envelope.acks) >= len(lock.envelope.attempts), timeout=10)
    assert (await rows_for(store, [lock.trigger_id], "lock")) == {lock.trigger_id: 1}
    await asyncio.sleep(0.5)
    assert len([m for m in slack.messages("C0MLOPS") if "ranker prod is locked" in m["text"]]) == 1


async def test_requests_over_the_socket_are_counted_in_metrics(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient,
) -> None:
    bot = await serve()
    await client.command("U0ALICE", "help")
    async with aiohttp.ClientSession() as http, http.get(f"{bot.url}/metrics") as resp:
        text = await resp.text()
    assert 'mlops_slack_requests_total{kind="command",status="200"} 1.0' in text
    assert "mlops_ack_latency_seconds_count 1.0" in text


async def test_an_app_token_slack_refuses_stops_serve_with_one_line(slack: SlackEmulator, tmp_path: Path) -> None:
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "SLACK_API_URL": slack.api_url}
    command = [sys.executable, "-m", "bot.cli", "--config", str(write_config(tmp_path)), "serve", "--host",
               "127.0.0.1", "--port", str(free_port())]
    for token, error in (("xapp-1-A0SANDBOX-1-revoked", "invalid_auth"), (BOT_TOKEN, "not_allowed_token_type")):
        proc = await asyncio.create_subprocess_exec(*command, env={**env, "SLACK_APP_TOKEN": token}, cwd=ROOT,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"serve kept running with an app token Slack refuses ({error})") from None
        assert proc.returncode == 2, (out, err)
        lines = [line for line in err.decode().splitlines() if "apscheduler" not in line and "As you gave" not in line]
        assert lines == [f"mlops-bot serve: Slack refused SLACK_APP_TOKEN for Socket Mode ({error}); set an "
                         "app-level token (xapp-) with connections:write (see README: Slack app)"]
    assert not slack.socket_mode.connections and not slack.calls_to("chat.postMessage")


async def healthz_until(bot: Served, status: int, timeout: float = 40) -> dict:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{bot.url}/healthz") as resp:
                if resp.status == status:
                    return await resp.json()
            assert time.monotonic() < deadline, f"/healthz never answered {status}"
            await asyncio.sleep(0.5)


async def test_socket_mode_turned_off_and_on_again(
    slack: SlackEmulator, serve: StartBot, client: SocketModeEventsClient, store: Path,
) -> None:
    bot = await serve()
    await slack.socket_mode.disconnect("link_disabled")
    await slack.wait_for(lambda: not slack.socket_mode.open_connections and
                         len(slack.calls_to("apps.connections.open")) >= 3)  # it keeps asking, and is refused
    # Still up and answering, and saying it cannot hear Slack once a reconnect would have been done.
    unhealthy = await healthz_until(bot, 503)
    assert unhealthy["socket_mode_connected"] is False and "no Socket Mode connection" in unhealthy["reason"]

    slack.socket_mode.enable()

    await slack.socket_mode.wait_for_connections(1, timeout=30)  # the client retries once per ping interval
    assert (await healthz_until(bot, 200))["socket_mode_connected"] is True
    help_ = await client.command("U0ALICE", "help lock")
    assert help_.status == 200 and "lock &lt;model&gt;" in help_.json()["text"]
    assert (await rows_for(store, [help_.trigger_id], "help")) == {help_.trigger_id: 1}


async def test_an_event_runs_over_the_socket(slack: SlackEmulator, serve: StartBot,
                                             client: SocketModeEventsClient) -> None:
    await serve()

    opened = await client.home_opened("U0ALICE")

    assert opened.status == 200 and opened.body == ""
    assert opened.envelope.type == "events_api" and not opened.envelope.accepts_response_payload
    await slack.wait_for(lambda: "U0ALICE" in slack.home, timeout=15)  # the App Home was published


async def test_the_emulator_takes_the_app_token_only_where_slack_does(slack: SlackEmulator) -> None:
    async def call(method: str, token: str, *, in_header: bool = True) -> dict:
        async with aiohttp.ClientSession() as http:
            kwargs = {"headers": {"Authorization": f"Bearer {token}"}} if in_header else {"data": {"token": token}}
            async with http.post(f"{slack.api_url}{method}", **kwargs) as resp:
                return await resp.json()

    opened = await call("apps.connections.open", APP_TOKEN)
    assert opened["ok"] and opened["url"].startswith(f"ws://{slack.url.removeprefix('http://')}/link/?ticket=")
    assert (await call("apps.connections.open", APP_TOKEN, in_header=False))["error"] == "not_authed"
    assert (await call("apps.connections.open", BOT_TOKEN))["error"] == "not_allowed_token_type"
    assert (await call("chat.postMessage", APP_TOKEN))["error"] == "not_allowed_token_type"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(opened["url"]) as ws:
            hello = await ws.receive_json()
            assert hello["type"] == "hello" and hello["connection_info"]["app_id"] == "A0SANDBOX"
        with pytest.raises(aiohttp.WSServerHandshakeError):  # a URL is good for one connection
            await http.ws_connect(opened["url"])
