"""The webhooks under the faults an SRE tries first (issue 18, items 5 and 7): replayed and future-dated datagen
pushes, a 10,000-alert Alertmanager group, 30 groups at once while Slack paces the bot, a stop with work still
queued, and Slack failing while a hook's posts are made. The whole bot runs on loopback against the Slack
emulator, and every request is real HTTP.

The datagen signature is computed here from the README's description, as a sender would, not with the bot's
own helper.
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

import aiohttp
import pytest

from bot.config import Secrets, load_config
from bot.sandbox.local import local_bot
from bot.sandbox.render import render_message
from bot.store import Store
from tests.conftest import Clock, write_config
from tests.support.datagen_history import real_record

SECRET, TOKEN = "hook-secret", "am-secret"
MAIN, ERROR = "C0MLOPS", "C0ERROR"
# Alertmanager's default webhook timeout: a hook slower than this is sent again, and again.
ALERTMANAGER_TIMEOUT = aiohttp.ClientTimeout(total=10)
TODAY = date(2026, 11, 25)  # the test clock's date in the datagen job's zone (Asia/Kolkata)


# --- datagen ----------------------------------------------------------------------------------------------


def v1_headers(method: str, path: str, query: str, body: bytes, stamp: str | None = None) -> dict[str, str]:
    """README: `v1=` + hex HMAC-SHA256 over "v1\\n<timestamp>\\n<METHOD>\\n<path>\\n<query>\\n" + body."""
    stamp = stamp or str(int(time.time()))
    signed = f"v1\n{stamp}\n{method}\n{path}\n{query}\n".encode() + body
    return {"X-Datagen-Timestamp": stamp,
            "X-Datagen-Signature": "v1=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()}


def v0_headers(body: bytes) -> dict[str, str]:
    """How requests were signed before: the timestamp and the body only, as Slack signs its requests."""
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Datagen-Timestamp": stamp, "X-Datagen-Signature": f"v0={digest}"}


async def push(bot, query: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=ALERTMANAGER_TIMEOUT) as http:
        async with http.post(f"{bot.url}/hooks/datagen?{query}", data=body, headers=headers) as resp:
            return resp.status, await resp.json()


def stored_dates(bot) -> list[str]:
    return [d for (d,) in bot.runtime.store.conn.execute("SELECT run_date FROM datagen_reports ORDER BY run_date")]


def datagen_bot(tmp_path: Path, **kwargs):
    config = load_config(write_config(tmp_path))
    return local_bot(config, clock=Clock(), secrets=Secrets(datagen_hook_secret=SECRET), **kwargs)


async def test_a_captured_push_replayed_with_another_query_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    body = json.dumps(real_record()).encode()
    async with datagen_bot(tmp_path, post_rate=100, post_burst=100) as bot:
        # A push signed the old way (timestamp and body only), captured and replayed within the 5 minutes
        # with a future date in the query: the old signature does not cover the query, so it is not taken.
        status, answer = await push(bot, "job=recsys&date=2027-03-01", body, v0_headers(body))
        assert status == 401, answer
        assert "query" in answer["error"]

        # A genuine push, and the same request replayed with another date, then another job.
        genuine = "job=recsys&date=2026-11-24"
        headers = v1_headers("POST", "/hooks/datagen", genuine, body)
        status, answer = await push(bot, genuine, body, headers)
        assert (status, answer["stored"]) == (200, True)
        for replayed in ("job=recsys&date=2026-11-23", "job=recsys&date=2027-03-01", "date=2026-11-24&job=recsys"):
            status, answer = await push(bot, replayed, body, headers)
            assert status == 401, (replayed, answer)
        assert stored_dates(bot) == ["2026-11-24"]
        rejected = [r for r in bot.runtime.store.actions() if (r["verb"], r["status"]) == ("datagen.hook", "rejected")]
        assert len(rejected) == 4


async def test_a_push_for_a_date_far_ahead_is_refused_with_the_reason(tmp_path: Path) -> None:
    body = json.dumps(real_record()).encode()
    async with datagen_bot(tmp_path, post_rate=100, post_burst=100) as bot:
        for day in ("2027-03-01", "2026-11-27"):
            query = f"job=recsys&date={day}"
            status, answer = await push(bot, query, body, v1_headers("POST", "/hooks/datagen", query, body))
            assert status == 400, answer
            assert answer["error"] == (f"date={day} is in the future: today is {TODAY} in Asia/Kolkata, and the hook "
                                       f"takes run dates up to 2026-11-26")
        assert stored_dates(bot) == []
        invalid = [r for r in bot.runtime.store.actions() if (r["verb"], r["status"]) == ("datagen.hook", "invalid")]
        assert len(invalid) == 2 and "in the future" in invalid[0]["detail"]["error"]
        # A day ahead is still taken: the job's zone may be ahead of whoever sends it.
        query = "job=recsys&date=2026-11-26"
        status, answer = await push(bot, query, body, v1_headers("POST", "/hooks/datagen", query, body))
        assert (status, answer["stored"]) == (200, True)
        assert stored_dates(bot) == ["2026-11-26"]


async def test_a_push_whose_posts_fail_is_answered_once_stored_and_the_failures_audited(tmp_path: Path) -> None:
    body = json.dumps(real_record()).encode()
    async with datagen_bot(tmp_path, post_rate=100, post_burst=100) as bot:
        slack = bot.slack
        # Slack holds the first post (429, Retry-After: 2), and both chart uploads get an answer the SDK cannot
        # read (an HTML page labelled JSON, as a proxy in front of Slack sends).
        slack.inject_fault("chat.postMessage", "ratelimited", times=1, retry_after=2)
        slack.inject_fault("files.getUploadURLExternal", "not_json", times=2)
        query = "job=recsys&date=2026-11-24"
        status, answer = await push(bot, query, body, v1_headers("POST", "/hooks/datagen", query, body))
        assert (status, answer["stored"]) == (200, True)
        assert stored_dates(bot) == ["2026-11-24"]  # stored when answered...
        assert slack.messages(MAIN) == []  # ...and answered before anything was posted
        await bot.runtime.hooks.settled()
        [summary] = slack.messages(MAIN)
        assert summary["text"].startswith("datagen recsys 2026-11-24")
        assert len(slack.replies(MAIN, summary["ts"])) == 1 and slack.files == []  # details, no charts
        charts = [r for r in bot.runtime.store.actions() if r["verb"] == "datagen.chart"]
        assert [r["status"] for r in charts] == ["error", "error"]
        assert "non-JSON" in charts[0]["detail"]["error"] and charts[0]["detail"]["file"].endswith(".png")

        # Slack refusing the summary itself: still answered 200 with the record stored; the failure is logged
        # and audited, and the item kept as failed, not retried into a second post.
        slack.inject_fault("chat.postMessage", "channel_not_found", times=1)
        query = "job=recsys&date=2026-11-23"
        status, answer = await push(bot, query, body, v1_headers("POST", "/hooks/datagen", query, body))
        assert (status, answer["stored"]) == (200, True)
        await bot.runtime.hooks.settled()
        assert stored_dates(bot) == ["2026-11-23", "2026-11-24"]
        [failed] = [r for r in bot.runtime.store.actions() if r["verb"] == "hooks.post"]
        assert failed["status"] == "error" and failed["detail"]["kind"] == "datagen.announce"
        assert "channel_not_found" in failed["detail"]["error"]
        assert bot.runtime.store.conn.execute("SELECT state FROM hook_queue").fetchall() == [("failed",)]
        assert len(slack.messages(MAIN)) == 1


# --- Alertmanager ------------------------------------------------------------------------------------------


def big_group(alerts: int = 10_000) -> dict:
    """A realistic notification: one cluster's Triton fleet going down, grouped by cluster (about 440 B an alert)."""
    common = {"job": "triton", "cluster": "prod-eu-1", "model": "ranker", "env": "prod"}
    kinds = [("TritonInstanceDown", "critical", 6_000), ("RankerLatencyHigh", "warning", 3_000),
             ("GPUMemoryHigh", "warning", 1_000)]
    items, i = [], 0
    for name, severity, count in kinds:
        for _ in range(count * alerts // 10_000):
            items.append({
                "status": "firing",
                "labels": {**common, "alertname": name, "severity": severity, "pod": f"triton-ranker-{i:05d}-7f9c6d",
                           "instance": f"10.12.{i // 250}.{i % 250}:8002"},
                "annotations": {"summary": f"{name} on triton-ranker-{i:05d}"},
                "startsAt": "2026-11-25T03:58:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=up%7Bjob%3D%22triton%22%7D",
                "fingerprint": f"{i:016x}"})
            i += 1
    return {"version": "4", "groupKey": '{}:{cluster="prod-eu-1"}', "status": "firing", "receiver": "mlops-bot",
            "groupLabels": {"cluster": "prod-eu-1"}, "commonLabels": common, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0, "alerts": items}


def as_sent(notification: dict) -> bytes:
    """JSON as Alertmanager (Go's encoding/json) writes it: no spaces."""
    return json.dumps(notification, separators=(",", ":")).encode()


def small_group(name: str) -> dict:
    labels = {"alertname": name, "severity": "critical", "model": "ranker", "env": "prod"}
    alert = {"status": "firing", "labels": {**labels, "instance": "triton-0:8000"},
             "annotations": {"summary": f"{name} is firing"}, "startsAt": "2026-11-25T03:58:00Z"}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="{name}"}}', "status": "firing", "receiver": "mlops-bot",
            "groupLabels": {"alertname": name}, "commonLabels": labels, "commonAnnotations": alert["annotations"],
            "alerts": [alert]}


