"""The release train when things go wrong, end to end on real tritonservers: an endpoint killed mid-deploy,
the bot stopped mid-operation and started again, prod failing after a good staging verify, a button on a
stale card; and the whole train with its registry and repositories on S3 (moto_server)."""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import boto3
import pytest
import yaml
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Config, load_config
from bot.releases.model import State
from bot.sandbox.local import BOT_TOKEN, local_bot
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.artifacts import open_store
from bot.serving.triton import Fleet, triton_repository_path
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.e2e.test_release_train import (
    MONDAY_10_LA,
    Clock,
    audit,
    card_in_state,
    deploy_verified,
    serving,
)
from tests.integration.test_serving import new_bucket, upload_examples
from tests.support.s3 import AWS_ENV, MotoServer

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason=triton_missing() or "")

# Long enough that a test polling the repository index sees the load under way even when two busy CI workers
# slow its polls down (at 3 s, a load once finished unseen).
SLOW_LOAD_S = 6


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """The example registry plus v5: v1 whose load takes a few seconds, so a test can act while it loads."""
    path = tmp_path_factory.mktemp("failures") / "registry"
    shutil.copytree(ROOT / "examples" / "registry", path)
    slow = path / "ranker" / "v5"
    shutil.copytree(path / "ranker" / "v1", slow)
    source = (slow / "model.py").read_text()
    hook = "    def initialize(self, args):\n"
    assert hook in source
    (slow / "model.py").write_text("import time\n" + source.replace(hook, f"{hook}        time.sleep({SLOW_LOAD_S})\n"))
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[tuple[dict[str, Path], dict[str, list[TritonServer]]]]:
    root = tmp_path_factory.mktemp("repos")
    repos = {env: root / env for env in ("staging", "prod")}
    for path in repos.values():
        path.mkdir()
    servers = {"staging": [TritonServer(str(repos["staging"])).start()],
               "prod": [TritonServer(str(repos["prod"])).start() for _ in range(2)]}
    yield repos, servers
    for group in servers.values():
        for server in group:
            server.stop()


def bot_config(directory: Path, registry: str, environments: dict[str, tuple[str, list[str]]], **top: object) -> Config:
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model["registry"] = registry
    model["environments"] = {env: {"repository": repo, "endpoints": urls} for env, (repo, urls) in environments.items()}
    model.pop("retrain")
    return load_config(write_config(directory, models={"ranker": model}, datagen={"jobs": {}}, oncall={"rotations": []}, **top))


@pytest.fixture
async def fleet_config(fleet, registry, tmp_path) -> AsyncIterator[Config]:
    """A config for the endpoints as they are now (a restarted server has a new port); afterwards every
    server killed by the test is started again and ranker unloaded everywhere."""
    repos, servers = fleet
    yield bot_config(tmp_path, str(registry), {env: (str(repos[env]), [s.url for s in servers[env]]) for env in repos})
    for group in servers.values():
        for i, server in enumerate(group):
            if server.process is None or server.process.poll() is not None:
                group[i] = TritonServer(server.repository).start()
    async with Fleet([s.url for group in servers.values() for s in group]) as everywhere:
        await everywhere.unload("ranker")


def start_bot(config: Config, clock: Clock | None = None):
    # Slack's one-post-a-second limit is the emulator's default and is tested with it elsewhere; relaxed here
    # so these tests reach their failures without waiting on Retry-After.
    return local_bot(config, clock=clock or Clock(MONDAY_10_LA), post_rate=20, post_burst=20)


@pytest.fixture
async def bot(fleet_config):
    async with start_bot(fleet_config) as running:
        yield running


async def index(server: TritonServer) -> list[dict]:
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}/v2/repository/index") as response:
        return await response.json()


async def until_loading(server: TritonServer, model: str = "ranker") -> None:
    """Wait until `server` is in the middle of loading `model`, as its repository index shows."""

    async def loading() -> bool:
        return any(e.get("name") == model and e.get("state") == "LOADING" for e in await index(server))

    for _ in range(300):
        if await loading():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{server.url} never started loading {model}: {await index(server)}")


