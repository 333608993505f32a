"""Retraining from Slack with the command backend: signed commands and button presses through the Slack
emulator, the real example pipelines as processes, a copy of the example registry, the real SQLite store."""
from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.config import load_config
from bot.retrain.command import CommandRun, process_group_alive
from bot.sandbox.local import LocalBot, local_bot
from bot.store import utcnow
from tests.conftest import EXAMPLE_CONFIG, ROOT, Clock, write_config
from tests.support.airflow import free_port

TRAIN = str(ROOT / "examples" / "pipelines" / "train.sh")
TRAIN_FAILS = str(ROOT / "examples" / "pipelines" / "train_fails.sh")

BotFactory = Callable[..., AbstractAsyncContextManager[LocalBot]]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry, ignore=shutil.ignore_patterns("__pycache__"))
    return registry


@pytest.fixture
def make_bot(tmp_path: Path, registry: Path) -> BotFactory:
    """`make_bot(command=[...])`: the example bot whose ranker retrains with `command` (or with `retrain`,
    a whole retrain section, None for none), its state always in the same store."""

    def factory(command: list[str] | None = None, retrain: dict | None | bool = True, clock=utcnow,
                **top_level) -> AbstractAsyncContextManager[LocalBot]:
        model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
        model["registry"] = str(registry)
        # Nothing listens on the staging port: a deploy gets as far as loading and then fails cleanly.
        model["environments"] = {
            env: {"repository": str(tmp_path / "repos" / env), "endpoints": [f"http://127.0.0.1:{free_port()}"]}
            for env in ("staging", "prod")
        }
        model["retrain"] = {"backend": "command", "command": command or [TRAIN, "15"]} if retrain is True else retrain
        if retrain is None:
            del model["retrain"]
        path = write_config(tmp_path, models={"ranker": model}, **{"datagen": {"jobs": {}}, **top_level})
        return local_bot(load_config(path), clock=clock)

    return factory


@pytest.fixture
async def bot(make_bot: BotFactory) -> AsyncIterator[LocalBot]:
    async with make_bot() as running:
        yield running


def cards(bot: LocalBot) -> list[dict]:
    return [m for m in bot.slack.messages("C0MLOPS") if "retrain-" in json.dumps(m["blocks"])]


async def card_saying(bot: LocalBot, words: str, timeout: float = 30) -> dict:
    return await bot.slack.wait_for(lambda: next((c for c in cards(bot) if words in c["text"]), None), timeout=timeout)


def thread(bot: LocalBot, card: dict) -> str:
    return "\n".join(json.dumps(m["blocks"]) for m in bot.slack.replies("C0MLOPS", card["ts"]))


async def thread_saying(bot: LocalBot, card: dict, words: str, timeout: float = 10) -> str:
    """The card's thread once it says `words` (the card is edited just before its thread note is posted)."""
    return await bot.slack.wait_for(lambda: text if words in (text := thread(bot, card)) else "", timeout)


def audit(bot: LocalBot, verb: str, status: str | None = None) -> list[dict]:
    return [r for r in bot.runtime.store.actions() if r["verb"] == verb and status in (None, r["status"])]


def runs(bot: LocalBot) -> list[dict]:
    return [dict(r) for r in bot.runtime.store.db.query("SELECT * FROM retrain_runs ORDER BY id")]


async def ephemeral(bot: LocalBot, words: str, timeout: float = 15) -> str:
    return await bot.slack.wait_for(
        lambda: next((e["text"] for e in bot.slack.ephemerals if words in e["text"]), None), timeout=timeout)


async def test_retrain_to_a_ready_version_then_deploy_it_to_staging(bot: LocalBot, registry: Path) -> None:
    # Long enough (15 x 0.2 s) that the follower, polling every 0.5 s, sees it running and shows its output on the card.
    assert (await bot.client.command("U0ALICE", "retrain ranker epochs=15")).status == 200

    ready = await card_saying(bot, "is ready")
    [run] = runs(bot)
    version = registry / "ranker" / run["version"]
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["pipeline_run_id"] == run["run_id"]
    assert ready["text"] == f"ranker {run['version']} is ready"
    blocks = json.dumps(ready["blocks"])
    assert "Offline metrics" in blocks and f"auc `{metadata['metrics']['auc']:g}`" in blocks
    assert "<@U0ALICE>" in blocks and "`epochs=15`" in blocks
    replies = await thread_saying(bot, ready, "is ready")
    assert "running" in replies and "is ready" in replies
    # While it ran, the card (edited in place) showed the pipeline's latest output.
    edits = [json.dumps(c.args.get("blocks")) for c in bot.slack.calls_to("chat.update") if c.args.get("ts") == ready["ts"]]
    assert any("running" in e and "epoch" in e for e in edits)
    assert [r["status"] for r in audit(bot, "retrain")] == ["accepted", "started", "succeeded"]
    assert audit(bot, "retrain", "succeeded")[0]["version"] == run["version"]

    await bot.client.press_button("U0BOB", "C0MLOPS", ready["ts"], "Deploy to staging")

    started = await bot.slack.wait_for(lambda: audit(bot, "deploy", "started"), timeout=30)
    assert started[0]["actor"] == "U0BOB" and started[0]["version"] == run["version"]
    assert any(m["text"].startswith(f"ranker {run['version']} staging") for m in bot.slack.messages("C0MLOPS"))
    # No Triton listens on staging here: the deploy fails, and says so, without touching the retrain card.
    assert "failed" in await ephemeral(bot, f"deploy of ranker {run['version']}", timeout=60)


