"""Publish a new version of a model in a local registry: the last step of the example pipelines.

Registry layout: `<registry>/<model>/<version>/` with config.pbtxt, metadata.json and the model files.
The new version is a copy of the newest one (by metadata.json `created_at`) named after today's UTC
date, with a fresh metadata.json naming the pipeline run, so the bot can find what its run produced.
Standard library only: it runs under whatever python3 the pipeline has (the bot's or Airflow's).

Reads MLOPS_REGISTRY, MLOPS_MODEL, MLOPS_RUN_ID and optionally MLOPS_DATASET, MLOPS_GIT_SHA.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path


def created_at(version_dir: Path) -> datetime:
    try:
        stamp = json.loads((version_dir / "metadata.json").read_text())["created_at"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (OSError, KeyError, ValueError):
        return datetime.fromtimestamp(version_dir.stat().st_mtime, UTC)


def versions(model_dir: Path) -> list[Path]:
    # Dot-directories are versions still being written.
    return [p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]


def next_version_name(existing: set[str], today: str) -> str:
    if today not in existing:
        return today
    suffix = 2
    while f"{today}-{suffix}" in existing:
        suffix += 1
    return f"{today}-{suffix}"


def publish(registry: Path, model: str, run_id: str, dataset: str, git_sha: str, now: datetime) -> Path:
    model_dir = registry / model
    if not model_dir.is_dir() or not (previous := versions(model_dir)):
        raise SystemExit(f"no version of {model!r} under {registry} to start from")
    newest = max(previous, key=lambda p: (created_at(p), p.name))
    name = next_version_name({p.name for p in previous}, now.strftime("%Y-%m-%d"))
    old_metrics = json.loads((newest / "metadata.json").read_text()).get("metrics", {})
    metadata = {
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dataset_version": dataset,
        "git_sha": git_sha,
        "pipeline_run_id": run_id,
        # A stand-in for evaluation: the previous numbers, slightly better.
        "metrics": {k: round(min(1.0, v + random.uniform(0.0, 0.01)), 4) for k, v in old_metrics.items()}
        or {"auc": 0.8},
    }
    # Build under a hidden name and rename, so nobody ever sees half a version.
    staging = model_dir / f".incoming-{os.getpid()}"
    shutil.copytree(newest, staging, ignore=shutil.ignore_patterns("__pycache__"))
    (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    target = model_dir / name
    staging.rename(target)
    return target


def main() -> None:
    env = os.environ
    now = datetime.now(UTC)
    target = publish(
        registry=Path(env["MLOPS_REGISTRY"]),
        model=env["MLOPS_MODEL"],
        run_id=env["MLOPS_RUN_ID"],
        dataset=env.get("MLOPS_DATASET") or f"datagen-{now:%Y-%m-%d}",
        git_sha=env.get("MLOPS_GIT_SHA", "unknown"),
        now=now,
    )
    print(f"published {env['MLOPS_MODEL']} {target.name} at {target}")


if __name__ == "__main__":
    main()
