"""Verify a model version on a Triton fleet: is it up, does it answer right, is it fast, how far did it move.

`verify` gathers figures and checks into a `VerifyReport` (stored with the release, shown on its card);
the comparisons themselves are pure functions below it, testable without any server.
"""
from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, computed_field
from tritonclient.utils import np_to_triton_dtype

from bot.serving.registry import Expected, GoldenRequest, VerifySpec
from bot.serving.triton import Fleet, FleetError


class Check(BaseModel):
    name: str
    passed: bool
    detail: str


class VerifyReport(BaseModel):
    model: str
    n: int
    endpoints: list[str]
    passed: bool
    checks: list[Check]
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    slo_p99_ms: float | None = None
    baseline_n: int | None = None
    max_baseline_diff: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reason(self) -> str | None:
        """The first failed check, phrased for the person who has to act on it."""
        failed = next((c for c in self.checks if not c.passed), None)
        return None if failed is None else f"{failed.name}: {failed.detail}"


def latency_percentiles(samples_ms: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    p50, p99 = np.percentile(np.asarray(samples_ms, dtype=float), [50, 99])
    return float(p50), float(p99)


def _at(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, index)) + "]"


def _datatype(array: np.ndarray) -> str:
    return np_to_triton_dtype(array.dtype) or str(array.dtype)


def _numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biufc"


def output_problems(name: str, actual: np.ndarray, expected: Expected | None) -> list[str]:
    """What is wrong with one output: empty, non-finite values, not numbers, a size that differs, values out of
    tolerance. Any array the client decodes is judged, never raised on."""
    want = None if expected is None else np.asarray(expected.data, dtype=float)
    if actual.size == 0 and not (want is not None and want.size == 0):
        return [f"output '{name}' is empty (shape {list(actual.shape)})"]
    if actual.dtype.kind in "fc":
        bad = np.argwhere(~np.isfinite(actual))
        if bad.size:
            first = tuple(int(i) for i in bad[0])
            return [f"output '{name}'{_at(first)} is {actual[first]} ({len(bad)} of {actual.size} values not finite)"]
    if want is None:
        return []
    if not _numeric(actual):
        return [f"output '{name}' is {_datatype(actual)} (first value {actual.flat[0]!r}), expected numbers"]
    if actual.size != want.size:
        return [f"output '{name}' has {actual.size} values, expected {want.size}"]
    if want.size == 0:
        return []
    got = actual.astype(float).reshape(-1)
    excess = np.abs(got - want) - (expected.atol + expected.rtol * np.abs(want))
    worst = int(np.argmax(excess))
    if excess[worst] <= 0:
        return []
    index = np.unravel_index(worst, actual.shape)
    tolerance = expected.atol + expected.rtol * abs(want[worst])
    return [
        f"output '{name}'{_at(tuple(int(i) for i in index))} is {got[worst]:.6g}, "
        f"expected {want[worst]:.6g} ± {tolerance:.2g} ({int((excess > 0).sum())} of {got.size} values off)"
    ]


def baseline_difference(
    ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray], baseline: str = "the baseline"
) -> tuple[float, str, list[str]]:
    """(largest |ours - theirs|, the output it is in, problems) over the outputs the baseline has.

    A problem is whatever makes that largest difference untrue: an output missing here, a shape or datatype
    that differs, a difference that is not finite (nan or inf on either side). Outputs that are not numbers
    on either side are not differences and are left out.
    """
    worst, where, problems = 0.0, "", []
    for name in sorted(theirs):
        if name not in ours:
            problems.append(f"no output '{name}' here, {baseline} has one")
            continue
        a, b = ours[name], theirs[name]
        if not (_numeric(a) and _numeric(b)):
            if _numeric(a) != _numeric(b):
                problems.append(f"output '{name}' is {_datatype(a)} here and {_datatype(b)} on {baseline}")
            continue
        if a.shape != b.shape:
            problems.append(f"output '{name}' has shape {list(a.shape)} here and {list(b.shape)} on {baseline}")
            continue
        diff = np.abs(a.astype(float) - b.astype(float))
        bad = np.argwhere(~np.isfinite(diff))
        if bad.size:
            first = tuple(int(i) for i in bad[0])
            problems.append(
                f"output '{name}'{_at(first)} is {a[first]:.6g} here and {b[first]:.6g} on {baseline}: "
                f"the difference is not finite ({len(bad)} of {diff.size} values)"
            )
            continue
        largest = float(np.max(diff, initial=0.0))
        if largest > worst or not where:
            worst, where = largest, name
    if not where and not problems:
        problems.append(f"no numeric output in common with {baseline}")
    return worst, where, problems


