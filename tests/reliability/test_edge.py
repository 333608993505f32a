"""The Slack edge under garbage (issue 18, items 3, 4, 6, 8 and 11): unsigned and malformed requests, signed
payloads in shapes Slack never sends, floods of forged requests, unknown action ids and verbs, a replayed
delivery without a trigger id, and a datagen record nested 50,000 deep.

The whole bot runs on loopback against the Slack emulator; every request is real HTTP, signed (or not) the way
Slack signs. Each answer is a 400 or 401, never a 500; no traceback reaches the log at ERROR or Slack; what was
refused is in the audit log in summary (one row per source and reason per window, with a count).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from bot.config import Secrets, load_config
from bot.sandbox.local import LocalBot, local_bot
from tests.conftest import Clock, write_config

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
HOOK_SECRET = "hook-secret"


@pytest.fixture
async def bot(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    config = load_config(write_config(tmp_path))
    # Fast pacing: refusals are answered by ephemeral, and hundreds of them must not queue behind 1 post/s.
    async with local_bot(config, clock=Clock(), post_rate=1000, post_burst=1000,
                         secrets=Secrets(datagen_hook_secret=HOOK_SECRET)) as running:
        yield running


def no_tracebacks(bot: LocalBot, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at ERROR, no traceback in the log at any level, none in anything sent to Slack."""
    loud = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, loud
    in_log = "Traceback" in caplog.text
    assert not in_log, "a traceback in the log"
    in_slack = "Traceback" in json.dumps([bot.slack.all_messages(), bot.slack.ephemerals, bot.slack.responses])
    assert not in_slack, "a traceback sent to Slack"


def interaction(payload: dict) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


async def send_signed(bot: LocalBot, body: bytes, content_type: str = FORM, **headers: str):
    return await bot.client.send_raw(body, {**bot.client.sign(body), **headers}, content_type)


def rows(bot: LocalBot, verb: str | None = None, status: str | None = None) -> list[dict]:
    return [r for r in bot.runtime.store.actions()
            if (verb is None or r["verb"] == verb) and (status is None or r["status"] == status)]


def ran(bot: LocalBot) -> list[dict]:
    """Audit rows of anything a request started (the bot's own start-up rows are by mlops-bot)."""
    return [r for r in rows(bot) if r["verb"] != "slack.request" and r["actor"] != "mlops-bot"]


def answered(bot: LocalBot) -> list:
    """What the bot said to people: ephemerals, response_url answers, modals, DMs."""
    dms = [m for m in bot.slack.all_messages() if str(m.get("channel", "")).startswith("D")]
    return [*bot.slack.ephemerals, *bot.slack.responses, *bot.slack.views, *dms]


def refusals(bot: LocalBot) -> dict[str, int]:
    """reason → count over the summary rows of refused Slack requests (after a flush)."""
    counts: dict[str, int] = {}
    for r in rows(bot, "slack.request", "rejected"):
        counts[r["detail"]["reason"]] = counts.get(r["detail"]["reason"], 0) + r["detail"]["count"]
    return counts


async def metrics(bot: LocalBot) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{bot.url}/metrics") as resp:
        return await resp.text()


# --- item 3: unsigned garbage ------------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", ["", "abc", "1.7e9", "²", " 1700000000", "+1700000000", "9" * 40])
async def test_a_timestamp_that_is_no_number_is_401_not_500(bot: LocalBot, caplog, timestamp: str) -> None:
    body = urlencode({"command": "/mlops", "text": "help", "user_id": "U0ALICE", "channel_id": "C0MLOPS"}).encode()
    headers = {**bot.client.sign(body), "X-Slack-Request-Timestamp": timestamp}
    delivery = await bot.client.send_raw(body, headers)
    assert delivery.status == 401, delivery.body
    bot.runtime.rejections.flush()
    [row] = rows(bot, "slack.request", "rejected")
    assert row["detail"]["count"] == 1 and row["detail"]["source"] == "127.0.0.1"
    assert row["detail"]["reason"] in {"malformed timestamp", "unsigned (no signature or timestamp)", "stale timestamp"}
    no_tracebacks(bot, caplog)


