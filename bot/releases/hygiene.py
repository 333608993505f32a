"""Staging hygiene: nothing broken or unverified stays on staging overnight.

At the end of each deploy window, the engineer of a staging release that failed or was never verified is nudged
in its thread, once. At `staging.revert_at` (off unless set), such a staging is rolled back to what prod serves,
said in the thread. A verified release waiting for its unblock is left alone: the daily digest lists it.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from bot.context import Context
from bot.releases.delivery import Delivery
from bot.releases.messages import when
from bot.releases.model import Release, State
from bot.releases.records import Records, ReleaseError, release_of
from bot.releases.rollback import Rollbacks
from bot.scheduler import Scheduler, daily
from bot.store import iso

log = logging.getLogger(__name__)

BOT = "mlops-bot"
GRACE = timedelta(hours=6)  # a slot missed while the bot was down still runs this long after
UNHEALTHY = frozenset({State.STAGED, State.VERIFY_FAILED, State.INTERRUPTED})  # serving staging, not verified


class StagingHygiene:
    def __init__(self, ctx: Context, *, scheduler: Scheduler, records: Records, delivery: Delivery, rollbacks: Rollbacks):
        self.ctx = ctx
        self.records = records
        self.delivery = delivery
        self.rollbacks = rollbacks
        for i, window in enumerate(ctx.config.deploy.windows):
            days = ",".join(day[:3] for day in window.days)
            trigger = CronTrigger(hour=window.end.hour, minute=window.end.minute, day_of_week=days, timezone=window.tz)
            scheduler.add(f"staging.window_end.{i}", trigger, self.window_end, grace=GRACE)
        if (staging := ctx.config.staging).revert_at is not None:
            scheduler.add("staging.revert", daily(staging.revert_at, staging.tz), self.revert, grace=GRACE)

    def unhealthy(self) -> list[Release]:
        """Each model's staging release that failed there or was never verified: the one staging serves (unless
        it is what prod serves too), or a newer one whose deploy failed."""
        found = []
        for model, cfg in self.ctx.config.models.items():
            serving = self.records.serving(model, "staging")
            prod = self.records.serving(model, "prod") if "prod" in cfg.environments else None
            if serving and serving.state in UNHEALTHY and not (prod and prod.version == serving.version):
                found.append(serving)
            newest = self.records.rows("SELECT * FROM releases WHERE model = ? ORDER BY id DESC LIMIT 1", model)
            if newest and newest[0]["state"] == State.DEPLOY_FAILED.value:
                found.append(release_of(newest[0]))
        return found

    async def window_end(self, slot: datetime) -> None:
        revert = self.ctx.config.staging
        for release in self.unhealthy():
            with self.ctx.store.transaction() as conn:
                if not conn.execute("INSERT OR IGNORE INTO staging_nudges (release_id, nudged_at) VALUES (?, ?)",
                                    (release.id, iso(self.ctx.clock()))).rowcount:
                    continue  # nudged at an earlier window's end
                self.ctx.audit(actor=BOT, verb="staging.nudge", status="sent", channel=release.channel, model=release.model,
                               env="staging", version=release.version, detail={"release": release.id, "slot": iso(slot)})
            later = (f" At {revert.revert_at:%H:%M} ({revert.tz}) the bot puts staging back on what prod serves."
                     if revert.revert_at and release.state is not State.DEPLOY_FAILED else "")
            await self.delivery.thread(release, (
                f":broom: <@{release.deployed_by}>, the deploy window ended ({when(slot)}) with {release.model} "
                f"{release.version} {release.state.words} on staging: verify it, roll it back, or deploy a fixed "
                f"version.{later}"))

    async def revert(self, slot: datetime) -> None:
        for release in self.unhealthy():
            if release.state is State.DEPLOY_FAILED:
                continue  # staging was put back when its deploy failed
            prod = self.records.serving(release.model, "prod")
            if prod is None:
                await self.delivery.thread(release, f":warning: {release.model} {release.version} is still "
                                                    f"{release.state.words} on staging, and prod serves nothing to go back to.")
                continue
            reason = f"staging.revert_at: {release.version} was {release.state.words} at {when(slot)}"
            try:
                await self.rollbacks.rollback(release.model, "staging", BOT, to_version=prod.version, reason=reason)
            except ReleaseError as exc:
                await self.delivery.thread(release, f":x: Could not put staging back on {prod.version}: {exc}")
                continue
            await self.delivery.thread(release, (
                f":rewind: Nothing broken or unverified stays on staging overnight: staging serves {prod.version} again, "
                f"what prod serves. <@{release.deployed_by}>, deploy a fixed version when ready."))
