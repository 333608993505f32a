"""The local-command retrain backend: a pipeline script run as a background process.

Each run gets a directory holding everything needed to follow it, even from a bot restarted while the
command runs: `run.json` (process group, argv, start time), `output.log` (stdout and stderr) and, once
the command ends, `exitcode`, written by a small `sh` wrapper around it.

The wrapper runs in a new session and detaches from the bot, so neither a bot restart nor asyncio
(which kills child processes it still tracks when its loop closes) stops a training run. The session's
process group outlives its short-lived leader, so the group id is what identifies, follows and cancels
the run, including whatever the command started.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bot.retrain.airflow import RunStatus

# `sh -c WRAPPER sh EXIT_FILE CMD ARGS...`: in the background, run the command and then record its exit
# code atomically; the foreground shell returns at once.
WRAPPER = '''exit_file=$1; shift
(
  "$@"
  code=$?
  echo "$code" > "$exit_file.tmp" && mv "$exit_file.tmp" "$exit_file"
) &'''


RECORD_FILE = "run.json"
LOG_FILE = "output.log"
EXIT_FILE = "exitcode"
CANCELLED_FILE = "cancelled"


class CommandError(Exception):
    """The command could not be started; `str()` says why and where to fix it."""


def resolve_executable(program: str, cwd: Path, path: str | None) -> Path | None:
    """Where `program` is, the way exec would find it from `cwd`; None when it is not runnable."""
    if os.sep in program:
        candidate = cwd / program
        return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None
    found = shutil.which(program, path=path)
    return Path(found) if found else None


def command_line(argv: Sequence[str], args: Mapping[str, object]) -> list[str]:
    """The configured argv with the user's arguments appended as key=value."""
    return [*argv, *(f"{key}={value}" for key, value in args.items())]


def last_lines(path: Path, count: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `count` non-blank lines of a file, reading at most its last `max_bytes`."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
            text = log.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-count:]


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process group: alive, though not ours to signal
    return True


async def start_command(
    argv: Sequence[str],
    *,
    run_id: str,
    model: str,
    requested_by: str,
    registry: str,
    run_dir: Path,
    args: Mapping[str, object] | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandRun:
    """Start `argv` (plus `args` as key=value) in the background; its output goes to run_dir/output.log."""
    cwd = cwd or Path.cwd()
    base_env = dict(os.environ if env is None else env)
    if not argv or resolve_executable(argv[0], cwd, base_env.get("PATH")) is None:
        program = argv[0] if argv else "(empty)"
        raise CommandError(
            f"command not found: {program} (looked from {cwd}); check models.{model}.retrain.command"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    child_env = base_env | {
        "MLOPS_MODEL": model,
        "MLOPS_RUN_ID": run_id,
        "MLOPS_REQUESTED_BY": requested_by,
        "MLOPS_REGISTRY": registry,
    }
    full_argv = command_line(argv, args or {})
    started_at = datetime.now(timezone.utc)
    with (run_dir / LOG_FILE).open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", WRAPPER, "sh", str(run_dir / EXIT_FILE), *full_argv,
            cwd=cwd,
            env=child_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    await process.wait()  # the launcher only; the command goes on in its process group
    run = CommandRun(run_id, run_dir, process.pid, full_argv, started_at)
    run.save()
    return run


@dataclass(frozen=True)
class CommandRun:
    """A started command; `CommandRun.attach(run_dir)` finds it again after a restart."""

    run_id: str
    run_dir: Path
    pgid: int
    argv: list[str]
    started_at: datetime

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def exit_path(self) -> Path:
        return self.run_dir / EXIT_FILE

    @property
    def _cancelled_path(self) -> Path:
        return self.run_dir / CANCELLED_FILE

    def save(self) -> None:
        record = {
            "run_id": self.run_id,
            "pgid": self.pgid,
            "argv": self.argv,
            "started_at": self.started_at.isoformat(),
        }
        (self.run_dir / RECORD_FILE).write_text(json.dumps(record))

    @classmethod
    def attach(cls, run_dir: Path) -> CommandRun:
        record = json.loads((run_dir / RECORD_FILE).read_text())
        return cls(
            run_id=record["run_id"],
            run_dir=run_dir,
            pgid=record["pgid"],
            argv=record["argv"],
            started_at=datetime.fromisoformat(record["started_at"]),
        )

    def exit_code(self) -> int | None:
        try:
            return int(self.exit_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    async def status(self, tail: int = 20) -> RunStatus:
        code = self.exit_code()
        # The exit file decides first: something the command left behind may keep its group alive.
        if code is None and process_group_alive(self.pgid):
            output = last_lines(self.log_path, tail)
            return RunStatus(self.run_id, "running", started_at=self.started_at, tail=output)
        ended = _mtime(self.exit_path) or _mtime(self._cancelled_path) or _mtime(self.log_path)
        if code == 0:
            detail, state = "exited with code 0", "success"
        elif code is not None:
            detail, state = f"exited with code {code}", "failed"
        elif self._cancelled_path.exists():
            detail, state = "cancelled", "failed"
        else:
            detail, state = "ended without an exit code (killed from outside the bot?)", "failed"
        return RunStatus(
            self.run_id,
            state,
            started_at=self.started_at,
            ended_at=ended,
            tail=last_lines(self.log_path, tail),
            detail=detail,
        )

    async def wait(self, poll: float = 0.2, tail: int = 20) -> RunStatus:
        while not (status := await self.status(tail)).finished:
            await asyncio.sleep(poll)
        return status

    async def cancel(self, grace: float = 5.0) -> None:
        """SIGTERM the command's process group, then SIGKILL whatever is left after `grace` seconds."""
        if self.exit_code() is not None:
            return
        self._cancelled_path.touch()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                return
            deadline = asyncio.get_running_loop().time() + grace
            while asyncio.get_running_loop().time() < deadline:
                if not process_group_alive(self.pgid):
                    return
                await asyncio.sleep(0.05)


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except FileNotFoundError:
        return None