async def test_unsigned_bodies_that_are_no_form_or_json_are_401(bot: LocalBot, caplog) -> None:
    bodies = [(b"\xff\xfe\x00garbage", "application/octet-stream"), (b"{not json", JSON), (b"[1, 2]", JSON),
              (b'"a string"', JSON), (b"payload=%7Bnot", FORM), (b"{" * 5000, JSON)]
    stamp = str(int(time.time()))
    for body, content_type in bodies:
        forged = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + "0" * 64}
        assert (await bot.client.send_raw(body, forged, content_type)).status == 401
    bot.runtime.rejections.flush()
    assert refusals(bot) == {"bad signature": len(bodies)}
    no_tracebacks(bot, caplog)


async def test_signed_bodies_that_are_no_slack_payload_are_400(bot: LocalBot, caplog) -> None:
    deep = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    bodies = [(b"\xff\xfe\x00garbage", "application/octet-stream"), (b"{not json", JSON), (b"[1, 2]", JSON),
              (b'"a string"', JSON), (b"payload=%7Bnot", FORM), (b"payload=%5B%5D", FORM), (deep, JSON),
              (urlencode({"payload": "[" * 50_000}).encode(), FORM)]
    for body, content_type in bodies:
        delivery = await send_signed(bot, body, content_type)
        assert delivery.status == 400, (body[:30], delivery.status, delivery.body)
    bot.runtime.rejections.flush()
    assert refusals(bot) == {"body is not a Slack payload (form or JSON object)": len(bodies)}
    assert ran(bot) == [] and answered(bot) == []  # nothing ran
    no_tracebacks(bot, caplog)


# --- items 3 and 6: signed payloads in shapes Slack never sends -------------------------------------------

PRESS = {"type": "block_actions", "user": {"id": "U0ALICE"}, "trigger_id": "t.1", "channel": {"id": "C0MLOPS"},
         "container": {"type": "message", "message_ts": "1.000001", "channel_id": "C0MLOPS"},
         "actions": [{"action_id": "release.verify", "value": '{"release": 1}', "type": "button"}]}
SUBMIT = {"type": "view_submission", "user": {"id": "U0CAROL"}, "trigger_id": "t.2",
          "view": {"type": "modal", "callback_id": "release.urgent", "private_metadata": '{"release": 1}',
                   "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": "hotfix now"}}}}}}
HOME = {"type": "event_callback", "event_id": "Ev1", "team_id": "T0SANDBOX",
        "event": {"type": "app_home_opened", "user": "U0ALICE", "tab": "home"}}


def without(payload: dict, *path: str) -> dict:
    copy = json.loads(json.dumps(payload))
    node = copy
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return copy


def replaced(payload: dict, value, *path: str | int) -> dict:
    copy = json.loads(json.dumps(payload))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


MALFORMED = {
    "press without user": (interaction(without(PRESS, "user")), FORM, "block_actions"),
    "press with empty actions": (interaction(replaced(PRESS, [], "actions")), FORM, "block_actions"),
    "press with actions not a list": (interaction(replaced(PRESS, {"action_id": "x"}, "actions")), FORM, "block_actions"),
    "press by user id 5": (interaction(replaced(PRESS, 5, "user", "id")), FORM, "block_actions"),
    "press with user a string": (interaction(replaced(PRESS, "U0ALICE", "user")), FORM, "block_actions"),
    "press with a numeric action id": (interaction(replaced(PRESS, 7, "actions", 0, "action_id")), FORM, "block_actions"),
    "press with a numeric value": (interaction(replaced(PRESS, 1, "actions", 0, "value")), FORM, "block_actions"),
    "submission without user": (interaction(without(SUBMIT, "user")), FORM, "view_submission"),
    "submission without view type": (interaction(without(SUBMIT, "view", "type")), FORM, "view_submission"),
    "submission with a numeric input": (interaction(replaced(SUBMIT, 5, "view", "state", "values", "reason", "reason", "value")),
                                        FORM, "view_submission"),
    "command without user_id": (urlencode({"command": "/mlops", "text": "lock ranker prod", "channel_id": "C0MLOPS",
                                           "trigger_id": "t.3"}).encode(), FORM, "command"),
    "command as JSON with a numeric user": (json.dumps({"command": "/mlops", "text": "lock ranker prod", "user_id": 5,
                                                        "channel_id": "C0MLOPS", "trigger_id": "t.4"}).encode(), JSON, "command"),
    "home opened without user": (json.dumps(without(HOME, "event", "user")).encode(), JSON, "event_callback"),
    "home opened by user 5": (json.dumps(replaced(HOME, 5, "event", "user")).encode(), JSON, "event_callback"),
    "event without its event": (json.dumps(without(HOME, "event")).encode(), JSON, "event_callback"),
    # Bolt reads this one while it builds the request's context: it is no payload at all to it.
    "event that is a number": (json.dumps(replaced(HOME, 5, "event")).encode(), JSON, None),
}


