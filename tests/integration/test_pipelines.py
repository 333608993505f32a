"""The pipeline watch against a real Airflow 3: failed runs alert with the failed task and its log tail, Retry from
Slack clears the failed tasks once, the alert follows the run to recovery; late runs, repeat failures counted,
and an Airflow that cannot be reached or a DAG that does not exist said once."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from bot.airflow import AirflowClient
from bot.config import Secrets, load_config
from bot.pipelines.messages import PipelineRef
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.render import render_message
from tests.conftest import Clock, write_config
from tests.support.airflow import AirflowStandalone, free_port

pytestmark = pytest.mark.airflow

CHANNEL = "C0ERROR"
T = TypeVar("T")


def _config(tmp_path: Path, base_url: str, dags: list[dict]):
    return load_config(write_config(tmp_path, airflow={"base_url": base_url, "auth": "token", "unpause": True},
                                    pipelines={"airflow": {"poll_seconds": 5, "dags": dags}}, datagen={"jobs": {}}))


@pytest.fixture
async def bot(airflow: AirflowStandalone, tmp_path: Path) -> AsyncIterator[LocalBot]:
    dags = [{"dag_id": "refresh_pagerank", "expected_by": "00:00", "tz": "UTC"}, {"dag_id": "train_broken"}]
    secrets = Secrets(airflow_username=airflow.username, airflow_password=airflow.password)
    clock = Clock(datetime.now(UTC))  # Airflow's runs happen now: the bot's clock agrees with Airflow's
    async with local_bot(_config(tmp_path, airflow.base_url, dags), secrets=secrets, clock=clock,
                         post_rate=100, post_burst=100) as running:
        yield running


async def polled(bot: LocalBot, found: Callable[[], T | None], timeout: float = 180) -> T:
    """Poll Airflow as the scheduled job does until `found()` gives something."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (result := found()) is None:
        assert asyncio.get_running_loop().time() < deadline, [render_message(m) for m in bot.slack.messages(CHANNEL)]
        await asyncio.sleep(1)
        bot.runtime.clock.now = datetime.now(UTC)  # type: ignore[attr-defined]
        await bot.runtime.pipelines.poll()
    return result


def saying(bot: LocalBot, *words: str) -> Callable[[], dict | None]:
    return lambda: next((m for m in bot.slack.messages(CHANNEL) if all(w in render_message(m) for w in words)), None)


def failures_said(text: str) -> int:
    """How many failures this week an alert says its task had (a first failure says nothing)."""
    found = re.search(r"(\d+)(?:st|nd|rd|th) failure this week", text)
    return int(found[1]) if found else 1


