"""Alertmanager intake end to end: webhook notifications over HTTP into the bot, messages in the Slack emulator."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Secrets, load_config
from bot.sandbox.local import BOT_TOKEN, local_bot
from bot.sandbox.render import render_message
from tests.conftest import Clock, write_config

CHANNEL = "C0ERROR"
TOKEN = "am-secret"


def notification(status: str, *, group: str = '{}:{alertname="RankerLatencyHigh"}', model: str = "ranker",
                 env: str = "prod") -> dict:
    labels = {"alertname": "RankerLatencyHigh", "severity": "critical", "model": model, "env": env}
    alert = {"status": status, "labels": {**labels, "instance": "triton-0:8000"},
             "annotations": {"summary": "ranker p99 latency above 250 ms"},
             "startsAt": "2026-11-20T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://prometheus:9090/graph", "fingerprint": "c0ffee"}
    return {
        "version": "4",
        "groupKey": group,
        "status": status,
        "receiver": "mlops-bot",
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": [alert],
    }


async def post(url: str, body: object, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, str) else json.dumps(body)
        async with session.post(f"{url}/hooks/alertmanager", data=data, headers=headers) as resp:
            return resp.status, await resp.json()


async def deliver(bot, body: dict) -> tuple[int, str]:
    """Post a notification and let the bot's queue post it; the answer's status and the group's stored state."""
    status, _ = await post(bot.url, body)
    await bot.runtime.hooks.settled()
    [(state,)] = bot.runtime.store.conn.execute("SELECT state FROM alerts WHERE key = ?", (body["groupKey"],)).fetchall()
    return status, state


def _text(message: dict) -> str:
    return render_message(message)


async def test_firing_then_resolved_edits_one_message_with_rollback_and_silence(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN), post_rate=100, post_burst=100) as bot:
        assert await deliver(bot, notification("firing")) == (200, "open")
        assert await deliver(bot, notification("firing")) == (200, "open")  # Alertmanager's repeat: no second post
        [card] = bot.slack.messages(CHANNEL)
        assert "*FIRING* · RankerLatencyHigh · ranker prod" in _text(card)
        labels = [e["text"]["text"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert labels == ["Roll back prod", "Silence 24h"]

        # Roll back opens the same rollback modal as the release card and `/mlops rollback`.
        await bot.client.press_button("U0ALICE", CHANNEL, card["ts"], "Roll back prod")
        view = (await bot.slack.wait_for(lambda: bot.slack.views))[-1]["view"]
        assert view["callback_id"] == "release.rollback"
        assert json.loads(view["private_metadata"])["model"] == "ranker"
        await bot.client.submit_view("U0ALICE", view, {"reason": {"reason": "latency incident"}})
        # Nothing was ever deployed in this test, so the rollback code answers with what to do.
        await bot.slack.wait_for(
            lambda: [m for m in bot.slack.messages("U0ALICE") if "nothing is deployed to ranker prod" in m["text"]]
        )

        assert await deliver(bot, notification("resolved")) == (200, "resolved")
        [card] = bot.slack.messages(CHANNEL)
        assert "*RESOLVED*" in _text(card) and "FIRING" not in _text(card)
        assert not [b for b in card["blocks"] if b["type"] == "actions"]  # nothing to press on a resolved alert
        assert len(bot.slack.calls_to("chat.update")) >= 1

        # Firing again later is news: a new message, while the resolved one stays as it was.
        assert await deliver(bot, notification("firing")) == (200, "open")
        old, new = bot.slack.messages(CHANNEL)
        assert "*RESOLVED*" in _text(old) and "*FIRING*" in _text(new) and new["ts"] != old["ts"]
        assert [e["text"]["text"] for b in new["blocks"] if b["type"] == "actions" for e in b["elements"]] == labels


async def test_silence_button_quietens_the_model_env(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN), post_rate=100, post_burst=100) as bot:
        await deliver(bot, notification("firing"))
        [card] = bot.slack.messages(CHANNEL)
        await bot.client.press_button("U0BOB", CHANNEL, card["ts"], "Silence 24h")
        await bot.slack.wait_for(lambda: "silenced by @U0BOB" in _text(bot.slack.messages(CHANNEL)[0]))
        # Another group for the same model and environment is stored, not posted, while the silence lasts.
        assert await deliver(bot, notification("firing", group='{}:{alertname="RankerErrors"}')) == (200, "silenced")
        assert len(bot.slack.messages(CHANNEL)) == 1
        assert [r["status"] for r in bot.runtime.store.actions() if r["verb"] == "alerts.silence"] == ["accepted", "ok"]


async def test_a_deleted_alert_message_is_posted_again_when_the_alert_changes(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN), post_rate=100, post_burst=100) as bot:
        await deliver(bot, notification("firing"))
        [card] = bot.slack.messages(CHANNEL)
        deleter = AsyncWebClient(token=BOT_TOKEN, base_url=bot.slack.api_url)  # as an admin deleting it in Slack would
        await deleter.chat_delete(channel=CHANNEL, ts=card["ts"])
        await deliver(bot, notification("firing"))  # Alertmanager's repeat finds the message gone: posted again
        [again] = bot.slack.messages(CHANNEL)
        assert again["ts"] != card["ts"] and "*FIRING*" in _text(again)
        await deliver(bot, notification("resolved"))  # and the copy is the one edited from then on
        [resolved] = bot.slack.messages(CHANNEL)
        assert resolved["ts"] == again["ts"] and "*RESOLVED*" in _text(resolved)


