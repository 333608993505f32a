"""`mlops-bot sandbox`: the whole bot on its embedded default, a Slack stand-in, and a terminal chat.

With the `triton` extra installed, local tritonservers serve staging and prod from the sandbox's own model
repositories; without it everything else still runs and deploys say what is missing. Closing the terminal
(SIGHUP), SIGTERM, Ctrl-C or an error stops them; what a killed sandbox left is cleaned at the next start.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import date
from pathlib import Path

from bot.config import Config, ConfigError, EnvironmentConfig, Secrets, load_config
from bot.monitors.rules import evaluate
from bot.monitors.service import save_record
from bot.runtime import Runtime
from bot.sandbox.clock import SandboxClock
from bot.sandbox.curl import ALERTMANAGER_TOKEN, DATAGEN_SECRET, hook_lines
from bot.sandbox.local import local_bot
from bot.sandbox.preflight import preflight
from bot.sandbox.processes import Processes, SandboxBusy
from bot.sandbox.shell import HELP, Shell
from bot.sandbox.tritonserver import TritonServer, triton_missing

DEFAULT_STATE = Path(".mlops-sandbox")
LOG = "mlops-bot.log"


# Endpoints per environment: prod is a fleet of three, so a canary (k of n endpoints) can be tried.
FLEET = {"staging": 1, "prod": 3}
SANDBOX_CANARY_INTERVAL = 5  # seconds


def sandbox_config(config: Config, state: Path, servers: dict[str, list[TritonServer]] | None) -> Config:
    """The config with its state, repositories and (when tritonserver runs) endpoints under the sandbox."""
    models = {}
    for name, model in config.models.items():
        envs = {
            env: EnvironmentConfig(repository=str(state / "repos" / env),
                                   endpoints=[s.url for s in servers[env]] if servers else list(cfg.endpoints),
                                   metrics={s.url: s.metrics_url for s in servers[env]} if servers else dict(cfg.metrics))
            for env, cfg in model.environments.items()
        }
        # Canary steps every 5 s instead of the example's minute, so one is seen through in a sandbox minute.
        canary = model.canary.model_copy(update={"interval": min(model.canary.interval, SANDBOX_CANARY_INTERVAL)})
        models[name] = model.model_copy(update={"environments": envs, "canary": canary})
    return config.model_copy(update={"store": str(state / "mlops-bot.db"), "models": models})


def stop_all(servers: dict[str, list[TritonServer]]) -> None:
    """Stop every server at once: each waits for its models to unload, so one after another adds up."""
    fleet = [server for group in servers.values() for server in group]
    if fleet:
        with ThreadPoolExecutor(len(fleet)) as pool:
            list(pool.map(TritonServer.stop, fleet))


async def seed_datagen(runtime: Runtime) -> None:
    """Store the local example datagen records, announcing the newest day that raised an alert (or else the
    newest day), so the sandbox opens with a summary and an alert as the team would have seen them."""
    for name, job in runtime.config.datagen.jobs.items():
        template = Path(job.source)
        if "://" in job.source or not template.parent.is_dir():
            continue
        records = {}
        for path in template.parent.glob(template.name.replace("{date}", "*")):
            try:
                records[date.fromisoformat(path.stem)] = path.read_text()
            except ValueError:  # not a dated record
                continue
        if not records:
            continue
        for day, text in sorted(records.items()):
            save_record(runtime.store, name, day, text, str(template.parent / f"{day}.json"), actor="sandbox", at=runtime.clock())
        history, expected = runtime.datagen.history(name)
        alerting = [day for day in sorted(history) if evaluate(job.rules, history, day, expected=expected)]
        await runtime.datagen.announce(name, (alerting or sorted(history))[-1], actor="sandbox")


def log_to_file(state: Path, level: str, verbose: bool) -> Path:
    """Everything at `level` into the state directory's log; the terminal gets warnings only, unless verbose."""
    path = state / LOG
    to_file = logging.FileHandler(path)
    to_file.setLevel(level.upper())
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setLevel(level.upper() if verbose else logging.WARNING)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[to_file, to_terminal], force=True)
    return path


class Lines:
    """The shell's input: a script's lines (echoed with their prompt), or the terminal's. The terminal is read
    with os.read in a daemon thread: a stop never waits on a read that blocks, and, unlike input(), the thread
    holds no lock of sys.stdin that would abort the interpreter's exit while it waits."""

    def __init__(self, script: list[str] | None):
        self.script = script
        self._pending = b""  # read past the line returned: the start of the next ones

    async def command(self, prompt: str) -> str | None:
        """The next command line (the shell echoes it as it handles it)."""
        return await self._next(prompt, echo=False)

    async def field(self, prompt: str) -> str | None:
        """What is typed into a form's field; a script's answer is echoed after its prompt."""
        return await self._next(prompt, echo=True)

    async def _next(self, prompt: str, echo: bool) -> str | None:
        if self.script is not None:
            if not self.script:
                return None
            line = self.script.pop(0)
            if echo:
                print(f"{prompt}{line}", flush=True)
            return line
        print(prompt, end="", flush=True)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str | None] = loop.create_future()
        threading.Thread(target=self._read, args=(loop, answer), daemon=True, name="sandbox-input").start()
        return await answer

    def _read(self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future[str | None]) -> None:
        line: str | None = None
        try:
            while b"\n" not in self._pending:
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:  # end of input: what is left is the last line
                    break
                self._pending += chunk
            if self._pending:
                raw, _, self._pending = self._pending.partition(b"\n")
                line = raw.decode(errors="replace")
        except OSError:  # a terminal that has gone
            pass
        loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(line))


