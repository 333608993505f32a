"""Deploy + verify one version on a fleet of 1 and of 4 real tritonserver endpoints; print times and ratio.

Endpoints are loaded in parallel, so 4 should cost little more than 1 (target: ratio <= 1.5).
Each round deploys a new Triton version number on both fleets, so both pay the same swap from the previous
one. Run from the repository root: `python -m bench.fleet_deploy [--rounds 3] [--requests 20] [--quick]`.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bot.releases.verify import verify
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.artifacts import open_store
from bot.serving.registry import Registry
from bot.serving.triton import Fleet, deploy_files

EXAMPLES = Path(__file__).parents[1] / "examples" / "registry"
MODEL, VERSION = "ranker", "v2"


async def deploy_and_verify(registry: Registry, repository: str, endpoints: list[str], n: int, requests: int) -> float:
    start = time.perf_counter()
    async with Fleet(endpoints) as fleet:
        config = await deploy_files(registry, MODEL, VERSION, open_store(repository), n)
        await fleet.load(MODEL, n, config)
        report = await verify(fleet, MODEL, n, await registry.verify_spec(MODEL, VERSION), requests=requests)
    elapsed = time.perf_counter() - start
    if not report.passed:
        sys.exit(f"verify failed on {len(endpoints)} endpoint(s): {report.reason}")
    return elapsed


async def run(rounds: int, requests: int) -> None:
    registry = Registry(open_store(str(EXAMPLES)))
    repositories = [tempfile.mkdtemp(prefix=f"bench-repo-{size}-") for size in (1, 4)]
    started = time.perf_counter()
    one = [TritonServer(repositories[0]).start()]
    four = [TritonServer(repositories[1]).start() for _ in range(4)]
    print(f"started 5 tritonservers in {time.perf_counter() - started:.2f} s")
    times: dict[int, list[float]] = {1: [], 4: []}
    try:
        for n in range(1, rounds + 1):
            times[1].append(await deploy_and_verify(registry, repositories[0], [s.url for s in one], n, requests))
            times[4].append(await deploy_and_verify(registry, repositories[1], [s.url for s in four], n, requests))
            print(f"round {n}: 1 endpoint {times[1][-1]:.2f} s, 4 endpoints {times[4][-1]:.2f} s")
    finally:
        for server in one + four:
            server.stop()
    t1, t4 = statistics.median(times[1]), statistics.median(times[4])
    print(f"deploy + verify {MODEL} {VERSION} ({requests} timed requests), median of {rounds} rounds:")
    print(f"  1 endpoint : {t1:.2f} s")
    print(f"  4 endpoints: {t4:.2f} s")
    print(f"  ratio      : {t4 / t1:.2f} (target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds, each a new version on both fleets (3)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per verify")
    parser.add_argument("--quick", action="store_true", help="1 round: to try it, not to quote")
    args = parser.parse_args()
    if reason := triton_missing():
        sys.exit(f"cannot run: {reason}")
    asyncio.run(run(args.rounds or (1 if args.quick else 3), args.requests))


if __name__ == "__main__":
    main()
