"""Benchmark: an alert storm through the real bot and the Slack emulator (Slack's 1 post/s per channel, burst 4).

10,000 rule breaches arrive one by one, spread over 5 jobs x 20 run dates (100 breaches each, half of the
jobs critical). Every arrival goes through `DatagenService.sync_alert`, which keeps one message per run
date and edits it as breaches accumulate. Printed: breaches stored, messages posted and edited, the busiest
second per channel, 429s answered by Slack and whether any call failed for good.

Run from the repository root: python -m bench.datagen
"""
from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from bot.config import load_config
from bot.datagen.rules import Breach
from bot.sandbox.local import local_bot
from tests.conftest import write_config

JOBS, DATES, PER_ALERT = 5, 20, 100
FIRST = date(2026, 11, 1)


def breach(job: int, k: int) -> Breach:
    severity = "crit" if job % 2 else "warn"
    return Breach(f"rule_{k % 40}", severity, f"stage.s{k}.items", 90.0, 100.0, -10.0 - k % 7, 10.0,
                  f"stage.s{k}.items fell")


async def storm(directory: Path) -> None:
    jobs = {f"job{j}": {"source": str(directory / f"job{j}" / "{date}.json")} for j in range(JOBS)}
    config = load_config(write_config(directory, datagen={"jobs": jobs}))
    async with local_bot(config) as bot:
        service = bot.runtime.datagen
        started = time.perf_counter()
        arrivals = 0
        for k in range(PER_ALERT):
            for j in range(JOBS):
                for d in range(DATES):
                    so_far = [breach(j, i) for i in range(k + 1)]
                    await service.sync_alert(f"job{j}", FIRST + timedelta(days=d), so_far, None, actor="bench")
                    arrivals += 1
        elapsed = time.perf_counter() - started
        stored = sum(len(json.loads(detail)["breaches"]) for (detail,) in
                     bot.runtime.store.conn.execute("SELECT detail FROM alerts"))
        calls = bot.slack.calls
        posts = [c for c in calls if c.method == "chat.postMessage"]
        per_second = Counter((c.args.get("channel"), int(c.at)) for c in posts if c.ok)
        busiest = {}
        for (channel, _), n in per_second.items():
            busiest[channel] = max(busiest.get(channel, 0), n)
        print(f"{arrivals:,} breach arrivals in {elapsed:.1f} s; {stored:,} breaches stored in "
              f"{bot.runtime.store.conn.execute('SELECT count(*) FROM alerts').fetchone()[0]} alerts")
        print(f"chat.postMessage ok: {sum(c.ok for c in posts)}, answered 429: {sum(c.status == 429 for c in posts)}; "
              f"chat.update ok: {sum(c.ok for c in calls if c.method == 'chat.update')}")
        print(f"busiest second per channel (posts): {busiest}")
        print(f"calls failed for good: {sum(1 for c in calls if not c.ok and c.status != 429)}")


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(storm(Path(directory)))


if __name__ == "__main__":
    main()
