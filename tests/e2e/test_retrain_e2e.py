"""Retraining through a real Airflow 3: `/mlops retrain` through the Slack emulator triggers the DAG, the card
follows its tasks, and the run's new version (or its failed task) comes back to Slack."""
from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bot.airflow import AirflowClient
from bot.config import Secrets, load_config
from bot.retrain.status import airflow_status
from bot.sandbox.local import LocalBot, local_bot
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.integration.test_retrain import audit, card_saying, cards, ephemeral, runs, thread, thread_saying
from tests.support.airflow import AirflowStandalone, free_port

pytestmark = pytest.mark.airflow


@pytest.fixture
def config_path(airflow: AirflowStandalone, tmp_path: Path) -> Path:
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry, ignore=shutil.ignore_patterns("__pycache__"))
    base = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    base["registry"] = str(registry)
    base["environments"] = {env: {"repository": str(tmp_path / "repos" / env),
                                  "endpoints": [f"http://127.0.0.1:{free_port()}"]} for env in ("staging", "prod")}
    models = {name: {**base, "retrain": {"backend": "airflow", "dag_id": dag}}
              for name, dag in (("ranker", "train_model"), ("scorer", "train_broken"), ("ghost", "train_rankr"))}
    settings = {"base_url": airflow.base_url, "auth": "token", "unpause": True, "poll_seconds": 1}
    return write_config(tmp_path, models=models, airflow=settings, datagen={"jobs": {}})


@pytest.fixture
async def bot(airflow: AirflowStandalone, config_path: Path) -> AsyncIterator[LocalBot]:
    secrets = Secrets(airflow_username=airflow.username, airflow_password=airflow.password)
    async with local_bot(load_config(config_path), secrets=secrets) as running:
        yield running


async def test_airflow_runs_end_on_a_ready_card_or_on_the_failed_task(bot: LocalBot, airflow: AirflowStandalone,
                                                                      tmp_path: Path) -> None:
    await bot.client.command("U0ALICE", "retrain ranker epochs=1")
    await bot.client.command("U0BOB", "retrain scorer")

    ready, failed = await asyncio.gather(card_saying(bot, "is ready", timeout=240),
                                         card_saying(bot, ": failed", timeout=240))

    # The ready card: the version the Airflow run published, found by its run id.
    ranker = next(r for r in runs(bot) if r["model"] == "ranker")
    assert ready["text"] == f"ranker {ranker['version']} is ready"
    metadata = json.loads((tmp_path / "registry" / "ranker" / ranker["version"] / "metadata.json").read_text())
    assert metadata["pipeline_run_id"] == ranker["run_id"]
    assert "Deploy to staging" in json.dumps(ready["blocks"])
    blocks = json.dumps(ready["blocks"])
    assert "`check_inputs` success" in blocks and "`train` success" in blocks and "Open the run in Airflow" in blocks
    assert ":gear: running" in thread(bot, ready)  # a state change seen on the way
    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password) as client:
        seen = await airflow_status(client, "train_model", ranker["run_id"])
    assert seen.state == "success" and seen.tasks == [("check_inputs", "success"), ("train", "success")]

    # The failure: the failed task, its log's last lines, the Airflow link and on-call.
    note = await thread_saying(bot, failed, "Retrain scorer failed")
    assert "Failed tasks: `train`" in note
    assert "RuntimeError: training diverged after 1000 rows: loss is NaN" in note
    assert "Open the run in Airflow" in note and "<!subteam^S0ONCALL>" in note
    assert {(r["model"], r["status"]) for r in audit(bot, "retrain") if r["status"] in ("succeeded", "failed")} == {
        ("ranker", "succeeded"), ("scorer", "failed")}


async def test_an_unknown_dag_is_named_and_nothing_is_started(bot: LocalBot) -> None:
    await bot.client.command("U0ALICE", "retrain ghost")

    text = await ephemeral(bot, "could not start retraining ghost", timeout=30)
    assert "no DAG 'train_rankr'" in text and "retrain.dag_id" in text
    assert runs(bot) == [] and cards(bot) == []
    assert audit(bot, "retrain", "failed")[0]["detail"]["error"].startswith("Airflow has no DAG")


async def test_rejected_credentials_name_the_settings_to_fix(airflow: AirflowStandalone, config_path: Path) -> None:
    secrets = Secrets(airflow_username=airflow.username, airflow_password="not-the-password")
    async with local_bot(load_config(config_path), secrets=secrets) as bot:
        await bot.client.command("U0ALICE", "retrain ranker")

        text = await ephemeral(bot, "could not start retraining ranker", timeout=30)
        assert "(401)" in text and "AIRFLOW_USERNAME and AIRFLOW_PASSWORD" in text
        assert runs(bot) == [] and cards(bot) == [] and audit(bot, "retrain", "failed")