async def test_a_tritonserver_killed_mid_deploy_fails_the_deploy_and_leaves_no_lock(bot, fleet):
    _, servers = fleet
    staging = servers["staging"][0]
    await bot.client.command("U0ALICE", "deploy ranker v5")
    await until_loading(staging)
    staging.kill()

    failed = await card_in_state(bot, "v5", "deploy_failed")
    assert f"Deploy failed: {staging.url}" in str(failed["blocks"])
    told = await bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals if "failed" in e["text"]), None))
    assert f"deploy of ranker v5 to staging failed: {staging.url}" in told
    row = audit(bot, "deploy", "failed")[-1]
    assert row["version"] == "v5" and staging.url in row["detail"]["error"]
    assert "Traceback" not in str(bot.slack.all_messages())

    await bot.client.command("U0BOB", "lock ranker staging while the staging server is replaced")
    await bot.slack.wait_for(lambda: audit(bot, "lock", "succeeded"))
    assert bot.runtime.releases.lock_of("ranker", "staging").kind == "manual"


async def test_a_restart_reconciles_what_the_stopped_bot_left_running(fleet_config, fleet):
    _, servers = fleet
    staging = servers["staging"][0]
    clock = Clock(MONDAY_10_LA)
    async with start_bot(fleet_config, clock) as first:
        await first.client.command("U0ALICE", "deploy ranker v5")
        await until_loading(staging)
        first.runtime.shutdown_grace = 0  # stopped the way a crash or a killed pod stops it: the deploy is cut off
    with sqlite3.connect(fleet_config.store) as db:
        n, state = db.execute("SELECT id, state FROM releases WHERE version = 'v5'").fetchone()
        assert state == "interrupted" and db.execute("SELECT * FROM locks").fetchall() == []  # the stop ended it
        # A rollback of prod cut off by a crash: its lock is left behind, with no release in a running state.
        db.execute("INSERT INTO locks (model, env, holder, reason, kind, expires_at, created_at) VALUES "
                   "('ranker', 'prod', 'U0BOB', 'rolling back to v1', 'operation', ?, ?)",
                   ((clock() + timedelta(hours=4)).isoformat(), clock().isoformat()))
    async with Fleet([staging.url]) as fleet_client:  # Triton finishes the load on its own
        for _ in range(100):
            if (await fleet_client.ready_versions("ranker"))[staging.url] == [n]:
                break
            await asyncio.sleep(0.1)

    async with start_bot(fleet_config, clock) as second:
        releases = second.runtime.releases
        assert releases.get(n).state is State.INTERRUPTED
        assert releases.lock_of("ranker", "staging") is None and releases.lock_of("ranker", "prod") is None
        told = [m["text"] for m in second.slack.messages("C0MLOPS")]
        deploy = next(t for t in told if "<@U0ALICE> was deploying v5 on ranker staging" in t)
        # The load Triton finished by itself is seen, and undone: staging serves what the bot records (nothing).
        assert f"Endpoints then served {staging.url}: v{n}" in deploy and "lock released" in deploy
        assert f"Serving now: {staging.url}: nothing" in deploy
        assert await serving([staging]) == {staging.url: []} and releases.environment("ranker", "staging") is None
        rollback = next(t for t in told if "rolling back to v1" in t)
        assert "ranker prod" in rollback and "<@U0BOB>" in rollback
        assert {r["env"] for r in audit(second, "reconcile", "interrupted")} == {"prod"}

        await deploy_verified(second, "v1")  # staging takes operations again


async def test_prod_failing_after_a_good_staging_verify_is_rolled_back_by_the_bot(bot, fleet):
    _, servers = fleet
    first = await deploy_verified(bot, "v1")
    await bot.client.press_button("U0CAROL", "C0MLOPS", first["ts"], "Unblock prod")
    await card_in_state(bot, "v1", "live")
    n1 = bot.runtime.releases.environment("ranker", "prod")["triton_version"]
    second = await deploy_verified(bot, "v2")
    survivor, dead = servers["prod"]
    dead.kill()

    await bot.client.press_button("U0CAROL", "C0MLOPS", second["ts"], "Unblock prod")
    failed = await card_in_state(bot, "v2", "promote_failed")
    loud = await bot.slack.wait_for(
        lambda: next((m["text"] for m in bot.slack.messages("C0MLOPS") if "<!here>" in m["text"]), None))
    assert "Production verification of *ranker v2* failed" in loud and dead.url in loud
    assert f"put prod back on v1 on {survivor.url}" in loud and f"{dead.url} still needs" in loud
    assert "<!here>" in str(failed["blocks"])
    assert await serving([survivor]) == {survivor.url: [n1]}
    assert bot.runtime.releases.environment("ranker", "prod")["version"] == "v1"
    assert audit(bot, "promote", "failed")[-1]["version"] == "v2"
    restore = audit(bot, "rollback", "partial")[-1]
    assert restore["version"] == "v1" and restore["detail"]["automatic"] and dead.url in restore["detail"]["failed"]


