"""Retraining from Slack: start a model's pipeline, follow it on one card, hand the new version to deploy.

A run is a `retrain_runs` row from the moment it is asked for, so a second request for the same model sees
it (and is refused unless forced) and a restarted bot follows it again. Each run has one follower task
that polls its backend, backing off while nothing changes, and is the only place a run ends: success
(the registry names the run's version), failure, timeout or cancellation each write the row, one audit
row and the card exactly once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from bot.config import RetrainConfig
from bot.context import Context
from bot.notifier import Message, SlackError
from bot.releases.messages import when
from bot.retrain import messages
from bot.retrain.airflow import AirflowClient, AirflowError, RunStatus
from bot.retrain.command import (
    RECORD_FILE,
    CommandError,
    CommandRun,
    command_line,
    resolve_executable,
    scrub,
    start_command,
)
from bot.retrain.messages import Run
from bot.serving.artifacts import ArtifactError, open_store
from bot.serving.registry import Registry, RegistryError
from bot.store import iso

log = logging.getLogger(__name__)

IN_FLIGHT = ("starting", "queued", "running", "cancelling")
CANCELLABLE = ("queued", "running")
TRUE_WORDS = ("true", "yes", "1", "on")


class RetrainError(Exception):
    """A refusal or failure a person can act on; the message says what and what to do next."""


@dataclass(frozen=True)
class RetrainRequest:
    model: str
    cancel: bool = False
    args: dict[str, str] | None = None
    force: bool = False


def parse_request(words: list[str], options: dict[str, str], retrainable: dict[str, bool]) -> RetrainRequest:
    """`<model> [key=value ...] [force=true]` or `<model> cancel`; `retrainable` maps model → has a pipeline."""
    if not words:
        raise ValueError("name a model")
    model, rest = words[0], words[1:]
    if model not in retrainable:
        raise ValueError(f"unknown model `{model}`; known models: {', '.join(sorted(retrainable)) or 'none'}")
    if not retrainable[model]:
        raise ValueError(f"{model} has no retrain pipeline; add `models.{model}.retrain` to the bot's config")
    if rest == ["cancel"]:
        if options:
            raise ValueError("`cancel` takes no key=value arguments")
        return RetrainRequest(model, cancel=True)
    if rest:
        raise ValueError(f"unexpected words: {' '.join(rest)} (pipeline arguments go as key=value)")
    args = dict(options)
    force = args.pop("force", "false").lower() in TRUE_WORDS
    return RetrainRequest(model, args=args, force=force)


def next_delay(current: float, changed: bool, base: float, cap: float) -> float:
    """Poll again soon after a change; otherwise wait twice as long as last time, up to `cap`."""
    return base if changed else min(current * 2, cap)


def new_run_id(model: str, now: datetime) -> str:
    return f"retrain-{model}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class Backend(Protocol):
    async def status(self) -> RunStatus: ...
    async def cancel(self) -> None: ...
    async def failure_tail(self, status: RunStatus) -> list[str]: ...


@dataclass(frozen=True)
class CommandBackend:
    run: CommandRun

    async def status(self) -> RunStatus:
        return await self.run.status()

    async def cancel(self) -> None:
        await self.run.cancel()

    async def failure_tail(self, status: RunStatus) -> list[str]:
        return status.tail


@dataclass(frozen=True)
class AirflowBackend:
    client: AirflowClient
    dag_id: str
    run_id: str
    ui_url: str | None

    async def status(self) -> RunStatus:
        status = await self.client.status(self.dag_id, self.run_id)
        if self.ui_url and status.url:  # the UI may live elsewhere than the API the bot calls
            return replace(status, url=self.ui_url.rstrip("/") + status.url.removeprefix(self.client.base_url))
        return status

    async def cancel(self) -> None:
        await self.client.cancel(self.dag_id, self.run_id)

    async def failure_tail(self, status: RunStatus) -> list[str]:
        if not status.failed_tasks:
            return []
        try:
            # A task log is the pipeline's output too: a secret it printed never reaches Slack.
            return [scrub(line) for line in await self.client.log_tail(self.dag_id, self.run_id, status.failed_tasks[0])]
        except AirflowError as exc:
            return [f"(no log: {exc})"]


def _run(row: dict[str, Any]) -> Run:
    return Run(
        id=row["id"], model=row["model"], backend=row["backend"], run_id=row["run_id"], state=row["state"],
        requested_by=row["requested_by"], args=json.loads(row["args"]), handle=json.loads(row["handle"]),
        started_at=datetime.fromisoformat(row["started_at"]),
        ended_at=datetime.fromisoformat(row["ended_at"]) if row["ended_at"] else None,
        version=row["version"], reason=row["reason"], detail=row["detail"], cancelled_by=row["cancelled_by"],
        channel=row["channel"], card_ts=row["card_ts"],
    )


class RetrainService:
    command_poll_seconds = 0.5
    max_poll_seconds = 60.0

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store
        self.runs_dir = Path(ctx.config.store).resolve().parent / "retrain-runs"
        self._airflow: AirflowClient | None = None
        self._followers: dict[int, asyncio.Task[Any]] = {}
        self._wake: dict[int, asyncio.Event] = {}

    # -- lookups ----------------------------------------------------------------------------------

    def retrain_config(self, model: str) -> RetrainConfig:
        cfg = self.ctx.config.models.get(model)
        if cfg is None:
            known = ", ".join(sorted(self.ctx.config.models)) or "none configured"
            raise RetrainError(f"unknown model `{model}`; known models: {known}")
        if cfg.retrain is None:
            raise RetrainError(f"{model} has no retrain pipeline; add `models.{model}.retrain` to the bot's config")
        return cfg.retrain

    def registry(self, model: str) -> Registry:
        return Registry(open_store(self.ctx.config.models[model].registry, s3_endpoint_url=self.ctx.config.s3.endpoint_url))

    def get(self, pk: int) -> Run:
        rows = list(self.store.db.query("SELECT * FROM retrain_runs WHERE id = ?", [pk]))
        if not rows:
            raise RetrainError(f"retrain run {pk} does not exist; start one with `/mlops retrain <model>`")
        return _run(rows[0])

    def in_flight(self, model: str) -> Run | None:
        rows = list(self.store.db.query(
            f"SELECT * FROM retrain_runs WHERE model = ? AND state IN ({', '.join('?' * len(IN_FLIGHT))}) "
            "ORDER BY id DESC LIMIT 1", [model, *IN_FLIGHT]))
        return _run(rows[0]) if rows else None

    def airflow(self) -> AirflowClient:
        if self._airflow is None:
            cfg, sec = self.ctx.config.airflow, self.ctx.secrets
            if cfg is None:
                raise AirflowError("the bot's config has no `airflow` section; add airflow.base_url")
            self._airflow = AirflowClient(cfg.base_url, api_version=cfg.api_version, auth=cfg.auth,
                                          username=sec.airflow_username, password=sec.airflow_password,
                                          token=sec.airflow_token)
        return self._airflow

    def where(self, run: Run) -> str:
        """Where the run executes, as the card says it."""
        if run.backend == "airflow":
            return f"Airflow DAG `{run.handle.get('dag_id', '?')}`"
        cfg = self.ctx.config.models.get(run.model)
        argv = cfg.retrain.command if cfg and cfg.retrain else ["?"]
        return f"command `{' '.join([Path(argv[0]).name, *argv[1:]])}`"

    # -- start ------------------------------------------------------------------------------------

    async def start(self, model: str, actor: str, channel: str, *, args: dict[str, str] | None = None,
                    force: bool = False, reason: str | None = None) -> Run:
        """Start the model's pipeline and its card; RetrainError says why not (and nothing was started)."""
        cfg = self.retrain_config(model)
        args = dict(args or {})
        now = self.ctx.clock()
        run_id = new_run_id(model, now)
        audit = {"actor": actor, "verb": "retrain", "channel": channel, "model": model}
        with self.store.transaction() as conn:
            busy = None if force else self.in_flight(model)
            if busy is None:
                pk = int(conn.execute(
                    "INSERT INTO retrain_runs (model, backend, run_id, state, requested_by, args, channel, started_at, "
                    "reason) VALUES (?, ?, ?, 'starting', ?, ?, ?, ?, ?)",
                    (model, cfg.backend, run_id, actor, json.dumps(args), channel, iso(now), reason)).lastrowid)
        if busy is not None:
            self.ctx.audit(**audit, status="refused", detail={"in_flight": busy.run_id, "args": args})
            raise RetrainError(
                f"{model} is already retraining: run `{busy.run_id}` ({busy.state}), started by <@{busy.requested_by}> "
                f"{when(busy.started_at)}. Cancel it with `/mlops retrain {model} cancel`, or add `force=true` to "
                "start another alongside it.")
        try:
            handle = await self._launch(cfg, model, run_id, actor, args)
        except (AirflowError, CommandError) as exc:
            self.store.conn.execute("DELETE FROM retrain_runs WHERE id = ?", (pk,))
            self.ctx.audit(**audit, status="failed", detail={"run_id": run_id, "stage": "start", "error": str(exc)})
            raise RetrainError(f"could not start retraining {model}: {exc}") from None
        self.store.conn.execute("UPDATE retrain_runs SET state = 'queued', handle = ? WHERE id = ?",
                                (json.dumps(handle), pk))
        self.ctx.audit(**audit, status="started", detail={"run_id": run_id, "backend": cfg.backend, "args": args,
                                                          "force": force, "reason": reason, **handle})
        run = self.get(pk)
        try:
            ts = await self.ctx.notifier.post(channel, messages.card(run, self.where(run)))
            self.store.conn.execute("UPDATE retrain_runs SET card_ts = ? WHERE id = ?", (ts, pk))
        except SlackError:
            log.warning("could not post the card of retrain %s; following it anyway", run_id, exc_info=True)
        self._follow_in_background(pk)
        return self.get(pk)

    def plan(self, model: str, actor: str, channel: str, *, args: dict[str, str] | None = None, force: bool = False,
             cancel: bool = False) -> str:
        """What `start` (or `cancel`) would do, as mrkdwn; RetrainError when it would be refused.

        A dry run: it reads the config and retrain_runs only. No row, no audit row, no process, no Airflow call.
        """
        cfg = self.retrain_config(model)
        busy = self.in_flight(model)
        if cancel:
            if busy is None:
                raise RetrainError(f"no retrain of {model} is running, so there is nothing to cancel")
            if busy.state not in CANCELLABLE:
                raise RetrainError(f"run `{busy.run_id}` of {model} is {busy.state}; it cannot be cancelled now")
            return (f"*Dry run*: `/mlops retrain {model} cancel` would cancel run `{busy.run_id}` ({busy.state} on "
                    f"{self.where(busy)}, started by <@{busy.requested_by}> {when(busy.started_at)}); its card would say "
                    "when it has stopped. Nothing was changed.")
        if busy is not None and not force:
            raise RetrainError(
                f"{model} is already retraining: run `{busy.run_id}` ({busy.state}), started by <@{busy.requested_by}> "
                f"{when(busy.started_at)}. Cancel it with `/mlops retrain {model} cancel`, or add `force=true` to "
                "start another alongside it.")
        args = dict(args or {})
        registry = self.ctx.config.models[model].registry
        if cfg.backend == "airflow":
            # The conf exactly as _launch sends it (the run id is drawn only when a run really starts).
            conf = {**cfg.conf, **args, "model": model, "requested_by": actor, "registry": registry}
            unpause = self.ctx.config.airflow.unpause if self.ctx.config.airflow else False
            how = (f"trigger Airflow DAG `{cfg.dag_id}`{' (unpausing it if paused)' if unpause else ''} "
                   f"with conf `{json.dumps(conf, sort_keys=True)}`")
        else:
            argv = command_line(cfg.command, args)
            if resolve_executable(argv[0], self.runs_dir, os.environ.get("PATH")) is None:
                raise RetrainError(f"could not start retraining {model}: command not found: {argv[0]}; "
                                   f"check models.{model}.retrain.command")
            how = (f"run `{shlex.join(argv)}` in its own run directory under {self.runs_dir}, with MLOPS_MODEL={model} "
                   f"and MLOPS_REGISTRY={registry}")
        lines = [f"*Dry run*: `/mlops retrain {model}` would {how}, for <@{actor}>."]
        if busy is not None:
            lines.append(f"Run `{busy.run_id}` ({busy.state}, by <@{busy.requested_by}>) is already going; "
                         "`force=true` would start another alongside it.")
        lines.append(f"Its card would be posted in <#{channel}> and followed until it ends "
                     f"(at most {cfg.timeout_minutes} minutes). Nothing was changed.")
        return "\n".join(lines)

    async def _launch(self, cfg: RetrainConfig, model: str, run_id: str, actor: str,
                      args: dict[str, str]) -> dict[str, str]:
        """Start the run on its backend; returns the handle that finds it again after a restart."""
        registry = self.ctx.config.models[model].registry
        if cfg.backend == "airflow":
            assert cfg.dag_id is not None  # the config requires it for this backend
            conf = {**cfg.conf, **args, "model": model, "requested_by": actor, "registry": registry}
            unpause = self.ctx.config.airflow.unpause if self.ctx.config.airflow else False
            await self.airflow().trigger(cfg.dag_id, conf, run_id=run_id, unpause=unpause)
            return {"dag_id": cfg.dag_id}
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        await start_command(cfg.command, run_id=run_id, model=model, requested_by=actor, registry=registry,
                            run_dir=run_dir, args=args, cwd=run_dir, pass_env=cfg.env)
        return {"run_dir": str(run_dir)}

    def _backend(self, run: Run) -> Backend:
        if run.backend == "airflow":
            ui_url = self.ctx.config.airflow.ui_url if self.ctx.config.airflow else None
            return AirflowBackend(self.airflow(), run.handle["dag_id"], run.run_id, ui_url)
        return CommandBackend(CommandRun.attach(Path(run.handle["run_dir"])))

    # -- cancel -----------------------------------------------------------------------------------

    async def cancel(self, model: str, actor: str) -> str:
        self.retrain_config(model)
        run = self.in_flight(model)
        if run is None:
            raise RetrainError(f"no retrain of {model} is running, so there is nothing to cancel")
        return await self.cancel_run(run.id, actor)

    async def cancel_run(self, pk: int, actor: str) -> str:
        """Ask the backend to stop the run; its follower then ends it as cancelled."""
        run = self.get(pk)
        cursor = self.store.conn.execute(
            f"UPDATE retrain_runs SET state = 'cancelling', cancelled_by = ? WHERE id = ? "
            f"AND state IN ({', '.join('?' * len(CANCELLABLE))})", (actor, pk, *CANCELLABLE))
        if cursor.rowcount != 1:
            current = self.get(pk)
            if current.state == "starting":
                raise RetrainError(f"run `{run.run_id}` is still starting; cancel it again in a few seconds")
            who = f" by <@{current.cancelled_by}>" if current.cancelled_by else ""
            raise RetrainError(f"run `{run.run_id}` of {run.model} is already {current.state}{who}")
        try:
            await self._backend(run).cancel()
        except (AirflowError, OSError, ValueError) as exc:
            self.store.conn.execute("UPDATE retrain_runs SET state = ?, cancelled_by = NULL WHERE id = ?", (run.state, pk))
            self.ctx.audit(actor=actor, verb="retrain", status="cancel_failed", channel=run.channel, model=run.model,
                           detail={"run_id": run.run_id, "error": str(exc)})
            raise RetrainError(f"could not cancel run `{run.run_id}` of {run.model}: {exc}") from None
        await self._update_card(self.get(pk))
        self._follow_in_background(pk)  # wakes the follower, or starts one if there is none
        return f"Cancelling retrain `{run.run_id}` of {run.model}; its card says when it has stopped."

    # -- following --------------------------------------------------------------------------------

    def _follow_in_background(self, pk: int, *, resumed: bool = False) -> None:
        if pk in self._followers:
            self._wake[pk].set()
            return
        self._wake[pk] = asyncio.Event()

        async def lost(exc: Exception) -> None:
            run = self.get(pk)
            await self._reply(run, messages.note(
                f":warning: The bot stopped following run `{run.run_id}` ({type(exc).__name__}; it is in the bot's log). "
                "It will pick the run up again when it restarts."))

        task = self.ctx.spawn(self._follow(pk, resumed=resumed), name=f"retrain {pk}", on_error=lost)
        self._followers[pk] = task
        task.add_done_callback(lambda _: (self._followers.pop(pk, None), self._wake.pop(pk, None)))

    async def _follow(self, pk: int, *, resumed: bool) -> None:
        run = self.get(pk)
        cfg = self.ctx.config.models.get(run.model)
        if cfg is None or cfg.retrain is None:
            await self._finish(run, RunStatus(run.run_id, "failed", detail="its model's retrain config is gone"), [])
            return
        try:
            backend = self._backend(run)
        except (AirflowError, OSError, ValueError, KeyError) as exc:
            await self._finish(run, RunStatus(run.run_id, "failed", detail=f"the bot cannot find the run again: {exc}"), [])
            return
        if resumed:
            await self._reply(run, messages.note(":arrows_counterclockwise: The bot restarted; following this run again."))
        base = self.ctx.config.airflow.poll_seconds if run.backend == "airflow" and self.ctx.config.airflow else (
            self.command_poll_seconds)
        deadline = run.started_at + timedelta(minutes=cfg.retrain.timeout_minutes)
        delay, last = base, None
        while True:
            changed = False
            try:
                status = await backend.status()
            except AirflowError as exc:
                if exc.status in (401, 403, 404):
                    await self._finish(self.get(pk), RunStatus(run.run_id, "failed", detail=str(exc)), [])
                    return
                log.warning("retrain %s: status check failed, will retry: %s", run.run_id, exc)
            else:
                if status.finished:
                    await self._finish(self.get(pk), status, await backend.failure_tail(status))
                    return
                changed = last is None or (status.state, status.tasks, status.tail) != (last.state, last.tasks, last.tail)
                if changed:
                    await self._progress(pk, last, status)
                last = status
            if self.ctx.clock() >= deadline:
                await self._time_out(pk, backend, last, cfg.retrain.timeout_minutes)
                return
            delay = next_delay(delay, changed, base, self.max_poll_seconds)
            wake = self._wake[pk]
            try:
                await asyncio.wait_for(wake.wait(), timeout=delay)
                wake.clear()
            except asyncio.TimeoutError:
                pass

    async def _progress(self, pk: int, last: RunStatus | None, status: RunStatus) -> None:
        self.store.conn.execute("UPDATE retrain_runs SET state = ? WHERE id = ? AND state IN ('queued', 'running')",
                                (status.state, pk))
        run = self.get(pk)
        if last is None or (last.state, last.tasks) != (status.state, status.tasks):
            await self._reply(run, messages.progress(run, status))
        await self._update_card(run, status)

    async def _time_out(self, pk: int, backend: Backend, last: RunStatus | None, minutes: int) -> None:
        run = self.get(pk)
        detail = f"timed out after {minutes} minutes (models.{run.model}.retrain.timeout_minutes); the run was stopped"
        try:
            await backend.cancel()
        except (AirflowError, OSError) as exc:
            detail = f"timed out after {minutes} minutes and could not be stopped: {exc}"
        status = replace(last or RunStatus(run.run_id, "failed"), state="failed", detail=detail)
        await self._finish(run, status, status.tail)

    async def _finish(self, run: Run, status: RunStatus, tail: list[str]) -> None:
        """End the run once: row, audit row, card and a thread note saying what happened."""
        metrics: dict[str, float] = {}
        version = None
        if status.state == "success" and run.state != "cancelling":
            try:
                found = await self.registry(run.model).find_by_run_id(run.model, run.run_id)
            except (RegistryError, ArtifactError) as exc:
                found, why = None, f"the registry could not be read: {exc}"
            else:
                why = (f"no version in {self.ctx.config.models[run.model].registry} names run `{run.run_id}` as its "
                       "pipeline_run_id in metadata.json; check the pipeline's publish step")
            if found is None:
                status = replace(status, state="failed", detail=f"the pipeline succeeded but {why}")
            else:
                version = found.version
                metrics = found.metadata.metrics if found.metadata else {}
        final = "cancelled" if run.state == "cancelling" else status.state
        outcome = {"success": "succeeded", "failed": "failed", "cancelled": "cancelled"}[final]
        now = self.ctx.clock()
        with self.store.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE retrain_runs SET state = ?, version = ?, detail = ?, ended_at = ? WHERE id = ? "
                f"AND state IN ({', '.join('?' * len(IN_FLIGHT))})",
                (final, version, status.detail, iso(now), run.id, *IN_FLIGHT))
            if cursor.rowcount != 1:
                return  # already ended elsewhere
            self.ctx.audit(actor=run.cancelled_by if final == "cancelled" else run.requested_by, verb="retrain",
                           status=outcome, channel=run.channel, model=run.model, version=version,
                           detail={"run_id": run.run_id, "detail": status.detail, "failed_tasks": status.failed_tasks,
                                  "url": status.url, "metrics": metrics})
        run = self.get(run.id)
        if final == "success":
            await self._update_card(run, status, metrics=metrics)
            await self._reply(run, messages.ready(run, metrics))
        elif final == "cancelled":
            await self._update_card(run, status, note=f"Cancelled by <@{run.cancelled_by}>.")
            await self._reply(run, messages.note(f":no_entry_sign: Cancelled by <@{run.cancelled_by}>."))
        else:
            await self._update_card(run, replace(status, tail=tail or status.tail), note=f":x: {status.detail or 'failed'}")
            await self._reply(run, messages.failed(run, status, tail, self.oncall_mention(run.model)))

    def oncall_mention(self, model: str) -> str:
        """Who to @-mention on a failure: the on-call user group, else the model's owner."""
        groups = [r.usergroup for r in self.ctx.config.oncall.rotations if r.usergroup]
        if groups:
            return f"<!subteam^{groups[0]}>"
        owner = self.ctx.config.models[model].owner if model in self.ctx.config.models else None
        return f"<@{owner}>" if owner else ""

    # -- Slack side -------------------------------------------------------------------------------

    async def _update_card(self, run: Run, status: RunStatus | None = None, **extra: Any) -> None:
        """Edit the card in place; post a fresh one if it is gone (deleted, or another workspace's)."""
        if not run.channel:
            return
        card = messages.card(run, self.where(run), status, **extra)
        notifier = self.ctx.notifier
        try:
            ts = await (notifier.edit_or_repost(run.channel, run.card_ts, card) if run.card_ts else notifier.post(run.channel, card))
        except SlackError:
            log.warning("could not show the card of retrain %s", run.run_id, exc_info=True)
            return
        if ts != run.card_ts:
            self.store.conn.execute("UPDATE retrain_runs SET card_ts = ? WHERE id = ?", (ts, run.id))

    async def _reply(self, run: Run, msg: Message) -> None:
        run = self.get(run.id)  # the card may have been posted again
        if not (run.channel and run.card_ts):
            return
        try:
            await self.ctx.notifier.reply(run.channel, run.card_ts, msg)
        except SlackError:
            log.warning("could not reply in the thread of retrain %s", run.run_id, exc_info=True)

    # -- lifecycle --------------------------------------------------------------------------------

    async def resume(self) -> None:
        """Follow again every run a stopped bot left in flight."""
        rows = self.store.db.query(
            f"SELECT * FROM retrain_runs WHERE state IN ({', '.join('?' * len(IN_FLIGHT))}) ORDER BY id", list(IN_FLIGHT))
        for run in [_run(row) for row in rows]:
            if run.state == "starting" and (handle := self._launched(run)):
                # Stopped after the pipeline started but before that was recorded: it runs, so it is followed
                # (marking it failed would invite a second pipeline next to the first).
                self.store.conn.execute("UPDATE retrain_runs SET state = 'queued', handle = ? WHERE id = ? AND state = 'starting'",
                                        (json.dumps(handle), run.id))
                self.ctx.audit(actor=run.requested_by, verb="retrain", status="started", channel=run.channel, model=run.model,
                               detail={"run_id": run.run_id, "backend": run.backend, "args": run.args,
                                      "found_at_restart": True, **handle})
                run = self.get(run.id)
            if run.state == "starting":  # stopped between reserving the run and starting it
                await self._finish(run, RunStatus(run.run_id, "failed",
                                                  detail="the bot restarted while starting it; start it again"), [])
                continue
            await self._update_card(run)
            self._follow_in_background(run.id, resumed=True)

    def _launched(self, run: Run) -> dict[str, str] | None:
        """The handle of a run left `starting` whose command did start (its run record is written), else None."""
        run_dir = self.runs_dir / run.run_id
        if run.backend == "command" and (run_dir / RECORD_FILE).is_file():
            return {"run_dir": str(run_dir)}
        return None

    async def stop(self) -> None:
        """Stop following (the runs themselves go on; the next start follows them again)."""
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._airflow is not None:
            await self._airflow.close()
            self._airflow = None
