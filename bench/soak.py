"""Soak: mixed traffic at a fixed rate against `mlops-bot serve`, with Slack failing now and then.

The bot runs as its own process (HTTP /slack/events) against the Slack emulator, which paces posts as Slack
does (1 chat.postMessage a second per channel, burst 4). This process sends, open loop at a fixed rate:
signed slash commands (reads, lock/unlock, refused and malformed ones), button presses on the bot's own
alert messages (Ack, Silence, Expected; now and then an unknown button), signed datagen pushes to
/hooks/datagen and Alertmanager notifications to /hooks/alertmanager (now and then a 1,000-alert group).
Every few seconds the emulator is told to fail the next Slack calls: 429 with Retry-After, a 503 with a
text/plain body, `not_in_channel`. No deploys (they need tritonservers), so no tritonserver is killed.

Printed: requests answered by kind and status, 5xx, tracebacks in the bot's log (those caused by an injected
Slack failure counted apart), p50/p99 of the Slack acks and of the hooks' answers, the bot's RSS from
/proc (idle before traffic, the highest under load, early and late in the soak, after the traffic), and
every accepted action against its audit row once the bot has settled, then `mlops-bot audit verify`.

Growth is measured between the median RSS of the window just after warm-up (the first 10 % of the soak,
where caches fill and modules such as matplotlib load on first use) and of the last 10 % of the soak, both
under load, so a one-off import is not counted as a leak.

    python -m bench.soak [--minutes 10 | --minutes 30 | --quick] [--rate 20] [--seed 0] [--without-charts]

--without-charts runs the bot as installed without the `charts` extra (matplotlib cannot be imported, so a
datagen summary goes without its pictures): run it paired with a default soak to see what rendering the
charts costs the other answers.

The load generator and the emulator share this process and the machine's cores with the bot: latencies are
as Slack's side would see them on a loaded box, not the bot's alone.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import yaml

from bot.config import load_config
from bot.sandbox.local import workspace
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from tests.conftest import write_config
from tests.support.datagen_history import make_history, real_record

SECRET, TOKEN = "soak-signing-secret", "xoxb-soak"
HOOK_SECRET, AM_TOKEN = "soak-datagen-secret", "soak-am-token"
JOB = "recsys"  # the example config's datagen job

# Slack requests (--rate) split between commands and presses; the hooks come at fixed rates. Each Alertmanager
# notification is a post or an edit in one channel, and each datagen push a summary and its thread there,
# which Slack paces at 1 a second per channel (the bot paces its edits the same way): past that the hook queue
# would only grow, and the soak would measure a backlog rather than the bot.
SLACK_SHARES = {"command": 0.83, "press": 0.17}
HOOK_RATES = {"alertmanager": 0.6, "datagen": 0.1}  # per second

COMMANDS = [  # (weight, user, text): reads, mutations, a refused role and malformed input, as a team types them.
    # lock and unlock post in the main channel, which Slack paces at 1/s: kept rare enough not to swamp it.
    (10, "U0ALICE", "help"), (5, "U0BOB", "help lock"), (10, "U0ALICE", "status"), (10, "U0BOB", "status ranker"),
    (10, "U0CAROL", "models"), (10, "U0ALICE", "datagen latest"), (8, "U0BOB", "silence"), (8, "U0CAROL", "oncall"),
    (1, "U0ALICE", "lock ranker staging reason=soak"), (1, "U0ALICE", "unlock ranker staging"),
    (5, "U0BOB", "lock ranker prod dry_run=true"), (5, "U0DAVE", "promote ranker"), (5, "U0ALICE", "deplyo ranker"),
    (5, "U0ALICE", "deploy nosuchmodel"), (5, "U0BOB", "lock ranker staging bogus=1"),
]
# Buttons whose work stays inside the bot (no Triton, no retrain process).
PRESSABLE = re.compile(r"^(datagen\.ack|datagen\.expected|datagen\.silence\..+|alerts\.silence)$")
FAULTS = [  # (method, kind, times): cycled through, one every fault interval
    ("chat.postMessage", "ratelimited", 3), ("chat.update", "server_error_text", 1),
    ("chat.postMessage", "not_in_channel", 1), ("chat.postEphemeral", "ratelimited", 2),
    ("chat.postMessage", "server_error_text", 1), ("chat.update", "ratelimited", 2),
]
# A traceback whose exception names one of these was caused by a fault the soak injected.
INJECTED = re.compile(r"not_in_channel|ratelimited|upstream_unavailable|503|429")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)  # (kind, status or exception name)
    latency: dict[str, list[float]] = field(  # seconds to the answer, by kind
        default_factory=lambda: {k: [] for k in (*SLACK_SHARES, *HOOK_RATES)})
    triggers: set[str] = field(default_factory=set)  # trigger_ids of the commands and presses answered 200
    datagen_stored: int = 0
    alertmanager_queued: int = 0
    faults: Counter = field(default_factory=Counter)
    late: int = 0  # sends that started more than 100 ms after their slot (the generator fell behind)
    sends: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds to the answer), every kind
    datagen_answered: list[float] = field(default_factory=list)  # when each datagen push was answered


class Soak:
    def __init__(self, seconds: float, rate: float, seed: int, directory: Path):
        self.seconds, self.rate, self.rng = seconds, rate, random.Random(seed)
        self.directory = directory
        self.tally = Tally()
        self.rss: list[tuple[float, float]] = []  # (seconds into the traffic, MB)
        self.alert_sent = 0
        self.datagen_days: list[tuple[date, bytes]] = []  # still to push
        self.datagen_records_cycle = -1

    # -- set-up ----------------------------------------------------------------------------------------

    def write_config(self) -> Path:
        path = write_config(self.directory, alertmanager={"channel": "C0ERROR"})
        raw = yaml.safe_load(path.read_text())
        closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: no Triton of a neighbour is ever reached
        for model in raw["models"].values():
            for env in model["environments"].values():
                env["endpoints"] = [closed]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def datagen_records(self, cycle: int) -> dict[date, bytes]:
        """One record a push, oldest first, ending yesterday in the job's zone (the hook refuses dates ahead), so
        each push is a new day as in production and the history grows to what the soak's length gives (a
        30-minute soak: about a year). A stage drop every 40 days and a failed run every 50 make alerts fire.
        Should the run outlast the days, the next cycle is a new rendering, so each push still stores."""
        days = max(30, round(self.seconds * HOOK_RATES["datagen"] * 1.1))
        today = datetime.now(ZoneInfo("Asia/Kolkata")).date()
        start = today - timedelta(days=days)
        drops = {start + timedelta(days=d): ("feed_source", 15) for d in range(10, days, 40)}
        failed = {start + timedelta(days=d) for d in range(25, days, 50)}
        history = make_history(real_record(), start, days, seed=cycle, drops=drops, failed=failed)
        return {day: json.dumps(record).encode() for day, record in sorted(history.items())}

    # -- the requests ----------------------------------------------------------------------------------

    async def command(self, client: SlackEventsClient) -> None:
        _, user, text = self.rng.choices(COMMANDS, [w for w, _, _ in COMMANDS])[0]
        started = time.perf_counter()
        delivery = await client.command(user, text)
        self.record("command", delivery.status, started, delivery.trigger_id)

    async def press(self, client: SlackEventsClient, slack: SlackEmulator) -> None:
        buttons = [(m["channel"], m["ts"], b["action_id"])
                   for channel in ("C0INFO", "C0ERROR", "C0MLOPS") for m in slack.messages(channel)[-30:]
                   for b in _buttons(m.get("blocks") or []) if PRESSABLE.match(b.get("action_id", ""))]
        user = self.rng.choice(["U0ALICE", "U0BOB", "U0CAROL"])
        started = time.perf_counter()
        if buttons and self.rng.random() > 0.05:
            channel, ts, action_id = self.rng.choice(buttons)
            try:
                delivery = await client.press_button(user, channel, ts, action_id)
            except LookupError:  # the message was edited since it was read and lost that button: nothing sent
                self.tally.statuses[("press", "not sent")] += 1
                return
        else:  # a button this bot does not know, as an old card or a forged payload brings
            delivery = await client.press(user, "soak.unknown", "{}", channel="C0MLOPS", message_ts="1.000001")
        self.record("press", delivery.status, started, delivery.trigger_id)

    async def alertmanager(self, http: aiohttp.ClientSession, url: str) -> None:
        n = self.alert_sent
        self.alert_sent += 1
        key = self.rng.randrange(20)
        # Mostly firing, sometimes resolved (a later firing is then a fresh message); targets on some groups
        # give the message its Silence button.
        status = "resolved" if self.rng.random() < 0.1 else "firing"
        labels = {"alertname": f"SoakAlert{key}", "severity": "critical" if key % 3 == 0 else "warning"}
        if key % 4 == 0:
            labels.update(model="ranker", env="staging" if key % 8 == 0 else "prod")
        count = 1000 if n % 50 == 49 else 1 + n % 5
        alerts = [{"status": status, "labels": {**labels, "instance": f"triton-{i}:8000"},
                   "annotations": {"summary": f"{labels['alertname']} on triton-{i}"},
                   "startsAt": "2026-11-25T03:58:00Z"} for i in range(count)]
        body = json.dumps({"version": "4", "groupKey": f'{{}}:{{alertname="{labels["alertname"]}"}}', "status": status,
                           "receiver": "mlops-bot", "groupLabels": {"alertname": labels["alertname"]},
                           "commonLabels": labels, "commonAnnotations": {"summary": f"{labels['alertname']} is {status}"},
                           "externalURL": "http://alertmanager.local:9093", "alerts": alerts},
                          separators=(",", ":")).encode()
        headers = {"Authorization": f"Bearer {AM_TOKEN}", "Content-Type": "application/json"}
        started = time.perf_counter()
        async with http.post(f"{url}/hooks/alertmanager", data=body, headers=headers) as resp:
            await resp.read()
            self.record("alertmanager", resp.status, started)
            if resp.status == 200:
                self.tally.alertmanager_queued += 1

    async def datagen(self, http: aiohttp.ClientSession, url: str) -> None:
        if not self.datagen_days:
            self.datagen_records_cycle += 1
            self.datagen_days = list(self.datagen_records(self.datagen_records_cycle).items())
        day, body = self.datagen_days.pop(0)
        query = urllib.parse.urlencode({"job": JOB, "date": day.isoformat()})
        stamp = str(int(time.time()))
        # Signed as README "Webhooks" tells a sender to: v1, timestamp, method, path, query, then the body.
        signed = f"v1\n{stamp}\nPOST\n/hooks/datagen\n{query}\n".encode() + body
        headers = {"X-Datagen-Timestamp": stamp, "Content-Type": "application/json",
                   "X-Datagen-Signature": "v1=" + hmac.new(HOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()}
        started = time.perf_counter()
        async with http.post(f"{url}/hooks/datagen?{query}", data=body, headers=headers) as resp:
            answer = await resp.read()
            self.record("datagen", resp.status, started)
            if resp.status == 200 and json.loads(answer).get("stored"):
                self.tally.datagen_stored += 1

    def record(self, kind: str, status: int, started: float, trigger: str | None = None) -> None:
        now = time.perf_counter()
        self.tally.latency[kind].append(now - started)
        self.tally.sends.append((started, now - started))
        if kind == "datagen":
            self.tally.datagen_answered.append(now)
        self.tally.statuses[(kind, status)] += 1
        if status == 200 and trigger:
            self.tally.triggers.add(trigger)

    # -- the run ---------------------------------------------------------------------------------------

    async def traffic(self, slack: SlackEmulator, client: SlackEventsClient, http: aiohttp.ClientSession, url: str,
                      pid: int) -> None:
        rates = {**{k: share * self.rate for k, share in SLACK_SHARES.items()}, **HOOK_RATES}
        kinds, weights = list(rates), list(rates.values())
        gap = 1 / sum(weights)
        fault_every = max(5.0, self.seconds / 60)  # about 60 injected faults over any soak, at least 5 s apart
        tasks: set[asyncio.Task] = set()
        started = time.perf_counter()
        next_fault = started + fault_every / 2
        next_rss = started
        i = 0
        while (now := time.perf_counter()) - started < self.seconds:
            slot = started + i * gap
            if slot > now:
                await asyncio.sleep(slot - now)
            elif now - slot > 0.1:
                self.tally.late += 1
            i += 1
            if time.perf_counter() >= next_rss:
                self.rss.append((time.perf_counter() - started, rss_mb(pid)))
                next_rss += 1.0
            if time.perf_counter() >= next_fault:
                method, kind, times = FAULTS[sum(self.tally.faults.values()) % len(FAULTS)]
                slack.inject_fault(method, kind, times=times, retry_after=1)
                self.tally.faults[(method, kind)] += 1
                next_fault += fault_every
            if len(tasks) >= 500:  # the bot stopped answering: do not pile up requests without bound
                self.tally.statuses[("generator", "in-flight cap")] += 1
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            kind = self.rng.choices(kinds, weights)[0]
            # The first datagen push goes out at once, so alerts with buttons exist to press early.
            if i == 1:
                kind = "datagen"
            work = (self.command(client) if kind == "command" else self.press(client, slack) if kind == "press"
                    else self.alertmanager(http, url) if kind == "alertmanager" else self.datagen(http, url))
            task = asyncio.create_task(self._guard(kind, work))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60)

    async def _guard(self, kind: str, work) -> None:
        try:
            await work
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.tally.statuses[(kind, type(exc).__name__)] += 1


def _buttons(blocks: list) -> list[dict]:
    found = []
    for block in blocks:
        elements = block.get("elements") if block.get("type") == "actions" else [block.get("accessory")]
        found += [e for e in elements or [] if isinstance(e, dict) and e.get("type") == "button"]
    return found


def audit_counts(db: Path, triggers: set[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        keys = {k for (k,) in conn.execute("SELECT key FROM actions WHERE key IS NOT NULL")}
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "rows": one("SELECT count(*) FROM actions"),
            "slack_missing": len(triggers - keys),
            "datagen_rows": one("SELECT count(*) FROM actions WHERE verb = 'datagen.ingest' AND status = 'ok' "
                                "AND actor = 'datagen.hook'"),
            "alert_rows": one("SELECT count(*) FROM actions WHERE verb = 'alertmanager.alert'"),
            "post_errors": one("SELECT count(*) FROM actions WHERE verb = 'hooks.post' AND status = 'error'"),
            "queued": one("SELECT count(*) FROM hook_queue WHERE state = 'queued'"),
            "failed": one("SELECT count(*) FROM hook_queue WHERE state = 'failed'"),
        }
    finally:
        conn.close()


def tracebacks(log: str) -> tuple[Counter, Counter]:
    """Log records carrying a traceback, (caused by an injected Slack fault, other), by their last exception.

    A chained exception is one record; Slack's answer, with the fault's code, may sit on any of its lines."""
    injected, other = Counter(), Counter()
    for record in re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log):
        if "Traceback (most recent call last)" not in record:
            continue
        lines = record.splitlines()
        last = [line for i, line in enumerate(lines) if line and not line.startswith((" ", "\t", "Traceback"))
                and i > 0 and (lines[i - 1].startswith(" ") or lines[i - 1].startswith("Traceback"))]
        head = (last[-1] if last else lines[0])[:140]
        if found := INJECTED.search(record):
            injected[f"{head} [{found.group(0)}]"] += 1
        else:
            other[head] += 1
    return injected, other


async def settle(db: Path, tally: Tally, timeout: float) -> float:
    """Wait until the hook queue is empty and every answered command and press has its row; seconds taken."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        counts = audit_counts(db, tally.triggers)
        if counts["queued"] == 0 and counts["slack_missing"] == 0 and counts["alert_rows"] >= tally.alertmanager_queued:
            break
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


