"""Faults (issue 18): each outside system failing under the whole bot, with real components throughout.

Real tritonservers (one killed mid-load, one handed a model that cannot load), a real S3 (moto_server, stopped
or missing a key), a real Airflow (with a real HTTP peer in front of it that answers 500 or never answers, or
turned away for its password), and the Slack emulator's faults. Each test checks what a person would check
afterwards: the message they got says what failed and what to do, the audit log has its row, what the store
records agrees with what Triton serves (or `/mlops status` shows the difference), and nothing is left locked.
For Slack's faults the emulator's messages are counted: every one is delivered once Slack answers again, and
none twice.
"""
from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest
import yaml
from aiohttp import ClientSession, web

from bot.airflow import AirflowClient, AirflowError
from bot.config import Secrets, load_config
from bot.retrain.status import airflow_status
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.tritonserver import TritonServer
from bot.serving.artifacts import open_store
from bot.serving.triton import Fleet
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.e2e.test_release_failures import (  # noqa: F401 - fixtures
    bot_config,
    fleet,
    fleet_config,
    registry,
    start_bot,
    until_loading,
)
from tests.e2e.test_release_train import audit, card_in_state, deploy_verified, serving
from tests.integration.test_serving import new_bucket, upload_examples
from tests.support.airflow import AirflowStandalone, free_port
from tests.support.s3 import AWS_ENV, MotoServer

TEAM = "C0MLOPS"


@pytest.fixture
async def bot(triton_here, fleet_config):  # noqa: F811 - the imported fixture
    async with start_bot(fleet_config) as running:
        yield running


# -- what a person checks afterwards ----------------------------------------------------------------------


def told(bot: LocalBot, words: str) -> str | None:
    """What the bot said to one person (ephemeral, or through a response_url) containing `words`."""
    return next((e["text"] for e in bot.slack.ephemerals if words in e["text"]), None)


async def told_eventually(bot: LocalBot, words: str, timeout: float = 60) -> str:
    return await bot.slack.wait_for(lambda: told(bot, words), timeout=timeout)


def everything_said(bot: LocalBot) -> str:
    return json.dumps([bot.slack.all_messages(), bot.slack.ephemerals])


def assert_settled(bot: LocalBot) -> None:
    """No lock held, no operation left running, the audit chain intact, no traceback shown to anyone."""
    assert bot.runtime.store.query("SELECT * FROM locks") == []
    assert bot.runtime.store.query("SELECT * FROM operations WHERE state = 'running'") == []
    assert bot.runtime.store.verify_chain() is None
    said = everything_said(bot)
    assert "Traceback" not in said and "failed unexpectedly" not in said


async def status(bot: LocalBot) -> str:
    """`/mlops status ranker` as its asker sees it."""
    before = len(bot.slack.ephemerals)
    await bot.client.command("U0ALICE", "status ranker")
    return await bot.slack.wait_for(
        lambda: next(
            (
                json.dumps(e["blocks"], ensure_ascii=False)
                for e in bot.slack.ephemerals[before:]
                if e["text"] == "Models in service"
            ),
            None,
        ),
        timeout=30,
    )


def recorded(bot: LocalBot, env: str) -> tuple[str | None, int | None]:
    current = bot.runtime.releases.environment("ranker", env)
    return (current["version"], current["triton_version"]) if current else (None, None)


def cards(bot: LocalBot, version: str) -> list[dict]:
    return [m for m in bot.slack.messages(TEAM) if m["text"].startswith(f"ranker {version} ")]


