"""Datagen monitoring end to end: the whole bot on loopback, the Slack emulator, real S3 (moto_server), SQLite,
and the scheduler driven with an injected clock."""
from __future__ import annotations

import json
import time
from datetime import date, timedelta
from pathlib import Path

import aiohttp
import boto3
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Secrets, load_config
from bot.monitors.history import due_at
from bot.monitors.hook import sign
from bot.sandbox.local import BOT_TOKEN, local_bot
from tests.conftest import Clock, write_config
from tests.support.datagen_history import make_history, real_record
from tests.support.s3 import AWS_ENV, MotoServer

INFO, ERROR, MAIN = "C0INFO", "C0ERROR", "C0MLOPS"
START = date(2026, 10, 1)
DROP, LATE, FAILED = date(2026, 10, 10), date(2026, 10, 15), date(2026, 10, 20)


def _config(tmp_path: Path, source: str, **s3):
    raw_jobs = {"recsys": {"source": source, "expected_at": "08:30", "tz": "Asia/Kolkata",
                           "typical_runtime_minutes": 200, "grace_hours": 3, "poll_minutes": 10}}
    return load_config(write_config(tmp_path, datagen={"jobs": raw_jobs}, **({"s3": s3} if s3 else {})))


def _alerts(slack, channel: str) -> dict[str, dict]:
    """The channel's datagen alerts by run date, as they read now."""
    found = {}
    for message in slack.messages(channel):
        if message["text"].startswith("datagen recsys "):
            found[message["text"].split()[2].rstrip(":")] = message
    return found


def _flat(message: dict) -> str:
    return json.dumps(message["blocks"])


async def test_thirty_days_fire_resolve_and_stay_silent_exactly(tmp_path: Path) -> None:
    records = make_history(real_record(), START, 30, drops={DROP: ("feed_source", 15)}, failed={FAILED})
    config = _config(tmp_path, str(tmp_path / "reports" / "{date}.json"))
    job = config.datagen.jobs["recsys"]
    (tmp_path / "reports").mkdir()
    clock = Clock(due_at(job, START) - timedelta(hours=1))
    async with local_bot(config, clock=clock, post_rate=1000, post_burst=1000) as bot:
        slack, scheduler = bot.slack, bot.runtime.scheduler
        for day, record in sorted(records.items()):
            due = due_at(job, day)
            if day == LATE:  # nothing by the deadline: "raw data not found", then the record turns up
                clock.now = due + timedelta(hours=3, minutes=15)
                await scheduler.run_due(clock.now)
                late = _alerts(slack, ERROR)[str(LATE)]
                assert "raw data not found" in _flat(late)
            (tmp_path / "reports" / f"{day}.json").write_text(json.dumps(record))
            clock.now = due + timedelta(hours=(3.5 if day == LATE else 0), minutes=5)
            await scheduler.run_due(clock.now)
            if day == DROP:
                alert = _alerts(slack, INFO)[str(DROP)]
                text = _flat(alert)
                assert "stage.feed_source.items fell 15." in text and "7 downstream stages follow" in text
                assert "Biggest mover: *feed source*" in text
                assert "change -15.0%" in _flat(slack.replies(INFO, alert["ts"])[0])  # every breach, in the thread
                await bot.client.press_button("U0BOB", INFO, alert["ts"], "Ack")
                await slack.wait_for(lambda: "Acked by <@U0BOB>" in _flat(_alerts(slack, INFO)[str(DROP)]))
            if day == FAILED:
                alert = _alerts(slack, ERROR)[str(FAILED)]
                assert "ExecutorLostFailure" in _flat(alert)
                await bot.client.press_button("U0ALICE", ERROR, alert["ts"], "Mark expected")
                await slack.wait_for(lambda: "Marked expected by <@U0ALICE>" in _flat(_alerts(slack, ERROR)[str(FAILED)]))

        # Exactly three alerts fired: the drop (warn → info), the late day and the failed run (crit → error).
        # The days after the drop and a week later compare with the last healthy day, not with the drop, so they
        # stay silent; so do the day after the failure and a week after it.
        assert sorted(_alerts(slack, INFO)) == [str(DROP)]
        assert sorted(_alerts(slack, ERROR)) == [str(LATE), str(FAILED)]
        # Each was edited in place to resolved by a later report, never re-posted.
        for alert in [_alerts(slack, INFO)[str(DROP)], *_alerts(slack, ERROR).values()]:
            assert alert["text"].endswith("resolved"), alert["text"]
            assert alert["edited"] and not any(b["type"] == "actions" for b in alert["blocks"])
        posted = [c.args["channel"] for c in slack.calls_to("chat.postMessage") if c.ok and not c.args.get("thread_ts")]
        assert (posted.count(INFO), posted.count(ERROR)) == (1, 2)  # nothing posted twice

        # One summary a day in the main channel; the failed day says so; details and charts in the thread.
        summaries = [m for m in slack.messages(MAIN) if m["text"].startswith("datagen recsys")]
        assert len(summaries) == 30
        failed = next(m for m in summaries if str(FAILED) in m["text"])
        assert "failed" in failed["text"] and "Py4JJavaError" in _flat(failed)
        drop = next(m for m in summaries if m["text"].startswith(f"datagen recsys {DROP}"))
        thread = _flat(slack.replies(MAIN, drop["ts"])[0])
        assert "feed source" in thread and "-15.0%" in thread and "Item-age buckets" in thread
        pictures = sorted(f["name"] for f in slack.files if f["thread_ts"] == drop["ts"])
        assert pictures == [f"recsys-{DROP}-final-rows.png", f"recsys-{DROP}-funnel.png"]

        # Every press is audited with who pressed it.
        audit = {(r["verb"], r["actor"], r["status"]) for r in bot.runtime.store.actions()}
        assert ("datagen.ack", "U0BOB", "ok") in audit and ("datagen.expected", "U0ALICE", "ok") in audit


