"""One canary analysis step (read every endpoint's Triton metrics, then judge) over 2, 8 and 16 endpoints.

By default the endpoints are real HTTP servers in a process of their own, each serving the metrics text
captured from a real tritonserver (tests/fixtures/triton_metrics.txt), repeated for `--models` models as a
server hosting several would answer; with `--triton` they are 16 real tritonservers serving ranker v1 (about a
minute to start). Endpoints are read in parallel, so the time per step should stay close to flat (target: under
250 ms at 16 endpoints). Run from the repository root: `python -m bench.canary [--rounds 30] [--triton] [--quick]`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bot.config import CanaryConfig
from bot.releases.canary.judge import group, judge
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.artifacts import open_store
from bot.serving.registry import Registry
from bot.serving.triton import Fleet, deploy_files
from bot.serving.triton_metrics import Counters, read

CAPTURED = Path(__file__).parents[1] / "tests" / "fixtures" / "triton_metrics.txt"
EXAMPLES = Path(__file__).parents[1] / "examples" / "registry"
SIZES = (2, 8, 16)

# The servers: one process, one aiohttp site per endpoint, each answering /metrics with the captured text.
SERVE = """
import asyncio, sys
from aiohttp import web
text = open(sys.argv[1]).read()
models = int(sys.argv[3])
# The captured ranker lines, and the same lines for other models a server might host beside it.
body = text + "".join(line.replace('model="ranker"', f'model="model{i}"') + "\\n"
                      for i in range(1, models) for line in text.splitlines() if line.startswith("nv_"))
async def metrics(request):
    return web.Response(text=body, content_type="text/plain")
async def main():
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for _ in range(int(sys.argv[2])):
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def step(urls: dict[str, str], canary: list[str], cfg: CanaryConfig) -> float:
    """One step's metrics part, as the canary runs it: read all at once, sum each group, judge."""
    started = time.perf_counter()
    want = {e: ("ranker", 1) for e in urls}
    found = await read(urls, want)
    counters = {e: c for e, c in found.items() if isinstance(c, Counters)}
    if len(counters) != len(urls):
        sys.exit(f"could not read every endpoint: {[c for c in found.values() if isinstance(c, str)]}")
    start = {e: Counters() for e in urls}
    judge(group(start, {e: counters[e] for e in canary}), group(start, {e: counters[e] for e in urls if e not in canary}), cfg)
    return (time.perf_counter() - started) * 1000


async def tritonservers(stack: contextlib.ExitStack) -> dict[str, str]:
    """16 real tritonservers over one repository, ranker v1 loaded on each: endpoint → metrics URL."""
    repository = tempfile.mkdtemp(prefix="bench-canary-")
    started = time.perf_counter()
    servers = [stack.enter_context(TritonServer(repository)) for _ in range(max(SIZES))]
    registry = Registry(open_store(str(EXAMPLES)))
    async with Fleet([s.url for s in servers]) as fleet:
        await fleet.load("ranker", 1, await deploy_files(registry, "ranker", "v1", open_store(repository), 1))
    print(f"{len(servers)} tritonservers up with ranker v1 in {time.perf_counter() - started:.1f} s")
    return {s.url: s.metrics_url for s in servers}


def http_servers(stack: contextlib.ExitStack, models: int) -> dict[str, str]:
    servers = subprocess.Popen([sys.executable, "-c", SERVE, str(CAPTURED), str(max(SIZES)), str(models)],
                               stdout=subprocess.PIPE, text=True)
    stack.callback(servers.wait)
    stack.callback(servers.kill)
    assert servers.stdout is not None
    ports = servers.stdout.readline().split()
    print(f"{max(SIZES)} metrics servers up; each answers {models} model(s) of captured Triton metrics text")
    return {f"http://127.0.0.1:{p}": f"http://127.0.0.1:{p}/metrics" for p in ports}


async def run(rounds: int, models: int, triton: bool) -> None:
    with contextlib.ExitStack() as stack:
        every = await tritonservers(stack) if triton else http_servers(stack, models)
        cfg = CanaryConfig()
        medians = {}
        for size in SIZES:
            urls = dict(list(every.items())[:size])
            canary = list(urls)[: max(1, size // 5)]
            await step(urls, canary, cfg)  # warm-up: connections, imports
            times = sorted([await step(urls, canary, cfg) for _ in range(rounds)])
            medians[size] = statistics.median(times)
            print(f"{size:>2} endpoints: {medians[size]:.1f} ms per step (median of {rounds}; "
                  f"p90 {times[int(0.9 * (len(times) - 1))]:.1f} ms)")
        print(f"growth 2 → 16 endpoints: {medians[16] / medians[2]:.2f}x (target: close to flat, under 250 ms at 16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="steps timed per fleet size (30)")
    parser.add_argument("--models", type=int, default=10, help="models each server reports metrics of (10)")
    parser.add_argument("--triton", action="store_true", help="16 real tritonservers instead of captured text")
    parser.add_argument("--quick", action="store_true", help="5 rounds: to try it, not to quote")
    args = parser.parse_args()
    if args.triton and (reason := triton_missing()):
        sys.exit(f"cannot run: {reason}")
    asyncio.run(run(args.rounds or (5 if args.quick else 30), args.models, args.triton))


if __name__ == "__main__":
    main()
