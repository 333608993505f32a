"""Scheduled retraining: `models.<m>.retrain.schedule` (cron + zone) starts the model's retrain as its owner would.

Each slot runs once, across restarts too (the scheduler claims it in the store). A slot is skipped, with a note in
the channel, while a run of the model is in flight or a datagen job the model is trained on has an open critical
alert: training on data known to be broken makes a version nobody should ship.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from bot.context import Context
from bot.notifier import Message, SlackError
from bot.releases.messages import when
from bot.retrain.messages import Run
from bot.retrain.runs import RetrainError
from bot.scheduler import Scheduler

log = logging.getLogger(__name__)

BOT = "mlops-bot"
GRACE = timedelta(hours=6)  # a slot missed while the bot was down still runs this long after


class Starts(Protocol):
    async def start(self, model: str, actor: str, channel: str, *, reason: str | None = None) -> Run: ...
    def in_flight(self, model: str) -> Run | None: ...


class ScheduledRetrains:
    def __init__(self, ctx: Context, *, scheduler: Scheduler, runs: Starts) -> None:
        self.ctx = ctx
        self.runs = runs
        for model, cfg in ctx.config.models.items():
            if cfg.retrain and cfg.retrain.schedule:
                scheduler.add(f"retrain.schedule.{model}", cfg.retrain.schedule.trigger(), partial(self.run, model),
                              grace=GRACE)

    def blocker(self, model: str) -> str | None:
        """Why the scheduled retrain of `model` should not start now, or None."""
        if busy := self.runs.in_flight(model):
            return f"run `{busy.run_id}` is still {busy.state} (started {when(busy.started_at)})"
        watched = {**self.ctx.config.datagen.jobs, **self.ctx.config.monitors}
        jobs = [name for name, job in watched.items() if model in job.models]
        for job in jobs:
            found = self.ctx.store.query(
                "SELECT key FROM alerts WHERE source = 'datagen' AND key LIKE ? AND severity = 'crit' "
                "AND state IN ('open', 'acked') ORDER BY id DESC LIMIT 1", (f"{job}/%",))
            if found:
                return f"datagen `{job}` has an open critical alert ({found[0]['key'].partition('/')[2]}); fix the data first"
        return None

    async def run(self, model: str, slot: datetime) -> None:
        cfg = self.ctx.config.models[model]
        assert cfg.retrain and cfg.retrain.schedule  # only such models have the job
        channel = self.ctx.config.channels.main
        actor = cfg.owner or BOT
        why = f"scheduled ({cfg.retrain.schedule.cron}, {cfg.retrain.schedule.tz}) for {slot.isoformat(timespec='minutes')}"
        if blocked := self.blocker(model):
            self.ctx.audit(actor=BOT, verb="retrain", status="skipped", channel=channel, model=model,
                           detail={"slot": slot.isoformat(), "reason": blocked})
            await self._say(channel, f":fast_forward: The scheduled retrain of *{model}* due {when(slot)} was skipped: "
                                     f"{blocked}. The next slot runs as planned; `/mlops retrain {model}` starts one now.")
            return
        try:
            await self.runs.start(model, actor, channel, reason=why)
        except RetrainError as exc:  # audited by start; said where the team looks
            await self._say(channel, f":x: The scheduled retrain of *{model}* due {when(slot)} did not start: {exc}")

    async def _say(self, channel: str, text: str) -> None:
        try:
            await self.ctx.notifier.post(channel, Message(text))
        except SlackError:
            log.warning("could not post to %s: %s", channel, text, exc_info=True)
