"""Daily and weekly digests and the App Home, on the whole bot against the Slack emulator with an injected clock."""
from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bot.alertmanager import parse
from bot.config import load_config
from bot.digest.messages import action_line, news_lines
from bot.monitors.service import save_record
from bot.sandbox.local import local_bot
from bot.sandbox.render import render_message, render_view
from bot.sandbox.slack_api import dm_id
from bot.store import Store, iso
from tests.conftest import ROOT, Clock, write_config

MAIN = "C0MLOPS"
# Thursday 2026-11-19, 09:05 in Los Angeles: five minutes after the daily digest's slot.
DIGEST_TIME = datetime(2026, 11, 19, 17, 5, tzinfo=UTC)
EXAMPLES = ROOT / "examples" / "datagen"


def _config(tmp_path: Path):
    """The example config plus a staging-only second model, so the table has more than one row."""
    raw = load_config(write_config(tmp_path)).model_dump(mode="json")["models"]
    scorer = {**raw["ranker"], "owner": "U0BOB", "staging_only": True,
              "environments": {"staging": raw["ranker"]["environments"]["staging"]}}
    return load_config(write_config(tmp_path, models={**raw, "scorer": scorer}))


def release(store: Store, model: str, version: str, state: str, *, deployed_by: str, deployed_at: datetime,
            env: str | None = None, verified_at: datetime | None = None, approved_by: str | None = None) -> int:
    """A release row as the release train leaves it, and the environment it serves in when `env` is given.
    A prod standing (live) is kept beside the staging one it was unblocked from (verified)."""
    prod_state = state if state in ("live", "promoting", "promote_failed") else None
    release_id = store.db["releases"].insert({
        "model": model, "version": version, "digest": f"sha256:{version}", "state": "verified" if prod_state else state,
        "prod_state": prod_state, "deployed_by": deployed_by,
        "deployed_at": iso(deployed_at), "verified_at": iso(verified_at) if verified_at else None,
        "approved_by": approved_by, "approved_at": iso(deployed_at + timedelta(hours=2)) if approved_by else None,
        "channel": MAIN, "updated_at": iso(deployed_at)}).last_pk
    if env:
        store.db["environments"].upsert({
            "model": model, "env": env, "version": version, "triton_version": release_id, "release_id": release_id,
            "deployed_by": deployed_by, "approved_by": approved_by, "updated_at": iso(deployed_at)}, pk=("model", "env"))
    return release_id


def firing(model: str, env: str, name: str) -> bytes:
    labels = {"alertname": name, "severity": "critical", "model": model, "env": env}
    return json.dumps({"version": "4", "groupKey": f"{{}}:{{alertname=\"{name}\"}}", "status": "firing",
                       "commonLabels": labels, "commonAnnotations": {"summary": f"{name} on {model} {env}"},
                       "alerts": [{"status": "firing", "labels": labels, "startsAt": "2026-11-19T15:00:00Z"}]}).encode()


def digests(slack, title: str) -> list[str]:
    """Every digest titled `title` in the main channel, with the replies it continues in, as a person reads it."""
    found = []
    for m in slack.messages(MAIN):
        if m["text"].startswith(title):
            found.append("\n".join(render_message(r) for r in [m, *slack.replies(MAIN, m["ts"])]))
    return found


async def seed(bot, clock: Clock) -> None:
    """A morning's worth of records: releases in every state the digest reports, datagen history, an alert."""
    store, rt = bot.runtime.store, bot.runtime
    for day in range(12, 18):
        run = date(2026, 11, day)
        save_record(store, "recsys", run, (EXAMPLES / f"{run}.json").read_text(), "examples", actor="test", at=clock())
    await rt.datagen.ingest("recsys", date(2026, 11, 18), (EXAMPLES / "2026-11-18.json").read_bytes(), "examples", actor="test")
    release(store, "ranker", "v1", "live", deployed_by="U0ALICE", deployed_at=DIGEST_TIME - timedelta(days=3),
            env="prod", verified_at=DIGEST_TIME - timedelta(days=3), approved_by="U0CAROL")
    release(store, "ranker", "v2", "verified", deployed_by="U0ALICE", deployed_at=DIGEST_TIME - timedelta(hours=3),
            env="staging", verified_at=DIGEST_TIME - timedelta(hours=3))
    release(store, "scorer", "v3", "verify_failed", deployed_by="U0BOB", deployed_at=DIGEST_TIME - timedelta(hours=20),
            env="staging")
    rt.audit(actor="U0ALICE", verb="deploy", status="succeeded", model="ranker", env="staging", version="v2")
    rt.audit(actor="datagen.hook", verb="datagen.ingest", status="unreadable", model="recsys", version="2026-11-18")
    await rt.alertmanager.receive(parse(firing("ranker", "prod", "RankerLatencyHigh")))


