"""Unblocking prod: who may (the policy), then copy, load and verify on prod, and put prod back if that fails."""
from __future__ import annotations

import logging

from bot.context import Context
from bot.releases import messages
from bot.releases.delivery import Delivery
from bot.releases.deploy import Deploys
from bot.releases.flow import Flow
from bot.releases.model import BUSY, Event, Release, State
from bot.releases.operations import Operations
from bot.releases.policy import Decision, may_promote, short
from bot.releases.records import Records, ReleaseError
from bot.releases.restore import Restorer
from bot.releases.systems import EXPECTED, Systems, failure_text
from bot.roles import RoleDirectory
from bot.serving.triton import deploy_files
from bot.store import iso

log = logging.getLogger(__name__)


class Promotions(Flow):
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, operations: Operations, delivery: Delivery,
                 restorer: Restorer, deploys: Deploys, roles: RoleDirectory):
        super().__init__(ctx, records=records, systems=systems, operations=operations, delivery=delivery, restorer=restorer)
        self.deploys = deploys  # prod is verified as staging was
        self.roles = roles  # who may unblock prod

    async def check_promote(self, release: Release, actor: str, *, urgent: bool = False) -> Decision:
        cfg = self.systems.model_config(release.model)
        try:
            digest = await self.systems.registry(release.model).digest(release.model, release.version)
        except EXPECTED as exc:
            raise ReleaseError(f"cannot read {release.model} {release.version} from the registry: {exc}") from None
        return may_promote(release, actor=actor, is_approver=await self.roles.has(actor, "approvers"),
                           staging_only=cfg.staging_only, current_digest=digest, policy=self.ctx.config.deploy,
                           now=self.ctx.clock(), urgent=urgent)

    def _start_promote(self, release: Release, actor: str) -> Release:
        release = self.records.get(release.id)
        if release.state is not State.VERIFIED:  # staging's verdict is read in the same transaction
            raise ReleaseError(self.records.why_not(release.id, Event.PROMOTE, "staging"))
        return self.records.cas(release, Event.PROMOTE, "prod", approved_by=actor, approved_at=iso(self.ctx.clock()))

    async def promote(self, release: Release, actor: str, *, urgent_reason: str | None = None) -> Release:
        """Copy to prod, load on every prod endpoint, verify prod; on failure put prod back as the bot records it."""
        release = self.records.get(release.id)
        if release.prod_state in BUSY | {State.LIVE}:  # a duplicate press, or a card gone stale
            raise ReleaseError(self.records.why_not(release.id, Event.PROMOTE, "prod"))
        if release.state in BUSY | {State.SUPERSEDED}:
            raise ReleaseError(self.records.why_not(release.id, Event.PROMOTE, "staging"))
        decision = await self.check_promote(release, actor, urgent=urgent_reason is not None)
        if not decision.allowed:
            self.ctx.audit(actor=actor, verb="promote", status="denied", channel=release.channel, model=release.model,
                           env="prod", version=release.version, detail={"reason": decision.reason})
            raise ReleaseError(decision.reason)
        async with self.ops.operation("promote", release.model, "prod", actor, f"promoting {release.version}",
                                      start=lambda: self._start_promote(release, actor)) as release:
            if urgent_reason:
                self.ctx.audit(actor=actor, verb="promote.urgent", status="ok", channel=release.channel, model=release.model,
                               env="prod", version=release.version, detail={"reason": urgent_reason})
                await self.delivery.thread(release, f":rotating_light: Urgent unblock outside deploy hours by <@{actor}>: "
                                                    f"{urgent_reason}" + self.oncall_mention())
            await self.delivery.card(release, "prod", note=f"Unblocked by <@{actor}>: deploying to prod…")
            failure = await self.load_prod(release)
            release, restored = await self.record(release, actor, failure)
        await self.announce(release, actor, failure, restored)
        if failure is not None:
            raise ReleaseError(f"promotion failed: {failure}. {restored}")
        return release

    async def record(self, release: Release, actor: str, failure: str | None) -> tuple[Release, str]:
        """Inside the prod operation, after `load_prod`: the release live and the previous one superseded, or prod
        put back on its record and the release failed there; (the release, what putting prod back did)."""
        if failure is None:
            previous = self.records.serving(release.model, "prod")
            with self.ctx.store.transaction():
                if previous is not None and previous.id != release.id and previous.prod_state is State.LIVE:
                    self.records.cas(previous, Event.SUPERSEDE, "prod")
                release = self.records.cas(release, Event.PROMOTED, "prod")
                self.records.set_env(release, "prod", actor=release.deployed_by or actor,
                                     approved_by=release.approved_by or actor)
                self.ctx.audit(actor=actor, verb="promote", status="succeeded", channel=release.channel, model=release.model,
                               env="prod", version=release.version, detail={"release": release.id})
            return release, ""
        restored = await self.restorer.restore(release.model, "prod")
        with self.ctx.store.transaction():
            release = self.records.cas(release, Event.PROMOTE_FAILED, "prod")
            self.ctx.audit(actor=actor, verb="promote", status="failed", channel=release.channel, model=release.model,
                           env="prod", version=release.version,
                           detail={"release": release.id, "error": failure, "restored": restored})
        return release, restored

    async def announce(self, release: Release, actor: str, failure: str | None, restored: str) -> None:
        """The card and the thread once a promotion ended; a failure is said loudly, paging on-call."""
        if failure is None:
            who = release.approved_by or actor
            await self.delivery.card(release, "prod", note=f":rocket: Live in prod, unblocked by <@{who}>.")
            await self.delivery.thread(release, f":large_green_circle: {release.model} {release.version} is serving in prod "
                                                "on every endpoint.")
            return
        loud = (f":rotating_light: <!here> Production verification of *{release.model} {release.version}* failed: {failure}. "
                f"{restored}{self.oncall_mention()}")
        await self.delivery.card(release, "prod", note=loud)
        if release.channel:
            await self.delivery.say(release.channel, loud)

    async def load_prod(self, release: Release) -> str | None:
        """Copy, load and verify on prod; the failure as people read it, or None."""
        registry = self.systems.registry(release.model)
        try:
            repo = self.systems.repository(release.model, "prod")
            config_json = await deploy_files(registry, release.model, release.version, repo, release.triton_version)
            async with self.systems.fleet(release.model, "prod") as fleet:
                await fleet.load(release.model, release.triton_version, config_json)
            passed, reason, _ = await self.deploys.check(release, "prod")
            return None if passed else reason
        except Exception as exc:  # noqa: BLE001 - whatever failed, prod goes back to what it served
            if not isinstance(exc, EXPECTED):
                log.error("promotion of release %s failed unexpectedly", release.id, exc_info=True)
            return failure_text(exc)

    async def plan_promote(self, model: str, actor: str, *, urgent: bool) -> str:
        release = self.records.serving(model, "staging")
        if release is None:
            raise ReleaseError(f"nothing is on {model} staging; `/mlops deploy {model}` first")
        decision = await self.check_promote(release, actor, urgent=urgent)
        if not decision.allowed:
            raise ReleaseError(decision.reason + ("; add urgent=\"reason\" to unblock anyway" if decision.needs_urgent else ""))
        self.ops.check_free(model, "prod")
        cfg = self.systems.model_config(model)
        registry = self.systems.registry(model)
        try:
            files = await registry.files(model, release.version)
            size = sum([await registry.store.size(registry.key(model, release.version, f)) for f in files])
        except EXPECTED as exc:
            raise ReleaseError(str(exc)) from None
        current = self.records.serving(model, "prod")
        endpoints = cfg.environments["prod"].endpoints
        return (f"*Dry run*: the policy allows <@{actor}> to unblock {model} {release.version} (digest "
                f"`{short(release.digest)}`, verified {messages.when(release.verified_at)}). It would copy {len(files)} files "
                f"({messages.size(size)}) to {cfg.environments['prod'].repository}, load it on {len(endpoints)} prod endpoint(s) "
                f"({', '.join(endpoints)}) in place of {current.version if current else 'nothing'}, verify prod, and put "
                "prod back if that fails. Nothing was changed.")

    def oncall_mention(self) -> str:
        groups = [r.usergroup for r in self.ctx.config.oncall.rotations if r.usergroup]
        return f" <!subteam^{groups[0]}>" if groups else ""
