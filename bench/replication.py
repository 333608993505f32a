"""The durable store's costs: restore time by store size, and the ack path with and without replication.

Real moto_server over HTTP and the real litestream binary. Restore: a store of N audit rows is replicated once
(`litestream replicate -once`), then restored into an empty directory by the bot's own restore; the time is
the wall clock of that restore. Ack: two bots as processes, one with store_replica and one without, take
signed `/mlops help` commands (each writes an audit row) in paired rounds, as bench.ack_latency does.
    python -m bench.replication [--rows 10000 100000] [--requests 2000] [--rounds 3] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import boto3

from bench.ack_latency import SECRET, TOKEN, cpu_seconds, figures, free_port, load, wait_up
from bot.replication import Replica, litestream_binary
from bot.replication.litestream import litestream_env
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from bot.store import Store
from tests.conftest import write_config
from tests.support.s3 import AWS_ENV, MotoServer

BUCKET = "mlops-bench"


def filled_store(path: Path, rows: int) -> None:
    store = Store(path)
    at = datetime.now(UTC)
    with store.transaction():
        for i in range(rows):
            store.audit(actor="U0ALICE", verb="deploy", status="ok", channel="C0MLOPS", model="ranker", env="staging",
                        version=f"v{i % 50}", detail={"n": i, "note": "a typical row's detail"}, key=f"k{i}", at=at)
    store.close()


def restore_times(moto: MotoServer, tmp: Path, sizes: list[int]) -> None:
    print(f"{'audit rows':>10} {'store MB':>9} {'replicate s':>12} {'restore s':>10} {'rows/s':>10}")
    for rows in sizes:
        replica = Replica(f"s3://{BUCKET}/restore-{rows}", (tmp / f"store-{rows}" / "mlops-bot.db").resolve(),
                          moto.endpoint_url, "us-east-1")
        filled_store(replica.db, rows)
        size = sum(p.stat().st_size for p in replica.db.parent.glob("mlops-bot.db*")) / 1e6
        started = time.perf_counter()
        subprocess.run(replica.command("replicate", "-once"), check=True, capture_output=True, env=litestream_env())
        replicated = time.perf_counter() - started
        target = tmp / f"restored-{rows}" / "mlops-bot.db"
        target.parent.mkdir()
        started = time.perf_counter()
        assert replica.restore(target)
        took = time.perf_counter() - started
        restored = Store(target)
        assert restored.count_actions() == rows and restored.verify_chain() is None
        restored.close()
        print(f"{rows:>10,} {size:>9.1f} {replicated:>12.2f} {took:>10.2f} {rows / took:>10,.0f}")


def cpu_with_children(pid: int) -> float:
    """The bot's CPU and its litestream child's: replication's cost is paid by both."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children)


async def ack_cost(moto: MotoServer, tmp: Path, total: int, rounds: int) -> None:
    slack = SlackEmulator(bot_token=TOKEN, signing_secret=SECRET)
    await slack.start()
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url}
    env.pop("SLACK_APP_TOKEN", None)
    procs, urls = {}, {}
    for name, extra in (("plain", {}), ("replicated", {"store_replica": f"s3://{BUCKET}/ack",
                                                       "s3": {"endpoint_url": moto.endpoint_url, "region": "us-east-1"}})):
        (tmp / name).mkdir()
        config = write_config(tmp / name, datagen={"jobs": {}}, oncall={"rotations": []}, **extra)
        port = free_port()
        procs[name] = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "--log-level", "WARNING",
                                        "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        urls[name] = f"http://127.0.0.1:{port}/slack/events"
    try:
        for url in urls.values():
            await wait_up(url)
        client = SlackEventsClient(urls["plain"], SECRET, slack)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            print(f"\n{'target':<11} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'cpu µs/req':>11}  (bot + litestream)")
            for concurrency in (1, 50):
                n = max(200, total if concurrency > 1 else total // 4)
                runs: dict[str, list[tuple[list[float], float, float]]] = {name: [] for name in urls}
                for _ in range(rounds):
                    for name, url in urls.items():  # taking turns: a noisy neighbour slows both of a pair
                        await load(client, http, url, concurrency, 50)
                        cpu_before = cpu_with_children(procs[name].pid)
                        latencies, rate = await load(client, http, url, concurrency, n)
                        runs[name].append((latencies, rate, (cpu_with_children(procs[name].pid) - cpu_before) / n * 1e6))
                for name, rows in runs.items():
                    p50, p99 = figures([x for latencies, _, _ in rows for x in latencies])
                    rate, cpu = statistics.median(r for _, r, _ in rows), statistics.median(c for _, _, c in rows)
                    print(f"{name:<11} {concurrency:>5} {p50:>8.2f} {p99:>8.2f} {rate:>8.0f} {cpu:>11.0f}")
                ratios = [r[1] / p[1] for r, p in zip(runs["replicated"], runs["plain"], strict=True)]
                print(f"{'ratio':<11} {concurrency:>5} req/s replicated / plain: {statistics.median(ratios):.2f} "
                      f"(median of {rounds} paired rounds, range {min(ratios):.2f}-{max(ratios):.2f})")
        await client.close()
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=40)
        await slack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", help="store sizes in audit rows (10000 100000)")
    parser.add_argument("--requests", type=int, help="requests per round at concurrency 50 (2000)")
    parser.add_argument("--rounds", type=int, help="paired rounds (3)")
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 rows, 400 requests, 1 round")
    args = parser.parse_args()
    litestream_binary()  # says what to install when it is missing
    os.environ.update(AWS_ENV)  # moto's credentials for every child, never a real profile
    sizes = args.rows or ([1000, 10000] if args.quick else [10000, 100000])
    with MotoServer() as moto, tempfile.TemporaryDirectory() as tmp:
        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        restore_times(moto, Path(tmp), sizes)
        asyncio.run(ack_cost(moto, Path(tmp), args.requests or (400 if args.quick else 2000),
                             args.rounds or (1 if args.quick else 3)))


if __name__ == "__main__":
    main()