async def test_daily_digest_content_and_one_post_per_slot_across_a_restart(tmp_path: Path) -> None:
    config = _config(tmp_path)
    clock = Clock(DIGEST_TIME - timedelta(hours=1))
    async with local_bot(config, clock=clock, post_rate=1000, post_burst=1000) as bot:
        await seed(bot, clock)
        assert digests(bot.slack, "Daily digest") == []  # not due before 09:00
        clock.now = DIGEST_TIME
        await bot.runtime.scheduler.run_due()
        await bot.runtime.scheduler.run_due()  # the same slot again: claimed already
        [digest] = digests(bot.slack, "Daily digest")
        stored = [r for r in bot.runtime.store.actions() if (r["verb"], r["status"]) == ("datagen.ingest", "ok")]

    assert "== Daily digest · Thu 19 Nov 2026 ==" in digest
    # The model table: version, state, who deployed and unblocked, when, and when the version was trained.
    assert ("*ranker* · prod: `v1` live · deployed by @U0ALICE, unblocked by @U0CAROL 2026-11-16T17:05+00:00"
            " · trained 2026-11-18T14:05+00:00") in digest
    assert "*ranker* · staging: `v2` verified · deployed by @U0ALICE" in digest
    assert "*scorer* · staging: `v3` verification failed · deployed by @U0BOB" in digest
    assert "recsys* 2026-11-19: ran" in digest  # the poll at start picked up the day's record
    assert "*Approvals pending*\n*ranker v2* verified" in digest
    # The trains between staging and prod, by their engineer (issue 19); the failed one is not on the tracks.
    assert "*Trains on the tracks, by engineer*\n@U0ALICE: *ranker v2* verified since" in digest
    assert "scorer v3" not in digest.split("Trains on the tracks")[1].split("*Approvals pending*")[0]
    # Counted from the 09:00 slot the digest is for: deployed at 13:05 the day before.
    assert ("*On staging unverified for more than 12 h*\n*scorer v3* has been on staging for 19 h 55 min (verification failed):"
            " @U0BOB, verify it or roll it back") in digest
    assert "*ranker v2*" not in digest.split("unverified for more than")[1].split("*Open alerts*")[0]
    assert "alertmanager · RankerLatencyHigh on ranker prod (open" in digest
    assert "@U0ALICE deploy ranker staging v2 · succeeded" in digest
    # Routine work is one count; the one that went wrong keeps its own line.
    assert len(stored) > 1 and f"Routine: {len(stored)} datagen records stored" in digest
    assert digest.count("datagen.ingest") == 1 and "datagen.ingest recsys 2026-11-18 · unreadable" in digest

    # A restart inside the same slot's grace: the new process finds the slot claimed and posts nothing.
    clock.now = DIGEST_TIME + timedelta(minutes=30)
    async with local_bot(config, clock=clock, post_rate=1000, post_burst=1000) as bot:
        await bot.runtime.scheduler.run_due()
        assert digests(bot.slack, "Daily digest") == []
        runs = bot.runtime.store.conn.execute("SELECT count(*) FROM job_runs WHERE job = 'digest.daily'").fetchone()[0]
        assert runs == 1


async def test_a_digest_too_long_for_one_message_continues_in_its_thread(tmp_path: Path) -> None:
    clock = Clock(DIGEST_TIME - timedelta(hours=1))
    async with local_bot(_config(tmp_path), clock=clock, post_rate=1000, post_burst=1000) as bot:
        for n in range(1500):
            bot.runtime.audit(actor="U0ALICE", verb="lock", status="succeeded", model="ranker", env="staging",
                              detail={"reason": f"maintenance window {n}"})
        clock.now = DIGEST_TIME
        await bot.runtime.scheduler.run_due()
        [head] = [m for m in bot.slack.messages(MAIN) if m["text"].startswith("Daily digest")]
        thread = bot.slack.replies(MAIN, head["ts"])
        assert len(head["blocks"]) == 50 and thread  # Slack's limit reached: the rest continues in the thread
        assert not [c for c in bot.slack.calls_to("chat.postMessage") if not c.ok]
        [digest] = digests(bot.slack, "Daily digest")
        assert digest.count("@U0ALICE lock ranker staging · succeeded") == 1500  # every one, none cut off


async def test_weekly_digest_counts_alerts_per_rule_releases_and_time_to_prod(tmp_path: Path) -> None:
    monday = datetime(2026, 11, 23, 17, 35, tzinfo=UTC)  # 09:35 in Los Angeles, the weekly slot is 09:30
    clock = Clock(monday - timedelta(days=3))
    async with local_bot(_config(tmp_path), clock=clock, post_rate=1000, post_burst=1000) as bot:
        rt = bot.runtime
        for name in ("RankerLatencyHigh", "RankerLatencyHigh2"):
            await rt.alertmanager.receive(parse(firing("ranker", "prod", name)))
        await rt.alertmanager.receive(parse(firing("ranker", "prod", "RankerLatencyHigh").replace(b"firing", b"resolved")))
        for version, staged_hours in (("v5", 6), ("v6", 2)):
            release(rt.store, "ranker", version, "live", deployed_by="U0ALICE",
                    deployed_at=clock() - timedelta(hours=staged_hours))
            rt.audit(actor="U0ALICE", verb="deploy", status="succeeded", model="ranker", env="staging", version=version)
            rt.audit(actor="U0BOB", verb="promote", status="succeeded", model="ranker", env="prod", version=version)
        rt.audit(actor="U0ALICE", verb="rollback", status="succeeded", model="ranker", env="prod", version="v5")
        clock.now = monday
        await rt.scheduler.run_due()
        [digest] = digests(bot.slack, "Weekly digest")
    assert "Noisiest alert rules: *alertmanager/RankerLatencyHigh* (1), *alertmanager/RankerLatencyHigh2* (1)" in digest
    assert "*ranker*: 2 deploys to staging, 2 to prod, 1 rollbacks" in digest
    assert "mean time from staging to prod: *4 h* over 2 releases" in digest


