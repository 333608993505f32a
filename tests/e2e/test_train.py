"""The train running itself (issue 19), end to end: versions uploaded to a real S3 (moto_server) go to staging on
a real tritonserver and are verified without anyone typing, one train at a time, through the poll and the signed
hook; the bot restarted between; the Slack emulator showing what people would see."""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
import yaml

from bot.config import Config, Secrets, load_config
from bot.hooks import sign
from bot.releases.model import State
from bot.sandbox.local import BOT_TOKEN, SIGNING_SECRET, LocalBot, local_bot, workspace
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.tritonserver import TritonServer
from bot.serving.artifacts import ArtifactStore, open_store
from bot.serving.triton import Fleet
from tests.conftest import EXAMPLE_CONFIG, ROOT, staging_and_prod, write_config
from tests.e2e.test_release_train import MONDAY_10_LA, Clock, serving
from tests.integration.test_serving import new_bucket
from tests.support.s3 import AWS_ENV, MotoServer

TEAM, FAILED = "C0MLOPS", "C0FAILED"
EXAMPLES = ROOT / "examples" / "registry" / "ranker"
HOOK_SECRET = "registry-hook-secret"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no moto_server: {exc}")
        pytest.skip(str(exc))
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def pair(triton_here, tmp_path_factory) -> Iterator[tuple[dict[str, Path], dict[str, TritonServer]]]:
    """One staging and one prod tritonserver for the whole module."""
    with staging_and_prod(tmp_path_factory.mktemp("train-repos")) as running:
        yield running


@dataclass
class Train:
    config: Config
    registry: ArtifactStore
    slack: SlackEmulator
    servers: dict[str, TritonServer]
    clock: Clock

    @asynccontextmanager
    async def bot(self) -> AsyncIterator[LocalBot]:
        """The bot, started on the same store and Slack workspace each time (a restart keeps both)."""
        secrets = Secrets(registry_hook_secret=HOOK_SECRET)
        async with local_bot(self.config, clock=self.clock, secrets=secrets, slack=self.slack, post_rate=20,
                             post_burst=20) as running:
            yield running


def train_config(directory: Path, registry: str, repos: dict[str, Path], servers: dict[str, TritonServer],
                 endpoint_url: str | None, retrain: dict | None = None, **top: object) -> Config:
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model.pop("retrain")
    if retrain:
        model["retrain"] = retrain
    model.update(registry=registry, auto_deploy="staging",
                 environments={env: {"repository": str(repos[env]), "endpoints": [servers[env].url]} for env in repos})
    channels = {"main": TEAM, "releases_failed": FAILED}
    return load_config(write_config(directory, models={"ranker": model}, datagen={"jobs": {}}, oncall={"rotations": []},
                                    channels=channels, train={"poll_seconds": 0.2},
                                    staging={"revert_at": "17:00", "tz": "America/Los_Angeles"},
                                    s3={"endpoint_url": endpoint_url, "region": "us-east-1"}, **top))


@pytest.fixture
async def train(moto, pair, tmp_path, monkeypatch) -> AsyncIterator[Train]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    repos, servers = pair
    bucket = new_bucket(moto)
    config = train_config(tmp_path, f"s3://{bucket}/registry", repos, servers, moto.endpoint_url)
    users, groups = workspace(config)
    users["U0DANA"] = {"name": "dana", "email": "dana@example.com"}
    slack = SlackEmulator(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, post_rate=20, post_burst=20,
                          users=users, usergroups=groups)
    await slack.start()
    try:
        yield Train(config, open_store(f"s3://{bucket}/registry", s3_endpoint_url=moto.endpoint_url), slack, servers,
                    Clock(MONDAY_10_LA))
    finally:
        await slack.stop()
        async with Fleet([s.url for s in servers.values()]) as fleet:
            await fleet.unload("ranker")


async def upload(registry: ArtifactStore, name: str, source: str = "v1", *, created_at: str, without: tuple[str, ...] = (),
                 metadata: dict | None = None) -> None:
    """A version as a pipeline uploads it: the model's files, then metadata.json last (it marks the upload done)."""
    for path in sorted(EXAMPLES.joinpath(source).iterdir(), key=lambda p: p.name == "metadata.json"):
        if path.name in without:
            continue
        data = path.read_bytes()
        if path.name == "metadata.json":
            data = json.dumps({**json.loads(data), "created_at": created_at, **(metadata or {})}).encode()
        await registry.write(f"ranker/{name}/{path.name}", data)