def buttons(message: dict) -> list[str]:
    return [e["text"]["text"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


async def test_a_failed_run_alerts_with_its_log_and_recovers_after_retry_from_slack(
        bot: LocalBot, airflow: AirflowStandalone) -> None:
    # Due by midnight UTC and never run: late on the first look.
    late = await polled(bot, saying(bot, "Pipeline late", "refresh_pagerank"))
    assert "has no successful run for" in render_message(late)

    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password) as client:
        run_id = await client.trigger("refresh_pagerank", {}, unpause=True)
    card = await polled(bot, saying(bot, "Pipeline failed", run_id))
    shown = render_message(card)
    assert "`refresh` failed on try 1" in shown
    assert "pagerank source timed out after reading 1200 edges (try 1)" in shown  # the failed try's log tail
    assert "open in Airflow" in shown
    assert buttons(card) == ["Retry failed tasks", "Ack", "Silence 24h", "Mark refresh success"]

    # Retry pressed twice (by two people): the failed tasks are cleared once.
    await bot.client.press_button("U0ALICE", CHANNEL, card["ts"], "Retry failed tasks")
    await bot.client.press_button("U0BOB", CHANNEL, card["ts"], "Retry failed tasks")
    await bot.slack.wait_for(lambda: [m for m in bot.slack.ephemerals if "Already done" in m["text"]], timeout=30)
    retried = await bot.slack.wait_for(saying(bot, "Retrying", run_id), timeout=30)
    assert "failed tasks cleared by @U0ALICE" in render_message(retried) and not buttons(retried)
    retries = [r for r in bot.runtime.store.actions() if r["verb"] == "pipelines.retry"]
    # The second press's row and the first's work race each other: their order in the log is not the point.
    assert sorted((r["actor"], r["status"]) for r in retries) == [("U0ALICE", "accepted"), ("U0ALICE", "ok"),
                                                                  ("U0BOB", "duplicate")]
    assert retries[-1]["detail"]["cleared"] == ["refresh"]

    recovered = await polled(bot, saying(bot, "Recovered", run_id))
    assert recovered["ts"] == card["ts"] and not buttons(recovered)  # the same message, edited in place
    # Ack and Silence pressed on a copy of the card from before it recovered: nothing to do, said and audited.
    for label, act in (("Ack", bot.runtime.pipelines.ack), ("Silence 24h", bot.runtime.pipelines.silence)):
        ref = PipelineRef.model_validate_json(next(e["value"] for b in card["blocks"] if b["type"] == "actions"
                                                   for e in b["elements"] if e["text"]["text"] == label))
        assert "Nothing to do" in await act(ref.alert, ref.failure, "U0CAROL")
    refused = [r["verb"] for r in bot.runtime.store.actions() if r["actor"] == "U0CAROL" and r["status"] == "refused"]
    assert refused == ["pipelines.ack", "pipelines.silence"]
    on_time = await polled(bot, saying(bot, "on time again", "refresh_pagerank"))
    assert on_time["ts"] == late["ts"]
    assert len([m for m in bot.slack.messages(CHANNEL) if "refresh_pagerank" in render_message(m)]) == 2

    # The on-call handoff's shift summary, from the bot's own records: the incident, who retried it, closed.
    now = datetime.now(UTC)
    summary = bot.runtime.oncall.summary(now - timedelta(hours=1), now + timedelta(minutes=1), now)
    [incident] = [i for i in summary.pipeline_incidents if "(refresh)" in i.title]
    assert (incident.retried_by, incident.still_open) == ("U0ALICE", False)
    assert [i.still_open for i in summary.pipeline_incidents if "late" in i.title] == [False]


async def test_a_task_that_keeps_failing_is_counted_and_an_upstream_skip_is_said(
        bot: LocalBot, airflow: AirflowStandalone) -> None:
    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password) as client:
        run_ids = [await client.trigger("train_broken", {}, unpause=True) for _ in range(3)]
    await polled(bot, lambda: all(saying(bot, "Pipeline failed", r)() for r in run_ids) or None)
    # Every failed run of the task the bot has seen this week counts, this session's earlier ones included.
    seen = bot.runtime.store.conn.execute(
        "SELECT count(DISTINCT run_id) FROM pipeline_failures WHERE dag_id = 'train_broken' AND task_id = 'train'"
    ).fetchone()[0]
    assert seen >= 3
    counts = sorted(failures_said(render_message(saying(bot, r)() or {})) for r in run_ids)
    assert counts == [seen - 2, seen - 1, seen]
    assert "training diverged after 1000 rows: loss is NaN" in render_message(saying(bot, run_ids[0])())


async def test_mark_success_asks_an_approver_why_then_marks_the_task_and_the_run_and_resolves_in_place(
        bot: LocalBot, airflow: AirflowStandalone) -> None:
    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password) as client:
        run_id = await client.trigger("train_broken", {}, unpause=True)
        card = await polled(bot, saying(bot, "Pipeline failed", run_id))
        assert "Mark train success" in buttons(card)

        await bot.client.press_button("U0ALICE", CHANNEL, card["ts"], "Mark train success")  # a deployer only
        await bot.slack.wait_for(lambda: [m for m in bot.slack.ephemerals if "approvers" in m["text"]], timeout=30)
        assert not bot.slack.views
        await bot.client.press_button("U0BOB", CHANNEL, card["ts"], "Mark train success")
        view = (await bot.slack.wait_for(lambda: bot.slack.views, timeout=30))[-1]["view"]
        assert view["callback_id"] == "pipelines.mark_success"
        await bot.client.submit_view("U0BOB", view, {"reason": {"reason": "retrained by hand, v7 published"}})

        marked = await bot.slack.wait_for(saying(bot, "Marked success", run_id), timeout=60)
        assert marked["ts"] == card["ts"] and not buttons(marked)  # edited in place, nothing left to press
        assert "`train` marked success by @U0BOB: retrained by hand, v7 published" in render_message(marked)
        # Airflow leaves a run failed when its task is marked success: the bot marked the run as well.
        assert (await client.dag_run("train_broken", run_id))["state"] == "success"
        states = {ti["task_id"]: ti["state"] for ti in await client.task_instances("train_broken", run_id)}
        assert states == {"load_features": "success", "train": "success"}
    [row] = [r for r in bot.runtime.store.actions() if r["verb"] == "pipelines.mark_success"]
    assert (row["actor"], row["status"], row["detail"]["reason"]) == ("U0BOB", "ok", "retrained by hand, v7 published")
    await bot.runtime.pipelines.poll()  # Airflow now reports the run a success: the alert stays as it is
    assert render_message(saying(bot, run_id)() or {}) == render_message(marked)


