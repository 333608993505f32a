"""Running a monitor's `command` or `notebook` for one run date, and reading the record it gives.

A command prints its record, one JSON object, on stdout. A notebook is run with papermill (the `notebooks`
extra) in a child process, given the parameters `run_date` and `output_file`; its record is the output of the
cell tagged `output_tag`, or the file it wrote to `output_file`. Both run in their own process group with the
allowlisted environment of bot/programs.py, so a timeout stops whatever they started and no secret reaches them.

Whatever goes wrong (not found, non-zero exit, timeout, no JSON object) is a `RunFailed` whose reason is one line
fit for the alert, stderr's tail included and scrubbed of secrets.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

from bot.config import Monitor
from bot.monitors.datagen import ReportError, json_object
from bot.programs import pipeline_env, resolve_executable, scrub

STDERR_LINES = 5


def notebooks_missing() -> bool:
    """Whether papermill, which runs notebook monitors, is not installed (the `notebooks` extra)."""
    return importlib.util.find_spec("papermill") is None


class RunFailed(Exception):
    """The run gave no record; `reason` says why in one line (what to do is the alert's to say)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def run_monitor(monitor: Monitor, run_date: date, env: Mapping[str, str] | None = None) -> str:
    """The record the monitor's command or notebook gives for `run_date`, as JSON text."""
    child_env = pipeline_env(os.environ if env is None else env, monitor.env) | {"MLOPS_RUN_DATE": run_date.isoformat()}
    if monitor.notebook is None:
        return _one_object(await _run(monitor.command, child_env, monitor.timeout_seconds, "command"), "the command")
    with tempfile.TemporaryDirectory(prefix="mlops-monitor-") as scratch:
        executed = Path(scratch) / "executed.ipynb"
        output = monitor.output_file.format(date=run_date.isoformat()) if monitor.output_file else ""
        argv = [sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar", "-k", "python3",
                monitor.notebook, str(executed), "-p", "run_date", run_date.isoformat(), "-p", "output_file", output]
        await _run(argv, child_env, monitor.timeout_seconds, "notebook")
        if output:
            try:
                return _one_object(Path(output).read_text(), f"output_file {output}")
            except OSError as exc:
                raise RunFailed(f"the notebook wrote no output_file {output}: {exc.strerror}") from None
        return tagged_output(executed, monitor.output_tag)


async def _run(argv: Sequence[str], env: dict[str, str], timeout: float, what: str) -> str:
    program = argv[0] if argv else "(empty)"
    if not argv or resolve_executable(program, Path.cwd(), env.get("PATH")) is None:
        raise RunFailed(f"{what} not found or not executable: {program}")
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        raise RunFailed(f"{what} timed out after {timeout:g} s (timeout_seconds) and was stopped") from None
    except asyncio.CancelledError:  # the bot stops: so does what it started
        _kill_group(process.pid)
        raise
    if process.returncode != 0:
        tail = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()][-STDERR_LINES:]
        said = scrub(" / ".join(tail))[-600:] or "nothing on stderr"
        raise RunFailed(f"{what} exited {process.returncode}: {said}")
    return stdout.decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(pgid, signal.SIGKILL)


def _one_object(text: str, source: str) -> str:
    try:
        json_object(text)
    except ReportError as exc:
        start = scrub(text.strip())[:120] or "nothing"
        raise RunFailed(f"{source} printed no JSON object ({exc.reason}); it printed: {start!r}") from None
    return text


def tagged_output(notebook: Path, tag: str) -> str:
    """The record in the output of the executed notebook's cell tagged `tag`: JSON data, a result or printed text."""
    cells = json.loads(notebook.read_text()).get("cells", [])
    cell = next((c for c in cells if tag in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise RunFailed(f"the notebook has no cell tagged {tag!r} (output_tag)")
    reason = f"the cell tagged {tag!r} has no output; end it with print(json.dumps(record))"
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if "application/json" in data:
            return json.dumps(data["application/json"])
        text = output.get("text") or data.get("text/plain")
        try:
            return _one_object("".join(text) if isinstance(text, list) else text or "", f"the cell tagged {tag!r}")
        except RunFailed as exc:  # a display before the record, say: the next output may hold it
            reason = exc.reason
    raise RunFailed(reason)