async def test_s3_source_and_freshness_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    day = date(2026, 11, 21)
    with MotoServer() as moto:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url)
        s3.create_bucket(Bucket="datagen")
        config = _config(tmp_path, "s3://datagen/monitoring/{date}.json", endpoint_url=moto.endpoint_url)
        due = due_at(config.datagen.jobs["recsys"], day)
        clock = Clock(due - timedelta(hours=1))
        async with local_bot(config, clock=clock) as bot:
            clock.now = due + timedelta(hours=2, minutes=55)  # late, but within the 3 h grace: quiet
            await bot.runtime.scheduler.run_due(clock.now)
            assert bot.slack.messages(ERROR) == [] and bot.slack.messages(MAIN) == []

            clock.now = due + timedelta(hours=3, minutes=5)  # the deadline has passed
            await bot.runtime.scheduler.run_due(clock.now)
            alert = _alerts(bot.slack, ERROR)[str(day)]
            assert "raw data not found: no datagen report for 2026-11-21" in _flat(alert)

            record = (Path(__file__).parents[2] / "examples" / "datagen" / f"{day}.json").read_bytes()
            s3.put_object(Bucket="datagen", Key=f"monitoring/{day}.json", Body=record)
            clock.now += timedelta(minutes=10)
            await bot.runtime.scheduler.run_due(clock.now)
            assert _alerts(bot.slack, ERROR)[str(day)]["text"].endswith("resolved")
            summary = bot.slack.messages(MAIN)[0]
            assert summary["text"] == f"datagen recsys {day}: ok, no breaches"
            stored = bot.runtime.store.conn.execute("SELECT source FROM datagen_reports").fetchall()
            assert stored == [(f"s3://datagen/monitoring/{day}.json",)]