async def test_signed_payloads_in_shapes_slack_never_sends_are_400_and_run_nothing(bot: LocalBot, caplog) -> None:
    for name, (body, content_type, _kind) in MALFORMED.items():
        delivery = await send_signed(bot, body, content_type)
        assert delivery.status == 400, (name, delivery.status, delivery.body)
    await asyncio.sleep(0.2)  # anything a listener had spawned would have started
    bot.runtime.rejections.flush()
    counted = refusals(bot)
    expected: dict[str, int] = {}
    for _, _, kind in MALFORMED.values():
        reason = f"malformed {kind} payload" if kind else "body is not a Slack payload (form or JSON object)"
        expected[reason] = expected.get(reason, 0) + 1
    assert counted == expected
    # Where the first one of each went wrong is kept, never what was sent.
    examples = " ".join(r["detail"]["example"] for r in rows(bot, "slack.request", "rejected"))
    assert "user: missing" in examples and not {"U0ALICE", "hotfix", "ranker"} & set(examples.split())
    body, content_type, _ = MALFORMED["press by user id 5"]
    assert (await send_signed(bot, body, content_type)).status == 400
    bot.runtime.rejections.flush()
    assert rows(bot, "slack.request", "rejected")[-1]["detail"]["example"] == "user.id: string_type"
    # Nothing ran and nothing was stored as something else than it was sent: no row by '5', no claimed press.
    assert ran(bot) == [] and answered(bot) == []
    assert bot.runtime.store.query("SELECT * FROM presses") == []
    assert bot.runtime.store.verify_chain() is None
    no_tracebacks(bot, caplog)


async def test_a_submission_naming_a_missing_release_is_refused_before_its_ack(bot: LocalBot, caplog) -> None:
    missing = replaced(SUBMIT, '{"release": 999}', "view", "private_metadata")
    assert (await send_signed(bot, interaction(missing))).status == 400
    other_model = replaced(replaced(SUBMIT, "release.rollback", "view", "callback_id"), "t.other", "trigger_id")
    other_model = replaced(other_model, '{"model": "nosuch", "env": "prod"}', "view", "private_metadata")
    assert (await send_signed(bot, interaction(other_model))).status == 400
    await asyncio.sleep(0.2)
    urgent, rollback = rows(bot, "view.release.urgent"), rows(bot, "view.release.rollback")
    assert [(r["actor"], r["status"]) for r in urgent + rollback] == [("U0CAROL", "invalid")] * 2
    assert "release 999 does not exist" in urgent[0]["detail"]["error"]
    assert not rows(bot, "promote") and not rows(bot, "rollback")
    assert answered(bot) == []  # no DM, no modal: nothing ran
    no_tracebacks(bot, caplog)


# --- item 4: amplification ---------------------------------------------------------------------------------


