"""The Airflow retrain backend against a real Airflow 3 (`airflow standalone`, DAGs from tests/dags)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.airflow import AirflowClient, AirflowError
from bot.retrain.status import RunStatus, airflow_status
from tests.support.airflow import AirflowStandalone, free_port

airflow_only = pytest.mark.airflow


@pytest.fixture
async def client(airflow: AirflowStandalone) -> AsyncIterator[AirflowClient]:
    async with AirflowClient(airflow.base_url, username=airflow.username, password=airflow.password) as client:
        yield client


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry holding one version of `ranker`, as the team's last training left it."""
    version = tmp_path / "registry" / "ranker" / "v1"
    version.mkdir(parents=True)
    (version / "config.pbtxt").write_text('name: "ranker"\nbackend: "python"\n')
    (version / "model.py").write_text("# the model\n")
    metadata = {
        "created_at": "2026-11-01T10:00:00Z",
        "dataset_version": "datagen-2026-10-31",
        "git_sha": "abc1234",
        "pipeline_run_id": "older-run",
        "metrics": {"auc": 0.8},
    }
    (version / "metadata.json").write_text(json.dumps(metadata))
    return tmp_path / "registry"


async def until(client: AirflowClient, dag_id: str, run_id: str, done, timeout: float = 180) -> RunStatus:
    """Poll the run until `done(status)`; fail with the last status seen after `timeout` seconds."""
    status = await airflow_status(client, dag_id, run_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(status):
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting; last seen: {status}"
        await asyncio.sleep(1)
        status = await airflow_status(client, dag_id, run_id)
    return status


def finished(status: RunStatus) -> bool:
    return status.finished


def new_versions(registry: Path) -> list[Path]:
    return [p for p in (registry / "ranker").iterdir() if p.name != "v1"]


@airflow_only
async def test_retrain_publishes_a_version_named_after_the_airflow_run(
    client: AirflowClient, registry: Path
) -> None:
    conf = {"model": "ranker", "requested_by": "U012ABCDEF", "registry": str(registry), "epochs": 2}
    run_id = await client.trigger("train_model", conf, unpause=True)

    first = await airflow_status(client, "train_model", run_id)
    assert first.state in ("queued", "running", "success")
    status = await until(client, "train_model", run_id, finished)

    assert status.state == "success", status
    assert status.tasks == [("check_inputs", "success"), ("train", "success")]
    assert status.started_at is not None and status.ended_at is not None
    [version] = new_versions(registry)
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["pipeline_run_id"] == run_id
    assert metadata["metrics"]["auc"] >= 0.8
    assert (version / "config.pbtxt").exists() and (version / "model.py").exists()
    # The conf reached the training script: it trained for the requested epochs.
    assert "epoch 2/2" in "\n".join(await client.log_tail("train_model", run_id, "train"))
    async with aiohttp.ClientSession() as http, http.get(status.url) as page:
        assert page.status == 200  # the link the bot posts opens Airflow's UI


@airflow_only
async def test_repeating_a_trigger_with_the_same_run_id_starts_one_run(
    client: AirflowClient, registry: Path
) -> None:
    conf = {"model": "ranker", "registry": str(registry), "epochs": 1}
    run_id = await client.trigger("train_model", conf, run_id="retrain-ranker-42", unpause=True)
    assert await client.trigger("train_model", conf, run_id="retrain-ranker-42") == run_id

    assert (await until(client, "train_model", run_id, finished)).state == "success"
    assert len(new_versions(registry)) == 1


@airflow_only
async def test_a_broken_pipeline_names_the_failed_task_and_its_error(client: AirflowClient) -> None:
    run_id = await client.trigger("train_broken", {"model": "ranker"}, unpause=True)

    status = await until(client, "train_broken", run_id, finished)

    assert status.state == "failed"
    assert status.tasks == [("load_features", "success"), ("train", "failed")]
    assert status.failed_tasks == ["train"]
    assert status.detail == "failed task: train"
    tail = await client.log_tail("train_broken", run_id, "train")
    assert "RuntimeError: training diverged after 1000 rows: loss is NaN" in tail


@airflow_only
async def test_cancel_marks_a_running_run_failed_and_stops_training(client: AirflowClient, registry: Path) -> None:
    conf = {"model": "ranker", "registry": str(registry), "epochs": 600}  # two minutes of training
    run_id = await client.trigger("train_model", conf, unpause=True)
    await until(client, "train_model", run_id, lambda s: ("train", "running") in s.tasks)

    await client.cancel("train_model", run_id)

    status = await until(client, "train_model", run_id, finished, timeout=30)
    assert status.state == "failed"
    await asyncio.sleep(3)  # time enough for a surviving script to publish something
    assert new_versions(registry) == []
    assert not any(line.startswith("epoch 600/") for line in await client.log_tail("train_model", run_id, "train"))


@airflow_only
async def test_unknown_dag_is_named_in_the_error(client: AirflowClient) -> None:
    with pytest.raises(AirflowError) as caught:
        await client.trigger("train_rankr", {"model": "ranker"})

    assert caught.value.status == 404
    assert "no DAG 'train_rankr'" in str(caught.value)
    assert "retrain.dag_id" in str(caught.value)


@airflow_only
async def test_wrong_password_says_which_settings_to_fix(airflow: AirflowStandalone) -> None:
    async with AirflowClient(airflow.base_url, username=airflow.username, password="wrong") as client:
        with pytest.raises(AirflowError) as caught:
            await client.trigger("train_model", {"model": "ranker"})

    assert caught.value.status == 401
    assert "AIRFLOW_USERNAME" in str(caught.value) and "AIRFLOW_PASSWORD" in str(caught.value)


@airflow_only
async def test_a_bearer_token_from_config_is_accepted(airflow: AirflowStandalone) -> None:
    async with AirflowClient(airflow.base_url, auth="bearer", token=airflow.token()) as client:
        run_id = await client.trigger("train_broken", {})
        assert (await airflow_status(client, "train_broken", run_id)).run_id == run_id


async def test_an_unreachable_airflow_is_named_by_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AirflowClient(url, username="u", password="p", retries=1, backoff=0.01) as client:
        with pytest.raises(AirflowError, match=f"cannot reach Airflow at {url}"):
            await airflow_status(client, "train_model", "some-run")


@pytest.fixture
async def failing_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An Airflow in trouble: tokens are handed out, but the API answers 503, or slowly for DAG `slow`."""
    calls: list[str] = []

    async def api(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        if "/dags/slow/" in request.path:
            await asyncio.sleep(5)
        return web.json_response({"detail": "database is locked"}, status=503)

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t"}, status=201)

    app = web.Application()
    app.router.add_post("/auth/token", token)
    app.router.add_route("*", "/api/v2/{tail:.*}", api)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_server_errors_are_retried_then_reported(failing_server: tuple[str, list[str]]) -> None:
    url, calls = failing_server
    async with AirflowClient(url, username="u", password="p", retries=2, backoff=0.01) as client:
        with pytest.raises(AirflowError) as caught:
            await client.trigger("train_model", {"model": "ranker"}, run_id="r-1")

    assert caught.value.status == 503
    assert "database is locked" in str(caught.value)
    # Three tries of the same run id: had one got through, a retry could not have started a second run.
    assert calls == ["POST /api/v2/dags/train_model/dagRuns"] * 3


async def test_a_slow_airflow_is_reported_as_a_timeout(failing_server: tuple[str, list[str]]) -> None:
    url, _ = failing_server
    async with AirflowClient(url, username="u", password="p", timeout=0.5, retries=0) as client:
        with pytest.raises(AirflowError, match=f"Airflow at {url} did not answer GET .* within 0.5s"):
            await airflow_status(client, "slow", "r-1")