async def test_bad_token_and_malformed_payloads_are_refused_with_the_reason(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN)) as bot:
        assert (await post(bot.url, notification("firing"), token="wrong"))[0] == 401
        status, body = await post(bot.url, {**notification("firing"), "version": "3"})
        assert status == 400 and "version" in body["error"]
        status, body = await post(bot.url, {**notification("firing"), "alerts": []})
        assert status == 400 and "alerts" in body["error"]
        status, body = await post(bot.url, "not json at all")
        assert status == 400 and "not an Alertmanager (version 4) or Grafana (version 1) notification" in body["error"]
        grafana_without_org = {k: v for k, v in grafana("firing").items() if k != "orgId"}
        status, body = await post(bot.url, grafana_without_org)
        assert status == 400 and "orgId" in body["error"]
        audited = [r for r in bot.runtime.store.actions() if r["verb"] == "alertmanager.hook"]
        assert [r["status"] for r in audited] == ["rejected", "invalid", "invalid", "invalid", "invalid"]
        assert "version" in audited[1]["detail"]["error"]
        assert bot.slack.messages(CHANNEL) == []


def grafana(status: str) -> dict:
    """What a Grafana webhook contact point sends for a serving-latency rule (Grafana 11's documented shape)."""
    labels = {"alertname": "ServingLatencyHigh", "grafana_folder": "serving", "model": "ranker", "env": "prod"}
    alert = {"status": status, "labels": labels,
             "annotations": {"summary": "ranker serving latency over 400 ms"},
             "startsAt": "2026-11-20T10:00:00Z",
             "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-20T10:20:00Z",
             "generatorURL": "http://grafana:3000/alerting/grafana/ab12/view", "fingerprint": "9f1c2e",
             "silenceURL": "http://grafana:3000/alerting/silence/new?matchers=alertname%3DServingLatencyHigh",
             "dashboardURL": "http://grafana:3000/d/serving", "panelURL": "http://grafana:3000/d/serving?viewPanel=4",
             "values": {"A": 431.5, "C": 1}, "valueString": "[ var='A' labels={model=ranker} value=431.5 ]"}
    return {
        "receiver": "mlops-bot", "status": status, "orgId": 1, "alerts": [alert],
        "groupLabels": {"alertname": "ServingLatencyHigh"}, "commonLabels": labels,
        "commonAnnotations": alert["annotations"], "externalURL": "http://grafana:3000/", "version": "1",
        "groupKey": '{}/{__grafana_autogenerated__="true"}:{alertname="ServingLatencyHigh"}', "truncatedAlerts": 0,
        "title": f"[{status.upper()}:1] ServingLatencyHigh (ranker prod)", "state": "alerting" if status == "firing" else "ok",
        "message": "**Firing**\n\nValue: A=431.5\nLabels:\n - alertname = ServingLatencyHigh\n",
    }


def _mrkdwn(message: dict) -> str:
    """The message's section and context text as Slack receives it, links in their <url|label> form."""
    parts = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
    parts += [e["text"] for b in message["blocks"] if b["type"] == "context" for e in b["elements"]]
    return "\n".join(parts)


async def test_a_grafana_alert_is_one_message_edited_in_place_with_its_links(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN), post_rate=100, post_burst=100) as bot:
        seen = []
        for status in ("firing", "firing", "resolved"):  # a repeat, then the resolve: the same message each time
            assert (await post(bot.url, grafana(status)))[0] == 200
            await bot.runtime.hooks.settled()
            [card] = bot.slack.messages(CHANNEL)
            seen.append(card)
        posts = bot.slack.calls_to("chat.postMessage")
        alerts = [(r["actor"], r["status"]) for r in bot.runtime.store.actions() if r["verb"] == "alertmanager.alert"]

    firing, _, resolved = seen
    assert len(posts) == 1 and len({m["ts"] for m in seen}) == 1
    shown = _text(firing)
    assert "*FIRING* · ServingLatencyHigh · ranker prod · 1 firing" in shown
    assert "ranker serving latency over 400 ms" in shown and "value=431.5" in shown
    text = _mrkdwn(firing)
    assert "<http://grafana:3000/d/serving?viewPanel=4|panel>" in text
    assert "<http://grafana:3000/alerting/silence/new?matchers=alertname%3DServingLatencyHigh|silence in Grafana>" in text
    assert "<http://grafana:3000/|Grafana>" in text
    assert [e["text"]["text"] for b in firing["blocks"] if b["type"] == "actions" for e in b["elements"]] == [
        "Roll back prod", "Silence 24h"]
    assert "*RESOLVED*" in _text(resolved) and "FIRING" not in _text(resolved)
    assert not [b for b in resolved["blocks"] if b["type"] == "actions"]
    assert alerts == [("grafana", "open"), ("grafana", "open"), ("grafana", "resolved")]