async def test_a_flood_of_forged_requests_is_logged_without_bodies_and_audited_once(bot: LocalBot, caplog) -> None:
    stale_url = "https://hooks.slack.com/actions/T0SANDBOX/000/forgedResponseUrlToken"
    payload = {**PRESS, "response_url": stale_url, "padding": "x" * 200_000}
    body = interaction(payload)
    assert len(body) > 200_000
    stamp = str(int(time.time()))
    forged = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + "1" * 64}
    for _ in range(10):  # 200 requests, 20 at a time
        answers = await asyncio.gather(*(bot.client.send_raw(body, forged) for _ in range(20)))
        assert {a.status for a in answers} == {401}
    # Booleans first: pytest would otherwise diff megabytes of log when one fails.
    log = caplog.text
    bodies_logged = stale_url in log or "padding" in log
    assert not bodies_logged, "the refused bodies are in the log"
    assert len(log) < 20_000, f"{len(log)} bytes of log for 200 refusals"
    assert len([r for r in caplog.records if "refused a Slack request" in r.getMessage()]) == 1
    assert rows(bot, "slack.request") == []  # counted in memory until the window closes
    bot.runtime.rejections.flush()
    [row] = rows(bot, "slack.request", "rejected")
    assert row["actor"] == "unknown"
    assert {k: row["detail"][k] for k in ("source", "reason", "count")} == {
        "source": "127.0.0.1", "reason": "bad signature", "count": 200}
    assert stale_url not in json.dumps(row)
    no_tracebacks(bot, caplog)


async def test_the_summary_row_is_written_when_its_window_closes(bot: LocalBot, caplog) -> None:
    bot.runtime.rejections.window = 0.5
    body = interaction(PRESS)
    for _ in range(3):
        assert (await bot.client.send_raw(body, bot.client.sign(body, int(time.time()) - 600))).status == 401
    future = int(time.time()) + 600
    assert (await bot.client.send_raw(body, bot.client.sign(body, future))).status == 401
    assert refusals(bot) == {}
    await bot.slack.wait_for(lambda: refusals(bot), timeout=5)
    assert refusals(bot) == {"stale timestamp": 3, "timestamp in the future": 1}
    # The next window starts afresh.
    assert (await bot.client.send_raw(body, bot.client.sign(body, future))).status == 401
    await bot.slack.wait_for(lambda: len(rows(bot, "slack.request")) == 3, timeout=5)
    assert refusals(bot)["timestamp in the future"] == 2
    no_tracebacks(bot, caplog)


# --- item 8: bounded metrics labels ------------------------------------------------------------------------


async def test_unknown_action_ids_verbs_forms_and_kinds_count_under_one_label(bot: LocalBot, caplog) -> None:
    async def burst(make, ids: range = range(250)) -> None:
        for start in range(ids.start, ids.stop, 50):
            answers = await asyncio.gather(*(send_signed(bot, *make(i)) for i in range(start, min(start + 50, ids.stop))))
            assert {a.status for a in answers} <= {200, 400, 404}, {a.status for a in answers}

    def press(i: int):
        return (interaction(replaced(replaced(PRESS, f"evil.{i}", "actions", 0, "action_id"), f"t.p{i}", "trigger_id")), FORM)

    def submit(i: int):
        return (interaction(replaced(replaced(SUBMIT, f"evil.{i}", "view", "callback_id"), f"t.v{i}", "trigger_id")), FORM)

    def command(i: int):
        return (urlencode({"command": "/mlops", "text": f"evil{i} now", "user_id": "U0ALICE", "channel_id": "C0MLOPS",
                           "trigger_id": f"t.c{i}", "response_url": ""}).encode(), FORM)

    def kind(i: int):
        return (json.dumps({"type": f"evil_{i}", "trigger_id": f"t.k{i}"}).encode(), JSON)

    for make in (press, submit, command, kind):  # one of each first, so every series that may exist does
        await burst(make, range(1000, 1001))
    before = await metrics(bot)
    for make in (press, submit, command, kind):
        await burst(make)
    after = await metrics(bot)
    assert "evil" not in after
    assert len(after.splitlines()) - len(before.splitlines()) <= 4, "a label per unknown id"
    assert 'mlops_actions_total{status="invalid",verb="button.unknown"} 251.0' in after
    assert 'mlops_actions_total{status="invalid",verb="view.unknown"} 251.0' in after
    assert 'mlops_actions_total{status="invalid",verb="unknown"} 251.0' in after
    assert 'mlops_slack_requests_total{kind="unhandled",status="404"} 251.0' in after
    # The ids themselves are in the audit rows, where an investigator looks, not in /metrics.
    assert {r["detail"]["action_id"] for r in rows(bot, "button.unknown")} == {f"evil.{i}" for i in [*range(250), 1000]}
    no_tracebacks(bot, caplog)


