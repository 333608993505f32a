"""A real Airflow 3 (`airflow standalone`) on a loopback port, for integration tests.

Airflow lives in its own virtualenv, made by .ci/airflow-venv.sh, so its pins never meet the bot's.
Everything it writes (SQLite db, logs, passwords) stays in a temporary AIRFLOW_HOME.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.sandbox.tritonserver import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_SCRIPT = ROOT / ".ci" / "airflow-venv.sh"
DAGS_FOLDER = ROOT / "tests" / "dags"
EXPECTED_DAGS = ("train_model", "train_broken", "refresh_pagerank")


class AirflowUnavailable(RuntimeError):
    """The Airflow virtualenv could not be created here (tests skip on this, and only on this)."""


def ensure_venv() -> Path:
    """Run .ci/airflow-venv.sh (a no-op once the venv exists) and return the venv's path."""
    done = subprocess.run(["bash", str(VENV_SCRIPT)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AirflowUnavailable(f"{VENV_SCRIPT} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


class AirflowStandalone:
    """`airflow standalone` with fixed credentials; `start()` returns once the DAGs are parsed."""

    def __init__(self, *, username: str = "mlops", password: str = "mlops-test-password") -> None:
        self.username = username
        self.password = password
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._home = Path(tempfile.mkdtemp(prefix="airflow-home-"))
        self.log_path = self._home / "standalone.log"
        self._process: subprocess.Popen[bytes] | None = None

    def environment(self, venv: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            # standalone starts its components as `airflow ...` from PATH.
            PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            VIRTUAL_ENV=str(venv),
            AIRFLOW_HOME=str(self._home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.base_url,
            AIRFLOW__API__WORKERS="1",
            # Task processes report back over this API; its default assumes port 8080.
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
            # The simple auth manager keeps a password file and generates only the missing ones,
            # so a pre-written file fixes the password.
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{self.username}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self._home / "passwords.json"),
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="1",
            AIRFLOW__CORE__PARALLELISM="4",
        )
        return env

    def start(self, timeout: float = 300.0) -> None:
        venv = ensure_venv()
        (self._home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(venv / "bin" / "airflow"), "standalone"],
                env=self.environment(venv),
                cwd=self._home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every component
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                raise RuntimeError(f"airflow standalone exited with {code}:\n{self.log_tail()}")
            if self._dags_parsed():
                return
            time.sleep(1)
        raise TimeoutError(f"Airflow did not serve {EXPECTED_DAGS} within {timeout:.0f}s:\n{self.log_tail()}")

    def _dags_parsed(self) -> bool:
        try:
            token = self.token()
            request = urllib.request.Request(
                f"{self.base_url}/api/v2/dags?limit=100", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                dags = {d["dag_id"] for d in json.load(response)["dags"]}
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            return False
        return set(EXPECTED_DAGS) <= dags

    def token(self) -> str:
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)["access_token"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        """Stop every Airflow process (the whole process group) and remove AIRFLOW_HOME."""
        if self._process is not None:
            _signal_group(self._process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=grace)
            _signal_group(self._process.pid, signal.SIGKILL)  # whatever the components left running
            self._process.wait()
            self._process = None
        shutil.rmtree(self._home, ignore_errors=True)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def start_or_skip() -> AirflowStandalone:
    """A started Airflow for a test session. Skips only when its virtualenv cannot be built here;
    on CI (CI=true) that is a failure, since CI builds it with .ci/airflow-venv.sh."""
    airflow = AirflowStandalone()
    try:
        airflow.start()
    except AirflowUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no Airflow virtualenv here: {exc}")
    return airflow