async def test_broken_record_hook_and_command(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    good = real_record()
    config = _config(tmp_path, str(reports / "{date}.json"))
    job = config.datagen.jobs["recsys"]
    day = date(2026, 11, 21)
    clock = Clock(due_at(job, day) - timedelta(hours=1))
    secrets = Secrets(datagen_hook_secret="hook-secret")
    async with local_bot(config, clock=clock, secrets=secrets) as bot:
        # A broken file: an alert that says what and where; nothing stored; the schedule keeps polling.
        (reports / f"{day}.json").write_text(json.dumps({**good, "num_raw_events": -5}))
        clock.now = due_at(job, day) + timedelta(minutes=5)
        await bot.runtime.scheduler.run_due(clock.now)
        alert = _alerts(bot.slack, ERROR)[str(day)]
        assert (f"datagen report for {day} unreadable: negative count in num_raw_events: -5 "
                f"({reports / f'{day}.json'})") in _flat(alert)
        assert bot.runtime.store.conn.execute("SELECT count(*) FROM datagen_reports").fetchone()[0] == 0
        (reports / f"{day}.json").write_text(json.dumps(good))
        clock.now += timedelta(minutes=10)
        await bot.runtime.scheduler.run_due(clock.now)
        assert _alerts(bot.slack, ERROR)[str(day)]["text"].endswith("resolved")
        assert bot.runtime.store.conn.execute("SELECT count(*) FROM datagen_reports").fetchone()[0] == 1

        # The push hook: a signed POST ingests the next day; a forged one is refused and audited.
        body = json.dumps(good).encode()
        query = f"job=recsys&date={day + timedelta(days=1)}"
        url = f"{bot.url}/hooks/datagen?{query}"
        stamp = str(int(time.time()))
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers={"X-Datagen-Timestamp": stamp,
                                                          "X-Datagen-Signature": "v1=forged"}) as resp:
                assert resp.status == 401
            signature = sign("hook-secret", stamp, "POST", "/hooks/datagen", query, body)
            headers = {"X-Datagen-Timestamp": stamp, "X-Datagen-Signature": signature}
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["stored"] is True
        await bot.runtime.hooks.settled()  # the hook answered once the record was stored; the posts follow
        assert any(m["text"].startswith(f"datagen recsys {day + timedelta(days=1)}") for m in bot.slack.messages(MAIN))
        audit = [(r["verb"], r["status"]) for r in bot.runtime.store.actions()]
        assert ("datagen.hook", "rejected") in audit and ("datagen.ingest", "unreadable") in audit

        # /mlops datagen: the latest run, a named one, a comparison, and a clear answer for a missing day.
        for text in ("datagen", f"datagen {day} compare {day + timedelta(days=1)}", "datagen 2020-01-01"):
            await bot.client.command("U0ALICE", text)
        responses = await bot.slack.wait_for(lambda: len(bot.slack.responses) >= 4 and bot.slack.responses)
        said = json.dumps(responses)
        assert f"datagen *recsys* {day + timedelta(days=1)} succeeded" in said
        assert f"compared with {day + timedelta(days=1)}" in said
        assert "no datagen report for recsys 2020-01-01; the latest is" in said