async def main(minutes: float, rate: float, seed: int, keep_log: str | None, without_charts: bool = False) -> int:
    seconds = minutes * 60
    with tempfile.TemporaryDirectory(prefix="mlops-soak-") as tmp:
        directory = Path(tmp)
        soak = Soak(seconds, rate, seed, directory)
        config_path = soak.write_config()
        users, groups = workspace(load_config(config_path))
        slack = SlackEmulator(bot_token=TOKEN, signing_secret=SECRET, users=users, usergroups=groups)
        await slack.start()
        env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url,
               "MLOPS_DATAGEN_HOOK_SECRET": HOOK_SECRET, "MLOPS_ALERTMANAGER_TOKEN": AM_TOKEN}
        env.pop("SLACK_APP_TOKEN", None)  # HTTP, so this process can time each ack
        if without_charts:  # a matplotlib that cannot be imported, first on the bot's path: the extra is missing
            hidden = directory / "without-charts" / "matplotlib"
            hidden.mkdir(parents=True)
            (hidden / "__init__.py").write_text("raise ImportError('the charts extra is not installed (bench.soak)')\n")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden.parent), env.get("PYTHONPATH")]))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = directory / "bot.log"
        db = directory / "mlops-bot.db"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config_path), "--log-level",
                                     "WARNING", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                    env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=30)) as http:
                for _ in range(300):
                    try:
                        async with http.get(f"{url}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if proc.poll() is not None:
                        sys.exit(f"the bot exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                    await asyncio.sleep(0.1)
                else:
                    sys.exit(f"the bot did not come up:\n{log_path.read_text()[-3000:]}")
                await asyncio.sleep(3)  # let start-up work (scheduler, first polls) finish before idle is read
                idle = rss_mb(proc.pid)
                client = SlackEventsClient(f"{url}/slack/events", SECRET, slack)
                print(
                    f"soak{' without charts' if without_charts else ''}: {minutes:g} min; Slack requests {rate:g}/s ("
                    + ", ".join(f"{k} {v:.0%}" for k, v in SLACK_SHARES.items())
                    + "), hooks "
                    + ", ".join(f"{k} {v:g}/s" for k, v in HOOK_RATES.items())
                    + f"; bot pid {proc.pid}, idle RSS {idle:.1f} MB",
                    flush=True,
                )
                traffic_started = time.perf_counter()
                await soak.traffic(slack, client, http, url, proc.pid)
                traffic_s = time.perf_counter() - traffic_started
                settled_s = await settle(db, soak.tally, timeout=180)
                end = rss_mb(proc.pid)
                await client.close()
                counts = audit_counts(db, soak.tally.triggers)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            await slack.stop()
        verify = subprocess.run(
            [sys.executable, "-m", "bot.cli", "--config", str(config_path), "audit", "verify"],
            env=env,
            capture_output=True,
            text=True,
        )
        if keep_log:
            Path(keep_log).write_text(log_path.read_text())
        injected_tb, other_tb = tracebacks(log_path.read_text())
        return report(soak, slack, idle, end, traffic_s, settled_s, counts, verify, injected_tb, other_tb)


def report(
    soak: Soak,
    slack: SlackEmulator,
    idle: float,
    end: float,
    traffic_s: float,
    settled_s: float,
    counts: dict[str, int],
    verify: subprocess.CompletedProcess,
    injected_tb: Counter,
    other_tb: Counter,
) -> int:
    t = soak.tally
    by_kind: dict[str, Counter] = {}
    for (kind, status), n in t.statuses.items():
        by_kind.setdefault(kind, Counter())[status] += n
    handled = sum(n for (kind, status), n in t.statuses.items() if isinstance(status, int))
    fivexx = sum(n for (_, status), n in t.statuses.items() if isinstance(status, int) and status >= 500)
    failed_sends = sum(
        n
        for (kind, status), n in t.statuses.items()
        if not isinstance(status, int) and status not in ("not sent", "in-flight cap")
    )
    print(
        f"requests answered: {handled:,} in {traffic_s:.0f} s ({handled / traffic_s:.1f}/s); "
        f"sent late (>100 ms after their slot): {t.late}"
    )
    for kind, statuses in sorted(by_kind.items()):
        print(f"  {kind:<12} " + ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items(), key=str)))
    print(
        f"errors: 5xx {fivexx}, requests without an answer {failed_sends}, tracebacks in the bot's log "
        f"{sum(other_tb.values())} (+{sum(injected_tb.values())} from injected Slack faults)"
    )
    for line, n in (other_tb + injected_tb).most_common(8):
        print(f"  {n:>4} x {line}")
    faults = ", ".join(f"{m} {k} x{n}" for (m, k), n in sorted(t.faults.items()))
    posts = slack.calls_to("chat.postMessage")
    per_channel = Counter(c.args.get("channel") for c in posts if c.ok)
    print("chat.postMessage ok per channel: " + ", ".join(f"{ch} {n / traffic_s:.2f}/s" for ch, n in sorted(per_channel.items())))
    print(
        f"Slack faults injected: {sum(t.faults.values())} ({faults}); chat.postMessage ok {sum(c.ok for c in posts):,},"
        f" answered 429 {sum(c.status == 429 for c in posts):,}; chat.update ok "
        f"{sum(c.ok for c in slack.calls_to('chat.update')):,}"
    )
    acks = t.latency["command"] + t.latency["press"]
    hooks = t.latency["alertmanager"] + t.latency["datagen"]
    ack_p99, hook_p99 = pct(acks, 99) * 1000, pct(hooks, 99) * 1000
    for name, values in (
        ("ack (commands and presses)", acks),
        ("hooks (datagen and Alertmanager)", hooks),
        *((f"  {kind}", v) for kind, v in t.latency.items()),
    ):
        print(
            f"{name + ':':<34} {len(values):>6,} answers, p50 {pct(values, 50) * 1000:6.1f} ms, "
            f"p99 {pct(values, 99) * 1000:6.1f} ms, max {max(values, default=0) * 1000:6.0f} ms"
        )
    # A stall of the bot's event loop delays every answer in flight; say how many slow ones came just after a
    # datagen push was answered, when its queued summary, details and charts are made.
    slow = [at for at, took in t.sends if took > 0.05]
    after_push = sum(any(d <= at + 0.5 and at <= d + 1.5 for d in t.datagen_answered) for at in slow)
    print(
        f"answers over 50 ms: {len(slow)} of {len(t.sends):,}; {after_push} of them sent within 1.5 s after a datagen "
        f"push was answered ({len(t.datagen_answered)} pushes)"
    )
    quiet = [took for at, took in t.sends if not any(d <= at + 0.5 and at <= d + 1.5 for d in t.datagen_answered)]
    print(f"  all kinds, leaving out those 1.5 s windows: {len(quiet):,} answers, p99 {pct(quiet, 99) * 1000:.1f} ms")
    window = max(3.0, soak.seconds * 0.1)
    early = [mb for s, mb in soak.rss if window <= s < 2 * window]
    late = [mb for s, mb in soak.rss if s >= soak.seconds - window]
    early_mb = statistics.median(early) if early else float("nan")
    late_mb = statistics.median(late) if late else float("nan")
    peak = max((mb for _, mb in soak.rss), default=float("nan"))
    growth = (late_mb / early_mb - 1) * 100
    print(
        f"RSS: idle {idle:.1f} MB; under load peak {peak:.1f} MB, median {early_mb:.1f} MB at "
        f"{window:.0f}-{2 * window:.0f} s and {late_mb:.1f} MB over the last {window:.0f} s (growth {growth:+.1f} %); "
        f"after the traffic {end:.1f} MB ({(end / idle - 1) * 100:+.1f} % on idle)"
    )
    lost_slack = counts["slack_missing"]
    lost_datagen = t.datagen_stored - counts["datagen_rows"]
    lost_alerts = t.alertmanager_queued - counts["alert_rows"]
    print(
        f"audit: {counts['rows']:,} rows; commands and presses answered {len(t.triggers):,}, without their row "
        f"{lost_slack}; datagen pushes stored {t.datagen_stored}, ingest rows {counts['datagen_rows']}; Alertmanager "
        f"groups queued {t.alertmanager_queued:,}, alert rows {counts['alert_rows']:,}; hook items left queued "
        f"{counts['queued']}, failed (a Slack post refused, audited) {counts['failed']}, hooks.post error rows "
        f"{counts['post_errors']}; settled {settled_s:.1f} s after the traffic"
    )
    print(f"audit verify: exit {verify.returncode} {verify.stdout.strip() or verify.stderr.strip()[-200:]}")
    lost = lost_slack + max(0, lost_datagen) + max(0, lost_alerts) + counts["queued"]
    targets = [  # (what, target, figure, met; None: a figure without a target)
        ("RSS idle", "<= 120 MB", f"{idle:.1f} MB", idle <= 120),
        ("RSS under load", "<= 200 MB", f"{peak:.1f} MB peak", peak <= 200),
        ("RSS growth over the soak", "<= 10 %", f"{growth:+.1f} %", growth <= 10),
        (
            "actions lost, audit chain",
            "0, verifies",
            f"{lost}, audit verify exit {verify.returncode}",
            lost == 0 and verify.returncode == 0,
        ),
        ("hook p99 while Slack is paced", "<= 50 ms", f"{hook_p99:.1f} ms", hook_p99 <= 50),
        ("ack p99 (commands and presses)", "", f"{ack_p99:.1f} ms", None),
        ("requests answered", "", f"{handled:,} in {traffic_s:.0f} s, 5xx {fivexx}", None),
        (
            "tracebacks in the bot's log",
            "",
            f"{sum(other_tb.values())} (+{sum(injected_tb.values())} from injected Slack faults)",
            None,
        ),
    ]
    print("targets:")  # `python -m bench` reads these lines
    for name, target, figure, ok in targets:
        print(f"  {'figure' if ok is None else met(ok):<8} {name}: {figure}" + (f" (target {target})" if target else ""))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (10; 30 for the long one)")
    parser.add_argument("--quick", action="store_true", help="a 30 s soak, to try the harness")
    parser.add_argument("--rate", type=float, default=20.0, help="Slack requests (commands and presses) a second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="copy the bot's log (WARNING and up) to this file")
    parser.add_argument("--without-charts", action="store_true", help="the bot without the charts extra")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(0.5 if args.quick else args.minutes, args.rate, args.seed, args.log, args.without_charts)))