async def test_deploy_to_staging_pressed_twice_deploys_once(bot: LocalBot) -> None:
    await bot.client.command("U0ALICE", "retrain ranker epochs=1")
    ready = await card_saying(bot, "is ready")
    # A double click, then a second person on the same card, then the first again after the deploy ended.
    await bot.client.press_button("U0BOB", "C0MLOPS", ready["ts"], "Deploy to staging")
    await bot.client.press_button("U0BOB", "C0MLOPS", ready["ts"], "Deploy to staging")
    await bot.client.press_button("U0ALICE", "C0MLOPS", ready["ts"], "Deploy to staging")
    assert "Already done: <@U0BOB> pressed that" in await ephemeral(bot, "Already done")
    await ephemeral(bot, "deploy of ranker", timeout=60)  # the one deploy ends (no Triton listens here)
    await bot.client.press_button("U0BOB", "C0MLOPS", ready["ts"], "Deploy to staging")
    await bot.slack.wait_for(lambda: len(audit(bot, "retrain.deploy", "duplicate")) == 3)
    assert len(audit(bot, "deploy", "started")) == 1
    assert [r["actor"] for r in audit(bot, "retrain.deploy", "accepted")] == ["U0BOB"]


async def test_a_failing_pipeline_shows_its_exit_code_and_last_lines_and_pages_on_call(make_bot: BotFactory) -> None:
    async with make_bot(command=[TRAIN_FAILS]) as bot:
        await bot.client.command("U0ALICE", "retrain ranker")

        failed = await card_saying(bot, ": failed")
        blocks = json.dumps(failed["blocks"])
        assert "exited with code 3" in blocks and "no partition for today" in blocks
        assert "Retrain again" in blocks and "Deploy to staging" not in blocks
        note = await thread_saying(bot, failed, "Retrain ranker failed")
        assert "rerun datagen first" in note
        assert "<!subteam^S0ONCALL>" in note
        [row] = audit(bot, "retrain", "failed")
        assert row["detail"]["detail"] == "exited with code 3"


async def test_one_run_per_model_unless_forced_and_cancel_stops_it(bot: LocalBot, registry: Path) -> None:
    await bot.client.command("U0ALICE", "retrain ranker epochs=100")
    first = await card_saying(bot, ": running")

    await bot.client.command("U0BOB", "retrain ranker")
    refusal = await ephemeral(bot, "already retraining")
    [run] = runs(bot)
    assert run["run_id"] in refusal and "<@U0ALICE>" in refusal and "force=true" in refusal
    assert audit(bot, "retrain", "refused")[0]["actor"] == "U0BOB"

    await bot.client.command("U0BOB", "retrain ranker epochs=100 force=true")
    await bot.slack.wait_for(lambda: len(runs(bot)) == 2 and len(cards(bot)) == 2)

    await bot.client.command("U0CAROL", "retrain ranker cancel")  # the newest run in flight
    await ephemeral(bot, "Cancelling retrain")
    await bot.client.press_button("U0ALICE", "C0MLOPS", first["ts"], "Cancel")

    await bot.slack.wait_for(lambda: len(audit(bot, "retrain", "cancelled")) == 2, timeout=20)
    assert sorted(r["actor"] for r in audit(bot, "retrain", "cancelled")) == ["U0ALICE", "U0CAROL"]
    for row in runs(bot):
        assert row["state"] == "cancelled"
        assert not process_group_alive(CommandRun.attach(Path(json.loads(row["handle"])["run_dir"])).pgid)
    await bot.slack.wait_for(lambda: "Cancelled by <@U0ALICE>" in json.dumps(bot.slack.find_message("C0MLOPS", first["ts"])))
    assert sorted(p.name for p in (registry / "ranker").iterdir()) == ["v1", "v2", "v3", "v4"]

    await bot.client.command("U0ALICE", "retrain ranker cancel")
    assert "nothing to cancel" in await ephemeral(bot, "no retrain of ranker is running")