async def test_a_deleted_alert_message_is_posted_again_when_the_alert_resolves(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    config = _config(tmp_path, str(reports / "{date}.json"))
    job = config.datagen.jobs["recsys"]
    day = date(2026, 11, 21)
    clock = Clock(due_at(job, day) + timedelta(minutes=5))
    async with local_bot(config, clock=clock, start=False) as bot:
        (reports / f"{day}.json").write_text("{not json")
        await bot.runtime.scheduler.run_due(clock.now)
        alert = _alerts(bot.slack, ERROR)[str(day)]
        deleter = AsyncWebClient(token=BOT_TOKEN, base_url=bot.slack.api_url)  # as an admin deleting it in Slack would
        await deleter.chat_delete(channel=ERROR, ts=alert["ts"])

        (reports / f"{day}.json").write_text(json.dumps(real_record()))
        clock.now += timedelta(minutes=10)
        await bot.runtime.scheduler.run_due(clock.now)
        again = _alerts(bot.slack, ERROR)[str(day)]
        assert again["ts"] != alert["ts"] and again["text"].endswith("resolved")


def _seen(message: dict) -> list[str]:
    """The lines of a message as a reader sees them, buttons aside."""
    texts = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
    texts += [e["text"] for b in message["blocks"] if b["type"] == "context" for e in b["elements"]]
    return "\n".join(texts).splitlines()


async def _push(bot, day: date, record: dict) -> None:
    body, query, stamp = json.dumps(record).encode(), f"job=recsys&date={day}", str(int(time.time()))
    headers = {"X-Datagen-Timestamp": stamp,
               "X-Datagen-Signature": sign("hook-secret", stamp, "POST", "/hooks/datagen", query, body)}
    async with aiohttp.ClientSession() as http, http.post(f"{bot.url}/hooks/datagen?{query}", data=body,
                                                          headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["stored"] is True
    await bot.runtime.hooks.settled()


async def test_a_pushed_drop_is_posted_by_cause_and_missing_days_are_alerted_once(tmp_path: Path) -> None:
    start = date(2026, 11, 1)
    drop, gap, down = start + timedelta(days=9), start + timedelta(days=11), start + timedelta(days=13)
    records = make_history(real_record(), start, 13, drops={drop: ("feed_source", 40)}, missing={gap})
    config = _config(tmp_path, str(tmp_path / "nowhere" / "{date}.json"))
    job = config.datagen.jobs["recsys"]
    clock = Clock(due_at(job, start))
    secrets = Secrets(datagen_hook_secret="hook-secret")
    async with local_bot(config, clock=clock, secrets=secrets, post_rate=1000, post_burst=1000) as bot:
        for day, record in sorted(records.items()):
            clock.now = due_at(job, day) + timedelta(minutes=5)
            await _push(bot, day, record)
            if day == drop:
                [alert] = _alerts(bot.slack, INFO).values()
                lines = _seen(alert)
                # The cause first, one line per rule, the mover that explains it, and where the rest is.
                assert lines[0].startswith(f":rotating_light: datagen *recsys* {drop}: *feed source* events -")
                assert lines[0].endswith("; 7 downstream stages follow")
                assert [line.split("*")[1] for line in lines[1:6]] == [
                    "events_1d", "events_7d", "items_1d", "items_7d", "item_age_bucket_7d"]
                assert "stage.feed_source.items fell" in lines[3]
                assert lines[6].startswith(":mag: Biggest mover: *feed source*")
                assert lines[7].startswith("40 breaches from 5 causes: every one in the thread and under "
                                           f"`/mlops datagen {drop}`")
                assert len(lines) == 8
                [listing] = bot.slack.replies(INFO, alert["ts"])
                assert _seen(listing)[0] == f"*Every breach of datagen recsys {drop}* (40)"
                assert len(_seen(listing)) == 41  # the heading and each breach on its own line
                assert "*items_1d* `embedding_join.items`: value" in _flat(listing)

        # The day after the drop was quiet; the drop's alert resolved in place.
        assert list(_alerts(bot.slack, INFO)) == [str(drop)]
        assert _alerts(bot.slack, INFO)[str(drop)]["text"].endswith("resolved")
        # The record after the gap brought its alert, and its summary says which day has none.
        [missing] = _alerts(bot.slack, ERROR).values()
        assert missing["text"].startswith(f"datagen recsys {gap}: 1 breach (crit)")
        assert f"raw data not found: no datagen report for {gap} by <!date^" in _flat(missing)
        assert "grace 3h)" in _flat(missing)
        after = next(m for m in bot.slack.messages(MAIN) if m["text"].startswith(f"datagen recsys {gap + timedelta(days=1)}"))
        assert f"no record for {gap}" in _flat(after) and after["text"].endswith("ok, no breaches")
        # The list the resolved alert points at is still behind /mlops datagen DATE.
        await bot.client.command("U0ALICE", f"datagen {drop}")
        said = json.dumps(await bot.slack.wait_for(lambda: len(bot.slack.responses) >= 3 and bot.slack.responses))
        assert f"*Every breach of datagen recsys {drop}* (40)" in said and "40 breaches" in said

    # Down for two days: at start, each deadline missed meanwhile is alerted, the gap already alerted is not.
    clock.now = due_at(job, down + timedelta(days=1)) + timedelta(hours=3, minutes=10)
    async with local_bot(config, clock=clock, secrets=secrets, post_rate=1000, post_burst=1000) as bot:
        assert sorted(_alerts(bot.slack, ERROR)) == [str(down), str(down + timedelta(days=1))]
        assert all("raw data not found" in _flat(m) for m in _alerts(bot.slack, ERROR).values())
    async with local_bot(config, clock=clock, secrets=secrets, post_rate=1000, post_burst=1000) as bot:
        assert _alerts(bot.slack, ERROR) == {}  # and a second restart says nothing again