async def run_sandbox(config_path: str, *, script: Path | None = None, state_dir: Path | None = None,
                      log_level: str = "INFO", verbose: bool = False) -> int:
    """The sandbox until /quit or the end of input; 128 + the signal's number when SIGHUP or SIGTERM stopped it."""
    task = asyncio.current_task()
    assert task is not None
    stopped_by: list[int] = []
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        stopped_by.append(sig)
        task.cancel()

    for sig in (signal.SIGHUP, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await _session(config_path, script, (state_dir or DEFAULT_STATE).resolve(), log_level, verbose)
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        return 128 + stopped_by[0]


async def _session(config_path: str, script: Path | None, state: Path, log_level: str, verbose: bool) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    state.mkdir(parents=True, exist_ok=True)
    log_path = log_to_file(state, log_level, verbose)
    processes = Processes(state)
    try:
        for line in processes.clean_stale():
            print(f"mlops-bot sandbox: {line}", flush=True)
    except SandboxBusy as exc:
        print(f"mlops-bot sandbox: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        servers: dict[str, list[TritonServer]] | None = None
        if triton_missing():
            print(f"(no tritonserver: {triton_missing()}; install it with `pip install -e '.[triton]'`."
                  " Everything else runs; deploys will say the endpoints are unreachable.)")
        else:
            stack.callback(processes.stopped)  # after every server below has stopped
            servers = {}
            stack.callback(stop_all, servers)
            for env, count in FLEET.items():
                (state / "repos" / env).mkdir(parents=True, exist_ok=True)
                for n in range(count):  # the fleet shares its repository, as servers reading one bucket do
                    server = TritonServer(str(state / "repos" / env), shm_prefix=processes.shm_prefix(f"{env}{n}"))
                    servers.setdefault(env, []).append(server)
                    server.start()
                    processes.add(server)
            # One golden inference before the first prompt: a server whose outputs are wrong would fail
            # every verify for a reason that is no release's.
            if (problem := await preflight(config, servers["staging"][0])) is not None:
                print(f"mlops-bot sandbox: {problem}", file=sys.stderr, flush=True)
                return 1
        clock = SandboxClock()
        secrets = Secrets(datagen_hook_secret=DATAGEN_SECRET, alertmanager_token=ALERTMANAGER_TOKEN)
        async with local_bot(sandbox_config(config, state, servers), clock=clock, secrets=secrets) as bot:
            await seed_datagen(bot.runtime)
            first = sorted({u for m in (config.roles.deployers, config.roles.admins) for u in m.users}) or ["U0SANDBOX"]
            lines = Lines(script.read_text().splitlines() if script else None)
            shell = Shell(bot, first[0], clock, lines.field, lambda: hook_lines(config, bot.url, state, clock()),
                          echo=script is not None)
            cli = f"mlops-bot --config {shlex.quote(config_path)}"
            print(f"mlops-bot sandbox: state in {state}, its log in {log_path}\n"
                  f"the bot's web address: {bot.url} (try its webhooks; /hooks prints these again)\n"
                  + "\n".join(shell.hooks()) + "\n"
                  f"# the audit from another terminal: {cli} audit tail --state-dir {shlex.quote(str(state))}",
                  flush=True)
            await shell.settle()  # what the bot posted at start: the example datagen summary and its alerts
            print(f"(you are {shell.user}) {HELP}", flush=True)
            while (line := await _command(lines, shell, watch=script is None)) is not None:
                if not await shell.handle(line):
                    break
            return 1 if script and shell.errors else 0


async def _command(lines: Lines, shell: Shell, *, watch: bool) -> str | None:
    """The next command; at a terminal, what the bot posts meanwhile (scheduled posts, what a webhook brought)
    is shown as it comes, with the prompt again after it."""
    prompt = f"{shell.user}> "
    if not watch:
        return await lines.command(prompt)

    async def show_meanwhile() -> None:
        while True:
            await asyncio.sleep(1)
            if shell.screen.show():
                print(prompt, end="", flush=True)

    watcher = asyncio.create_task(show_meanwhile())
    try:
        return await lines.command(prompt)
    finally:
        watcher.cancel()
