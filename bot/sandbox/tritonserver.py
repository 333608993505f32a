"""A real tritonserver from the nvidia-pytriton wheel, on loopback ports, for tests and benchmarks.

The wheel ships the server binary, the python backend and one python backend stub per Python version, but
not a backends directory with the stub in place; `backends_dir()` builds one in the user's cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STUB = "triton_python_backend_stub"
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_dir() -> Path | None:
    """`pytriton/tritonserver` inside the installed wheel, or None when the triton extra is not installed."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "tritonserver"


def triton_missing() -> str | None:
    """Why a tritonserver cannot run here, or None when it can (tests skip with this reason)."""
    root = wheel_dir()
    if root is None:
        return "nvidia-pytriton is not installed (pip install -e '.[triton]')"
    for needed in (root / "bin" / "tritonserver", root / "python_backend_stubs" / PY_VERSION / STUB):
        if not needed.exists():
            return f"the nvidia-pytriton wheel has no {needed.relative_to(root)}"
    return None


def triton_available() -> bool:
    return triton_missing() is None


def backends_dir() -> Path:
    """A backends directory whose python/ holds the wheel's backend plus the stub for the running Python."""
    root = wheel_dir()
    assert root is not None, triton_missing()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlops-chatops" / "triton-backends"
    wheel = f"pytriton-{importlib.metadata.version('nvidia-pytriton')}-{hashlib.sha256(bytes(root)).hexdigest()[:8]}"
    target = cache / f"{wheel}-py{PY_VERSION}"
    if (target / "python" / STUB).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so concurrent test sessions never see half a directory.
    staging = Path(tempfile.mkdtemp(dir=cache))
    (staging / "python").mkdir()
    for item in (root / "backends" / "python").iterdir():
        (staging / "python" / item.name).symlink_to(item)
    (staging / "python" / STUB).symlink_to(root / "python_backend_stubs" / PY_VERSION / STUB)
    try:
        staging.rename(target)
    except OSError:  # another session won the race; its directory is identical
        shutil.rmtree(staging)
    return target


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: the wheel's libraries, and the running interpreter for python stubs.

    The same whether or not a virtualenv is activated (pipx, systemd units and Docker entrypoints run
    `.venv/bin/mlops-bot` with PATH untouched), so models import the bot's own numpy and packages.
    """
    root = wheel_dir()
    assert root is not None, triton_missing()
    env = dict(os.environ)
    # The wheel's stub embeds libpython in an isolated configuration: it ignores PYTHONHOME and PYTHONPATH
    # and finds its prefix and site-packages from the first `python3` on PATH (a venv through the
    # pyvenv.cfg beside it). So this interpreter's own directory goes first: sys.executable unresolved,
    # since a venv's python is a symlink out of the venv.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(d for d in [bin_dir, env.get("PATH") or os.defpath] if d)
    if sys.prefix != sys.base_prefix:  # as `activate` would; for what models and their subprocesses read
        env["VIRTUAL_ENV"] = sys.prefix
    # libpython: this interpreter's build, not whichever the stub was linked against (e.g. the distro's).
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in [*lib_dirs, env.get("LD_LIBRARY_PATH", "")] if d)
    # For stubs and model subprocesses that do read the environment: this interpreter's stdlib and
    # site-packages (PYTHONPATH, because PYTHONHOME alone would miss a virtualenv's packages).
    env["PYTHONHOME"] = sys.base_prefix
    site_dirs = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["PYTHONPATH"] = os.pathsep.join([*site_dirs, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


# Ports are picked below Linux's ephemeral range (32768 and up), from which the OS also takes the local ports
# of outgoing connections: a port it handed out as free could be taken by a connection before the server binds
# it. MLOPS_PORTS ("LOW-HIGH") narrows the range, so parallel test workers never pick each other's ports.
DEFAULT_PORTS = "20000-32000"
_handed_out: set[int] = set()


def free_port() -> int:
    low, high = (int(bound) for bound in os.environ.get("MLOPS_PORTS", DEFAULT_PORTS).split("-"))
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high}")


class TritonServer:
    """One tritonserver process in explicit model-control mode over `repository` (a path or Triton's s3:// URI).

    `shm_prefix` names the python backend's shared-memory regions (/dev/shm/<prefix>...), so whoever started
    the server can find and remove the ones a killed server leaves behind.
    """

    def __init__(self, repository: str, *, env: dict[str, str] | None = None, shm_prefix: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.repository = repository
        self.env = env
        self.shm_prefix = shm_prefix
        # A fixed HTTP port on its own loopback address (127.0.0.2, …): the servers behind one DNS name share a port.
        self.host = host
        self.fixed_port = port
        self.port = port
        self.metrics_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Triton's Prometheus metrics (its own counters per model version), on a port of their own."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> TritonServer:
        """Start on free loopback ports and wait until /v2/health/live answers; retries if a port was taken."""
        for _ in range(3):
            self._spawn()
            if self._wait_live(timeout):
                return self
            if "address already in use" not in self.log().lower():
                break
        self.kill()
        raise RuntimeError(f"tritonserver did not come up over {self.repository}:\n{self.log()[-3000:]}")

    def _spawn(self) -> None:
        root = wheel_dir()
        assert root is not None, triton_missing()
        self.port, grpc_port, self.metrics_port = self.fixed_port or free_port(), free_port(), free_port()
        command = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends_dir()}",
            f"--http-address={self.host}",
            f"--http-port={self.port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # No GPU here: skip the pinned host pool Triton reserves for device copies.
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
        ]
        if self.shm_prefix:
            command.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        with self.log_path.open("ab") as log:
            # A session of its own, so kill() also takes down the python backend stubs it spawned.
            self.process = subprocess.Popen(
                command, env=server_env(self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_live(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/live", timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server and its stubs: a crash, as far as anyone talking to it can tell."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Shut down gracefully (models unloaded), then make sure no stub outlives the server."""
        self._signal(signal.SIGTERM)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self.kill()

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGKILL:
            self.process.wait()