async def notify(bot, payload: dict | bytes, on_answer=None) -> tuple[int, dict]:
    """POST a notification as Alertmanager does; `on_answer` runs the moment the answer is in."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with aiohttp.ClientSession(timeout=ALERTMANAGER_TIMEOUT) as http:
        async with http.post(f"{bot.url}/hooks/alertmanager", data=data,
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}) as resp:
            seen = on_answer() if on_answer else None
            answer = await resp.json()
            return resp.status, {**answer, "seen": seen}


def alert_bot(tmp_path: Path, **kwargs):
    config = load_config(write_config(tmp_path))
    return local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN), **kwargs)


async def test_a_10000_alert_group_is_taken_and_posted_as_one_summary(tmp_path: Path) -> None:
    payload = as_sent(big_group())
    assert 4_000_000 < len(payload) < 5_000_000
    async with alert_bot(tmp_path) as bot:
        bot.slack.inject_fault("chat.postMessage", "ratelimited", times=1, retry_after=2)  # Slack busy: posts wait
        status, answer = await notify(bot, payload, on_answer=lambda: bot.slack.messages(ERROR))
        assert status == 200, answer
        assert answer["seen"] == [] and answer["alerts"] == 10_000  # answered before its post exists
        await bot.runtime.hooks.settled()
        [message] = bot.slack.all_messages()  # one message, no continuation thread
        text = render_message(message)
        assert "*FIRING* · cluster=prod-eu-1 · ranker prod · 10,000 firing" in text
        assert ("10,000 alerts* by alertname: TritonInstanceDown 6,000 · RankerLatencyHigh 3,000 · GPUMemoryHigh 1,000"
                in text)
        assert "by severity: critical 6,000 · warning 4,000" in text
        assert text.count(":red_circle:") == 10 and "TritonInstanceDown on triton-ranker-00000" in text
        assert "and 9,990 more" in text
        # What is kept of it is the summary, not 4 MB per notification.
        [(detail,)] = bot.runtime.store.conn.execute("SELECT detail FROM alerts").fetchall()
        assert len(detail) < 20_000


async def test_a_group_over_the_limit_is_refused_413_with_a_logged_and_audited_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLOPS_HOOK_MAX_BYTES", "2M")
    payload = as_sent(big_group())
    async with alert_bot(tmp_path) as bot:
        with caplog.at_level(logging.WARNING, logger="bot.alertmanager"):
            status, answer = await notify(bot, payload)
        assert status == 413
        assert answer["error"] == (f"notification refused: the body is {len(payload)} bytes, over the limit of "
                                   f"2097152 bytes (set MLOPS_HOOK_MAX_BYTES to raise it)")
        assert any("refused a notification" in r.getMessage() and str(len(payload)) in r.getMessage()
                   for r in caplog.records)
        [row] = [r for r in bot.runtime.store.actions() if r["verb"] == "alertmanager.hook"]
        assert (row["status"], row["detail"]) == ("too_large", {"bytes": len(payload), "limit": 2097152})
        assert bot.slack.messages(ERROR) == []


async def test_thirty_groups_at_once_are_each_answered_before_their_post_and_posted_once(tmp_path: Path) -> None:
    names = [f"Group{i:02d}Down" for i in range(30)]
    # Paced as Slack paces a channel (a burst of 4, then a steady rate), at 3 a second rather than Slack's 1 so
    # the run is short: the hooks are answered within Alertmanager's 10 s either way, posts or no posts.
    async with alert_bot(tmp_path, post_rate=3.0) as bot:
        slack = bot.slack
        # The first posts are answered 429 (Retry-After: 2), as Slack does to a bot already posting in the channel:
        # 4, one for each item the queue posts at a time, so none can be posted while the hooks are answered.
        slack.inject_fault("chat.postMessage", "ratelimited", times=4, retry_after=2)

        def posted(name: str) -> bool:
            return any(name in m["text"] for m in slack.messages(ERROR))

        results = await asyncio.gather(*(notify(bot, small_group(n), on_answer=lambda n=n: posted(n)) for n in names))
        assert [status for status, _ in results] == [200] * 30
        assert [answer["seen"] for _, answer in results] == [False] * 30  # each answered before its post existed
        await bot.runtime.hooks.settled(timeout=90)
        texts = [m["text"] for m in slack.messages(ERROR)]
        assert sorted(texts) == sorted(f"FIRING: {n} · ranker prod" for n in names)  # each posted, once
        assert sum(c.ok for c in slack.calls_to("chat.postMessage")) == 30
        assert bot.runtime.hooks.concurrency <= 4  # what the 4 faults above rely on


async def test_work_queued_when_the_bot_stops_is_posted_after_the_next_start_once(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    secrets = Secrets(alertmanager_token=TOKEN)
    # A slow channel: after one post, the next may go out in 20 s.
    async with local_bot(config, clock=Clock(), secrets=secrets, post_rate=0.05, post_burst=1) as bot:
        for name in ("FirstDown", "SecondDown", "ThirdDown"):
            assert (await notify(bot, small_group(name)))[0] == 200
        bot.runtime.hooks.stop_grace = 0.2  # no need to wait for the slow channel before stopping
        await bot.slack.wait_for(lambda: bot.slack.messages(ERROR))
        before = [m["text"] for m in bot.slack.messages(ERROR)]
    assert before == ["FIRING: FirstDown · ranker prod"]
    store = Store(config.store)
    assert store.conn.execute("SELECT count(*) FROM hook_queue WHERE state = 'queued'").fetchone()[0] == 2
    store.close()

    async with local_bot(config, clock=Clock(), secrets=secrets, post_rate=100, post_burst=100) as bot:
        await bot.runtime.hooks.settled()
        after = [m["text"] for m in bot.slack.messages(ERROR)]
        assert after == ["FIRING: SecondDown · ranker prod", "FIRING: ThirdDown · ranker prod"]
        assert bot.runtime.store.conn.execute("SELECT count(*) FROM hook_queue").fetchone()[0] == 0
        posts = [r for r in bot.runtime.store.actions() if r["verb"] == "alertmanager.alert"]
        assert len(posts) == 5  # once for each notification, and again for the two cut short by the stop
