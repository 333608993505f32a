"""Registry, artifact stores and Triton fleets against real servers: moto_server for S3, tritonserver."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest

from bot.sandbox.tritonserver import TritonServer, free_port, triton_missing
from bot.serving.artifacts import ArtifactError, ArtifactStore, copy, open_store
from bot.serving.registry import Registry, RegistryError
from bot.serving.triton import Fleet, FleetError, deploy_files, triton_repository_path
from tests.support.s3 import AWS_ENV, MotoServer

EXAMPLES = Path(__file__).parents[2] / "examples" / "registry"

@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        with MotoServer() as server:
            yield server


def new_bucket(moto: MotoServer) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto.endpoint_url).create_bucket(Bucket=name)
    return name


async def upload_examples(store: ArtifactStore) -> None:
    local = open_store(str(EXAMPLES))
    for key in await local.list():
        await copy(local, key, store, key)


@pytest.fixture(scope="module")
def local_repo() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="triton-repo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def triton() -> None:
    if reason := triton_missing():
        pytest.skip(reason)


@pytest.fixture(scope="module")
def local_servers(triton: None, local_repo: Path) -> Iterator[list[TritonServer]]:
    servers = [TritonServer(str(local_repo)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
async def local_fleet(local_servers: list[TritonServer]) -> AsyncIterator[Fleet]:
    async with Fleet([s.url for s in local_servers]) as fleet:
        yield fleet


@pytest.fixture
def registry() -> Registry:
    return Registry(open_store(str(EXAMPLES)))


async def golden_scores(registry: Registry, fleet: Fleet, endpoint: str, version: str, n: int) -> np.ndarray:
    spec = await registry.verify_spec("ranker", version)
    assert spec is not None
    request = spec.requests[0]
    outputs = await fleet.infer(endpoint, "ranker", n, {k: t.array() for k, t in request.inputs.items()})
    return outputs["score"]


# --- registry -------------------------------------------------------------------------------------------


async def test_versions_are_listed_newest_first_with_provenance(registry: Registry) -> None:
    versions = await registry.versions("ranker")
    assert [v.version for v in versions] == ["v2", "v1", "v4", "v3"]
    assert (await registry.latest("ranker")).version == "v2"
    found = await registry.find_by_run_id("ranker", "ranker-train-2026-11-18")
    assert found is not None and found.version == "v1"
    assert found.metadata is not None and found.metadata.git_sha == "4e1d2c7"


async def test_unknown_version_lists_the_ones_that_exist(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no version v9 .*versions: v2, v1, v4, v3"):
        await registry.validate("ranker", "v9")
    with pytest.raises(RegistryError, match="models there: ranker"):
        await registry.latest("recommender")


async def test_digest_changes_when_a_file_changes(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "registry")
    registry = Registry(open_store(str(tmp_path / "registry")))
    before = await registry.digest("ranker", "v1")
    assert before == await registry.digest("ranker", "v1")
    assert before != await registry.digest("ranker", "v2")

    (tmp_path / "registry" / "ranker" / "v1" / "weights.json").write_text('{"weights": [1, 1, 1, 1], "bias": 0}')
    assert await registry.digest("ranker", "v1") != before


async def test_digest_is_the_same_in_s3_and_on_disk(moto: MotoServer, registry: Registry) -> None:
    s3 = open_store(f"s3://{new_bucket(moto)}/registry", s3_endpoint_url=moto.endpoint_url)
    await upload_examples(s3)
    assert await Registry(s3).digest("ranker", "v2") == await registry.digest("ranker", "v2")


# --- artifact stores ------------------------------------------------------------------------------------


async def test_s3_errors_name_the_uri_and_the_cause(moto: MotoServer) -> None:
    with pytest.raises(ArtifactError, match=r"s3://no-such-bucket/models/ranker/v1/config.pbtxt: NoSuchBucket"):
        await open_store("s3://no-such-bucket/models", s3_endpoint_url=moto.endpoint_url).read("ranker/v1/config.pbtxt")

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ArtifactError, match=r"s3://models/ranker/: cannot reach the S3 endpoint .*Connection refused"):
        await open_store("s3://models", s3_endpoint_url=dead).list("ranker")


async def test_copy_between_local_and_s3_round_trips(moto: MotoServer, tmp_path: Path) -> None:
    s3 = open_store(f"s3://{new_bucket(moto)}/a", s3_endpoint_url=moto.endpoint_url)
    other = open_store(s3.uri.replace("/a", "/b"), s3_endpoint_url=moto.endpoint_url)
    local = open_store(str(tmp_path))
    await s3.write("x/model.py", b"print('hi')\n")

    await copy(s3, "x/model.py", other, "y/model.py")  # server-side
    await copy(other, "y/model.py", local, "z/model.py")
    assert (tmp_path / "z" / "model.py").read_bytes() == b"print('hi')\n"
    assert await other.list() == ["y/model.py"]

    await other.delete_prefix("y")
    assert not await other.exists("y/model.py")


# --- deploying to Triton --------------------------------------------------------------------------------


@pytest.mark.triton
async def test_deploy_v1_to_a_local_repository_loads_it_on_both_endpoints(
    registry: Registry, local_repo: Path, local_fleet: Fleet
) -> None:
    events: list[tuple[str, int, int, str]] = []
    config = await deploy_files(registry, "ranker", "v1", open_store(str(local_repo)), 1)
    await local_fleet.load("ranker", 1, config, on_progress=lambda *event: events.append(event))

    for deployed in ("config.pbtxt", "1/model.py", "1/weights.json"):
        assert (local_repo / "ranker" / deployed).is_file()
    assert await local_fleet.ready_versions("ranker") == {e: [1] for e in local_fleet.endpoints}
    assert sorted(e for e in events if e[0] == "ready")[-1][1:3] == (2, 2)
    for endpoint in local_fleet.endpoints:
        scores = await golden_scores(registry, local_fleet, endpoint, "v1", 1)
        np.testing.assert_allclose(scores, [0.3893608, 0.5926666, 0.5062497], atol=1e-5)


@pytest.mark.triton
async def test_deploying_v2_replaces_v1_and_loading_v1_again_rolls_back(
    registry: Registry, local_repo: Path, local_fleet: Fleet
) -> None:
    repository = open_store(str(local_repo))
    v1 = await deploy_files(registry, "ranker", "v1", repository, 1)
    v2 = await deploy_files(registry, "ranker", "v2", repository, 2)
    endpoint = local_fleet.endpoints[0]

    await local_fleet.load("ranker", 2, v2)
    assert await local_fleet.ready_versions("ranker") == {e: [2] for e in local_fleet.endpoints}
    v2_scores = await golden_scores(registry, local_fleet, endpoint, "v2", 2)
    with pytest.raises(FleetError, match="version 1 is not at ready state"):
        await golden_scores(registry, local_fleet, endpoint, "v1", 1)

    await local_fleet.load("ranker", 1, v1)
    assert await local_fleet.ready_versions("ranker") == {e: [1] for e in local_fleet.endpoints}
    v1_scores = await golden_scores(registry, local_fleet, endpoint, "v1", 1)
    assert not np.allclose(v1_scores, v2_scores)


@pytest.mark.triton
async def test_broken_config_is_rejected_before_anything_is_copied(
    registry: Registry, local_repo: Path, local_fleet: Fleet
) -> None:
    repository = open_store(str(local_repo))
    before = await repository.list()
    with pytest.raises(RegistryError, match='ranker v4 cannot be deployed: .*no value named TYPE_FLOAT32'):
        await deploy_files(registry, "ranker", "v4", repository, 4)
    assert await repository.list() == before


@pytest.mark.triton
async def test_a_load_triton_refuses_fails_with_its_message_and_keeps_serving(
    registry: Registry, local_repo: Path, local_fleet: Fleet
) -> None:
    config = await deploy_files(registry, "ranker", "v1", open_store(str(local_repo)), 1)
    await local_fleet.load("ranker", 1, config)
    missing = config.replace('"versions": ["1"]', '"versions": ["7"]')

    with pytest.raises(FleetError, match="at least one version must be available") as failure:
        await local_fleet.load("ranker", 7, missing)
    assert failure.value.endpoints == local_fleet.endpoints
    assert await local_fleet.ready_versions("ranker") == {e: [1] for e in local_fleet.endpoints}


@pytest.mark.triton
async def test_an_unreachable_endpoint_fails_the_load_naming_it(
    registry: Registry, local_repo: Path, local_servers: list[TritonServer]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = await deploy_files(registry, "ranker", "v1", open_store(str(local_repo)), 1)
    async with Fleet([local_servers[0].url, dead], timeout=10) as fleet:
        with pytest.raises(FleetError, match="unreachable") as failure:
            await fleet.load("ranker", 1, config)
        health = await fleet.health()

    assert failure.value.endpoints == [dead]
    assert str(failure.value).startswith(f"{dead}: unreachable (connection refused)")
    assert health[local_servers[0].url].ready and not health[dead].live


@pytest.mark.triton
async def test_deploy_from_an_s3_registry_into_an_s3_repository_on_moto(triton: None, moto: MotoServer) -> None:
    bucket = new_bucket(moto)
    registry = Registry(open_store(f"s3://{bucket}/registry", s3_endpoint_url=moto.endpoint_url))
    repository = open_store(f"s3://{bucket}/staging", s3_endpoint_url=moto.endpoint_url)
    await upload_examples(registry.store)

    config = await deploy_files(registry, "ranker", "v2", repository, 3)
    assert await repository.list() == ["ranker/3/model.py", "ranker/3/weights.json", "ranker/config.pbtxt"]

    repository_path = triton_repository_path(repository.uri, moto.endpoint_url)
    with TritonServer(repository_path, env=AWS_ENV) as server:
        async with Fleet([server.url]) as fleet:
            await fleet.load("ranker", 3, config)
            assert await fleet.ready_versions("ranker") == {server.url: [3]}
            scores = await golden_scores(registry, fleet, server.url, "v2", 3)
    np.testing.assert_allclose(scores, [0.4025142, 0.5950785, 0.5140588], atol=1e-5)
