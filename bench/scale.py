"""The bot at scale: up to 200 models x 2 environments on a fleet of 16 real tritonservers (4 staging, 12 prod).

Prints, for each size, the time and the Slack calls of `/mlops status`, the daily digest, the App Home and one
pass of the fleet reconcile loop, then how they grow with models and with endpoints; and the largest message
and view each made, against Slack's limits (50 blocks a message, 100 a Home view, 3,000 characters a section).

Every model's repository holds all the models (so each tritonserver's repository index is as large as it would
be), but only a few are loaded: the python backend starts one process per loaded model per server, and 200 x 16
of them do not fit one machine. So the store records those few as deployed (the steady state: what the loop
finds in line) and, for the message sizes, once more with every (model, env) recorded as deployed and not
served, which is the worst case for the length of every row (a drift line per endpoint). At the full size it
also times a pass that heals a restarted prod server and one that reports drift.

    python -m bench.scale [--models 50 100 200] [--loaded 2] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from bot.config import Config, load_config
from bot.notifier import Message
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.artifacts import open_store
from bot.serving.registry import Registry
from bot.serving.triton import Fleet, deploy_files
from bot.store import iso

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "registry" / "ranker" / "v1"
MAIN = "C0MLOPS"
NOW = datetime(2026, 11, 19, 17, 5, tzinfo=UTC)  # Thursday 09:05 in Los Angeles, just past the digest's slot
WRITES = ("chat.postMessage", "chat.postEphemeral", "chat.update", "views.publish", "files.upload",
          "files.completeUploadExternal")


def name(i: int) -> str:
    return f"model{i:03d}"


def clock() -> datetime:
    return NOW


async def prepare(root: Path, models: int) -> tuple[Path, dict[str, Path]]:
    """A registry of `models` copies of the example model, and each environment's repository holding all of them."""
    registry = root / "registry"
    for i in range(models):
        shutil.copytree(EXAMPLE, registry / name(i) / "v1")
    repos = {env: root / env for env in ("staging", "prod")}
    reg = Registry(open_store(str(registry)))
    for path in repos.values():
        path.mkdir()
        for i in range(models):
            await deploy_files(reg, name(i), "v1", open_store(str(path)), 1)
    return registry, repos


def config(directory: Path, registry: Path, repos: dict[str, Path], endpoints: dict[str, list[str]], models: int) -> Config:
    raw = yaml.safe_load((ROOT / "examples" / "mlops-bot.yaml").read_text())
    model = {"owner": "U0ALICE", "registry": str(registry), "slo_p99_ms": 250,
             "environments": {env: {"repository": str(repos[env]), "endpoints": endpoints[env]} for env in repos}}
    raw.update(store=str(directory / "mlops-bot.db"), models={name(i): model for i in range(models)},
               datagen={"jobs": {}}, monitors={}, oncall={"rotations": []}, fleet={"reconcile_seconds": 0})
    path = directory / "mlops-bot.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


async def record(bot: LocalBot, models: list[str], envs: tuple[str, ...] = ("staging", "prod")) -> None:
    """Rows as the release train leaves them: each model's v1 live in prod (and verified on staging) as Triton version 1,
    with its card in the channel (where the reconcile loop's notes go)."""
    db = bot.runtime.store.db
    at = iso(NOW - timedelta(days=1))
    for model in models:
        card = await bot.runtime.notifier.post(MAIN, Message(f"{model} v1 prod: live"))
        release = db["releases"].insert({
            "model": model, "version": "v1", "digest": "sha256:v1", "state": "verified", "prod_state": "live",
            "deployed_by": "U0ALICE", "deployed_at": at, "verified_at": at, "approved_by": "U0BOB", "approved_at": at,
            "channel": MAIN, "card_ts": card, "updated_at": at}).last_pk
        for env in envs:
            db["environments"].upsert({"model": model, "env": env, "version": "v1", "triton_version": 1,
                                       "release_id": release, "deployed_by": "U0ALICE",
                                       "approved_by": "U0BOB" if env == "prod" else None, "updated_at": at},
                                      pk=("model", "env"))


def forget(bot: LocalBot) -> None:
    bot.runtime.store.conn.execute("DELETE FROM environments")
    bot.runtime.store.conn.execute("DELETE FROM releases")


