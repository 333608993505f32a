"""Options a verb does not understand are refused before anything runs, and `dry_run=true` on every verb that
changes something answers with its plan and changes nothing: signed commands through the Slack emulator,
real tritonservers for the release verbs, the example pipeline as a process, the real SQLite store."""
from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bot.config import load_config
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.triton import Fleet
from tests.conftest import EXAMPLE_CONFIG, ROOT, staging_and_prod, write_config
from tests.support.airflow import free_port

MONDAY_10_LA = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # inside deploy hours
TABLES = ("releases", "environments", "locks", "operations", "silences", "retrain_runs")
DRY = "*Dry run*: "
REFUSED = ":warning: would be refused: "


class Clock:
    """Real time moved to a chosen instant, so the deploy-hour rules see a Monday morning."""

    def __init__(self, at: datetime):
        self.offset = at - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def ranker(registry: Path, environments: dict[str, dict]) -> dict:
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model["registry"] = str(registry)
    model["environments"] = environments
    model["retrain"]["command"][0] = str(ROOT / "examples" / "pipelines" / "train.sh")
    return model


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    copy = tmp_path / "registry"  # the pipeline publishes into it
    shutil.copytree(ROOT / "examples" / "registry", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(scope="module")
def triton(tmp_path_factory) -> Iterator[tuple[dict[str, Path], dict[str, TritonServer]]]:
    if reason := triton_missing():
        if os.environ.get("CI") == "true":  # CI installs the triton extra: missing there is a broken build
            pytest.fail(f"tritonserver is needed for the release dry runs: {reason}")
        pytest.skip(reason)
    with staging_and_prod(tmp_path_factory.mktemp("options")) as running:
        yield running


@pytest.fixture
async def release_bot(triton, registry: Path, tmp_path: Path) -> AsyncIterator[LocalBot]:
    repos, servers = triton
    envs = {env: {"repository": str(repos[env]), "endpoints": [servers[env].url]} for env in repos}
    path = write_config(tmp_path, models={"ranker": ranker(registry, envs)}, datagen={"jobs": {}}, oncall={"rotations": []})
    async with local_bot(load_config(path), clock=Clock(MONDAY_10_LA)) as running:
        yield running
    async with Fleet([s.url for s in servers.values()]) as fleet:
        await fleet.unload("ranker")
    for repo in repos.values():
        shutil.rmtree(repo / "ranker", ignore_errors=True)


@pytest.fixture
async def bot(registry: Path, tmp_path: Path) -> AsyncIterator[LocalBot]:
    """No Triton: nothing listens on the endpoints, which retrain and silence never call."""
    envs = {env: {"repository": str(tmp_path / "repos" / env), "endpoints": [f"http://127.0.0.1:{free_port()}"]}
            for env in ("staging", "prod")}
    path = write_config(tmp_path, models={"ranker": ranker(registry, envs)}, datagen={"jobs": {}}, oncall={"rotations": []})
    async with local_bot(load_config(path), clock=Clock(MONDAY_10_LA), post_rate=100, post_burst=100) as running:
        yield running


def state(bot: LocalBot) -> dict[str, list[dict]]:
    return {table: bot.runtime.store.query(f"SELECT * FROM {table} ORDER BY rowid") for table in TABLES}


def audit(bot: LocalBot, verb: str | None = None, status: str | None = None) -> list[dict]:
    """People's rows (the scheduler's, such as the daily digest posted at this hour, are the bot's own)."""
    return [r for r in bot.runtime.store.actions() if r["actor"] != "mlops-bot" and verb in (None, r["verb"])
            and status in (None, r["status"])]


async def answer(bot: LocalBot, user: str, text: str) -> str:
    """What the person sees: the ack's own reply, else the next ephemeral."""
    before = len(bot.slack.ephemerals)
    delivery = await bot.client.command(user, text)
    assert delivery.status == 200
    if delivery.body:
        return delivery.json()["text"]
    return await bot.slack.wait_for(lambda: bot.slack.ephemerals[before]["text"] if len(bot.slack.ephemerals) > before else None,
                                    timeout=30)


async def dry_run(bot: LocalBot, user: str, text: str, verb: str) -> str:
    """Run a dry run and return what the person was told: it must change no table and write exactly one
    `dry_run` row, which holds that answer. (Found by its row: a real command's late answer may come in between.)"""
    before, rows, seen = state(bot), len(audit(bot)), len(bot.slack.ephemerals)
    delivery = await bot.client.command(user, text)
    assert delivery.status == 200 and not delivery.body, delivery.body  # well formed: answered after the ack
    [row] = await bot.slack.wait_for(lambda: [r for r in audit(bot)[rows:] if r["status"] == "dry_run"], timeout=30)
    said = row["detail"]["plan"]
    await bot.slack.wait_for(lambda: any(e["text"] == said for e in bot.slack.ephemerals[seen:]), timeout=30)
    assert [(r["verb"], r["status"], r["actor"]) for r in audit(bot)[rows:]] == [(verb, "dry_run", user)], text
    assert state(bot) == before, text
    return said


async def serving(servers: dict[str, TritonServer]) -> dict[str, list[int]]:
    """The ranker versions each environment's tritonserver has loaded."""
    out = {}
    for env, server in servers.items():
        async with Fleet([server.url]) as fleet:
            out[env] = [n for versions in (await fleet.ready_versions("ranker")).values() for n in versions]
    return out


def cards(bot: LocalBot) -> list[dict]:
    """Release and retrain cards (the daily digest is posted in the same channel at this hour)."""
    return [m for m in bot.slack.messages("C0MLOPS") if m["text"].startswith("ranker ") or "retrain-" in str(m["blocks"])]


def files(repos: dict[str, Path]) -> list[str]:
    return sorted(str(p.relative_to(root)) for root in repos.values() for p in root.rglob("*"))


async def card_in_state(bot: LocalBot, version: str, words: str) -> None:
    await bot.slack.wait_for(lambda: any(m["text"].startswith(f"ranker {version} ") and words in m["text"]
                                         for m in bot.slack.messages("C0MLOPS")), timeout=90)


# -- refused before anything runs ---------------------------------------------------------------------

async def test_an_unknown_option_is_refused_with_usage_and_nothing_deploys(release_bot: LocalBot, triton) -> None:
    repos, servers = triton
    said = await answer(release_bot, "U0ALICE", "deploy ranker v1 dryrun=true")
    assert said.startswith("`/mlops deploy` does not understand `dryrun=`; it takes `dry_run=`")
    assert "Usage: `/mlops deploy &lt;model&gt; [&lt;version&gt;|latest] [to staging]`" in said

    said = await answer(release_bot, "U0ALICE", "deploy ranker v1 dry_run=maybe")
    assert "`dry_run` is true or false (yes/no, 1/0), not `maybe`" in said and "Usage: `/mlops deploy" in said

    said = await answer(release_bot, "U0ALICE", "status ranker verbose=1")
    assert "`/mlops status` does not understand `verbose=`; it takes no key=value options" in said

    assert [(r["verb"], r["status"]) for r in audit(release_bot)] == [("deploy", "invalid")] * 2 + [("status", "invalid")]
    assert "dryrun" in audit(release_bot)[0]["detail"]["error"]
    assert state(release_bot)["releases"] == [] and not audit(release_bot, "deploy", "started")
    assert await serving(servers) == {"staging": [], "prod": []} and files(repos) == []


# -- dry runs -----------------------------------------------------------------------------------------

async def test_deploy_dry_run_answers_with_its_plan_and_deploys_nothing(release_bot: LocalBot, triton) -> None:
    repos, servers = triton
    delivery = await release_bot.client.command("U0ALICE", "deploy ranker v1 dry_run=true")
    assert delivery.status == 200 and not delivery.body  # well formed: answered after the ack
    # Whichever comes first: the plan, or (as before dry_run was understood) a real release.
    await release_bot.slack.wait_for(
        lambda: audit(release_bot, "deploy", "dry_run") or state(release_bot)["releases"], timeout=30)
    assert state(release_bot)["releases"] == [], "dry_run=true deployed for real"
    [row] = audit(release_bot, "deploy")
    assert (row["status"], row["model"], row["env"], row["version"]) == ("dry_run", "ranker", "staging", "v1")
    said = await release_bot.slack.wait_for(lambda: [e["text"] for e in release_bot.slack.ephemerals])
    assert said == [row["detail"]["plan"]] and said[0].startswith(DRY) and "v1" in said[0]
    assert all(v == [] for v in state(release_bot).values())
    assert await serving(servers) == {"staging": [], "prod": []} and files(repos) == []
    assert cards(release_bot) == []


async def test_dry_run_of_each_release_verb_changes_nothing(release_bot: LocalBot, triton) -> None:
    repos, servers = triton
    bot = release_bot
    # Real history first: v1 live in prod, v2 verified on staging.
    await bot.client.command("U0ALICE", "deploy ranker v1")
    await card_in_state(bot, "v1", ": verified")
    await bot.client.command("U0CAROL", "promote ranker")
    await card_in_state(bot, "v1", ": live")
    await bot.client.command("U0BOB", "deploy ranker v2")
    await card_in_state(bot, "v2", ": verified")
    served, copied = await serving(servers), files(repos)

    said = await dry_run(bot, "U0BOB", "deploy ranker v3 dry_run=yes", "deploy")
    assert said.startswith(DRY) and "v3" in said
    said = await dry_run(bot, "U0CAROL", "promote ranker dry_run=true", "promote")
    assert said.startswith(DRY) and "v2" in said
    said = await dry_run(bot, "U0BOB", "promote ranker dry_run=true", "promote")
    assert said.startswith(REFUSED) and "four-eyes" in said  # BOB deployed v2; his real promote is refused too
    said = await dry_run(bot, "U0ALICE", 'rollback ranker staging dry_run=1 reason="bad ranking"', "rollback")
    assert said.startswith(DRY) and "v1" in said and said.endswith("Nothing was changed.\nReason: bad ranking")
    said = await dry_run(bot, "U0ALICE", "rollback ranker prod dry_run=true", "rollback")
    assert said.startswith(REFUSED) and "no earlier known-good version" in said  # prod has only ever served v1
    said = await dry_run(bot, "U0BOB", 'lock ranker prod "db migration" dry_run=true', "lock")
    assert said.startswith(DRY) and "db migration" in said

    await bot.client.command("U0BOB", 'lock ranker prod "db migration"')
    await bot.slack.wait_for(lambda: audit(bot, "lock", "succeeded"))
    said = await dry_run(bot, "U0ALICE", "unlock ranker prod dry_run=true", "unlock")
    assert said.startswith(DRY) and "<@U0BOB>" in said
    assert bot.runtime.releases.lock_of("ranker", "prod") is not None
    said = await dry_run(bot, "U0ALICE", "unlock ranker staging dry_run=true", "unlock")
    assert said.startswith(REFUSED) and "not locked" in said

    assert await serving(servers) == served and files(repos) == copied
    assert len(audit(bot, status="dry_run")) == 8
    assert bot.runtime.store.verify_chain() is None


async def test_dry_run_of_retrain_and_silence_changes_nothing(bot: LocalBot, tmp_path: Path) -> None:
    runs_dir = tmp_path / "retrain-runs"
    said = await dry_run(bot, "U0ALICE", "retrain ranker epochs=3 dry_run=true", "retrain")
    assert said.startswith(DRY) and "train.sh 15 epochs=3`" in said and "dry_run=" not in said  # not passed on
    assert "<#C0MLOPS>" in said
    said = await dry_run(bot, "U0ALICE", "retrain ranker cancel dry_run=true", "retrain")
    assert said == REFUSED + "no retrain of ranker is running, so there is nothing to cancel"
    assert not runs_dir.exists() and cards(bot) == []  # no run directory, no card

    await bot.client.command("U0ALICE", "retrain ranker epochs=100")  # 20 s: still running while the dry runs ask
    await bot.slack.wait_for(lambda: any(": running" in m["text"] for m in bot.slack.messages("C0MLOPS")), timeout=30)
    [run] = bot.runtime.store.query("SELECT run_id FROM retrain_runs")
    said = await dry_run(bot, "U0BOB", "retrain ranker dry_run=true", "retrain")
    assert said.startswith(REFUSED + "ranker is already retraining") and run["run_id"] in said
    said = await dry_run(bot, "U0BOB", "retrain ranker force=true dry_run=true", "retrain")
    assert said.startswith(DRY) and run["run_id"] in said and "would start another" in said
    said = await dry_run(bot, "U0BOB", "retrain ranker cancel dry_run=true", "retrain")
    assert said.startswith(DRY) and f"would cancel run `{run['run_id']}`" in said
    assert len(list(runs_dir.iterdir())) == 1
    await bot.client.command("U0ALICE", "retrain ranker cancel")
    await bot.slack.wait_for(
        lambda: audit(bot, "retrain", "cancelled") and any("Cancelling retrain" in e["text"] for e in bot.slack.ephemerals),
        timeout=30,
    )

    said = await dry_run(bot, "U0ALICE", "silence ranker prod 2h dry_run=true", "silence")
    assert said.startswith(DRY) and "would hold back alerts for ranker prod until" in said
    assert bot.runtime.silences.active() == []
    await bot.client.command("U0ALICE", "silence ranker prod 2h")
    await bot.slack.wait_for(bot.runtime.silences.active)
    said = await dry_run(bot, "U0BOB", "silence end 1 dry_run=true", "silence")
    assert said.startswith(DRY) and "would end silence #1" in said and "ranker prod" in said
    said = await dry_run(bot, "U0BOB", "silence ranker prod 4h dry_run=true", "silence")
    assert "Silence #1 by <@U0ALICE> already holds them back" in said
    said = await dry_run(bot, "U0BOB", "silence end 9 dry_run=true", "silence")
    assert said == REFUSED + "there is no active silence #9; `/mlops silence` lists them"
    said = await dry_run(bot, "U0BOB", "silence dry_run=true", "silence")
    assert "#1 ranker prod" in said
    assert [s.id for s in bot.runtime.silences.active()] == [1]

    # No service wrote a row of its own for a dry run: only the real commands' rows and the one per dry run.
    assert [r["status"] for r in audit(bot, "retrain")] == (
        ["dry_run"] * 2 + ["accepted", "started"] + ["dry_run"] * 3 + ["accepted", "cancelled"]
    )
    assert [r["status"] for r in audit(bot, "silence")] == ["dry_run", "accepted", "ok"] + ["dry_run"] * 4
    assert bot.runtime.store.verify_chain() is None