def card(bot: LocalBot, version: str) -> dict | None:
    return next((m for m in bot.slack.messages(TEAM) if m["text"].startswith(f"ranker {version} ")), None)


async def card_in_state(bot: LocalBot, version: str, state: State, timeout: float = 60) -> dict:
    return await bot.slack.wait_for(lambda: (c := card(bot, version)) and c["text"].endswith(f": {state.words}") and c,
                                    timeout=timeout)


def thread(bot: LocalBot, message: dict) -> str:
    return "\n".join(m["text"] for m in bot.slack.replies(TEAM, message["ts"]))


def audit(bot: LocalBot, verb: str, status: str | None = None) -> list[dict]:
    return [r for r in bot.runtime.store.actions() if r["verb"] == verb and status in (None, r["status"])]


async def test_an_uploaded_version_reaches_staging_verified_once_even_across_a_restart(train):
    await upload(train.registry, "v1", created_at="2026-11-20T10:00:00Z")  # there before: never deployed
    async with train.bot() as bot:
        await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
        # Half uploaded: no metadata.json yet, so it waits however many passes go by.
        await upload(train.registry, "v7", "v1", created_at="2026-11-23T17:00:00Z", without=("metadata.json",),
                     metadata={"author": "dana@example.com"})
        for _ in range(2):
            await bot.runtime.releases.train.look_all()
        assert card(bot, "v7") is None and not audit(bot, "train.take")
        await upload(train.registry, "v7", "v1", created_at="2026-11-23T17:00:00Z", metadata={"author": "dana@example.com"})
        verified = await card_in_state(bot, "v7", State.VERIFIED)
        n = bot.runtime.releases.environment("ranker", "staging")["triton_version"]
        assert await serving([train.servers["staging"]]) == {train.servers["staging"].url: [n]}
        said = json.dumps(verified["blocks"])
        assert "train engineer <@U0DANA>" in said and "from the registry (poll)" in said  # the email, resolved
        assert "deployed by <@U0DANA>" in said
        assert card(bot, "v1") is None
    async with train.bot() as bot:  # a restart: the version was taken once, so it is not deployed again
        await bot.runtime.releases.train.look_all()
        assert len(audit(bot, "deploy", "started")) == 1
        assert [r["version"] for r in audit(bot, "train.take", "queued")] == ["v7"]


async def test_versions_uploaded_while_a_train_is_on_the_tracks_wait_and_the_newest_goes(train):
    async with train.bot() as bot:
        await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
        await upload(train.registry, "v1", created_at="2026-11-23T10:00:00Z")
        first = await card_in_state(bot, "v1", State.VERIFIED)
        # Two more while v1 waits for its unblock: both queue behind it, shown on its card.
        await upload(train.registry, "v2", "v1", created_at="2026-11-23T11:00:00Z")
        await upload(train.registry, "v3", "v1", created_at="2026-11-23T12:00:00Z")
        await bot.slack.wait_for(lambda: "2 versions waiting: v2, v3" in json.dumps(card(bot, "v1")["blocks"]), timeout=30)
        await bot.slack.wait_for(lambda: "v3 of ranker wait" in thread(bot, first) and "behind v1: one train at a time" in
                                 thread(bot, first))
        assert card(bot, "v2") is None and card(bot, "v3") is None

        await bot.client.command("U0ALICE", "status ranker")
        await bot.slack.wait_for(lambda: "waiting: v2, v3 (one train at a time)" in json.dumps(bot.slack.responses), timeout=30)

        await bot.client.press_button("U0CAROL", TEAM, first["ts"], "Unblock prod")
        await card_in_state(bot, "v1", State.LIVE)
        await card_in_state(bot, "v3", State.VERIFIED)  # the newest goes next
        await bot.slack.wait_for(lambda: "Skipped, never deployed: v2 (v3 is newer and goes instead)" in thread(bot, first))
        assert card(bot, "v2") is None
        assert [r["version"] for r in audit(bot, "train.skip")] == ["v2"]
        assert [r["version"] for r in audit(bot, "deploy", "started")] == ["v1", "v3"]