async def test_a_button_on_a_superseded_card_is_refused_and_status_shows_the_train(bot):
    first = await deploy_verified(bot, "v1")
    unblock = next(
        e for b in first["blocks"] if b["type"] == "actions" for e in b["elements"] if e["text"]["text"] == "Unblock prod"
    )
    await deploy_verified(bot, "v2", user="U0BOB")
    stale = await card_in_state(bot, "v1", "superseded")
    assert "Superseded on staging by v2" in str(stale["blocks"]) and not [b for b in stale["blocks"] if b["type"] == "actions"]
    # Pressed on a copy of the card that has not refreshed yet.
    await bot.client.press("U0CAROL", unblock["action_id"], unblock["value"], channel="C0MLOPS", message_ts=first["ts"])
    refused = await bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals if "superseded" in e["text"]), None))
    assert "ranker v1 was superseded by v2" in refused
    assert not audit(bot, "promote", "started")

    await bot.client.command("U0CAROL", "status ranker")
    status = await bot.slack.wait_for(
        lambda: next((str(e["blocks"]) for e in bot.slack.ephemerals if e["text"] == "Models in service"), None)
    )
    assert "*ranker* · staging: `v2` (verified) deployed by <@U0BOB>" in status and "last verify: passed" in status
    assert "*ranker* · prod: `—` (not deployed)" in status

    await bot.client.command("U0CAROL", "provenance ranker v1")
    provenance = await bot.slack.wait_for(
        lambda: next((e["text"] for e in bot.slack.ephemerals if "*ranker v1*" in e["text"]), None)
    )
    # When it was trained, in each reader's own time (a Slack date token of metadata.json's created_at).
    assert "created <!date^1795010700^{date_short_pretty} {time}|2026-11-18T14:05+00:00>" in provenance
    for fact in ("dataset `datagen-2026-11-17`", "git `4e1d2c7`", "pipeline run `ranker-train-2026-11-18`", "ndcg_at_20 0.412"):
        assert fact in provenance


async def test_a_deleted_card_does_not_stop_the_promotion_and_is_posted_again(bot, fleet):
    _, servers = fleet
    first = await deploy_verified(bot, "v1")
    deleter = AsyncWebClient(token=BOT_TOKEN, base_url=bot.slack.api_url)  # as an admin deleting it in Slack would
    await deleter.chat_delete(channel="C0MLOPS", ts=first["ts"])

    bot.slack.inject_fault("chat.update", "fatal_error")  # and Slack fails the next edit outright

    await bot.client.command("U0CAROL", "promote ranker")
    live = await card_in_state(bot, "v1", "live")
    assert live["ts"] != first["ts"]
    [unshown] = audit(bot, "release.card", "unshown")
    assert unshown["detail"]["error"] == "fatal_error" and unshown["version"] == "v1"
    n1 = bot.runtime.releases.environment("ranker", "prod")["triton_version"]
    assert list((await serving(servers["prod"])).values()) == [[n1], [n1]]
    notes = " ".join(m["text"] for m in bot.slack.replies("C0MLOPS", live["ts"]))
    assert "v1 is serving in prod on every endpoint" in notes
    assert bot.runtime.releases.lock_of("ranker", "prod") is None


