"""Monitors (`monitors.<name>`) end to end: real commands and a real papermill run, the whole bot on loopback, the
Slack emulator and SQLite, with the scheduler driven by an injected clock."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import load_config
from bot.digest.messages import daily
from bot.monitors.sources import notebooks_missing
from bot.sandbox.local import local_bot
from tests.conftest import ROOT, Clock, write_config

INFO, ERROR = "C0INFO", "C0ERROR"
SKEW = str(ROOT / "examples" / "monitors" / "feature_skew.py")
DAY = datetime(2026, 12, 3, 7, 5, tzinfo=UTC)  # just after the 07:00 UTC slot


def _config(tmp_path: Path, monitors: dict):
    return load_config(write_config(tmp_path, monitors=monitors))


def _monitor_alerts(slack, channel: str, name: str) -> list[dict]:
    return [m for m in slack.messages(channel) if m["text"].startswith(f"monitor {name} ")]


def _flat(message: dict) -> str:
    return json.dumps(message["blocks"])


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


async def run_due(bot, now: datetime) -> None:
    """The slots due at `now`, and the monitor runs they started in the background, to their end."""
    await bot.runtime.scheduler.run_due(now)
    async with asyncio.timeout(120):
        while bot.runtime.tasks.running:
            await asyncio.sleep(0.02)


async def test_a_command_monitor_fires_on_a_bound_and_resolves_in_place_when_back_in_bounds(tmp_path: Path) -> None:
    drifted = DAY.date()
    config = _config(tmp_path, {"feature_skew": {
        "command": [SKEW, "--seed", "7", "--drift", f"item_ctr_7d:{drifted}"],
        "schedule": {"cron": "0 7 * * *", "tz": "UTC"},
        "rules": [{"id": "feature_psi", "kind": "bound", "metric": "psi.*", "gt": 0.2}]}})
    clock = Clock(DAY)
    async with local_bot(config, clock=clock, start=False) as bot:
        await run_due(bot, clock.now)
        [alert] = _monitor_alerts(bot.slack, INFO, "feature_skew")
        assert "monitor *feature_skew* 2026-12-03" in _flat(alert) and "psi.item_ctr_7d" in _flat(alert)
        assert "above 0.20" in _flat(alert)
        pictures = [f["name"] for f in bot.slack.files if f["thread_ts"] == alert["ts"]]
        assert pictures == [f"feature_skew-{drifted}-metrics.png"]  # the breached metric over the last days
        digest = daily(await bot.runtime.digests.daily_facts(clock.now))  # the morning digest lists the monitor
        assert f"*feature_skew* {drifted}: ran, alert open" in json.dumps(digest.blocks)
        await bot.client.press_button("U0BOB", INFO, alert["ts"], "Ack")
        await bot.slack.wait_for(lambda: "Acked by <@U0BOB>" in _flat(_monitor_alerts(bot.slack, INFO, "feature_skew")[0]))

        clock.now += timedelta(days=1)  # the next day's skew is back under 0.2 on every feature
        await run_due(bot, clock.now)
        [resolved] = _monitor_alerts(bot.slack, INFO, "feature_skew")
        assert resolved["ts"] == alert["ts"] and resolved["edited"] and resolved["text"].endswith("resolved")
        assert not any(b["type"] == "actions" for b in resolved["blocks"])
        stored = bot.runtime.store.conn.execute(
            "SELECT run_date FROM datagen_reports WHERE job = 'feature_skew' ORDER BY run_date").fetchall()
        assert [d for (d,) in stored] == [str(drifted), str(drifted + timedelta(days=1))]

        await bot.client.command("U0ALICE", f"datagen {drifted} job=feature_skew")
        said = json.dumps(await bot.slack.wait_for(lambda: bot.slack.responses))
        assert "psi.item_ctr_7d" in said and "1 breach" in said

    # The same history backtested: the rule fired on one day of the two.
    result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(tmp_path / "mlops-bot.yaml"), "datagen",
                             "backtest", "--job", "feature_skew", "--days", "7"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "feature_skew: 2 reports" in result.stdout and re.search(r"feature_psi\s+1\s+\(50%\)", result.stdout)


async def test_a_source_monitor_whose_record_does_not_come_is_alerted_then_resolved_when_it_does(
        tmp_path: Path) -> None:
    records = tmp_path / "skew"
    records.mkdir()
    config = _config(tmp_path, {"online_skew": {"source": str(records / "{date}.json"), "grace_hours": 1,
                                                "schedule": {"cron": "*/30 * * * *", "tz": "UTC"}}})
    day = DAY.date()
    clock = Clock(datetime(2026, 12, 3, 0, 5, tzinfo=UTC))  # due at the day's first slot, 00:00, plus an hour's grace
    async with local_bot(config, clock=clock, start=False) as bot:
        await run_due(bot, clock.now)
        assert not _monitor_alerts(bot.slack, ERROR, "online_skew")  # not there yet, but within the grace
        clock.now += timedelta(hours=1)
        await run_due(bot, clock.now)
        [alert] = _monitor_alerts(bot.slack, ERROR, "online_skew")
        assert f"raw data not found: no monitor report for {day}" in _flat(alert)
        (records / f"{day}.json").write_text(json.dumps({"psi": {"user_age_days": 0.01}}))
        clock.now += timedelta(minutes=30)
        await run_due(bot, clock.now)
        [resolved] = _monitor_alerts(bot.slack, ERROR, "online_skew")
        assert resolved["ts"] == alert["ts"] and resolved["text"].endswith("resolved")


async def test_a_command_that_fails_or_prints_garbage_is_one_clear_alert_and_a_good_run_resolves_it(
        tmp_path: Path) -> None:
    broken = _script(tmp_path / "broken.sh", 'echo "connecting to the feature store" >&2\n'
                                             'echo "feature store unreachable: timeout" >&2\nexit 2')
    garbage = _script(tmp_path / "garbage.sh", "echo 'skew computed, see the dashboard'")
    slow = _script(tmp_path / "slow.sh", "sleep 30")
    hourly = {"cron": "0 * * * *", "tz": "UTC"}
    config = _config(tmp_path, {
        "broken": {"command": [broken], "schedule": hourly},
        "garbage": {"command": [garbage], "schedule": hourly},
        "slow": {"command": [slow], "schedule": hourly, "timeout_seconds": 0.3}})
    clock = Clock(DAY)
    async with local_bot(config, clock=clock, start=False) as bot:
        for _ in range(2):  # two slots fail alike: still one message each
            await run_due(bot, clock.now)
            clock.now += timedelta(hours=1)
        [alert] = _monitor_alerts(bot.slack, ERROR, "broken")
        text = _flat(alert)
        assert "monitor broken: command exited 2: connecting to the feature store / feature store unreachable" in text
        assert "Fix `monitors.broken.command`" in text and "Traceback" not in text
        [printed] = _monitor_alerts(bot.slack, ERROR, "garbage")
        assert "printed no JSON object" in _flat(printed) and "skew computed, see the dashboard" in _flat(printed)
        [stopped] = _monitor_alerts(bot.slack, ERROR, "slow")
        assert "command timed out after 0.3 s" in _flat(stopped)
        runs = [(r["model"], r["status"]) for r in bot.runtime.store.actions() if r["verb"] == "monitor.run"]
        assert sorted(runs) == [(name, "error") for name in ("broken", "broken", "garbage", "garbage", "slow", "slow")]

        _script(tmp_path / "broken.sh", """echo '{"psi": {"user_age_days": 0.01}}'""")  # fixed
        await run_due(bot, clock.now)
        [fixed] = _monitor_alerts(bot.slack, ERROR, "broken")
        assert fixed["ts"] == alert["ts"] and fixed["text"].endswith("resolved")
        assert len(_monitor_alerts(bot.slack, ERROR, "garbage")) == 1  # still failing, still one message


async def test_a_slow_monitor_holds_up_neither_the_start_nor_commands_and_a_stop_ends_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "slow.pid"
    slow = _script(tmp_path / "slow.sh", f"echo $$ > {pid_file}\nsleep 60")
    config = _config(tmp_path, {"slow": {"command": [slow], "schedule": {"cron": "0 * * * *", "tz": "UTC"},
                                         "timeout_seconds": 120}})
    async with local_bot(config, clock=Clock(DAY)) as bot:  # its start runs the slot due now
        assert "monitor slow" in bot.runtime.tasks.names  # started, and still running
        helped = await bot.client.command("U0ALICE", "help")
        assert helped.status == 200 and "/mlops deploy" in helped.body  # answered while the monitor runs
        pid = int(await bot.slack.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip()))
        bot.runtime.shutdown_grace = 0.2  # the stop waits this long for running work, then cancels it
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the command the monitor ran went with the bot


@pytest.mark.skipif(notebooks_missing() and os.environ.get("CI") != "true",
                    reason="papermill is not installed (the `notebooks` extra)")
async def test_a_notebook_monitor_runs_through_papermill(tmp_path: Path) -> None:
    assert not notebooks_missing(), "CI=true: install the `notebooks` extra"
    notebook = tmp_path / "ranking_metrics.ipynb"
    shutil.copy(ROOT / "examples" / "monitors" / "ranking_metrics.ipynb", notebook)
    floor = [{"id": "ndcg_floor", "kind": "bound", "metric": "ndcg_at_10", "lt": 0.99, "severity": "crit"}]
    daily = {"cron": "0 7 * * *", "tz": "UTC"}
    config = _config(tmp_path, {  # the record in the tagged cell's output, or in the file the notebook writes
        "ranking_metrics": {"notebook": str(notebook), "schedule": daily, "rules": floor},
        "ranking_file": {"notebook": str(notebook), "schedule": daily, "rules": floor,
                         "output_file": str(tmp_path / "ranking-{date}.json")}})
    clock = Clock(DAY)
    async with local_bot(config, clock=clock, start=False) as bot:
        await run_due(bot, clock.now)
        for name in ("ranking_metrics", "ranking_file"):
            [alert] = _monitor_alerts(bot.slack, ERROR, name)
            assert "ndcg_at_10" in _flat(alert) and "below 0.99" in _flat(alert)
            raw, source = bot.runtime.store.conn.execute(
                "SELECT raw, source FROM datagen_reports WHERE job = ?", (name,)).fetchone()
            record = json.loads(raw)
            assert record["run_date"] == str(DAY.date()) and record["sessions"] == 400 and source.startswith("notebook ")
        assert json.loads((tmp_path / f"ranking-{DAY.date()}.json").read_text()) == record
