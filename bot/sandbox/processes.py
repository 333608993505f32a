"""The tritonservers a sandbox started and their shared memory, recorded in its state directory.

A server runs in a session of its own (so a closed terminal's SIGHUP does not reach it) and its python
backend keeps regions in /dev/shm that only a graceful stop removes. The sandbox stops its servers on the
way out; what a killed sandbox left is in `processes.json` and is cleaned at the next start: the process
groups still alive (the same processes: their start time is recorded too) and the regions under each
server's own prefix.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from bot.sandbox.tritonserver import TritonServer

RECORD = "processes.json"
SHM = Path("/dev/shm")


class SandboxBusy(Exception):
    """Another sandbox that is still running uses this state directory."""


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None if there is no such process): with the pid it
    names one process, so a pid reused since the crash is never killed."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Processes:
    def __init__(self, state: Path) -> None:
        self.path = state / RECORD
        self.servers: list[dict[str, object]] = []

    def shm_prefix(self, name: str) -> str:
        return f"mlopssbx_{os.getpid()}_{name}_"

    def clean_stale(self) -> list[str]:
        """Stop what a sandbox that died left running and remove its regions; one line per thing cleaned."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        owner = record.get("sandbox", {})
        if owner.get("pid") and owner.get("pid") != os.getpid() and _started(owner["pid"]) == owner.get("started"):
            raise SandboxBusy(f"another sandbox (pid {owner['pid']}) is using {self.path.parent}; stop it first")
        cleaned = []
        for server in record.get("servers", []):
            pid = int(server["pid"])
            if _started(pid) == server["started"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # its own session: the group holds its stubs too
                cleaned.append(f"stopped tritonserver {pid} left by a sandbox that did not stop")
            regions = sorted(SHM.glob(f"{server['shm_prefix']}*"))
            for region in regions:
                region.unlink(missing_ok=True)
            if regions:
                cleaned.append(f"removed {len(regions)} shared-memory regions of tritonserver {pid}")
        self.path.unlink(missing_ok=True)
        return cleaned

    def add(self, server: TritonServer) -> None:
        assert server.process is not None and server.shm_prefix
        pid = server.process.pid
        self.servers.append({"pid": pid, "started": _started(pid), "shm_prefix": server.shm_prefix})
        self._write()

    def _write(self) -> None:
        record = {"sandbox": {"pid": os.getpid(), "started": _started(os.getpid())}, "servers": self.servers}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)

    def stopped(self) -> None:
        """Every server stopped: remove their regions (a stop cut short leaves some) and the record."""
        for server in self.servers:
            for region in SHM.glob(f"{server['shm_prefix']}*"):
                region.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
