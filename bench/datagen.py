"""Benchmark: an alert storm through the real bot and the Slack emulator (Slack's 1 post/s per channel, burst 4).

10,000 rule breaches arrive over 60 s, spread over 5 jobs (each with its own channel) x 20 run dates (100
breaches each). Every arrival is its own task through `DatagenService.sync_alert`, as concurrent reports
would be; the service keeps one message per run date and edits it to its newest state. Printed: breaches
stored and when, when Slack had caught up, messages posted and edited, the busiest second per channel,
429s answered by Slack and whether any call failed for good.

Run from the repository root: python -m bench.datagen [--quick]
(--quick: 2,000 breaches over 12 s, about the same arrival rate, to try it rather than to quote)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from bot.config import load_config
from bot.monitors.rules import Breach
from bot.sandbox.local import local_bot
from tests.conftest import write_config

JOBS, DATES, PER_ALERT = 5, 20, 100
WINDOW = 60.0  # seconds over which the breaches arrive
FIRST = date(2026, 11, 1)


def breach(job: int, k: int) -> Breach:
    severity = "crit" if job % 2 else "warn"
    return Breach(f"rule_{k % 40}", severity, f"stage.s{k}.items", 90.0, 100.0, -10.0 - k % 7, 10.0,
                  f"stage.s{k}.items fell")


async def storm(directory: Path, window: float = WINDOW, per_alert: int = PER_ALERT) -> None:
    jobs = {f"job{j}": {"source": str(directory / f"job{j}" / "{date}.json"), "channel": f"C0STORM{j}"}
            for j in range(JOBS)}
    config = load_config(write_config(directory, datagen={"jobs": jobs}))
    async with local_bot(config) as bot:
        service = bot.runtime.datagen
        started = time.perf_counter()
        gap = window / (per_alert * JOBS * DATES)
        arrivals = []
        for k in range(per_alert):
            for j in range(JOBS):
                for d in range(DATES):
                    so_far = [breach(j, i) for i in range(k + 1)]
                    arrivals.append(asyncio.create_task(
                        service.sync_alert(f"job{j}", FIRST + timedelta(days=d), so_far, None, actor="bench")))
                    await asyncio.sleep(max(0.0, started + len(arrivals) * gap - time.perf_counter()))
        arrived = time.perf_counter() - started
        await asyncio.sleep(0)  # let the last arrivals store themselves; storing never waits on Slack
        stored_on_arrival = sum(len(json.loads(detail)["breaches"]) for (detail,) in
                                bot.runtime.store.conn.execute("SELECT detail FROM alerts"))
        await asyncio.gather(*arrivals)
        elapsed = time.perf_counter() - started
        stored = sum(len(json.loads(detail)["breaches"]) for (detail,) in
                     bot.runtime.store.conn.execute("SELECT detail FROM alerts"))
        calls = bot.slack.calls
        posts = [c for c in calls if c.method == "chat.postMessage"]
        per_second = Counter((c.args.get("channel"), int(c.at)) for c in posts if c.ok)
        busiest = {}
        for (channel, _), n in per_second.items():
            busiest[channel] = max(busiest.get(channel, 0), n)
        print(
            f"{len(arrivals):,} breach arrivals over {arrived:.1f} s; Slack caught up at {elapsed:.1f} s; "
            f"{stored:,} breaches stored in "
            f"{bot.runtime.store.conn.execute('SELECT count(*) FROM alerts').fetchone()[0]} alerts "
            f"({stored_on_arrival:,} already stored when the last breach arrived)"
        )
        print(
            f"chat.postMessage ok: {sum(c.ok for c in posts)}, answered 429: {sum(c.status == 429 for c in posts)}; "
            f"chat.update ok: {sum(c.ok for c in calls if c.method == 'chat.update')}"
        )
        print(f"busiest second per channel (posts): {busiest}")
        print(f"calls failed for good: {sum(1 for c in calls if not c.ok and c.status != 429)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 breaches over 12 s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(storm(Path(directory), *((12.0, 20) if args.quick else (WINDOW, PER_ALERT))))


if __name__ == "__main__":
    main()
