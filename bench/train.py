"""The train running itself (issue 19): from a version's upload to the S3 registry (moto_server) until it is
verified on staging (a real tritonserver), by the hook and by the poll at its default interval; and what one
poll pass over 200 models costs (time, S3 list calls).

Targets: by hook <= 10 s on top of the deploy+verify time (measured by hand, `/mlops deploy`, in the same run);
by poll <= 30 s; a pass over 200 models <= 1 s and at most one S3 list per model.
Run from the repository root: `python -m bench.train [--rounds 3] [--quick]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml

from bot.config import Config, Secrets, load_config
from bot.hooks import sign
from bot.releases.model import State
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.artifacts import _s3_client, open_store
from tests.support.s3 import AWS_ENV, MotoServer

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples" / "registry" / "ranker" / "v1"
SECRET = "bench-registry-secret"


def config(directory: Path, endpoint_url: str, bucket: str, models: dict[str, dict], poll_seconds: float | None) -> Config:
    raw = yaml.safe_load((ROOT / "examples" / "mlops-bot.yaml").read_text())
    raw.update(store=str(directory / "bench.db"), models=models, datagen={"jobs": {}}, monitors={}, oncall={"rotations": []},
               digests={"daily": None, "weekly": None}, s3={"endpoint_url": endpoint_url, "region": "us-east-1"})
    if poll_seconds is not None:
        raw["train"] = {"poll_seconds": poll_seconds}
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def model(bucket: str, repos: Path, staging: str, prod: str, root: str = "registry") -> dict:
    return {"owner": "U0ALICE", "registry": f"s3://{bucket}/{root}", "slo_p99_ms": 250, "auto_deploy": "staging",
            "environments": {"staging": {"repository": str(repos / "staging"), "endpoints": [staging]},
                             "prod": {"repository": str(repos / "prod"), "endpoints": [prod]}}}


async def upload(bucket: str, endpoint_url: str, name: str, version: str, created_at: str, root: str = "registry") -> None:
    store = open_store(f"s3://{bucket}/{root}", s3_endpoint_url=endpoint_url)
    for path in sorted(EXAMPLES.iterdir(), key=lambda p: p.name == "metadata.json"):  # metadata.json last
        data = path.read_bytes()
        if path.name == "metadata.json":
            data = json.dumps({**json.loads(data), "created_at": created_at}).encode()
        await store.write(f"{name}/{version}/{path.name}", data)


def card(bot: LocalBot, version: str) -> dict | None:
    return next((m for m in bot.slack.messages("C0MLOPS") if m["text"].startswith(f"ranker {version} ")), None)


async def verified(bot: LocalBot, version: str, timeout: float = 120) -> None:
    words = State.VERIFIED.words
    await bot.slack.wait_for(lambda: (c := card(bot, version)) and c["text"].endswith(f": {words}"), timeout=timeout)


async def end_train(bot: LocalBot, version: str) -> None:
    """Reject the verified version, so the next one is not queued behind it."""
    release = bot.runtime.releases.serving("ranker", "staging")
    assert release is not None and release.version == version
    await bot.runtime.releases.reject(release, "U0BOB")


async def hook(bot: LocalBot, version: str) -> None:
    import aiohttp

    query, stamp = f"model=ranker&version={version}", str(int(time.time()))
    headers = {"X-Registry-Timestamp": stamp, "X-Registry-Signature": sign(SECRET, stamp, "POST", "/hooks/registry", query, b"")}
    async with aiohttp.ClientSession() as http, http.post(f"{bot.url}/hooks/registry?{query}", headers=headers) as response:
        assert response.status == 202, await response.text()


async def latency(moto: MotoServer, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    repos = work / "repos"
    for env in ("staging", "prod"):
        (repos / env).mkdir(parents=True)
    staging, prod = TritonServer(str(repos / "staging")).start(), TritonServer(str(repos / "prod")).start()
    bucket = "bench-train"
    boto3.client("s3", endpoint_url=moto.endpoint_url).create_bucket(Bucket=bucket)
    cfg = config(work, moto.endpoint_url, bucket, {"ranker": model(bucket, repos, staging.url, prod.url)}, None)
    print(f"poll interval: {cfg.train.poll_seconds:g} s (the default)")
    times: dict[str, list[float]] = {"by hand": [], "by hook": [], "by poll": []}
    try:
        async with local_bot(cfg, secrets=Secrets(registry_hook_secret=SECRET), post_rate=50, post_burst=50) as bot:
            minute = 0
            for r in range(rounds):
                for way in times:
                    minute += 1
                    version = f"b{minute}"
                    await upload(bucket, moto.endpoint_url, "ranker", version, f"2026-12-01T00:{minute:02d}:00Z")
                    start = time.perf_counter()
                    if way == "by hook":
                        await hook(bot, version)
                    elif way == "by hand":  # the deploy+verify itself: typed the moment the upload ends
                        await bot.client.command("U0ALICE", f"deploy ranker {version}")
                    await verified(bot, version)
                    times[way].append(time.perf_counter() - start)
                    print(f"round {r + 1}: {way}: {times[way][-1]:.2f} s from upload to verified")
                    await end_train(bot, version)
    finally:
        staging.stop()
        prod.stop()
    base = statistics.median(times["by hand"])
    for way, values in times.items():
        print(f"upload to verified {way}: median {statistics.median(values):.2f} s, max {max(values):.2f} s over {len(values)}")
    print(f"hook over deploy+verify: {statistics.median(times['by hook']) - base:.2f} s (target <= 10 s)")
    print(f"poll upload to verified: max {max(times['by poll']):.2f} s (target <= 30 s)")


async def pass_cost(moto: MotoServer, n_models: int, versions: int, *, shared: bool) -> None:
    """`shared`: every model in one registry root (one listing per pass); else each in a registry of its own."""
    work = Path(tempfile.mkdtemp(prefix="bench-train-pass-"))
    bucket = f"bench-train-pass-{'shared' if shared else 'own'}"
    boto3.client("s3", endpoint_url=moto.endpoint_url).create_bucket(Bucket=bucket)
    names = [f"m{i:03d}" for i in range(n_models)]
    roots = {name: "registry" if shared else f"own/{name}" for name in names}
    started = time.perf_counter()
    await asyncio.gather(*(upload(bucket, moto.endpoint_url, name, f"v{v}", f"2026-12-01T00:{v:02d}:00Z", roots[name])
                           for name in names for v in range(versions)))
    print(f"\n{'one registry for all' if shared else 'a registry per model'}: uploaded {n_models} models x {versions} "
          f"versions in {time.perf_counter() - started:.1f} s")
    models = {name: model(bucket, work, "http://127.0.0.1:9", "http://127.0.0.1:9", roots[name]) for name in names}
    cfg = config(work, moto.endpoint_url, bucket, models, 3600)  # the bench runs the passes itself
    calls: dict[str, int] = {}

    def count(event_name: str, **_: object) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        calls[operation] = calls.get(operation, 0) + 1

    _s3_client(moto.endpoint_url).meta.events.register("before-call.s3", count)
    async with local_bot(cfg, post_rate=50, post_burst=50, start=False) as bot:
        train = bot.runtime.releases.train
        for label in ("first pass (notes what is there)", *["steady pass"] * 3):
            calls.clear()
            started = time.perf_counter()
            await train.look_all()
            elapsed = time.perf_counter() - started
            lists = calls.get("ListObjectsV2", 0)
            print(f"{label} over {n_models} models: {elapsed:.3f} s, {lists} S3 list calls "
                  f"({lists / n_models:.2f} per model), other S3 calls {sum(calls.values()) - lists}")
    print(f"target: a pass <= 1 s, at most 1 S3 list per model ({'shared' if shared else 'own'} registries)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="one round, 50 models")
    args = parser.parse_args()
    if missing := triton_missing():
        sys.exit(f"no tritonserver: {missing}")
    os.environ.update(AWS_ENV)
    with MotoServer() as moto:
        for shared in (True, False):
            await pass_cost(moto, 50 if args.quick else args.models, 2, shared=shared)
        await latency(moto, 1 if args.quick else args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