# --- item 11: a delivery without a trigger id, replayed ----------------------------------------------------


async def test_a_replayed_press_without_a_trigger_id_runs_once(bot: LocalBot, caplog) -> None:
    day = date(2026, 11, 24)
    await bot.runtime.datagen.ingest("recsys", day, "{not json", "the job's output", actor="datagen")
    alert = await bot.slack.wait_for(lambda: next((m for m in bot.slack.messages("C0ERROR")
                                                   if m["text"].startswith(f"datagen recsys {day}")), None))
    ack = next(e for b in alert["blocks"] if b["type"] == "actions" for e in b["elements"] if e.get("action_id") == "datagen.ack")
    payload = replaced(PRESS, [{"type": "button", "action_id": "datagen.ack", "value": ack["value"]}], "actions")
    payload = replaced(replaced(payload, "C0ERROR", "channel", "id"), {"type": "message", "message_ts": alert["ts"],
                                                                     "channel_id": "C0ERROR"}, "container")
    del payload["trigger_id"]
    body = interaction(payload)
    captured = bot.client.sign(body)
    first = await bot.client.send_raw(body, captured)
    again = await bot.client.send_raw(body, captured)  # the same bytes and signature, within the 5 minutes
    assert (first.status, again.status) == (200, 200)
    await bot.slack.wait_for(lambda: rows(bot, "datagen.ack", "accepted"))
    await asyncio.sleep(0.3)
    assert len(rows(bot, "datagen.ack", "accepted")) == 1
    assert 'mlops_slack_requests_total{kind="duplicate",status="200"} 1.0' in await metrics(bot)
    no_tracebacks(bot, caplog)


# --- item 3: the datagen hook's body nested 50,000 deep ----------------------------------------------------


async def test_a_datagen_record_nested_50000_deep_is_unreadable_not_a_500(bot: LocalBot, caplog) -> None:
    body = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    query, stamp = "job=recsys&date=2026-11-24", str(int(time.time()))
    signed = f"v1\n{stamp}\nPOST\n/hooks/datagen\n{query}\n".encode() + body
    headers = {"X-Datagen-Timestamp": stamp,
               "X-Datagen-Signature": "v1=" + hmac.new(HOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bot.url}/hooks/datagen?{query}", data=body, headers=headers) as resp:
            assert resp.status == 422, await resp.text()
            assert "nested too deeply" in (await resp.json())["error"]
    [row] = rows(bot, "datagen.ingest", "unreadable")
    assert row["detail"]["reason"] == "unreadable JSON: nested too deeply"
    no_tracebacks(bot, caplog)


@pytest.mark.parametrize("stamp", ["²", "", "1.7e9", "١٧٠٠٠٠٠٠٠٠"])
async def test_a_datagen_timestamp_that_is_no_ascii_number_is_401_not_500(bot: LocalBot, caplog, stamp: str) -> None:
    body, query = b"{}", "job=recsys&date=2026-11-24"
    headers = {"X-Datagen-Timestamp": stamp, "X-Datagen-Signature": "v1=" + "0" * 64}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bot.url}/hooks/datagen?{query}", data=body, headers=headers) as resp:
            assert resp.status == 401, await resp.text()
            assert "bad signature or timestamp" in (await resp.json())["error"]
    assert rows(bot, "datagen.hook", "rejected")
    assert bot.runtime.store.query("SELECT * FROM datagen_reports") == []
    no_tracebacks(bot, caplog)