# What tritonclient raises decoding an answer it did get, outside Fleet's own error handling: reshaping the
# returned bytes to the reported shape (ValueError "cannot reshape array of size 0" when a python backend stub
# answers shapes without data) or unpacking BYTES shorter than they claim (struct.error).
UNREADABLE_ANSWER = (ValueError, struct.error)


async def _infer(fleet: Fleet, endpoint: str, model: str, n: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`fleet.infer`, where an answer that cannot be decoded is a FleetError like any failed inference."""
    try:
        return await fleet.infer(endpoint, model, n, inputs)
    except UNREADABLE_ANSWER as error:
        raise FleetError({endpoint: f"answer could not be read ({type(error).__name__}: {error})"}) from error


def _inputs(request: GoldenRequest) -> dict[str, np.ndarray]:
    return {name: tensor.array() for name, tensor in request.inputs.items()}


def _unsendable(spec: VerifySpec) -> str | None:
    """Why verify.json's requests cannot be sent (data that does not fit its shape or datatype), or None."""
    for request in spec.requests:
        try:
            _inputs(request)
        except (ValueError, TypeError) as error:
            return f"request '{request.name}' in verify.json cannot be sent: {error}"
    return None


async def _health(fleet: Fleet) -> Check:
    health = await fleet.health()
    # Live but not ready is most often a failed load Triton keeps (of any model): named, with what clears it.
    stuck = await fleet.failed_loads() if any(h.live and not h.ready for h in health.values()) else {}
    down = [
        f"{endpoint}: {h.error or ('live, not ready' if h.live else 'not live')}" + (
            ": " + "; ".join(f"{what} failed to load there ({why})" for what, why in stuck[endpoint].items())
            + f", and Triton stays not ready until it restarts; restart the tritonserver at {endpoint}"
            if h.live and stuck.get(endpoint) else "")
        for endpoint, h in health.items()
        if not (h.live and h.ready)
    ]
    return Check(name="endpoints live and ready", passed=not down, detail="; ".join(down) or f"all {len(health)}")


async def _readiness(fleet: Fleet, model: str, n: int) -> Check:
    try:
        ready = await fleet.ready_versions(model)
    except FleetError as error:
        return Check(name=f"version {n} READY", passed=False, detail=str(error))
    missing = [f"{endpoint}: READY versions {versions or 'none'}" for endpoint, versions in ready.items()
               if n not in versions]
    detail = "; ".join(missing) or f"on all {len(ready)} endpoints"
    return Check(name=f"version {n} READY", passed=not missing, detail=detail)


async def _golden(fleet: Fleet, model: str, n: int, spec: VerifySpec) -> Check:
    async def on(endpoint: str) -> list[str]:
        problems = []
        for request in spec.requests:
            where = f"{endpoint}, request '{request.name}'"
            try:
                outputs = await _infer(fleet, endpoint, model, n, _inputs(request))
            except FleetError as error:
                problems.append(f"{where}: {error.failures[endpoint]}")
                continue
            problems += [f"{where}: no output '{name}'" for name in request.expected.keys() - outputs.keys()]
            for name, actual in outputs.items():
                problems += [f"{where}: {p}" for p in output_problems(name, actual, request.expected.get(name))]
        return problems

    problems = [p for found in await asyncio.gather(*(on(e) for e in fleet.endpoints)) for p in found]
    if problems:
        return Check(name="golden requests", passed=False, detail="; ".join(problems))
    answered = len(spec.requests) * len(fleet.endpoints)
    return Check(name="golden requests", passed=True, detail=f"{answered} answered as expected, all outputs finite")


async def _latency(fleet: Fleet, model: str, n: int, spec: VerifySpec, k: int) -> tuple[list[float], list[str]]:
    """K requests spread over the endpoints, one at a time per endpoint so each measures latency alone."""
    inputs = [_inputs(r) for r in spec.requests]
    endpoints = fleet.endpoints
    plan: dict[str, list[dict[str, np.ndarray]]] = {e: [] for e in endpoints}
    for i in range(k):
        plan[endpoints[i % len(endpoints)]].append(inputs[i % len(inputs)])
    samples: list[float] = []
    errors: list[str] = []

    async def run(endpoint: str) -> None:
        for request in plan[endpoint]:
            start = time.perf_counter()
            try:
                await _infer(fleet, endpoint, model, n, request)
            except FleetError as error:
                errors.append(str(error))
                continue
            samples.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(run(e) for e in endpoints))
    return samples, errors


