"""`.venv/bin/mlops-bot sandbox` from a virtualenv nobody activated, as pipx, systemd units and Docker
entrypoints run it, with another Python that has numpy 2.x first on PATH.

tritonserver's python backend stub takes its interpreter from the first `python3` on PATH (it ignores
PYTHONHOME and PYTHONPATH); before the launcher put the bot's own bin directory first, the stub imported
the other Python's numpy 2.x, answered every request with empty tensors, and every verify failed with
"cannot reshape array of size 0".

Both virtualenvs are built here from the package index (the bot's from this checkout's own pyproject, so
a fresh machine needs nothing else) and cached under ~/.cache/mlops-chatops/, keyed by what they hold.
Under CI=true a venv that cannot be built or a missing tritonserver fails; elsewhere it skips.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_config
from bot.sandbox.tritonserver import TritonServer, triton_missing
from tests.conftest import EXAMPLE_CONFIG, ROOT

pytestmark = pytest.mark.triton

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlops-chatops"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
SITE = Path("lib") / f"python{PY}" / "site-packages"
VERIFIED = "*ranker v1* · staging · *verified*"


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def user_env(path: list[Path | str]) -> dict[str, str]:
    """This environment as a service manager would pass it: no virtualenv activated, `path` as PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(map(str, path))
    return env


def cached_venv(name: str, key: str, installs: list[list[str]]) -> Path:
    """A venv made with this interpreter, `pip install`ed with each of `installs`, built once per key."""
    target = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    complete = target / ".complete"
    if complete.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    # A venv cannot be moved once built (its scripts name its path), so it is built in place, under a lock
    # that keeps two test sessions from building it at once; the marker is written last.
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)  # what an interrupted build left
        for command in [[sys.executable, "-m", "venv", str(target)],
                        *([str(target / "bin" / "pip"), "install", "--quiet", *args] for args in installs)]:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=user_env(
                [target / "bin", *os.environ["PATH"].split(os.pathsep)]))
            if done.returncode != 0:
                unavailable(f"building {target} failed at {command}:\n{(done.stdout + done.stderr)[-3000:]}")
        complete.write_text(key)
    return target


def numpy_version(venv: Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-I", "-c", "import numpy; print(numpy.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def bot_venv() -> Path:
    """The bot installed (editable, from this checkout) with the triton extra, into a venv of its own."""
    # Editable: the venv runs this checkout's code, so it is keyed by the checkout's path as well.
    pyproject = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    key = f"pyproject {pyproject} {ROOT} {sys.version} {platform.machine()}"
    venv = cached_venv("unactivated-venv", key, [["-e", f"{ROOT}[triton]"]])
    missing = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bot.sandbox.tritonserver as t; print(t.triton_missing() or '')"],
        capture_output=True, text=True, cwd=venv,
    )
    if missing.returncode != 0 or missing.stdout.strip():
        unavailable(f"no tritonserver in {venv}: {missing.stdout.strip() or missing.stderr[-2000:]}")
    # pytriton's stub needs numpy<2 (its wheel says so); the bot's venv has what the wheel asked for.
    assert numpy_version(venv).split(".")[0] == "1", numpy_version(venv)
    return venv


@pytest.fixture(scope="module")
def other_python() -> Path:
    """Another Python of the same version, with numpy 2.x: the interpreter a PATH lookup would find."""
    venv = cached_venv("numpy2-python", f"{sys.version} {platform.machine()} numpy>=2", [["numpy>=2"]])
    assert int(numpy_version(venv).split(".")[0]) >= 2, numpy_version(venv)
    return venv


def sandbox(python_bin: Path, tmp_path: Path, path: list[Path | str], lines: list[str],
            *, entry: list[str] | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "script.txt"
    script.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [*(entry or [str(python_bin / "mlops-bot")]), "--config", str(EXAMPLE_CONFIG), "--log-level", "WARNING",
         "sandbox", "--script", str(script), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=user_env(path),
    )


def test_a_deploy_verifies_from_an_unactivated_venv_with_numpy_2_first_on_path(tmp_path, bot_venv, other_python):
    path = [other_python / "bin", *(d for d in os.environ["PATH"].split(os.pathsep) if Path(d) != bot_venv / "bin")]
    result = sandbox(bot_venv / "bin", tmp_path, path, ["/mlops deploy ranker v1", "/mlops status"])
    shown = result.stdout + result.stderr
    assert result.returncode == 0, shown
    assert "cannot reshape" not in shown and "empty outputs" not in shown, shown
    assert VERIFIED in result.stdout, shown
    assert "golden requests: 2 answered as expected, all outputs finite" in result.stdout, shown
    assert "*ranker* · staging: `v1` (verified)" in result.stdout, shown


def test_the_sandbox_stops_at_start_when_its_own_numpy_is_one_the_stub_cannot_use(tmp_path, bot_venv, other_python):
    # The bot's venv with numpy 2.x in front of its own numpy 1.x, as after a careless `pip install -U numpy`:
    # a venv whose .pth files put the numpy-2 site-packages first, then the bot's site-packages.
    broken = tmp_path / "broken-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(broken)], check=True)
    (broken / SITE / "zz-layers.pth").write_text(
        f"{other_python / SITE}\nimport site; site.addsitedir({str(bot_venv / SITE)!r})\n")
    assert numpy_version(broken).startswith("2."), numpy_version(broken)
    # Activated, even: its bin first on PATH. Nothing the launcher does can help; the preflight says so.
    result = sandbox(broken / "bin", tmp_path, [broken / "bin", *os.environ["PATH"].split(os.pathsep)],
                     ["/mlops deploy ranker v1"], entry=[str(broken / "bin" / "python"), "-m", "bot.cli"])
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mlops-bot sandbox: tritonserver's python backend returned empty outputs (ranker v2, "), line
    assert f"its stub uses this interpreter's packages, {broken} (numpy 2." in line, line
    assert "nvidia-pytriton needs numpy<2" in line and f"`{broken / 'bin' / 'python'} -m pip install" in line, line
    assert "U0ALICE> /mlops deploy" not in result.stdout  # stopped before the first prompt


async def test_the_preflight_names_the_other_python_a_server_was_started_with(tmp_path, other_python):
    from bot.sandbox.preflight import preflight  # here, so the tests above also run against a tree without it

    if triton_missing():
        unavailable(triton_missing() or "")
    # The environment the launcher used to give tritonserver when no venv was activated: PATH's python3 first.
    env = {"PATH": os.pathsep.join([str(other_python / "bin"), os.environ["PATH"]])}
    with TritonServer(str(tmp_path), env=env) as server:
        problem = await preflight(load_config(EXAMPLE_CONFIG), server)
        assert problem is not None
        assert problem.startswith("tritonserver's python backend returned empty outputs (ranker v2, request "), problem
        assert f"it is not using this interpreter's packages, {sys.prefix} (numpy 1." in problem, problem
        assert f"but {other_python} (numpy 2." in problem, problem
        assert f"({other_python / 'bin' / 'python3'})" in problem, problem
        assert f"put {Path(sys.executable).parent} first on that PATH" in problem, problem
