"""Secrets never reach Slack through a retrain pipeline's output (issue 18, item 9).

A real pipeline script that prints `env` and echoes the bot's token, run by the command backend through the
whole bot (signed /mlops command, the Slack emulator, the real store), with every secret the bot reads set in
its environment. No secret value may appear in anything the bot sent to Slack, its audit rows and run rows,
its log or /metrics; a variable the model's `retrain.env` names does reach the pipeline.
"""
from __future__ import annotations

import json
import logging
import secrets
import shutil
import stat
from pathlib import Path

import aiohttp
import pytest
import yaml

from bot.config import ConfigError, Secrets, load_config
from bot.programs import SECRET_ENV
from bot.sandbox.local import BOT_TOKEN, SIGNING_SECRET, LocalBot, local_bot
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.support.airflow import free_port

FEATURE_STORE = "https://features.internal/team-ranker"

# What a careless training job does: dump its environment, then say which credentials it found.
PIPELINE = """#!/bin/sh
echo "training $MLOPS_MODEL (run $MLOPS_RUN_ID)"
env
echo "feature store: ${TEAM_FEATURE_STORE:-unset}"
echo "bot token: ${SLACK_BOT_TOKEN:-unset}"
echo "signing secret: ${SLACK_SIGNING_SECRET:-unset}"
echo "s3 secret: ${AWS_SECRET_ACCESS_KEY:-unset}"
env | grep -E '^(SLACK|AWS|AIRFLOW|MLOPS)_' | sort
sleep 1
echo "error: CUDA out of memory"
exit 3
"""


def model_config(tmp_path: Path, pipeline: Path, retrain_env: list[str]) -> dict:
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry, ignore=shutil.ignore_patterns("__pycache__"))
    model["registry"] = str(registry)
    model["environments"] = {
        env: {"repository": str(tmp_path / "repos" / env), "endpoints": [f"http://127.0.0.1:{free_port()}"]}
        for env in ("staging", "prod")
    }
    model["retrain"] = {"backend": "command", "command": [str(pipeline)], "env": retrain_env}
    return model


@pytest.fixture
def bot_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every secret the bot reads, set in its environment as `mlops-bot serve` would have them."""
    values = {name: f"{name.lower()}-{secrets.token_hex(12)}" for name in SECRET_ENV}
    # The bot really authenticates with these two, so they are the emulator's.
    values |= {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}
    values["SLACK_APP_TOKEN"] = f"xapp-1-A0SANDBOX-{secrets.token_hex(12)}"
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("TEAM_FEATURE_STORE", FEATURE_STORE)
    return values


def everything_the_bot_let_out(bot: LocalBot, metrics: str, log: str) -> dict[str, str]:
    slack = bot.slack
    store = bot.runtime.store
    return {
        "Slack API calls": json.dumps([{"method": c.method, "args": c.args} for c in slack.calls], default=str),
        "Slack messages and threads": json.dumps(slack.all_messages()),
        "ephemerals and response_url answers": json.dumps([slack.ephemerals, slack.responses]),
        "uploaded files": json.dumps(slack.files, default=repr),
        "audit rows": json.dumps(store.actions(), default=str),
        "retrain runs": json.dumps([dict(r) for r in store.db.query("SELECT * FROM retrain_runs")]),
        "log": log,
        "/metrics": metrics,
    }


async def test_a_pipeline_printing_env_leaks_no_secret(
    tmp_path: Path, bot_secrets: dict[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = tmp_path / "careless_train.sh"
    pipeline.write_text(PIPELINE)
    pipeline.chmod(pipeline.stat().st_mode | stat.S_IXUSR)
    # S3 credentials are what a real pipeline legitimately needs: passed on request, still never shown.
    model = model_config(tmp_path, pipeline, ["TEAM_FEATURE_STORE", "AWS_SECRET_ACCESS_KEY"])
    config = load_config(write_config(tmp_path, models={"ranker": model}, datagen={"jobs": {}}))
    caplog.set_level(logging.DEBUG)

    async with local_bot(config, secrets=Secrets.from_env()) as bot:
        assert (await bot.client.command("U0ALICE", "retrain ranker")).status == 200
        failed = await bot.slack.wait_for(lambda: next(
            (m for m in bot.slack.messages("C0MLOPS") if "Retrain ranker" in m["text"] and ": failed" in m["text"]),
            None), timeout=30)
        note = await bot.slack.wait_for(lambda: "\n".join(
            json.dumps(m["blocks"]) for m in bot.slack.replies("C0MLOPS", failed["ts"])
            if "CUDA out of memory" in json.dumps(m["blocks"])), timeout=10)
        async with aiohttp.ClientSession() as http, http.get(f"{bot.url}/metrics") as resp:
            metrics = await resp.text()
        seen = everything_the_bot_let_out(bot, metrics, caplog.text)

    leaks = [f"{name} in {where}" for name, value in bot_secrets.items() for where, text in seen.items()
             if value in text]
    assert not leaks, leaks
    shown = json.dumps(failed["blocks"]) + note
    # It is the pipeline's real output the bot showed; the bot's own credentials never reached it, the secret
    # retrain.env gave it is shown redacted, and the plain variable retrain.env names did reach it.
    assert "exited with code 3" in shown and "CUDA out of memory" in shown
    assert "bot token: unset" in shown and "signing secret: unset" in shown
    assert f"feature store: {FEATURE_STORE}" in shown, "models.ranker.retrain.env did not reach the pipeline"
    assert "s3 secret: [redacted]" in shown


def test_retrain_env_names_are_checked(tmp_path: Path) -> None:
    pipeline = tmp_path / "train.sh"
    model = model_config(tmp_path, pipeline, ["TEAM_FEATURE_STORE", "feature-store", "SLACK_BOT_TOKEN"])
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, models={"ranker": model}, datagen={"jobs": {}}))
    path = tmp_path / "mlops-bot.yaml"
    assert caught.value.problems == [
        f"{path}: models.ranker.retrain.env.1: expected an environment variable name like FEATURE_STORE_URL, "
        "got 'feature-store'",
        f"{path}: models.ranker.retrain.env.2: SLACK_BOT_TOKEN is the bot's own secret; a command the bot runs is never "
        "given it",
    ]