async def test_a_person_deploying_by_hand_jumps_the_queue(train):
    async with train.bot() as bot:
        await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
        await upload(train.registry, "v1", created_at="2026-11-23T10:00:00Z")
        await card_in_state(bot, "v1", State.VERIFIED)
        await upload(train.registry, "v2", "v1", created_at="2026-11-23T11:00:00Z")
        await bot.slack.wait_for(lambda: "1 version waiting: v2" in json.dumps(card(bot, "v1")["blocks"]), timeout=30)
        await bot.client.command("U0BOB", "deploy ranker v2")
        by_hand = await card_in_state(bot, "v2", State.VERIFIED)
        assert "jumped the queue" in json.dumps(by_hand["blocks"])
        await bot.runtime.releases.train.look_all()
        assert [r["version"] for r in audit(bot, "deploy", "started")] == ["v1", "v2"]  # v2 taken once, by hand


async def post_hook(bot: LocalBot, query: str, *, stamp: int | None = None, secret: str = HOOK_SECRET,
                    signed_query: str | None = None) -> tuple[int, dict]:
    stamp = stamp or int(time.time())
    body = b'{"pipeline": "ranker-train"}'
    signature = sign(secret, str(stamp), "POST", "/hooks/registry", signed_query if signed_query is not None else query, body)
    headers = {"X-Registry-Timestamp": str(stamp), "X-Registry-Signature": signature}
    async with aiohttp.ClientSession() as http, http.post(f"{bot.url}/hooks/registry?{query}", data=body,
                                                          headers=headers) as response:
        return response.status, await response.json()


async def test_the_hook_deploys_what_it_names_and_refuses_forged_stale_or_altered_requests(train):
    async with train.bot() as bot:
        await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
        refused = [
            await post_hook(bot, "model=ranker&version=v4", secret="not-the-secret"),
            await post_hook(bot, "model=ranker&version=v4", stamp=int(time.time()) - 3600),
            await post_hook(bot, "model=ranker&version=v4", signed_query="model=ranker&version=v3"),
        ]
        assert [status for status, _ in refused] == [401, 401, 401]
        assert len(audit(bot, "registry.hook", "rejected")) == 3
        status, answer = await post_hook(bot, "model=nosuch&version=v1")
        assert status == 404 and "unknown model `nosuch`; known models: ranker" in answer["error"]
        assert audit(bot, "registry.hook", "invalid")

        await upload(train.registry, "v4", "v1", created_at="2026-11-23T12:00:00Z")
        status, answer = await post_hook(bot, "model=ranker&version=v4")
        assert status == 202 and answer["queued"]
        verified = await card_in_state(bot, "v4", State.VERIFIED)
        assert "from the registry (hook)" in json.dumps(verified["blocks"])
        assert "train engineer <@U0ALICE>" in json.dumps(verified["blocks"])  # no author: the model's owner


async def test_broken_metadata_fails_with_its_reason_and_is_not_tried_again(train):
    async with train.bot() as bot:
        await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
        await upload(train.registry, "v5", created_at="not a time")
        said = await bot.slack.wait_for(lambda: next((m["text"] for m in bot.slack.messages(FAILED)
                                                      if "ranker v5" in m["text"]), None), timeout=30)
        assert "metadata.json is invalid: created_at" in said and "upload a fixed version" in said
        assert any("ranker v5" in m["text"] for m in bot.slack.messages(TEAM))
        await bot.runtime.releases.train.look_all()
        assert len([m for m in bot.slack.messages(FAILED) if "ranker v5" in m["text"]]) == 1
        assert [r["version"] for r in audit(bot, "deploy", "failed")] == ["v5"]


