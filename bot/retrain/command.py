"""The local-command retrain backend: a pipeline script run as a background process.

Each run gets a directory holding everything needed to follow it, even from a bot restarted while the
command runs: `run.json` (process group, argv, start time), `output.log` (stdout and stderr) and, once
the command ends, `exitcode`, written by a small `sh` wrapper around it.

The wrapper runs in a new session and detaches from the bot, so neither a bot restart nor asyncio
(which kills child processes it still tracks when its loop closes) stops a training run. The session's
process group outlives its short-lived leader, so the group id is what identifies, follows and cancels
the run, including whatever the command started.

The command never sees the bot's own environment (bot/programs.py): only an allowlist, the MLOPS_* variables
the bot sets for it and what the model's `retrain.env` names; what it prints is read back through `scrub()`.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.programs import pipeline_env, resolve_executable, scrub, secret_values
from bot.retrain.status import RunStatus

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


def command_line(argv: Sequence[str], args: Mapping[str, object]) -> list[str]:
    """The configured argv with the user's arguments appended as key=value."""
    return [*argv, *(f"{key}={value}" for key, value in args.items())]


def last_lines(path: Path, count: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `count` non-blank lines of a file, reading at most its last `max_bytes`, secrets redacted."""
    try:
        with path.open("rb") as log:
            start = max(0, log.seek(0, os.SEEK_END) - max_bytes)
            log.seek(start)
            data = log.read()
    except FileNotFoundError:
        return []
    if start:  # a line cut by the window could start with the tail end of a secret: drop it
        data = data.partition(b"\n")[2]
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()][-count:]
    secrets = secret_values()
    return [scrub(line, secrets) for line in lines]


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process group: alive, though not ours to signal
    # A killed command's processes stay in the group as zombies until their parent reaps them, which an init
    # may do seconds later and a container whose PID 1 is no init never does; they run nothing.
    return not _only_zombies(pgid)


def _only_zombies(pgid: int) -> bool:
    """True when every process of the group has exited and waits to be reaped (Linux's /proc; else False)."""
    states = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        if len(fields) > 2 and fields[2] == str(pgid):
            states.append(fields[0])
    return bool(states) and all(state == "Z" for state in states)


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
    pass_env: Sequence[str] = (),
) -> CommandRun:
    """Start `argv` (plus `args` as key=value) in the background; its output goes to run_dir/output.log.

    The command's environment is picked from `env` (default: the bot's): the allowlist, `pass_env` (the
    model's `retrain.env`) and the MLOPS_* variables set here.
    """
    cwd = cwd or Path.cwd()
    base_env = pipeline_env(os.environ if env is None else env, pass_env)
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
    started_at = datetime.now(UTC)
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
        if code is None:  # read again: the command may have ended, and written it, between the two looks
            code = self.exit_code()
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
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None
