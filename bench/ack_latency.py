"""Ack latency and throughput of signed slash commands: the bot versus a bare slack-bolt app that only acks.

Both run as their own processes against the Slack emulator; this process only sends signed requests.
The two targets take turns over several rounds and each ratio is taken within a round, so a noisy
neighbour on a shared machine slows both sides of a pair rather than one side of the comparison.
    python -m bench.ack_latency [--requests 2000] [--rounds 3] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from pathlib import Path

import aiohttp

from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from tests.conftest import write_config

SECRET, TOKEN = "bench-secret", "xoxb-bench"

BARE_APP = textwrap.dedent("""
    import sys
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient
    app = AsyncApp(client=AsyncWebClient(token=sys.argv[2], base_url=sys.argv[3]), signing_secret=sys.argv[4])
    @app.command("/mlops")
    async def mlops(ack):
        await ack()
    app.start(port=int(sys.argv[1]), path="/slack/events")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.post(url, data=b""):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def load(
    client: SlackEventsClient, http: aiohttp.ClientSession, url: str, concurrency: int, total: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker() -> None:
        for i in queue:
            body = urllib.parse.urlencode(
                {
                    "command": "/mlops",
                    "text": "help",
                    "user_id": "U0ALICE",
                    "channel_id": "C0MLOPS",
                    "team_id": "T0SANDBOX",
                    "trigger_id": f"bench.{time.monotonic_ns()}.{i}",
                    "response_url": "",
                }
            ).encode()
            headers = {**client.sign(body), "Content-Type": "application/x-www-form-urlencoded"}
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, total / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process: a per-request cost that other load on the machine does not distort."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def main(total: int, rounds: int) -> None:
    slack = SlackEmulator(bot_token=TOKEN, signing_secret=SECRET)
    await slack.start()
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url}
    env.pop("SLACK_APP_TOKEN", None)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), datagen={"jobs": {}}, oncall={"rotations": []})
        bot_port, bare_port = free_port(), free_port()
        procs = {
            "bot": subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bot.cli",
                    "--config",
                    str(config),
                    "--log-level",
                    "WARNING",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(bot_port),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            "bare": subprocess.Popen(
                [sys.executable, "-c", BARE_APP, str(bare_port), TOKEN, slack.api_url, SECRET],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        }
        urls = {"bot": f"http://127.0.0.1:{bot_port}/slack/events", "bare": f"http://127.0.0.1:{bare_port}/slack/events"}
        try:
            for url in urls.values():
                await wait_up(url)
            client = SlackEventsClient(urls["bot"], SECRET, slack)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                print(f"{'target':<6} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'cpu µs/req':>11}")
                for concurrency in (1, 50, 200):
                    n = max(200, total if concurrency > 1 else total // 4)
                    runs: dict[str, list[tuple[list[float], float, float]]] = {name: [] for name in urls}
                    for _ in range(rounds):
                        for name, url in urls.items():
                            await load(client, http, url, concurrency, 50)  # warm up connections and caches
                            cpu_before = cpu_seconds(procs[name].pid)
                            latencies, rate = await load(client, http, url, concurrency, n)
                            runs[name].append((latencies, rate, (cpu_seconds(procs[name].pid) - cpu_before) / n * 1e6))
                    result = {}
                    for name, rows in runs.items():
                        p50, p99 = figures([x for latencies, _, _ in rows for x in latencies])
                        rate, cpu = statistics.median(r for _, r, _ in rows), statistics.median(c for _, _, c in rows)
                        result[name] = (p50, p99)
                        print(f"{name:<6} {concurrency:>5} {p50:>8.2f} {p99:>8.2f} {rate:>8.0f} {cpu:>11.0f}")
                    ratios = [bot[1] / bare[1] for bot, bare in zip(runs["bot"], runs["bare"], strict=True)]
                    print(
                        f"{'ratio':<6} {concurrency:>5} {result['bot'][0] / result['bare'][0]:>8.2f} "
                        f"{result['bot'][1] / result['bare'][1]:>8.2f} {statistics.median(ratios):>8.2f}  "
                        f"(bot / bare; req/s: median of {rounds} paired rounds, range {min(ratios):.2f}-{max(ratios):.2f})"
                    )
            await client.close()
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=20)
            await slack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=None, help="requests per round at concurrency > 1 (2000)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds per concurrency (3)")
    parser.add_argument("--quick", action="store_true", help="400 requests, 1 round: to try it, not to quote")
    args = parser.parse_args()
    quick = (400, 1) if args.quick else (2000, 3)
    asyncio.run(main(args.requests or quick[0], args.rounds or quick[1]))
