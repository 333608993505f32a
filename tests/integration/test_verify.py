"""Verification of a version on a real Triton fleet, and the pure comparisons it is built from."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from bot.releases.verify import latency_percentiles, max_abs_difference, output_problems, verify
from bot.serving.artifacts import open_store
from bot.serving.registry import Expected, Registry
from bot.serving.triton import Fleet, deploy_files
from bot.sandbox.tritonserver import TritonServer, free_port, triton_missing

EXAMPLES = Path(__file__).parents[2] / "examples" / "registry"

# --- pure comparisons -----------------------------------------------------------------------------------


def test_percentiles_of_latency_samples() -> None:
    p50, p99 = latency_percentiles([float(ms) for ms in range(1, 101)])
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)


def test_a_nan_output_is_named_with_its_position() -> None:
    problems = output_problems("score", np.array([0.4, np.nan, 0.5], dtype=np.float32), None)
    assert problems == ["output 'score'[1] is nan (1 of 3 values not finite)"]


def test_values_within_tolerance_pass_and_the_worst_miss_is_reported() -> None:
    expected = Expected(data=[0.5, 0.25, 1.0], atol=0.01)
    assert output_problems("score", np.array([0.505, 0.25, 0.995]), expected) == []
    assert output_problems("score", np.array([0.52, 0.25, 1.3]), expected) == [
        "output 'score'[2] is 1.3, expected 1 ± 0.01 (2 of 3 values off)"
    ]
    relative = Expected(data=[100.0], atol=0.0, rtol=0.01)
    assert output_problems("score", np.array([100.9]), relative) == []


def test_a_shape_mismatch_is_a_problem() -> None:
    assert output_problems("score", np.zeros(2), Expected(data=[0.0, 0.0, 0.0])) == [
        "output 'score' has 2 values, expected 3"
    ]


def test_largest_difference_between_two_versions_outputs() -> None:
    ours = {"score": np.array([0.40, 0.60]), "rank": np.array([1, 2])}
    theirs = {"score": np.array([0.39, 0.65]), "rank": np.array([1, 2])}
    diff, output = max_abs_difference(ours, theirs)
    assert output == "score" and diff == pytest.approx(0.05)


# --- on a real fleet ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repositories() -> Iterator[dict[str, Path]]:
    paths = {env: Path(tempfile.mkdtemp(prefix=f"triton-{env}-")) for env in ("staging", "prod")}
    yield paths
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(repositories: dict[str, Path]) -> Iterator[dict[str, TritonServer]]:
    if reason := triton_missing():
        pytest.skip(reason)
    started = {env: TritonServer(str(path)).start() for env, path in repositories.items()}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
async def fleets(servers: dict[str, TritonServer]) -> AsyncIterator[dict[str, Fleet]]:
    async with Fleet([servers["staging"].url]) as staging, Fleet([servers["prod"].url]) as prod:
        yield {"staging": staging, "prod": prod}


@pytest.fixture
def registry() -> Registry:
    return Registry(open_store(str(EXAMPLES)))


async def deploy(registry: Registry, repository: Path, fleet: Fleet, version: str, n: int) -> None:
    config = await deploy_files(registry, "ranker", version, open_store(str(repository)), n)
    await fleet.load("ranker", n, config)


@pytest.mark.triton
async def test_a_good_version_passes_with_its_latency_figures(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["staging"], fleets["staging"], "v1", 1)

    report = await verify(fleets["staging"], "ranker", 1, await registry.verify_spec("ranker", "v1"),
                          requests=10, slo_p99_ms=60_000)

    assert report.passed, report.reason
    assert [c.name for c in report.checks] == [
        "endpoints live and ready", "version 1 READY", "golden requests", "latency"
    ]
    assert report.requests == 10 and report.p50_ms is not None and report.p99_ms is not None
    assert 0 < report.p50_ms <= report.p99_ms


@pytest.mark.triton
async def test_v2_is_compared_with_the_version_prod_serves(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["prod"], fleets["prod"], "v1", 1)
    await deploy(registry, repositories["staging"], fleets["staging"], "v2", 2)

    report = await verify(fleets["staging"], "ranker", 2, await registry.verify_spec("ranker", "v2"),
                          requests=4, baseline=(fleets["prod"], 1))

    assert report.passed, report.reason
    assert report.baseline_n == 1
    assert report.max_baseline_diff == pytest.approx(0.01315, abs=1e-4)
    assert "difference from version 1" in [c.name for c in report.checks]


@pytest.mark.triton
async def test_a_version_that_answers_nan_fails_naming_the_output_and_endpoint(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["staging"], fleets["staging"], "v3", 3)

    report = await verify(fleets["staging"], "ranker", 3, await registry.verify_spec("ranker", "v3"), requests=4)

    assert not report.passed
    assert report.reason is not None
    assert report.reason.startswith(f"golden requests: {fleets['staging'].endpoints[0]}, request 'three feed items'")
    assert "output 'score'[0] is nan" in report.reason


@pytest.mark.triton
async def test_a_p99_over_the_slo_fails(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["staging"], fleets["staging"], "v1", 1)

    report = await verify(fleets["staging"], "ranker", 1, await registry.verify_spec("ranker", "v1"),
                          requests=5, slo_p99_ms=0.001)

    assert not report.passed
    assert report.reason is not None and report.reason.startswith("latency: p50 ")
    assert report.reason.endswith("SLO p99 ≤ 0.001 ms")


@pytest.mark.triton
async def test_a_version_that_is_not_loaded_fails_readiness(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["staging"], fleets["staging"], "v1", 1)

    report = await verify(fleets["staging"], "ranker", 5, await registry.verify_spec("ranker", "v1"))

    assert not report.passed
    assert report.reason == f"version 5 READY: {fleets['staging'].endpoints[0]}: READY versions [1]"


@pytest.mark.triton
async def test_an_endpoint_that_is_down_is_named(registry: Registry, servers: dict[str, TritonServer]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with Fleet([servers["staging"].url, dead], timeout=5) as fleet:
        report = await verify(fleet, "ranker", 1, await registry.verify_spec("ranker", "v1"))

    assert not report.passed
    assert report.reason == f"endpoints live and ready: {dead}: unreachable (connection refused)"