def buttons(message: dict) -> list[str]:
    return [e["text"]["text"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


async def idle(bot: LocalBot, timeout: float = 90) -> None:
    """Until the bot has nothing left running: every command, press and Slack write it had ended."""
    await bot.slack.wait_for(lambda: not bot.runtime.tasks.names, timeout=timeout)


# -- Triton ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unloadable(registry) -> str:  # noqa: F811
    """v6: v1 whose model.py raises in initialize, as a version built against a missing dependency would."""
    path = registry / "ranker" / "v6"
    shutil.copytree(registry / "ranker" / "v1", path)
    source = (path / "model.py").read_text()
    hook = "    def initialize(self, args):\n"
    (path / "model.py").write_text(
        source.replace(hook, f"{hook}        raise RuntimeError('feature store schema v7 not found')\n")
    )
    return "v6"


async def test_a_prod_tritonserver_killed_mid_load_fails_the_promotion_and_status_names_it(bot, fleet):  # noqa: F811
    _, servers = fleet
    first = await deploy_verified(bot, "v1")
    await bot.client.press_button("U0CAROL", TEAM, first["ts"], "Unblock prod")
    await card_in_state(bot, "v1", "live")
    _, n1 = recorded(bot, "prod")
    slow = await deploy_verified(bot, "v5")  # its load takes seconds: time to kill an endpoint in the middle
    survivor, victim = servers["prod"]
    await bot.client.press_button("U0CAROL", TEAM, slow["ts"], "Unblock prod")
    await until_loading(victim)
    victim.kill()

    failed = await card_in_state(bot, "v5", "promote_failed")
    note = json.dumps(failed["blocks"])
    assert (
        victim.url in note and f"put prod back on v1 on {survivor.url}" in note and f"{victim.url} still needs a person" in note
    )
    said = await told_eventually(bot, "promotion failed")
    assert victim.url in said and "still needs a person" in said
    row = audit(bot, "promote", "failed")[-1]
    assert row["version"] == "v5" and victim.url in row["detail"]["error"]
    restore = audit(bot, "rollback", "partial")[-1]
    assert restore["detail"]["automatic"] and victim.url in restore["detail"]["failed"]

    # Recorded and served agree where an endpoint answers; status names the one that does not.
    assert recorded(bot, "prod") == ("v1", n1)
    assert await serving([survivor]) == {survivor.url: [n1]}
    assert bot.runtime.releases.serving("ranker", "staging").version == "v5"  # staging untouched
    shown = await status(bot)
    assert "prod: `v1` (live)" in shown and f":warning: {victim.url}: unreachable (connection refused)" in shown
    assert_settled(bot)


async def test_a_version_that_fails_to_load_is_named_and_staging_keeps_what_it_served(bot, fleet, unloadable):  # noqa: F811
    staging = fleet[1]["staging"][0]
    try:
        await load_fails_then_the_next_verify_explains(bot, staging, unloadable)
    finally:
        staging.kill()  # restarted for the next test by fleet_config: a restart is what clears a failed load


async def load_fails_then_the_next_verify_explains(bot: LocalBot, staging: TritonServer, unloadable: str) -> None:
    await deploy_verified(bot, "v1")
    _, n1 = recorded(bot, "staging")

    await bot.client.command("U0ALICE", f"deploy ranker {unloadable}")
    failed = await card_in_state(bot, unloadable, "deploy_failed")
    note = json.dumps(failed["blocks"])
    assert "RuntimeError: feature store schema v7 not found" in note and "put staging back on v1" in note
    # Triton holds on to a failed load: the endpoint reports not ready until it restarts, and the card says so.
    assert f"restart the tritonserver at {staging.url}" in note
    said = await told_eventually(bot, f"deploy of ranker {unloadable} to staging failed")
    assert "RuntimeError: feature store schema v7 not found" in said
    assert "At:" not in everything_said(bot) and "model.py(" not in everything_said(bot)  # the model's stack is for the log
    assert audit(bot, "deploy", "failed")[-1]["version"] == unloadable
    assert audit(bot, "rollback", "succeeded")[-1]["detail"]["automatic"]
    assert recorded(bot, "staging") == ("v1", n1) and await serving([staging]) == {staging.url: [n1]}
    assert "staging: `v1` (verified)" in await status(bot)
    assert_settled(bot)

    # The next deploy's verify says why that endpoint is not ready and what clears it, rather than just "not ready".
    await bot.client.command("U0ALICE", "deploy ranker v2")
    refused = await card_in_state(bot, "v2", "verify_failed")
    reason = json.dumps(refused["blocks"])
    assert "ranker version 2 failed to load" in reason and f"restart the tritonserver at {staging.url}" in reason
    assert_settled(bot)


# -- S3 ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def s3_bot(triton_here, fleet, tmp_path, monkeypatch) -> AsyncIterator[tuple[LocalBot, MotoServer, str]]:  # noqa: F811
    """The example registry in a bucket on a moto_server of the test's own (it may be stopped), the fleet's
    local repositories; afterwards every killed tritonserver is started again and ranker unloaded everywhere."""
    repos, servers = fleet
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    moto = MotoServer().start()
    bucket = new_bucket(moto)
    await upload_examples(open_store(f"s3://{bucket}/registry", s3_endpoint_url=moto.endpoint_url))
    config = bot_config(
        tmp_path,
        f"s3://{bucket}/registry",
        {env: (str(repos[env]), [s.url for s in servers[env]]) for env in repos},
        s3={"endpoint_url": moto.endpoint_url, "region": "us-east-1"},
    )
    try:
        async with start_bot(config) as running:
            yield running, moto, bucket
    finally:
        moto.stop()
        for group in servers.values():
            for i, server in enumerate(group):
                if server.process is None or server.process.poll() is not None:
                    group[i] = TritonServer(server.repository).start()
        async with Fleet([s.url for group in servers.values() for s in group]) as everywhere:
            await everywhere.unload("ranker")


async def test_a_key_missing_from_the_s3_registry_fails_the_deploy_and_names_the_file(s3_bot, fleet):  # noqa: F811
    bot, moto, bucket = s3_bot
    staging = fleet[1]["staging"][0]
    try:
        await missing_key(bot, moto, bucket, staging)
    finally:
        staging.kill()  # the failed load leaves it not ready until a restart (see above)


async def missing_key(bot: LocalBot, moto: MotoServer, bucket: str, staging: TritonServer) -> None:
    await deploy_verified(bot, "v1")
    _, n1 = recorded(bot, "staging")
    boto3.client("s3", endpoint_url=moto.endpoint_url).delete_object(Bucket=bucket, Key="registry/ranker/v2/weights.json")

    await bot.client.command("U0ALICE", "deploy ranker v2")
    failed = await card_in_state(bot, "v2", "deploy_failed")
    note = json.dumps(failed["blocks"])
    assert "No such file or directory" in note and "ranker/2/weights.json" in note and "put staging back on v1" in note
    said = await told_eventually(bot, "deploy of ranker v2 to staging failed")
    assert "weights.json" in said and "At:" not in everything_said(bot)  # Triton's stack of the model is for its log
    assert audit(bot, "deploy", "failed")[-1]["version"] == "v2"
    assert recorded(bot, "staging") == ("v1", n1) and await serving([staging]) == {staging.url: [n1]}
    assert_settled(bot)


async def test_an_s3_endpoint_that_is_down_refuses_deploys_and_rollbacks_and_staging_keeps_serving(s3_bot, fleet):  # noqa: F811
    bot, moto, _ = s3_bot
    staging = fleet[1]["staging"][0]
    await deploy_verified(bot, "v1")
    await deploy_verified(bot, "v2")
    _, n2 = recorded(bot, "staging")
    moto.stop()

    await bot.client.command("U0ALICE", "deploy ranker v1")
    said = await told_eventually(bot, "cannot reach the S3 endpoint")
    assert moto.endpoint_url in said and "check that it runs" in said
    assert "AWSHTTPConnection" not in said  # the cause in a person's words
    failed = audit(bot, "deploy", "failed")
    assert failed and failed[-1]["version"] == "v1" and moto.endpoint_url in failed[-1]["detail"]["error"]
    assert len(bot.runtime.store.query("SELECT * FROM releases")) == 2  # nothing was started

    await bot.client.command("U0ALICE", 'rollback ranker staging reason="ranking regression"')
    said = await told_eventually(bot, "rollback of ranker staging to v1 failed")
    assert "cannot reach the S3 endpoint" in said
    # Nothing was loaded, so nothing needs putting back: the message says staging still serves v2, not that it needs help.
    assert "staging still serves v2 on every endpoint" in said and "needs a person" not in said
    assert audit(bot, "rollback", "failed")[-1]["version"] == "v1"
    assert recorded(bot, "staging") == ("v2", n2) and await serving([staging]) == {staging.url: [n2]}
    shown = await status(bot)
    assert "staging: `v2` (verified)" in shown and ":warning:" not in shown
    assert_settled(bot)


# -- Airflow ----------------------------------------------------------------------------------------------


class AirflowFront:
    """A real HTTP peer on loopback in front of the real Airflow. `mode`: "pass" forwards everything; "500"
    answers the API with 500; "lost" forwards one dagRuns POST and answers it 502, as a proxy that lost the
    upstream's answer would; "hang" never answers anything."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.seen: list[str] = []
        self._released = asyncio.Event()

    async def __aenter__(self) -> AirflowFront:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        self._http = ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        await self._http.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.path}")
        if self.mode == "hang":
            await self._released.wait()
            return web.Response(status=504)
        if self.mode == "500" and request.path.startswith("/api/"):
            return web.json_response({"detail": "Internal Server Error"}, status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._http.request(
            request.method, self.upstream + request.path_qs, data=await request.read(), headers=headers
        ) as upstream:
            body = await upstream.read()
            if self.mode == "lost" and request.method == "POST" and request.path.endswith("/dagRuns"):
                self.mode = "pass"
                return web.Response(status=502, text="upstream connection reset")
            return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)


@pytest.fixture
async def front(airflow: AirflowStandalone) -> AsyncIterator[AirflowFront]:
    async with AirflowFront(airflow.base_url) as peer:
        yield peer


def retrain_bot(
    tmp_path: Path, airflow: AirflowStandalone, base_url: str, *, password: str | None = None, timeout_seconds: float = 30
):
    """The bot with ranker retraining on Airflow DAG train_model at `base_url`."""
    copy = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", copy, ignore=shutil.ignore_patterns("__pycache__"))
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model["registry"] = str(copy)
    model["environments"] = {
        env: {"repository": str(tmp_path / "repos" / env), "endpoints": [f"http://127.0.0.1:{free_port()}"]}
        for env in ("staging", "prod")
    }
    model["retrain"] = {"backend": "airflow", "dag_id": "train_model", "conf": {"epochs": 1}}
    config = load_config(
        write_config(
            tmp_path,
            models={"ranker": model},
            datagen={"jobs": {}},
            airflow={
                "base_url": base_url,
                "auth": "token",
                "unpause": True,
                "poll_seconds": 1,
                "timeout_seconds": timeout_seconds,
            },
        )
    )
    secrets = Secrets(airflow_username=airflow.username, airflow_password=password or airflow.password)
    return local_bot(config, secrets=secrets)


def retrain_runs(bot: LocalBot) -> list[dict]:
    return bot.runtime.store.query("SELECT * FROM retrain_runs ORDER BY id")


async def airflow_has_run(airflow: AirflowStandalone, run_id: str) -> bool:
    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password, retries=0) as client:
        try:
            await airflow_status(client, "train_model", run_id)
        except AirflowError as exc:
            if exc.status == 404:
                return False
            raise
    return True


def assert_nothing_started(bot: LocalBot) -> str:
    """A refused start leaves no run behind; the run id it drew is in its audit row."""
    row = audit(bot, "retrain", "failed")[-1]
    assert row["detail"]["stage"] == "start" and row["model"] == "ranker"
    assert retrain_runs(bot) == [] and bot.runtime.retrain.in_flight("ranker") is None
    assert not [m for m in bot.slack.messages(TEAM) if "Retrain" in m["text"]]  # no card
    assert_settled(bot)
    return row["detail"]["run_id"]


@pytest.mark.airflow
async def test_airflow_refusing_the_bots_password_names_the_settings_and_starts_nothing(airflow, tmp_path):
    async with retrain_bot(tmp_path, airflow, airflow.base_url, password="rotated-yesterday") as bot:
        await bot.client.command("U0ALICE", "retrain ranker")
        said = await told_eventually(bot, "could not start retraining ranker")
        assert "(401)" in said and "AIRFLOW_USERNAME and AIRFLOW_PASSWORD" in said
        assert not await airflow_has_run(airflow, assert_nothing_started(bot))

        # Nothing is left holding the model: asking again is answered the same way, not "already retraining".
        await bot.client.command("U0ALICE", "retrain ranker")
        await bot.slack.wait_for(
            lambda: len([e for e in bot.slack.ephemerals if "could not start" in e["text"]]) == 2, timeout=30
        )
        assert told(bot, "already retraining") is None


@pytest.mark.airflow
async def test_airflow_answering_500_starts_nothing_and_a_lost_answer_starts_one_run(airflow, front, tmp_path):
    async with retrain_bot(tmp_path, airflow, front.url) as bot:
        front.mode = "500"
        await bot.client.command("U0ALICE", "retrain ranker")
        said = await told_eventually(bot, "could not start retraining ranker")
        assert "(500)" in said and "check the Airflow API server's log" in said
        assert not await airflow_has_run(airflow, assert_nothing_started(bot))

        # Airflow takes the run but its answer is lost on the way: the retry of the same run id is a 409, so
        # exactly one run starts and the bot follows it.
        front.mode, before = "lost", len(front.seen)
        await bot.client.command("U0ALICE", "retrain ranker")
        await bot.slack.wait_for(lambda: audit(bot, "retrain", "started"), timeout=60)
        [run] = retrain_runs(bot)
        assert front.seen[before:].count("POST /api/v2/dags/train_model/dagRuns") == 2  # the lost one and its retry
        assert await airflow_has_run(airflow, run["run_id"])
        card = await bot.slack.wait_for(lambda: next((m for m in bot.slack.messages(TEAM) if run["run_id"] in m["text"]), None))
        assert len([m for m in bot.slack.messages(TEAM) if "Retrain ranker" in m["text"]]) == 1

        await bot.client.command("U0ALICE", "retrain ranker cancel")  # frees Airflow for the other tests
        await bot.slack.wait_for(lambda: retrain_runs(bot)[0]["state"] == "cancelled", timeout=60)
        assert card["ts"] == retrain_runs(bot)[0]["card_ts"]
        assert_settled(bot)


@pytest.mark.airflow
async def test_airflow_that_never_answers_is_reported_within_the_clients_timeout(airflow, front, tmp_path):
    async with retrain_bot(tmp_path, airflow, front.url, timeout_seconds=4) as bot:
        front.mode = "hang"
        await bot.client.command("U0ALICE", "retrain ranker")
        # The client's whole budget (airflow.timeout_seconds), retries included: the person hears within it.
        said = await told_eventually(bot, "could not start retraining ranker", timeout=15)
        assert f"Airflow at {front.url} did not answer POST /auth/token within 4s" in said
        assert "check that Airflow runs" in said
        assert_nothing_started(bot)


# -- Slack ----------------------------------------------------------------------------------------------

# A deploy's thread, in order, as people read it when Slack takes every write.
THREAD = (
    "Copying 2 files to ",
    "Loaded endpoint 1/1: ",
    ":package: ranker v1 is serving on staging. Verifying…",
    ":white_check_mark: Verified: ready to unblock for prod.",
)


async def delivered(bot: LocalBot, version: str) -> tuple[dict, list[str]]:
    """The one card of `version` and its thread, once the bot has nothing left to send."""
    await idle(bot)
    [card] = cards(bot, version)  # never two
    return card, [r["text"] for r in bot.slack.replies(TEAM, card["ts"])]


def assert_whole_thread(notes: list[str]) -> None:
    assert len(notes) == len(THREAD) and all(n.startswith(t) for n, t in zip(notes, THREAD, strict=True)), notes


async def test_a_429_storm_slows_the_deploy_card_and_its_thread_but_loses_and_doubles_nothing(bot):
    bot.slack.inject_fault("chat.postMessage", "ratelimited", times=5, retry_after=1)
    bot.slack.inject_fault("chat.update", "ratelimited", times=3, retry_after=1)
    await bot.client.command("U0ALICE", "deploy ranker v1")

    card, notes = await delivered(bot, "v1")
    assert card["text"].endswith(": verified") and "Unblock prod" in buttons(card)
    assert_whole_thread(notes)
    assert len([c for c in bot.slack.calls if c.status == 429]) >= 8  # every refusal was waited out, none skipped
    assert not audit(bot, "release.card", "unshown") and not audit(bot, "release.note", "unshown")
    assert audit(bot, "deploy", "succeeded") and audit(bot, "verify", "passed")
    assert_settled(bot)


@pytest.mark.parametrize("fault,times", [("server_error", 3), ("server_error_text", 3), ("not_in_channel", 1), ("timeout", 1)])
async def test_slack_refusing_the_deploy_card_delivers_it_and_its_whole_thread_once_slack_answers(bot, fault, times):
    # Enough refusals to outlast the client's own retries (two for a 5xx; none for the others).
    bot.slack.inject_fault("chat.postMessage", fault, times=times)
    await bot.client.command("U0ALICE", "deploy ranker v1")

    card, notes = await delivered(bot, "v1")
    assert card["text"].endswith(": verified") and "Unblock prod" in buttons(card)
    assert_whole_thread(notes)  # the notes written while the card was missing follow it into its thread
    [unshown] = audit(bot, "release.card", "unshown")
    assert unshown["version"] == "v1" and unshown["detail"]["error"]
    assert bot.runtime.releases.serving("ranker", "staging").version == "v1"
    assert_settled(bot)


async def test_slack_refusing_the_last_edit_of_a_card_shows_it_once_slack_answers(bot):
    verified = await deploy_verified(bot, "v1")
    await idle(bot)
    bot.slack.inject_fault("chat.update", "server_error_text", times=3)
    await bot.client.command("U0CAROL", "reject ranker")
    await bot.slack.wait_for(lambda: audit(bot, "reject", "succeeded"), timeout=30)

    card, notes = await delivered(bot, "v1")
    # Not left offering Unblock on a rejected release.
    assert card["ts"] == verified["ts"] and card["text"].endswith(": rejected") and "Unblock prod" not in buttons(card)
    assert_whole_thread(notes)
    assert audit(bot, "release.card", "unshown")[-1]["detail"]["error"].startswith("HTTP 503")
    assert_settled(bot)


async def test_a_thread_note_slack_times_out_on_is_posted_once_in_its_place(bot, fleet):  # noqa: F811
    _, servers = fleet
    await bot.client.command("U0ALICE", "deploy ranker v5")
    await until_loading(servers["staging"][0])
    await bot.slack.wait_for(lambda: cards(bot, "v5") and bot.slack.replies(TEAM, cards(bot, "v5")[0]["ts"]))
    bot.slack.inject_fault("chat.postMessage", "timeout")  # the next note: "Loaded endpoint 1/1"

    card, notes = await delivered(bot, "v5")
    assert card["text"].endswith(": verified")
    expected = [t.replace("ranker v1", "ranker v5") for t in THREAD]
    assert len(notes) == len(expected) and all(n.startswith(t) for n, t in zip(notes, expected, strict=True)), notes
    assert audit(bot, "release.note", "unshown")[-1]["detail"]["error"] == "TimeoutError"
    assert_settled(bot)


@pytest.mark.parametrize("verb", ["lock", "unlock"])
async def test_a_lock_announcement_slack_refuses_is_told_as_done_not_as_failed(bot, verb):
    if verb == "unlock":
        await bot.client.command("U0ALICE", "lock ranker staging for the migration")
        await bot.slack.wait_for(lambda: any(m["text"].startswith(":lock:") for m in bot.slack.messages(TEAM)), timeout=30)
    bot.slack.inject_fault("chat.postMessage", "not_in_channel")
    await bot.client.command("U0ALICE", f"{verb} ranker staging" + (" for the migration" if verb == "lock" else ""))

    answer = await told_eventually(bot, "Slack refused the post in this channel (not_in_channel)")
    assert answer.startswith(":lock: ranker staging is locked" if verb == "lock" else ":unlock: ranker staging unlocked")
    assert [r["status"] for r in audit(bot, f"{verb}.announce", "unshown")] == ["unshown"]
    assert [r["status"] for r in bot.runtime.store.actions() if r["verb"] == verb][-1] == "succeeded"  # not "error"
    assert bool(bot.runtime.releases.lock_of("ranker", "staging")) is (verb == "lock")
    assert "failed unexpectedly" not in everything_said(bot)
    assert bot.runtime.store.verify_chain() is None
