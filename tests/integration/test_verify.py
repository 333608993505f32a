"""Verification of a version on a real Triton fleet, and the pure comparisons it is built from."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from bot.releases.verify import baseline_difference, latency_percentiles, output_problems, verify
from bot.sandbox.tritonserver import TritonServer, free_port, triton_missing
from bot.serving.artifacts import open_store
from bot.serving.registry import Expected, GoldenRequest, Registry, VerifySpec
from bot.serving.triton import Fleet, deploy_files

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


def test_an_empty_output_is_a_problem_even_when_nothing_is_expected() -> None:
    assert output_problems("score", np.zeros(0, dtype=np.float32), None) == ["output 'score' is empty (shape [0])"]
    assert output_problems("score", np.zeros((3, 0)), Expected(data=[1.0])) == ["output 'score' is empty (shape [3, 0])"]


def test_an_output_of_strings_is_a_problem_not_an_exception() -> None:
    strings = np.array([b"0.4", b"0.6"], dtype=np.object_)
    assert output_problems("score", strings, Expected(data=[0.4, 0.6])) == [
        "output 'score' is BYTES (first value b'0.4'), expected numbers"
    ]


def test_largest_difference_between_two_versions_outputs() -> None:
    ours = {"score": np.array([0.40, 0.60]), "rank": np.array([1, 2])}
    theirs = {"score": np.array([0.39, 0.65]), "rank": np.array([1, 2])}
    diff, output, problems = baseline_difference(ours, theirs)
    assert output == "score" and diff == pytest.approx(0.05) and problems == []


@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (np.inf, "inf")])
def test_a_difference_that_is_not_finite_is_a_problem_not_a_largest_difference(value: float, shown: str) -> None:
    ours = {"score": np.array([0.40, value], dtype=np.float32)}
    theirs = {"score": np.array([0.39, 0.65], dtype=np.float32)}
    _, _, problems = baseline_difference(ours, theirs, "version 1")
    assert problems == [
        f"output 'score'[1] is {shown} here and 0.65 on version 1: the difference is not finite (1 of 2 values)"
    ]


def test_outputs_that_cannot_be_compared_are_problems() -> None:
    theirs = {"score": np.array([0.39, 0.65]), "rank": np.array([1, 2])}
    _, _, problems = baseline_difference({"score": np.zeros(0)}, theirs, "version 1")
    assert problems == [
        "no output 'rank' here, version 1 has one",
        "output 'score' has shape [0] here and [2] on version 1",
    ]
    _, _, problems = baseline_difference({"score": np.array([b"x"], dtype=np.object_)}, {"score": np.zeros(1)})
    assert problems == ["output 'score' is BYTES here and FP64 on the baseline"]


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
        if os.environ.get("CI") == "true":  # CI installs the triton extra: missing there is a broken build
            pytest.fail(f"tritonserver is needed for the verify tests: {reason}")
        pytest.skip(reason)
    started = {env: TritonServer(str(path)).start() for env, path in repositories.items()}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
async def fleets(servers: dict[str, TritonServer]) -> AsyncIterator[dict[str, Fleet]]:
    async with Fleet([servers["staging"].url]) as staging, Fleet([servers["prod"].url]) as prod:
        yield {"staging": staging, "prod": prod}


# Variants of v1 (same weights) that answer wrongly, the way model.py edits go wrong.
BROKEN = {
    # Normalising by the item's norm: 0/0 = nan for an item whose features are all zero.
    "v1-nan-for-zero-items": (
        "score = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)",
        "norm = np.linalg.norm(item, axis=1)\n"
        "        score = (1.0 / (1.0 + np.exp(-logits)) * norm / norm).astype(np.float32)",
    ),
    "v1-empty": ('pb_utils.Tensor("score", score)', 'pb_utils.Tensor("score", score[:0])'),
    # Labels where scores belong.
    "v1-labels": (
        'pb_utils.Tensor("score", score)',
        'pb_utils.Tensor("score", np.array([b"high" if s > 0.5 else b"low" for s in score], dtype=np.object_))',
    ),
}


@pytest.fixture(scope="module")
def registry_path() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="registry-")) / "registry"
    shutil.copytree(EXAMPLES, path)
    source = (path / "ranker" / "v1" / "model.py").read_text()
    for version, (old, new) in BROKEN.items():
        assert old in source
        shutil.copytree(path / "ranker" / "v1", path / "ranker" / version)
        (path / "ranker" / version / "model.py").write_text(source.replace(old, new))
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def registry(registry_path: Path) -> Registry:
    return Registry(open_store(str(registry_path)))


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


def check(report, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in report.checks if c.name == name)


@pytest.mark.triton
async def test_a_nan_difference_from_prod_fails_the_comparison(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["prod"], fleets["prod"], "v1", 1)
    await deploy(registry, repositories["staging"], fleets["staging"], "v1-nan-for-zero-items", 6)

    report = await verify(fleets["staging"], "ranker", 6, await registry.verify_spec("ranker", "v1"),
                          requests=2, baseline=(fleets["prod"], 1))

    # The first request matches prod exactly; the nan of the second must not hide behind that 0.
    compared = check(report, "difference from version 1")
    assert not compared.passed
    assert compared.detail == (
        "request 'zero item features': output 'score'[0] is nan here and 0.524979 on version 1: "
        "the difference is not finite (1 of 1 values)"
    )
    assert report.max_baseline_diff is None


@pytest.mark.triton
async def test_a_nan_difference_fails_even_without_an_allowed_difference(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["prod"], fleets["prod"], "v1", 1)
    await deploy(registry, repositories["staging"], fleets["staging"], "v1-nan-for-zero-items", 6)
    spec = await registry.verify_spec("ranker", "v1")
    assert spec is not None
    spec = spec.model_copy(update={"max_baseline_diff": None})

    report = await verify(fleets["staging"], "ranker", 6, spec, requests=2, baseline=(fleets["prod"], 1))

    compared = check(report, "difference from version 1")
    assert not compared.passed and "the difference is not finite" in compared.detail


@pytest.mark.triton
async def test_an_empty_output_fails_golden_requests_and_the_comparison(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["prod"], fleets["prod"], "v1", 1)
    await deploy(registry, repositories["staging"], fleets["staging"], "v1-empty", 7)
    spec = await registry.verify_spec("ranker", "v1")
    assert spec is not None
    # A sanity-only request: nothing expected, so only emptiness can fail it.
    sanity = VerifySpec(requests=[GoldenRequest(name="sanity", inputs=spec.requests[0].inputs)])

    report = await verify(fleets["staging"], "ranker", 7, sanity, requests=2, baseline=(fleets["prod"], 1))

    endpoint = fleets["staging"].endpoints[0]
    assert report.reason == f"golden requests: {endpoint}, request 'sanity': output 'score' is empty (shape [0])"
    compared = check(report, "difference from version 1")
    assert not compared.passed
    assert compared.detail == "request 'sanity': output 'score' has shape [0] here and [3] on version 1"


@pytest.mark.triton
async def test_an_output_of_labels_is_a_failed_check_not_an_exception(
    registry: Registry, repositories: dict[str, Path], fleets: dict[str, Fleet]
) -> None:
    await deploy(registry, repositories["prod"], fleets["prod"], "v1", 1)
    await deploy(registry, repositories["staging"], fleets["staging"], "v1-labels", 8)

    report = await verify(fleets["staging"], "ranker", 8, await registry.verify_spec("ranker", "v1"),
                          requests=2, baseline=(fleets["prod"], 1))

    assert not report.passed
    assert report.reason is not None and report.reason.startswith("golden requests: ")
    assert "request 'three feed items': output 'score' is BYTES (first value b'low'), expected numbers" in report.reason
    compared = check(report, "difference from version 1")
    assert not compared.passed
    assert compared.detail.startswith("request 'three feed items': output 'score' is BYTES here and FP32 on version 1")


# --- an answer tritonclient cannot decode ---------------------------------------------------------------


@pytest.fixture
async def shapes_without_data() -> AsyncIterator[str]:
    """A KServe v2 endpoint answering as tritonserver does when its python backend stub imports another numpy
    (see bot/sandbox/preflight.py): the output has a shape but no data."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    async def index(request: web.Request) -> web.Response:
        return web.json_response([{"name": "ranker", "version": "1", "state": "READY"}])

    async def infer(request: web.Request) -> web.Response:
        header = json.dumps({"model_name": "ranker", "model_version": "1", "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 0}}]}).encode()
        return web.Response(body=header, content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(header))})

    app = web.Application()
    app.router.add_get("/v2/health/live", ok)
    app.router.add_get("/v2/health/ready", ok)
    app.router.add_post("/v2/repository/index", index)
    app.router.add_post("/v2/models/ranker/versions/1/infer", infer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_an_answer_that_cannot_be_decoded_fails_every_check_that_reads_it(
    shapes_without_data: str, registry: Registry
) -> None:
    spec = await registry.verify_spec("ranker", "v1")
    async with Fleet([shapes_without_data]) as fleet, Fleet([shapes_without_data]) as prod:
        report = await verify(fleet, "ranker", 1, spec, requests=2, baseline=(prod, 1))

    unreadable = "answer could not be read (ValueError: cannot reshape array of size 0 into shape (3,))"
    assert report.reason == (
        f"golden requests: {shapes_without_data}, request 'three feed items': {unreadable}; "
        f"{shapes_without_data}, request 'zero item features': {unreadable}"
    )
    assert check(report, "latency").detail.startswith(f"2 of 2 requests failed, first: {shapes_without_data}: ")
    compared = check(report, "difference from version 1")
    assert not compared.passed
    assert compared.detail.startswith(
        f"this version could not answer request 'three feed items': {shapes_without_data}: {unreadable}; "
        f"version 1 could not answer request 'three feed items': {shapes_without_data}: {unreadable}"
    )
