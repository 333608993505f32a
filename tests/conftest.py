"""Shared fixtures: a config written from examples/mlops-bot.yaml into a temp dir, and the bot on loopback."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bot.config import Config, load_config
from bot.sandbox.tritonserver import DEFAULT_PORTS, TritonServer, triton_missing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "mlops-bot.yaml"

# An instant at which the example config's schedules have nothing to post: Wednesday 04:00 UTC is before the
# datagen record is due (06:20 UTC), hours past the daily digest's grace and days from a handoff. Tests about
# something else run the bot at this instant, so what it posts does not depend on the hour CI runs.
QUIET = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)

# pytest-xdist workers (pyproject's addopts) each pick ports from their own share of the sandbox's port
# range, and the processes they start inherit it: two workers never race for one port.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _low, _high = (int(bound) for bound in DEFAULT_PORTS.split("-"))
    _share = (_high - _low) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    _first = _low + int(worker.removeprefix("gw")) * _share
    os.environ["MLOPS_PORTS"] = f"{_first}-{_first + _share}"


class Clock:
    """The bot's clock, set and moved by the test."""

    def __init__(self, now: datetime = QUIET) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def write_config(directory: Path, **overrides) -> Path:
    """The example config with its state under `directory`, no monitors, and top-level sections replaced by
    `overrides`."""
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["store"] = str(directory / "mlops-bot.db")
    for model in raw["models"].values():
        model["registry"] = str(ROOT / "examples" / model["registry"])
        for name, env in model["environments"].items():
            env["repository"] = str(directory / "repos" / name)
        if model.get("retrain", {}).get("command"):
            model["retrain"]["command"][0] = str(ROOT / "examples" / model["retrain"]["command"][0])
    for job in raw["datagen"]["jobs"].values():
        job["source"] = str(ROOT / "examples" / job["source"])
    # The example's monitors run programs at their slots, a notebook among them (seconds each, and audit rows):
    # tests about something else go without them; tests of monitors pass their own.
    raw["monitors"] = {}
    # The fleet reconcile loop would heal or report what tests about something else set up on purpose; its own
    # tests (e2e/test_fleet_heal.py) turn it on.
    raw["fleet"] = {"reconcile_seconds": 0}
    raw.update(overrides)
    path = directory / "mlops-bot.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


@pytest.fixture(scope="session")
def airflow():
    """One real Airflow 3 for the whole session: it takes about 100 s to start."""
    from tests.support.airflow import start_or_skip

    server = start_or_skip()
    yield server
    server.stop()


@contextlib.contextmanager
def staging_and_prod(root: Path) -> Iterator[tuple[dict[str, Path], dict[str, TritonServer]]]:
    """A tritonserver over an empty repository of its own under `root`, for staging and for prod."""
    repos = {env: root / env for env in ("staging", "prod")}
    for path in repos.values():
        path.mkdir()
    servers = {env: TritonServer(str(path)).start() for env, path in repos.items()}
    try:
        yield repos, servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def triton_here() -> None:
    """Asked for before the module's tritonservers start: under CI=true a missing one fails instead of skipping."""
    if missing := triton_missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no tritonserver: {missing}")
        pytest.skip(missing)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Units of work for pytest-xdist's loadgroup: a module runs on one worker, so its module-scoped servers
    start once, and every test of the session's one Airflow runs on the same worker, so it starts once."""
    for item in items:
        uses_airflow = "airflow" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("airflow" if uses_airflow else item.nodeid.split("::", 1)[0]))