async def test_a_restarted_bot_follows_the_run_to_its_end(make_bot: BotFactory) -> None:
    async with make_bot() as bot:
        await bot.client.command("U0ALICE", "retrain ranker epochs=10")
        await card_saying(bot, ": running")
        [before] = runs(bot)

    async with make_bot() as bot:  # same store, a new process's worth of bot and a fresh Slack
        ready = await card_saying(bot, "is ready")
        [after] = runs(bot)
        assert after["run_id"] == before["run_id"] and after["state"] == "success"
        assert "following this run again" in thread(bot, ready)
        assert [r["status"] for r in audit(bot, "retrain") if r["status"] != "accepted"] == ["started", "succeeded"]


async def test_bad_requests_are_answered_and_audited_without_starting_anything(make_bot: BotFactory) -> None:
    missing = str(ROOT / "examples" / "pipelines" / "no_such_pipeline.sh")
    unreachable = {"base_url": f"http://127.0.0.1:{free_port()}", "auth": "none", "poll_seconds": 1}
    async with make_bot(command=[missing]) as bot:
        answer = (await bot.client.command("U0ALICE", "retrain rankr")).json()  # answered in the ack
        assert "unknown model `rankr`; known models: ranker" in answer["text"]
        assert answer["response_type"] == "ephemeral"

        answer = (await bot.client.command("U0ALICE", "retrain ranker now please")).json()
        assert "unexpected words: now please" in answer["text"] and "Usage:" in answer["text"]

        await bot.client.command("U0ALICE", "retrain ranker")
        text = await ephemeral(bot, "could not start retraining ranker")
        assert "command not found" in text and "models.ranker.retrain.command" in text

        assert [r["status"] for r in audit(bot, "retrain")] == ["invalid", "invalid", "accepted", "failed"]
        assert runs(bot) == [] and cards(bot) == []

    async with make_bot(retrain=None) as bot:
        answer = (await bot.client.command("U0ALICE", "retrain ranker")).json()
        assert "ranker has no retrain pipeline; add `models.ranker.retrain`" in answer["text"]

    async with make_bot(retrain={"backend": "airflow", "dag_id": "train_model"}, airflow=unreachable) as bot:
        await bot.client.command("U0ALICE", "retrain ranker")
        assert "cannot reach Airflow" in await ephemeral(bot, "could not start retraining ranker", timeout=30)
        assert runs(bot) == [] and audit(bot, "retrain", "failed")


async def test_the_status_card_retrains_and_a_run_past_its_time_limit_is_stopped(make_bot: BotFactory,
                                                                              registry: Path) -> None:
    shift = timedelta(0)
    async with make_bot(command=[TRAIN, "15", "epochs=100"], clock=lambda: utcnow() + shift) as bot:
        await bot.client.command("U0ALICE", "status ranker")
        shown = await bot.slack.wait_for(
            lambda: next((e for e in bot.slack.ephemerals if "Retrain" in json.dumps(e["blocks"])), None))
        await bot.client.press_button("U0BOB", "C0MLOPS", shown["ts"], "Retrain")
        card = await card_saying(bot, ": running")
        assert "<@U0BOB>" in json.dumps(card["blocks"])

        shift = timedelta(minutes=721)  # past the default 720-minute limit
        failed = await card_saying(bot, ": failed")
        assert "timed out after 720 minutes" in json.dumps(failed["blocks"])
        [run] = runs(bot)
        assert not process_group_alive(CommandRun.attach(Path(json.loads(run["handle"])["run_dir"])).pgid)
        assert audit(bot, "retrain", "failed")[0]["detail"]["detail"].startswith("timed out after 720 minutes")
        assert sorted(p.name for p in (registry / "ranker").iterdir()) == ["v1", "v2", "v3", "v4"]


