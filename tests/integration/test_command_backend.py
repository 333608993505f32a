"""The local-command retrain backend running the real example pipelines as processes."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.retrain.command import CommandError, CommandRun, process_group_alive, start_command

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["examples/pipelines/train.sh", "15"]
TRAIN_FAILS = ["examples/pipelines/train_fails.sh"]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry holding one version of `ranker`."""
    version = tmp_path / "registry" / "ranker" / "v1"
    version.mkdir(parents=True)
    (version / "config.pbtxt").write_text('name: "ranker"\nbackend: "python"\n')
    (version / "model.py").write_text("# the model\n")
    metadata = {
        "created_at": "2026-11-01T10:00:00Z",
        "dataset_version": "datagen-2026-10-31",
        "git_sha": "abc1234",
        "pipeline_run_id": "older-run",
        "metrics": {"auc": 0.8},
    }
    (version / "metadata.json").write_text(json.dumps(metadata))
    return tmp_path / "registry"


async def start(argv: list[str], registry: Path, run_id: str, **args: object) -> CommandRun:
    return await start_command(
        argv,
        run_id=run_id,
        model="ranker",
        requested_by="U012ABCDEF",
        registry=str(registry),
        run_dir=registry.parent / "runs" / run_id,
        args=args,
        cwd=ROOT,
    )


def new_versions(registry: Path) -> list[Path]:
    return [p for p in (registry / "ranker").iterdir() if p.name != "v1"]


async def test_a_successful_run_publishes_a_version_naming_the_run(registry: Path) -> None:
    run = await start(TRAIN, registry, "run-1", epochs=2)

    status = await run.wait()

    assert status.state == "success"
    assert status.detail == "exited with code 0"
    assert status.started_at is not None and status.ended_at is not None
    assert "epoch 2/2 loss=0.233" in status.tail
    [version] = new_versions(registry)
    assert status.tail[-1] == f"published ranker {version.name} at {version}"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["pipeline_run_id"] == "run-1"
    assert metadata["dataset_version"] == "last-15d"
    assert (version / "model.py").read_text() == "# the model\n"
    # The user's arguments reached the command after the configured ones.
    assert run.argv == [*TRAIN, "epochs=2"]


async def test_a_failing_run_reports_its_exit_code_and_last_output(registry: Path) -> None:
    run = await start(TRAIN_FAILS, registry, "run-2")

    status = await run.wait()

    assert status.state == "failed"
    assert status.detail == "exited with code 3"
    assert status.tail == [
        "training ranker: loading features",
        "error: feature table 'clicks_daily' has no partition for today; rerun datagen first",
    ]
    assert new_versions(registry) == []


async def test_a_missing_command_is_named_with_the_setting_to_fix(registry: Path) -> None:
    with pytest.raises(CommandError) as caught:
        await start(["examples/pipelines/trian.sh"], registry, "run-3")

    assert str(caught.value).startswith("command not found: examples/pipelines/trian.sh")
    assert "models.ranker.retrain.command" in str(caught.value)
    assert not (registry.parent / "runs" / "run-3").exists()


async def test_cancel_stops_the_command_and_everything_it_started(registry: Path) -> None:
    run = await start(TRAIN, registry, "run-4", epochs=500)
    while not (await run.status()).tail[1:]:  # wait for the first epoch
        await asyncio.sleep(0.05)

    await run.cancel()

    status = await run.status()
    assert status.state == "failed"
    assert status.detail == "cancelled"
    assert not process_group_alive(run.pgid)
    assert new_versions(registry) == []


async def test_a_killed_run_whose_processes_nobody_reaps_has_ended(registry: Path) -> None:
    # As under a container's PID 1 that is no init: the killed processes stay zombies, since their parent (here
    # the test, which never waits for them) does not reap them. They run nothing; the run has ended.
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    run_dir = registry.parent / "runs" / "run-z"
    run_dir.mkdir(parents=True)
    run = CommandRun("run-z", run_dir, process.pid, ["sleep", "300"], datetime.now(UTC))
    assert (await run.status()).state == "running"

    await asyncio.wait_for(run.cancel(), timeout=3)  # without waiting out the SIGKILL grace

    assert (await run.status()).detail == "cancelled"
    assert not process_group_alive(run.pgid)
    process.wait()


async def test_a_restarted_bot_follows_a_run_started_before_it(registry: Path) -> None:
    run_dir = registry.parent / "runs" / "run-5"
    # The "old bot": a process that starts the run and exits while the command is still training.
    starter = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from bot.retrain.command import start_command

        asyncio.run(start_command(
            {TRAIN!r}, run_id="run-5", model="ranker", requested_by="U012ABCDEF",
            registry={str(registry)!r}, run_dir=Path({str(run_dir)!r}), args={{"epochs": 10}},
        ))
        """
    )
    subprocess.run([sys.executable, "-c", starter], cwd=ROOT, check=True)

    # The "new bot" knows only the run directory it stored.
    run = CommandRun.attach(run_dir)
    assert (await run.status()).state == "running"
    status = await run.wait()

    assert status.state == "success"
    assert status.tail[-2] == "epoch 10/10 loss=0.064"
    [version] = new_versions(registry)
    assert json.loads((version / "metadata.json").read_text())["pipeline_run_id"] == "run-5"
    # Following it again later reads the same outcome from the files it left.
    assert (await CommandRun.attach(run_dir).status()).state == "success"