async def test_an_unreachable_registry_is_said_once_and_again_when_it_answers(tmp_path, pair, monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    repos, servers = pair
    own = MotoServer().start()
    try:
        bucket = new_bucket(own)
        config = train_config(tmp_path, f"s3://{bucket}/registry", repos, servers, own.endpoint_url)
        async with local_bot(config, clock=Clock(MONDAY_10_LA), post_rate=20, post_burst=20) as bot:
            await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
            own.stop()
            await bot.slack.wait_for(lambda: audit(bot, "train.registry", "unreachable"), timeout=30)
            await bot.runtime.releases.train.look_all()  # a pass more, still down: nothing more is said
            down = [m["text"] for m in bot.slack.messages(TEAM) if "cannot be read" in m["text"]]
            assert len(down) == 1 and "cannot reach the S3 endpoint" in down[0]
        # Restarted while the registry is still down (a Slack workspace of its own, so whatever it says is new):
        # not said again, and said when it answers.
        async with local_bot(config, clock=Clock(MONDAY_10_LA), post_rate=20, post_burst=20) as bot:
            await bot.runtime.releases.train.look_all()
            assert not [m for m in bot.slack.messages(TEAM) if "cannot be read" in m["text"]]
            own.start(port=own.port)
            new_bucket_named(own, bucket)
            await bot.slack.wait_for(lambda: any("answers again" in m["text"] for m in bot.slack.messages(TEAM)), timeout=30)
            assert len(audit(bot, "train.registry")) == 2
    finally:
        own.stop()


def new_bucket_named(server: MotoServer, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=name)



async def test_a_failed_staging_is_nudged_at_the_window_end_and_reverted_to_prod_at_revert_time(train):
    window_end = MONDAY_10_LA + timedelta(hours=6, minutes=1)  # Monday 16:01 in Los Angeles
    async with train.bot() as bot:
        await bot.slack.wait_for(lambda: audit(bot, "train.watch"))
        await upload(train.registry, "v1", created_at="2026-11-23T10:00:00Z")
        first = await card_in_state(bot, "v1", State.VERIFIED)
        await bot.client.press_button("U0CAROL", TEAM, first["ts"], "Unblock prod")
        await card_in_state(bot, "v1", State.LIVE)
        n1 = bot.runtime.releases.environment("ranker", "prod")["triton_version"]
        await upload(train.registry, "v2", "v3", created_at="2026-11-23T11:00:00Z")  # v3's files answer NaN
        broken = await card_in_state(bot, "v2", State.VERIFY_FAILED)
        said = await bot.slack.wait_for(lambda: [m["text"] for m in bot.slack.messages(FAILED)], timeout=30)
        assert said[0].startswith(":x: *ranker v2* on staging, deployed by <@U0ALICE>: verification failed: golden")

        for _ in range(2):  # the nudge goes once, however many window ends pass
            await bot.runtime.scheduler.run_job("staging.window_end.0", now=window_end)
            window_end += timedelta(days=1)
        nudges = [t for t in thread(bot, broken).split("\n") if "the deploy window ended" in t]
        assert len(nudges) == 1 and nudges[0].startswith(":broom: <@U0ALICE>, the deploy window ended")
        assert "At 17:00 (America/Los_Angeles) the bot puts staging back" in nudges[0]

        await bot.runtime.scheduler.run_job("staging.revert", now=MONDAY_10_LA + timedelta(hours=7, minutes=1))
        await bot.slack.wait_for(lambda: "staging serves v1 again, what prod serves" in thread(bot, broken))
        assert await serving([train.servers["staging"]]) == {train.servers["staging"].url: [n1]}
        assert bot.runtime.releases.environment("ranker", "staging")["version"] == "v1"
        assert audit(bot, "rollback", "succeeded")[-1]["actor"] == "mlops-bot"


async def test_a_scheduled_retrain_reaches_staging_verified_with_nobody_typing(pair, tmp_path):
    """The whole loop: the schedule starts the retrain as the owner, its pipeline publishes a version in the
    (local) registry, and the train deploys and verifies it."""
    repos, servers = pair
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry)
    retrain = {"backend": "command", "command": [str(ROOT / "examples" / "pipelines" / "train.sh"), "15"],
               "schedule": {"cron": "0 10 * * mon", "tz": "America/Los_Angeles"}}
    config = train_config(tmp_path, str(registry), repos, servers, None, retrain=retrain)
    clock = Clock(MONDAY_10_LA - timedelta(minutes=1))
    try:
        async with local_bot(config, clock=clock, post_rate=20, post_burst=20) as bot:
            await bot.slack.wait_for(lambda: audit(bot, "train.watch"))  # v1..v4 were there before: left alone
            clock.set(MONDAY_10_LA + timedelta(minutes=1))
            await bot.runtime.scheduler.run_due()
            new = await bot.slack.wait_for(lambda: next((m for m in bot.slack.messages(TEAM) if m["text"].startswith("ranker ")
                                                         and m["text"].endswith(": verified")), None), timeout=90)
            [taken] = audit(bot, "train.take", "queued")
            assert new["text"].startswith(f"ranker {taken['version']} staging")
            assert "train engineer <@U0ALICE>" in json.dumps(new["blocks"])
            assert [r["actor"] for r in audit(bot, "retrain", "started")] == ["U0ALICE"]
    finally:
        async with Fleet([s.url for s in servers.values()]) as fleet:
            await fleet.unload("ranker")
