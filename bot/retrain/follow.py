"""Following a retrain: one task per run polls its backend, backing off while nothing changes, and is the only
place a run ends. Success (the registry names the run's version), failure, timeout or cancellation each write
the row, one audit row and the card exactly once.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from bot.airflow import AirflowError
from bot.context import Context
from bot.retrain import messages
from bot.retrain.backends import Backend, Backends
from bot.retrain.messages import Run
from bot.retrain.runs import IN_FLIGHT, RetrainRuns
from bot.retrain.status import RunStatus
from bot.serving.artifacts import ArtifactError, open_store
from bot.serving.registry import Registry, RegistryError
from bot.store import iso

log = logging.getLogger(__name__)


def next_delay(current: float, changed: bool, base: float, cap: float) -> float:
    """Poll again soon after a change; otherwise wait twice as long as last time, up to `cap`."""
    return base if changed else min(current * 2, cap)


class Followers:
    """One follower task per run in flight; `follow` starts one, or wakes the one there is."""

    command_poll_seconds = 0.5
    max_poll_seconds = 60.0

    def __init__(self, ctx: Context, *, runs: RetrainRuns, backends: Backends):
        self.ctx = ctx
        self.runs = runs
        self.backends = backends
        self._followers: dict[int, asyncio.Task[Any]] = {}
        self._wake: dict[int, asyncio.Event] = {}

    def registry(self, model: str) -> Registry:
        return Registry(open_store(self.ctx.config.models[model].registry, s3_endpoint_url=self.ctx.config.s3.endpoint_url))

    def follow(self, pk: int, *, resumed: bool = False) -> None:
        if pk in self._followers:
            self._wake[pk].set()
            return
        self._wake[pk] = asyncio.Event()

        async def lost(exc: Exception) -> None:
            run = self.runs.get(pk)
            await self.runs.reply(run, messages.note(
                f":warning: The bot stopped following run `{run.run_id}` ({type(exc).__name__}; it is in the bot's log). "
                "It will pick the run up again when it restarts."))

        task = self.ctx.spawn(self._follow(pk, resumed=resumed), name=f"retrain {pk}", on_error=lost)
        self._followers[pk] = task
        task.add_done_callback(lambda _: (self._followers.pop(pk, None), self._wake.pop(pk, None)))

    async def _follow(self, pk: int, *, resumed: bool) -> None:
        run = self.runs.get(pk)
        cfg = self.ctx.config.models.get(run.model)
        if cfg is None or cfg.retrain is None:
            await self.finish(run, RunStatus(run.run_id, "failed", detail="its model's retrain config is gone"), [])
            return
        try:
            backend = self.backends.of(run)
        except (AirflowError, OSError, ValueError, KeyError) as exc:
            await self.finish(run, RunStatus(run.run_id, "failed", detail=f"the bot cannot find the run again: {exc}"), [])
            return
        if resumed:
            await self.runs.reply(run, messages.note(":arrows_counterclockwise: The bot restarted; following this run again."))
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
                    await self.finish(self.runs.get(pk), RunStatus(run.run_id, "failed", detail=str(exc)), [])
                    return
                log.warning("retrain %s: status check failed, will retry: %s", run.run_id, exc)
            else:
                if status.finished:
                    await self.finish(self.runs.get(pk), status, await backend.failure_tail(status))
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
            except TimeoutError:
                pass

    async def _progress(self, pk: int, last: RunStatus | None, status: RunStatus) -> None:
        self.ctx.store.conn.execute("UPDATE retrain_runs SET state = ? WHERE id = ? AND state IN ('queued', 'running')",
                                    (status.state, pk))
        run = self.runs.get(pk)
        if last is None or (last.state, last.tasks) != (status.state, status.tasks):
            await self.runs.reply(run, messages.progress(run, status))
        await self.runs.update_card(run, status)

    async def _time_out(self, pk: int, backend: Backend, last: RunStatus | None, minutes: int) -> None:
        run = self.runs.get(pk)
        detail = f"timed out after {minutes} minutes (models.{run.model}.retrain.timeout_minutes); the run was stopped"
        try:
            await backend.cancel()
        except (AirflowError, OSError) as exc:
            detail = f"timed out after {minutes} minutes and could not be stopped: {exc}"
        status = replace(last or RunStatus(run.run_id, "failed"), state="failed", detail=detail)
        await self.finish(run, status, status.tail)

    async def finish(self, run: Run, status: RunStatus, tail: list[str]) -> None:
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
        with self.ctx.store.transaction() as conn:
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
        run = self.runs.get(run.id)
        if final == "success":
            await self.runs.update_card(run, status, metrics=metrics)
            await self.runs.reply(run, messages.ready(run, metrics))
        elif final == "cancelled":
            await self.runs.update_card(run, status, note=f"Cancelled by <@{run.cancelled_by}>.")
            await self.runs.reply(run, messages.note(f":no_entry_sign: Cancelled by <@{run.cancelled_by}>."))
        else:
            await self.runs.update_card(run, replace(status, tail=tail or status.tail), note=f":x: {status.detail or 'failed'}")
            await self.runs.reply(run, messages.failed(run, status, tail, self.oncall_mention(run.model)))

    def oncall_mention(self, model: str) -> str:
        """Who to @-mention on a failure: the on-call user group, else the model's owner."""
        groups = [r.usergroup for r in self.ctx.config.oncall.rotations if r.usergroup]
        if groups:
            return f"<!subteam^{groups[0]}>"
        owner = self.ctx.config.models[model].owner if model in self.ctx.config.models else None
        return f"<@{owner}>" if owner else ""

    async def stop(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