class Measured:
    def __init__(self, seconds: float, writes: list[dict]):
        self.seconds = seconds
        self.writes = writes

    @property
    def messages(self) -> int:
        return len(self.writes)

    @property
    def blocks(self) -> int:
        return max((len(w.get("blocks") or (w.get("view") or {}).get("blocks") or []) for w in self.writes), default=0)

    @property
    def section(self) -> int:
        return max((len(b["text"]["text"]) for w in self.writes
                    for b in (w.get("blocks") or (w.get("view") or {}).get("blocks") or [])
                    if b.get("type") == "section" and b.get("text")), default=0)

    def __str__(self) -> str:
        return (f"{self.seconds:7.2f} s {self.messages:4d} calls, at most {self.blocks:3d} blocks, "
                f"{self.section:5d} chars a section")


async def measure(bot: LocalBot, run: Callable[[], Awaitable[object]], done: Callable[[list], bool]) -> Measured:
    """Time `run` until the Slack writes since it started satisfy `done` (the bot's answers arrive in the background)."""
    before, answers = len(bot.slack.calls), len(bot.slack.ephemerals)
    started = time.perf_counter()
    await run()

    def writes() -> list[dict]:  # Web API writes, and a command's answers through its response_url
        return ([c.args for c in bot.slack.calls[before:] if c.method in WRITES and c.ok]
                + [e for e in bot.slack.ephemerals[answers:] if e.get("source") == "response_url"])

    await bot.slack.wait_for(lambda: done(writes()), timeout=600)
    await bot.slack.wait_for(lambda: not bot.runtime.tasks.names, timeout=600)
    elapsed = time.perf_counter() - started
    refused = [c for c in bot.slack.calls[before:] if not c.ok]
    if refused:
        sys.exit(f"Slack refused {len(refused)} calls, first: {refused[0].method} {refused[0].error}")
    return Measured(elapsed, writes())


async def status(bot: LocalBot) -> Measured:
    return await measure(bot, lambda: bot.client.command("U0ALICE", "status"), lambda w: bool(w))


_slots = iter(range(1, 10**6))


async def digest(bot: LocalBot) -> Measured:
    slot = NOW + timedelta(microseconds=next(_slots))  # a slot of its own each time: posted once per slot
    return await measure(bot, lambda: bot.runtime.digests.post_daily(slot), lambda w: bool(w))


async def home(bot: LocalBot) -> Measured:
    return await measure(bot, lambda: bot.client.home_opened("U0BOB"), lambda w: any(c.get("view") for c in w))


async def reconcile(bot: LocalBot) -> Measured:
    return await measure(bot, bot.runtime.releases.healer.reconcile_pass, lambda w: True)


async def size(root: Path, registry: Path, repos: dict[str, Path], servers: dict[str, list[TritonServer]], models: int,
               endpoints: int, loaded: list[str], *, full: bool) -> dict[str, Measured]:
    staging, prod = endpoints // 4, endpoints - endpoints // 4
    chosen = {"staging": [s.url for s in servers["staging"][:staging]], "prod": [s.url for s in servers["prod"][:prod]]}
    directory = Path(tempfile.mkdtemp(dir=root, prefix=f"bot-{models}-{endpoints}-"))
    results: dict[str, Measured] = {}
    async with local_bot(config(directory, registry, repos, chosen, models), clock=clock, post_rate=10_000,
                         post_burst=10_000) as bot:
        await record(bot, loaded)
        for what, run in (("status", status), ("digest", digest), ("home", home), ("reconcile pass", reconcile)):
            results[what] = await run(bot)
        if full:
            forget(bot)
            await record(bot, [name(i) for i in range(models)])  # every row as long as it gets: a drift line per endpoint
            for what, run in (("status", status), ("digest", digest), ("home", home)):
                results[f"{what}, worst case"] = await run(bot)
            forget(bot)
            await record(bot, loaded)
            servers["prod"][0].kill()
            victim = servers["prod"][0] = TritonServer(str(repos["prod"]), port=servers["prod"][0].port).start()  # empty
            results["reconcile pass healing a restarted prod server"] = await reconcile(bot)
            async with Fleet([victim.url]) as fleet:  # another Triton version on it by hand: drift
                reg = Registry(open_store(str(registry)))
                config_json = await deploy_files(reg, loaded[0], "v1", open_store(str(repos["prod"])), 2)
                await fleet.load(loaded[0], 2, config_json)
            results["reconcile pass finding drift"] = await reconcile(bot)
            results["the next pass (drift said once)"] = await reconcile(bot)
            async with Fleet([victim.url]) as fleet:  # back in line for the sizes after this one
                await fleet.load(loaded[0], 1, await deploy_files(reg, loaded[0], "v1", open_store(str(repos["prod"])), 1))
    return results