async def test_airflow_down_is_said_once_and_resolved_and_an_unknown_dag_once(tmp_path: Path,
                                                                            airflow: AirflowStandalone) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    secrets = Secrets(airflow_username="mlops", airflow_password="x")
    config = _config(tmp_path, down, [{"dag_id": "refresh_pagerank"}])
    async with local_bot(config, secrets=secrets, clock=Clock(datetime.now(UTC)), post_rate=100, post_burst=100) as bot:
        for _ in range(4):
            await bot.runtime.pipelines.poll()
        [said] = bot.slack.messages(CHANNEL)
        assert "cannot check its watched pipelines: cannot reach Airflow" in render_message(said)

    real = Secrets(airflow_username=airflow.username, airflow_password=airflow.password)
    config = _config(tmp_path, airflow.base_url, [{"dag_id": "refresh_pagerank"}, {"dag_id": "refresh_pagernak"}])
    async with local_bot(config, secrets=real, clock=Clock(datetime.now(UTC)), post_rate=100, post_burst=100) as bot:
        for _ in range(3):
            await bot.runtime.pipelines.poll()
        texts = [render_message(m) for m in bot.slack.messages(CHANNEL)]
        # The first bot's message, brought in line (posted anew: this emulator never saw the first one).
        assert len([t for t in texts if t.startswith(":white_check_mark: The bot reaches Airflow again")]) == 1
        [missing] = [t for t in texts if "refresh_pagernak" in t]
        assert "404" in missing and "pipelines.airflow.dags" in missing


async def test_a_silenced_pipeline_keeps_its_failures_without_posting_them(bot: LocalBot,
                                                                           airflow: AirflowStandalone) -> None:
    delivery = await bot.client.command("U0BOB", "silence pipeline train_broken 2h", channel="C0MLOPS")
    assert not delivery.body  # taken: answered in the channel
    await bot.slack.wait_for(lambda: [m for m in bot.slack.messages("C0MLOPS") if "pipeline `train_broken`" in m["text"]])
    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password) as client:
        run_id = await client.trigger("train_broken", {}, unpause=True)

    def stored() -> str | None:
        rows = bot.runtime.store.query("SELECT state FROM alerts WHERE source = 'pipelines' AND key = ?",
                                       (f"train_broken:{run_id}",))
        return rows[0]["state"] if rows else None

    assert await polled(bot, stored) == "silenced"
    assert not [m for m in bot.slack.messages(CHANNEL) if run_id in render_message(m)]


def test_check_config_online_names_a_watched_dag_that_airflow_does_not_have(tmp_path: Path,
                                                                           airflow: AirflowStandalone) -> None:
    dags = [{"dag_id": "refresh_pagerank"}, {"dag_id": "refresh_pagernak"}]
    path = write_config(tmp_path, airflow={"base_url": airflow.base_url, "auth": "token"},
                        pipelines={"airflow": {"dags": dags}})
    env = {**os.environ, "AIRFLOW_USERNAME": airflow.username, "AIRFLOW_PASSWORD": airflow.password}
    result = subprocess.run([sys.executable, "-m", "bot.cli", "check-config", "--online", str(path)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}: pipelines.airflow.dags.1.dag_id: Airflow has no DAG 'refresh_pagernak' (404")
    assert "pipelines.airflow.dags" in line  # what to fix