async def test_app_home_shows_the_viewer_their_pending_approvals(tmp_path: Path) -> None:
    clock = Clock(DIGEST_TIME)
    async with local_bot(_config(tmp_path), clock=clock, post_rate=1000, post_burst=1000) as bot:
        pending = release(
            bot.runtime.store,
            "ranker",
            "v2",
            "verified",
            deployed_by="U0ALICE",
            deployed_at=DIGEST_TIME - timedelta(hours=1),
            env="staging",
            verified_at=DIGEST_TIME,
        )
        await bot.runtime.alertmanager.receive(parse(firing("ranker", "prod", "RankerLatencyHigh")))
        bot.runtime.releases.lock("ranker", "prod", "U0CAROL", "load test until noon")
        for user in ("U0BOB", "U0ALICE"):
            await bot.client.home_opened(user)
        views = await bot.slack.wait_for(lambda: bot.slack.home if len(bot.slack.home) == 2 else None)

    bob = render_view(views["U0BOB"])
    assert "*Waiting for you to unblock*\n*ranker v2* verified" in bob and "[1] Unblock prod (primary)" in bob
    [unblock] = [b["accessory"] for b in views["U0BOB"]["blocks"] if b.get("accessory")]
    assert (unblock["action_id"], json.loads(unblock["value"])) == ("release.promote", {"release": pending})
    # Shift 45 of the weekly rotation that started 2026-01-05 with U0ALICE: U0ALICE again, U0BOB next.
    assert "*recsys*: now @U0ALICE until 2026-11-23T18:00+00:00 · next @U0BOB from 2026-11-23T18:00+00:00" in bob
    assert "RankerLatencyHigh on ranker prod" in bob
    # The whole truth per environment: the lock with its holder and expiry, and what the endpoints say when it
    # differs from the record (nothing listens where the example config puts staging).
    assert ("*ranker* · prod: not deployed\n:lock: locked: @U0CAROL load test until noon, until 2026-11-19T21:05+00:00"
            in bob)
    staging = bob.split("*ranker* · staging: `v2`")[1].split("*ranker* · prod")[0]
    assert ":warning: http://127.0.0.1:8000: unreachable" in staging
    # Alice deployed it: four-eyes keeps it off her list; she is not an approver anyway.
    alice = render_view(views["U0ALICE"])
    assert "*Trains on the tracks, by engineer*\n@U0ALICE: *ranker v2* verified since" in alice
    assert "Unblock prod" not in alice and "*Waiting for you to unblock*\n_nothing_" in alice


def test_routine_rows_are_counted_as_a_person_says_them() -> None:
    at = datetime(2026, 11, 19, 9, tzinfo=UTC)
    rows = [{"verb": "datagen.ingest", "status": "ok", "ts": at, "actor": "datagen.hook", "model": "recsys"},
            {"verb": "datagen.ingest", "status": "ok", "ts": at, "actor": "datagen.hook", "model": "recsys"},
            {"verb": "digest.daily", "status": "posted", "ts": at, "actor": "mlops-bot"},
            {"verb": "oncall.handoff", "status": "failed", "ts": at, "actor": "mlops-bot"}]
    lines = news_lines(rows)
    assert lines[-1] == "Routine: 2 datagen records stored, 1 daily digest"
    assert lines[:-1] == [action_line(rows[3])]  # the handoff that failed is news, not routine


async def test_the_app_homes_page_buttons_publish_the_page_they_name(tmp_path: Path) -> None:
    async with local_bot(_config(tmp_path), clock=Clock(DIGEST_TIME), post_rate=1000, post_burst=1000) as bot:
        await bot.client.home_opened("U0BOB")
        await bot.slack.wait_for(lambda: bot.slack.home.get("U0BOB"))
        # A table this small is one page, so a press for page 3 (a view left open while the table shrank) shows it.
        await bot.client.press("U0BOB", "home.page", json.dumps({"page": 3}), channel=dm_id("U0BOB"), message_ts="")
        published = await bot.slack.wait_for(lambda: len(bot.slack.calls_to("views.publish")) == 2 or None)
        assert published and "*ranker* · prod" in render_view(bot.slack.home["U0BOB"])
        assert [r for r in bot.runtime.store.actions() if r["verb"] == "home.page" and r["status"] == "accepted"]