def _latency_check(report: VerifyReport, errors: list[str]) -> Check:
    if errors:
        failed = f"{len(errors)} of {len(errors) + report.requests} requests failed, first: {errors[0]}"
        return Check(name="latency", passed=False, detail=failed)
    if report.p50_ms is None or report.p99_ms is None:
        return Check(name="latency", passed=report.slo_p99_ms is None, detail="no timed requests were asked for")
    figures = f"p50 {report.p50_ms:.1f} ms, p99 {report.p99_ms:.1f} ms over {report.requests} requests"
    if report.slo_p99_ms is None:
        return Check(name="latency", passed=True, detail=f"{figures}; no SLO set")
    return Check(
        name="latency",
        passed=report.p99_ms <= report.slo_p99_ms,
        detail=f"{figures}; SLO p99 ≤ {report.slo_p99_ms:g} ms",
    )


async def _answer(fleet: Fleet, model: str, n: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | str:
    """The outputs of the fleet's first endpoint, or what went wrong there."""
    try:
        return await _infer(fleet, (await fleet.resolve())[0], model, n, inputs)  # a baseline fleet is not entered
    except FleetError as error:
        return str(error)


async def _baseline(
    fleet: Fleet, model: str, n: int, spec: VerifySpec, baseline: Fleet, baseline_n: int
) -> tuple[Check, float | None]:
    """How far the golden requests' outputs moved from the baseline (prod's version), and that largest |Δ|;
    None when there is no true one to give (an answer missing or not comparable), which the check says."""
    theirs_name = f"version {baseline_n}"
    worst, where, problems = 0.0, "", []
    for request in spec.requests:
        inputs = _inputs(request)
        ours, theirs = await asyncio.gather(
            _answer(fleet, model, n, inputs), _answer(baseline, model, baseline_n, inputs)
        )
        if isinstance(ours, str) or isinstance(theirs, str):
            problems += [f"{who} could not answer request '{request.name}': {failure}"
                         for who, failure in (("this version", ours), (theirs_name, theirs)) if isinstance(failure, str)]
            continue
        diff, output, found = baseline_difference(ours, theirs, theirs_name)
        problems += [f"request '{request.name}': {p}" for p in found]
        if output and (diff > worst or not where):
            worst, where = diff, f"output '{output}' of request '{request.name}'"
    name = f"difference from version {baseline_n}"
    if problems:
        return Check(name=name, passed=False, detail="; ".join(problems)), None
    limit = spec.max_baseline_diff
    detail = f"largest |Δ| {worst:.6g} in {where}" + ("" if limit is None else f"; allowed ≤ {limit:g}")
    return Check(name=name, passed=limit is None or worst <= limit, detail=detail), worst


async def verify(
    fleet: Fleet,
    model: str,
    n: int,
    spec: VerifySpec | None,
    *,
    requests: int = 20,
    slo_p99_ms: float | None = None,
    baseline: tuple[Fleet, int] | None = None,
) -> VerifyReport:
    """Check Triton version `n` of `model` on every endpoint of `fleet`.

    `spec` is the version's verify.json (None: only health and readiness can be checked); `requests` is
    how many timed requests the p50/p99 come from; `baseline` is the fleet and Triton version to compare
    outputs with (prod's current version). Endpoint or inference failures and malformed answers (non-finite,
    empty, undecodable) become failed checks, never exceptions.
    """
    report = VerifyReport(
        model=model, n=n, endpoints=fleet.endpoints, passed=False, checks=[], slo_p99_ms=slo_p99_ms
    )
    report.checks += [await _health(fleet), await _readiness(fleet, model, n)]
    if not all(c.passed for c in report.checks):
        return report  # nothing to send requests to
    if spec is None:
        report.checks.append(
            Check(name="golden requests", passed=True, detail="no verify.json for this version: answers not checked")
        )
        report.passed = True
        return report

    unsendable = _unsendable(spec)
    if unsendable:
        report.checks.append(Check(name="golden requests", passed=False, detail=unsendable))
        return report
    report.checks.append(await _golden(fleet, model, n, spec))

    samples, errors = await _latency(fleet, model, n, spec, requests)
    report.requests = len(samples)
    if samples:
        report.p50_ms, report.p99_ms = latency_percentiles(samples)
    report.checks.append(_latency_check(report, errors))

    if baseline is not None:
        baseline_fleet, baseline_n = baseline
        report.baseline_n = baseline_n
        check, report.max_baseline_diff = await _baseline(fleet, model, n, spec, baseline_fleet, baseline_n)
        report.checks.append(check)

    report.passed = all(c.passed for c in report.checks)
    return report