@pytest.fixture(scope="module")
async def s3_fleet():
    """Registry and both repositories in one bucket on moto_server; one staging and one prod tritonserver reading it."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        with MotoServer() as moto:
            bucket = new_bucket(moto)
            await upload_examples(open_store(f"s3://{bucket}/registry", s3_endpoint_url=moto.endpoint_url))
            repos = {env: f"s3://{bucket}/repos/{env}" for env in ("staging", "prod")}
            servers = {}
            for env, uri in repos.items():
                # Triton refuses to start on a repository path with nothing under it.
                boto3.client("s3", endpoint_url=moto.endpoint_url).put_object(Bucket=bucket, Key=f"repos/{env}/.keep", Body=b"")
                servers[env] = TritonServer(triton_repository_path(uri, moto.endpoint_url), env=AWS_ENV).start()
            yield moto, bucket, repos, servers
            for server in servers.values():
                server.kill()  # nothing left to shut down gracefully; waiting on the unload would only slow the run


async def test_deploy_unblock_and_roll_back_with_everything_on_s3(s3_fleet, tmp_path):
    moto, bucket, repos, servers = s3_fleet
    config = bot_config(
        tmp_path,
        f"s3://{bucket}/registry",
        {env: (repos[env], [servers[env].url]) for env in repos},
        s3={"endpoint_url": moto.endpoint_url, "region": "us-east-1"},
    )
    async with start_bot(config) as bot:
        first = await deploy_verified(bot, "v1")
        thread = " ".join(m["text"] for m in bot.slack.replies("C0MLOPS", first["ts"]))
        assert f"to s3://{bucket}/repos/staging/ranker/" in thread
        await bot.client.press_button("U0CAROL", "C0MLOPS", first["ts"], "Unblock prod")
        await card_in_state(bot, "v1", "live")
        n1 = bot.runtime.releases.environment("ranker", "prod")["triton_version"]

        second = await deploy_verified(bot, "v2")
        await bot.client.press_button("U0BOB", "C0MLOPS", second["ts"], "Unblock prod")
        await card_in_state(bot, "v2", "live")
        n2 = bot.runtime.releases.environment("ranker", "prod")["triton_version"]
        assert await serving([servers["prod"]]) == {servers["prod"].url: [n2]}

        await bot.client.command("U0ALICE", 'rollback ranker prod reason="drill on the S3 fleet"')
        await bot.slack.wait_for(lambda: audit(bot, "rollback", "succeeded"), timeout=60)
        assert await serving([servers["prod"]]) == {servers["prod"].url: [n1]}
        assert bot.runtime.releases.environment("ranker", "prod")["version"] == "v1"

    listed = boto3.client("s3", endpoint_url=moto.endpoint_url).list_objects_v2(Bucket=bucket, Prefix="repos/prod/ranker/")
    keys = {o["Key"].removeprefix("repos/prod/ranker/") for o in listed["Contents"]}
    assert {"config.pbtxt", f"{n1}/model.py", f"{n1}/weights.json", f"{n2}/model.py", f"{n2}/weights.json"} <= keys


async def test_a_restart_during_a_promotion_puts_prod_back_on_the_version_it_served(fleet_config, fleet):
    _, servers = fleet
    clock = Clock(MONDAY_10_LA)
    async with start_bot(fleet_config, clock) as first:
        live = await deploy_verified(first, "v1")
        await first.client.press_button("U0CAROL", "C0MLOPS", live["ts"], "Unblock prod")
        await card_in_state(first, "v1", "live")
        n1 = first.runtime.releases.environment("ranker", "prod")["triton_version"]
        slow = await deploy_verified(first, "v5")
        await first.client.press_button("U0CAROL", "C0MLOPS", slow["ts"], "Unblock prod")
        await until_loading(servers["prod"][0])
        first.runtime.shutdown_grace = 0  # cut off mid-promotion, as a crash would
    n5 = next(
        n for version, n in sqlite3.connect(fleet_config.store).execute("SELECT version, id FROM releases") if version == "v5"
    )
    for _ in range(100):  # Triton finishes loading the unverified version on its own
        if any(n5 in versions for versions in (await serving(servers["prod"])).values()):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("prod never served the interrupted version, so there would be nothing to put back")

    async with start_bot(fleet_config, clock) as second:
        interrupted = second.runtime.releases.get(n5)
        assert interrupted.prod_state is State.INTERRUPTED and interrupted.state is State.VERIFIED  # staging untouched
        assert set(map(tuple, (await serving(servers["prod"])).values())) == {(n1,)}
        assert second.runtime.releases.environment("ranker", "prod")["version"] == "v1"
        told = next(
            m["text"] for m in second.slack.messages("C0MLOPS") if "<@U0CAROL> was promoting v5 on ranker prod" in m["text"]
        )
        assert "The bot put prod back on v1 by itself." in told and "lock released" in told
        restore = audit(second, "rollback", "succeeded")[-1]
        assert restore["version"] == "v1" and restore["detail"]["automatic"]