async def run(model_counts: list[int], loaded_count: int, server_count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    top = max(model_counts)
    started = time.perf_counter()
    registry, repos = await prepare(root, top)
    print(f"{top} models copied into a registry and both repositories in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    staging_n = server_count // 4
    servers = {"staging": [TritonServer(str(repos["staging"])).start() for _ in range(staging_n)],
               "prod": [TritonServer(str(repos["prod"])).start() for _ in range(server_count - staging_n)]}
    print(f"started {server_count} tritonservers ({staging_n} staging, {server_count - staging_n} prod) "
          f"in {time.perf_counter() - started:.1f} s")
    loaded = [name(i) for i in range(loaded_count)]
    try:
        started = time.perf_counter()
        for env, group in servers.items():
            async with Fleet([s.url for s in group]) as fleet:
                for model in loaded:
                    reg, repository = Registry(open_store(str(registry))), open_store(str(repos[env]))
                    await fleet.load(model, 1, await deploy_files(reg, model, "v1", repository, 1))
        print(f"loaded {loaded_count} models on every endpoint in {time.perf_counter() - started:.1f} s")
        table: dict[tuple[int, int], dict[str, Measured]] = {}
        sizes = [(m, server_count) for m in model_counts] + [(top, 4)] * (server_count > 4)
        for models, endpoints in sizes:
            full = (models, endpoints) == (top, server_count)
            table[(models, endpoints)] = await size(root, registry, repos, servers, models, endpoints, loaded, full=full)
            print(f"\n{models} models x 2 environments, {endpoints} endpoints ({endpoints // 4} staging, "
                  f"{endpoints - endpoints // 4} prod), {loaded_count} models served and recorded:")
            for what, figures in table[(models, endpoints)].items():
                print(f"  {what:48s} {figures}")
        print("\ngrowth (time):")
        for what in ("status", "digest", "home", "reconcile pass"):
            by_models = " / ".join(f"{table[(m, server_count)][what].seconds:.2f}" for m in model_counts)
            line = f"  {what:15s} {'/'.join(map(str, model_counts))} models: {by_models} s"
            if (top, 4) in table:
                line += (f"; {top} models, 4 → {server_count} endpoints: {table[(top, 4)][what].seconds:.2f} → "
                         f"{table[(top, server_count)][what].seconds:.2f} s")
            print(line)
        every = [(k, m) for sized in table.values() for k, m in sized.items()]
        print(f"\nlargest message: {max(m.blocks for k, m in every if not k.startswith('home'))} blocks (Slack: 50); "
              f"largest App Home view: {max(m.blocks for k, m in every if k.startswith('home'))} blocks (100); "
              f"largest section: {max(m.section for k, m in every)} characters (3,000)")
        print(json.dumps({f"{m}x{e}": {k: [round(v.seconds, 3), v.messages, v.blocks] for k, v in r.items()}
                          for (m, e), r in table.items()}))
    finally:
        for group in servers.values():
            for server in group:
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=None, help="model counts (50 100 200)")
    parser.add_argument("--loaded", type=int, default=2, help="models actually loaded on every endpoint (2)")
    parser.add_argument("--servers", type=int, default=16, help="tritonservers, a quarter of them staging (16)")
    parser.add_argument("--quick", action="store_true", help="20 and 40 models on 8 servers: to try it, not to quote")
    args = parser.parse_args()
    if reason := triton_missing():
        sys.exit(f"cannot run: {reason}")
    counts = args.models or ([20, 40] if args.quick else [50, 100, 200])
    asyncio.run(run(sorted(counts), args.loaded, 8 if args.quick and args.servers == 16 else args.servers))


if __name__ == "__main__":
    main()
