"""Retraining from Slack: start a model's pipeline, follow it on one card, hand the new version to deploy.

A run is a `retrain_runs` row from the moment it is asked for (bot/retrain/runs.py), so a second request for
the same model sees it (and is refused unless forced) and a restarted bot follows it again. It runs on its
backend (bot/retrain/backends.py); one follower task per run polls it and is the only place a run ends
(bot/retrain/follow.py).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bot.airflow import AirflowError
from bot.context import Context
from bot.notifier import SlackError
from bot.programs import resolve_executable
from bot.releases.messages import when
from bot.retrain import messages
from bot.retrain.backends import Backends
from bot.retrain.command import CommandError, command_line
from bot.retrain.follow import Followers
from bot.retrain.messages import Run
from bot.retrain.runs import CANCELLABLE, IN_FLIGHT, RetrainError, RetrainRuns, run_of
from bot.retrain.status import RunStatus
from bot.store import iso

log = logging.getLogger(__name__)

TRUE_WORDS = ("true", "yes", "1", "on")


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


def new_run_id(model: str, now: datetime) -> str:
    return f"retrain-{model}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class RetrainService(RetrainRuns):
    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.runs_dir = Path(ctx.config.store).resolve().parent / "retrain-runs"
        self.backends = Backends(ctx, self.runs_dir)
        self.followers = Followers(ctx, runs=self, backends=self.backends)

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
            handle = await self.backends.launch(cfg, model, run_id, actor, args)
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
        self.followers.follow(pk)
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
            # The conf exactly as Backends.launch sends it (the run id is drawn only when a run really starts).
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
            await self.backends.of(run).cancel()
        except (AirflowError, OSError, ValueError) as exc:
            self.store.conn.execute("UPDATE retrain_runs SET state = ?, cancelled_by = NULL WHERE id = ?", (run.state, pk))
            self.ctx.audit(actor=actor, verb="retrain", status="cancel_failed", channel=run.channel, model=run.model,
                           detail={"run_id": run.run_id, "error": str(exc)})
            raise RetrainError(f"could not cancel run `{run.run_id}` of {run.model}: {exc}") from None
        await self.update_card(self.get(pk))
        self.followers.follow(pk)  # wakes the follower, or starts one if there is none
        return f"Cancelling retrain `{run.run_id}` of {run.model}; its card says when it has stopped."

    # -- lifecycle --------------------------------------------------------------------------------

    async def resume(self) -> None:
        """Follow again every run a stopped bot left in flight."""
        rows = self.store.db.query(
            f"SELECT * FROM retrain_runs WHERE state IN ({', '.join('?' * len(IN_FLIGHT))}) ORDER BY id", list(IN_FLIGHT))
        for run in [run_of(row) for row in rows]:
            if run.state == "starting" and (handle := self.backends.launched(run)):
                # Stopped after the pipeline started but before that was recorded: it runs, so it is followed
                # (marking it failed would invite a second pipeline next to the first).
                self.store.conn.execute(
                    "UPDATE retrain_runs SET state = 'queued', handle = ? WHERE id = ? AND state = 'starting'",
                    (json.dumps(handle), run.id),
                )
                self.ctx.audit(
                    actor=run.requested_by,
                    verb="retrain",
                    status="started",
                    channel=run.channel,
                    model=run.model,
                    detail={"run_id": run.run_id, "backend": run.backend, "args": run.args, "found_at_restart": True, **handle},
                )
                run = self.get(run.id)
            if run.state == "starting":  # stopped between reserving the run and starting it
                await self.followers.finish(
                    run, RunStatus(run.run_id, "failed", detail="the bot restarted while starting it; start it again"), []
                )
                continue
            await self.update_card(run)
            self.followers.follow(run.id, resumed=True)

    async def stop(self) -> None:
        """Stop following (the runs themselves go on; the next start follows them again)."""
        await self.followers.stop()
        await self.backends.close()