async def test_a_datagen_alert_retrains_the_models_trained_on_its_data(make_bot: BotFactory, tmp_path: Path) -> None:
    job = {"source": str(tmp_path / "{date}.json"), "models": ["ranker"]}
    async with make_bot(datagen={"jobs": {"recsys": job}}) as bot:
        day = date(2026, 11, 21)
        await bot.runtime.datagen.ingest("recsys", day, "{not json", "the job's output", actor="datagen")
        alert = await bot.slack.wait_for(lambda: next((m for m in bot.slack.messages("C0ERROR")
                                                       if m["text"].startswith(f"datagen recsys {day}")), None))
        # U0DAVE is no deployer, and unknown to this workspace, so the ephemeral fails: the refusal goes back
        # through the press's response_url instead.
        await bot.client.press_button("U0DAVE", "C0ERROR", alert["ts"], "Retrain ranker")
        refused = await bot.slack.wait_for(lambda: [e["text"] for e in bot.slack.ephemerals if e["user"] == "U0DAVE"])
        assert "You need the *deployers* role" in refused[0]

        await bot.client.press_button("U0ALICE", "C0ERROR", alert["ts"], "Retrain ranker")
        ready = await bot.slack.wait_for(
            lambda: next(
                (m for m in bot.slack.messages("C0ERROR") if "retrain-" in json.dumps(m["blocks"]) and "is ready" in m["text"]),
                None,
            ),
            timeout=30,
        )
        assert f"reason: datagen recsys alert {day}" in json.dumps(ready["blocks"]) and "<@U0ALICE>" in json.dumps(
            ready["blocks"]
        )
        assert [r["status"] for r in audit(bot, "retrain")] == ["started", "succeeded"]
        assert [r["status"] for r in audit(bot, "datagen.retrain.0")] == ["denied", "accepted"]

        # A card posted before the config stopped listing a model: its button is refused, with what to do.
        stale = json.dumps({"job": "recsys", "run_date": str(day), "model": "ranker-old"})
        await bot.client.press("U0ALICE", "datagen.retrain.0", stale, channel="C0ERROR", message_ts=alert["ts"])
        told = await bot.slack.wait_for(lambda: [e["text"] for e in bot.slack.ephemerals if "ranker-old" in e["text"]])
        assert "use `/mlops retrain ranker-old`" in told[0]
        assert [r["status"] for r in audit(bot, "datagen.retrain.0")] == ["denied", "accepted", "accepted", "refused"]


async def test_a_scheduled_retrain_runs_once_per_slot_and_waits_while_its_data_is_broken(make_bot: BotFactory,
                                                                                          tmp_path: Path) -> None:
    # Every day at 03:00 in Kolkata (21:30 UTC the day before), as the model's owner (U0ALICE) would start it.
    retrain = {"backend": "command", "command": [TRAIN, "15"], "schedule": {"cron": "0 3 * * *", "tz": "Asia/Kolkata"}}
    datagen = {"jobs": {"recsys": {"source": str(tmp_path / "{date}.json"), "models": ["ranker"]}}}
    clock = Clock(datetime(2026, 12, 1, 21, 29, tzinfo=UTC))
    async with make_bot(retrain=retrain, clock=clock, datagen=datagen) as bot:
        await bot.runtime.scheduler.run_due()
        assert runs(bot) == []  # a minute early
        clock.now = datetime(2026, 12, 1, 21, 31, tzinfo=UTC)
        await bot.runtime.scheduler.run_due()
        await bot.runtime.scheduler.run_due()  # the same slot again: claimed already
        ready = await card_saying(bot, "is ready")
        [run] = runs(bot)
        assert run["requested_by"] == "U0ALICE" and run["reason"].startswith("scheduled (0 3 * * *, Asia/Kolkata)")
        assert "<@U0ALICE>" in json.dumps(ready["blocks"])

    async with make_bot(retrain=retrain, clock=clock, datagen=datagen) as bot:  # a restart inside the slot's grace
        await bot.runtime.scheduler.run_due()
        assert len(runs(bot)) == 1

        # The next day the data is broken: an open critical datagen alert holds the slot back, said in the channel.
        await bot.runtime.datagen.ingest("recsys", date(2026, 12, 2), "{not json", "the job's output", actor="datagen")
        assert bot.runtime.store.query("SELECT severity FROM alerts WHERE source = 'datagen'") == [{"severity": "crit"}]
        clock.now = datetime(2026, 12, 2, 21, 35, tzinfo=UTC)
        await bot.runtime.scheduler.run_due()
        skipped = await bot.slack.wait_for(lambda: next(
            (m["text"] for m in bot.slack.messages("C0MLOPS") if "scheduled retrain of *ranker*" in m["text"]), None))
        assert "was skipped: datagen `recsys` has an open critical alert (2026-12-02)" in skipped
        assert len(runs(bot)) == 1
        assert [r["status"] for r in audit(bot, "retrain") if r["actor"] == "mlops-bot"] == ["skipped"]
