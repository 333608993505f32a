"""The `retrain_runs` rows and each run's card: what starting, following and finishing a retrain share.

A run is a row from the moment it is asked for, so a second request for the same model sees it and a
restarted bot follows it again. Its card is one Slack message, edited in place, with a thread of notes.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.config import RetrainConfig
from bot.context import Context
from bot.notifier import Message, SlackError
from bot.retrain import messages
from bot.retrain.messages import Run
from bot.retrain.status import RunStatus

log = logging.getLogger(__name__)

IN_FLIGHT = ("starting", "queued", "running", "cancelling")
CANCELLABLE = ("queued", "running")


class RetrainError(Exception):
    """A refusal or failure a person can act on; the message says what and what to do next."""


def run_of(row: dict[str, Any]) -> Run:
    return Run(
        id=row["id"], model=row["model"], backend=row["backend"], run_id=row["run_id"], state=row["state"],
        requested_by=row["requested_by"], args=json.loads(row["args"]), handle=json.loads(row["handle"]),
        started_at=datetime.fromisoformat(row["started_at"]),
        ended_at=datetime.fromisoformat(row["ended_at"]) if row["ended_at"] else None,
        version=row["version"], reason=row["reason"], detail=row["detail"], cancelled_by=row["cancelled_by"],
        channel=row["channel"], card_ts=row["card_ts"],
    )


class RetrainRuns:
    """Reading the rows, and showing a run on its card and in the card's thread."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def retrain_config(self, model: str) -> RetrainConfig:
        cfg = self.ctx.config.models.get(model)
        if cfg is None:
            known = ", ".join(sorted(self.ctx.config.models)) or "none configured"
            raise RetrainError(f"unknown model `{model}`; known models: {known}")
        if cfg.retrain is None:
            raise RetrainError(f"{model} has no retrain pipeline; add `models.{model}.retrain` to the bot's config")
        return cfg.retrain

    def get(self, pk: int) -> Run:
        rows = list(self.store.db.query("SELECT * FROM retrain_runs WHERE id = ?", [pk]))
        if not rows:
            raise RetrainError(f"retrain run {pk} does not exist; start one with `/mlops retrain <model>`")
        return run_of(rows[0])

    def in_flight(self, model: str) -> Run | None:
        rows = list(self.store.db.query(
            f"SELECT * FROM retrain_runs WHERE model = ? AND state IN ({', '.join('?' * len(IN_FLIGHT))}) "
            "ORDER BY id DESC LIMIT 1", [model, *IN_FLIGHT]))
        return run_of(rows[0]) if rows else None

    def where(self, run: Run) -> str:
        """Where the run executes, as the card says it."""
        if run.backend == "airflow":
            return f"Airflow DAG `{run.handle.get('dag_id', '?')}`"
        cfg = self.ctx.config.models.get(run.model)
        argv = cfg.retrain.command if cfg and cfg.retrain else ["?"]
        return f"command `{' '.join([Path(argv[0]).name, *argv[1:]])}`"

    async def update_card(self, run: Run, status: RunStatus | None = None, **extra: Any) -> None:
        """Edit the card in place; post a fresh one if it is gone (deleted, or another workspace's)."""
        if not run.channel:
            return
        card = messages.card(run, self.where(run), status, **extra)
        notifier = self.ctx.notifier
        try:
            ts = await (
                notifier.edit_or_repost(run.channel, run.card_ts, card) if run.card_ts else notifier.post(run.channel, card)
            )
        except SlackError:
            log.warning("could not show the card of retrain %s", run.run_id, exc_info=True)
            return
        if ts != run.card_ts:
            self.store.conn.execute("UPDATE retrain_runs SET card_ts = ? WHERE id = ?", (ts, run.id))

    async def reply(self, run: Run, msg: Message) -> None:
        run = self.get(run.id)  # the card may have been posted again
        if not (run.channel and run.card_ts):
            return
        try:
            await self.ctx.notifier.reply(run.channel, run.card_ts, msg)
        except SlackError:
            log.warning("could not reply in the thread of retrain %s", run.run_id, exc_info=True)
