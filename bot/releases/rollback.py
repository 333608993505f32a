"""Reject a verified release, and roll an environment back to its previous known-good version (or a named one).

A rollback only reloads files the environment's repository already holds (each release has its own Triton
version directory), copying them again only when they were pruned.
"""
from __future__ import annotations

import logging

from bot.releases.flow import Flow
from bot.releases.model import BUSY, Event, Release, State, env_of, rollback_target, sources
from bot.releases.policy import short
from bot.releases.records import ReleaseError, release_of
from bot.releases.systems import EXPECTED, failure_text
from bot.serving.triton import deploy_files

log = logging.getLogger(__name__)


class Rollbacks(Flow):
    async def reject(self, release: Release, actor: str) -> Release:
        if self.records.get(release.id).prod_state in BUSY | {State.LIVE}:
            raise ReleaseError(f"{release.model} {release.version} is already unblocked for prod; roll prod back instead")
        with self.ctx.store.transaction():
            release = self.records.cas(self.records.get(release.id), Event.REJECT, "staging")
            self.ctx.audit(actor=actor, verb="reject", status="succeeded", channel=release.channel, model=release.model,
                           env="staging", version=release.version, detail={"release": release.id})
        await self.delivery.card(release, "staging", note=f"Rejected by <@{actor}>; it will not go to prod.")
        return release

    def _target(self, model: str, env: str, to_version: str | None, card_release: int | None) -> tuple[Release, Release]:
        """(what `env` serves now, what a rollback would serve): the previous known-good release, or `to_version`."""
        cfg = self.systems.model_config(model)
        if env not in cfg.environments:
            raise ReleaseError(f"{model} has no {env} environment; environments: {', '.join(cfg.environments)}")
        current = self.records.serving(model, env)
        if current is None:
            raise ReleaseError(f"nothing is deployed to {model} {env}, so there is nothing to roll back")
        if card_release is not None and current.id != card_release:
            raise ReleaseError(f"this card is out of date: {model} {env} now serves {current.version}")
        releases = [release_of(r) for r in self.records.rows("SELECT * FROM releases WHERE model = ? ORDER BY id", model)]
        if to_version:
            named = [r for r in releases if r.version == to_version and r.state not in (State.DEPLOYING, State.DEPLOY_FAILED)]
            if not named:
                raise ReleaseError(f"{model} {to_version} was never deployed here; versions deployed: "
                                   + ", ".join(dict.fromkeys(r.version for r in releases)))
            if named[-1].id == current.id:
                raise ReleaseError(f"{model} {env} already serves {to_version}")
            return current, named[-1]
        target = rollback_target(current, releases, env)
        if target is None:
            raise ReleaseError(f"{model} {env} has no earlier known-good version to go back to (one that served {env} before "
                               f"{current.version} and was neither rolled back nor failed); name one with "
                               f"`/mlops rollback {model} {env} to <version>`")
        return current, target

    async def rollback(self, model: str, env: str, actor: str, *, to_version: str | None, reason: str,
                       card_release: int | None = None) -> str:
        """Serve the previous known-good version again (or `to_version`); returns what happened."""
        current, target = self._target(model, env, to_version, card_release)
        async with self.ops.operation("rollback", model, env, actor, f"rolling back to {target.version}",
                                      detail={"from": current.version, "to": target.version, "reason": reason}):
            try:
                config_json = await self.systems.config_for(model, target.version, target.triton_version)
                repo = self.systems.repository(model, env)
                if not await repo.list(f"{model}/{target.triton_version}/"):  # pruned or never copied here
                    await deploy_files(self.systems.registry(model), model, target.version, repo, target.triton_version)
                async with self.systems.fleet(model, env) as fleet:
                    await fleet.load(model, target.triton_version, config_json)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the environment goes back to its record
                if not isinstance(exc, EXPECTED):
                    log.error("rollback of %s %s failed unexpectedly", model, env, exc_info=True)
                restored = await self.restorer.restore(model, env)
                self.ctx.audit(actor=actor, verb="rollback", status="failed", model=model, env=env, version=target.version,
                               detail={"error": failure_text(exc), "restored": restored})
                raise ReleaseError(f"rollback of {model} {env} to {target.version} failed: {failure_text(exc)}. "
                                   f"{restored}") from None
            with self.ctx.store.transaction():
                current = self.records.get(current.id)
                if current.standing(env) in sources(env_of(env), Event.ROLL_BACK):
                    self.records.cas(current, Event.ROLL_BACK, env)
                target = self.records.get(target.id)
                if target.standing(env) in sources(env_of(env), Event.RESTORE):
                    target = self.records.cas(target, Event.RESTORE, env)
                self.records.set_env(target, env, actor=actor, approved_by=target.approved_by if env == "prod" else None)
                self.ctx.audit(actor=actor, verb="rollback", status="succeeded", model=model, env=env, version=target.version,
                               detail={"from": current.version, "reason": reason})
        await self.delivery.card(self.records.get(current.id), env,
                                 note=f":rewind: Rolled back by <@{actor}> to {target.version}: {reason}")
        return f":rewind: {model} {env} is serving {target.version} again (was {current.version}). Reason: {reason}"

    async def plan_rollback(self, model: str, env: str, actor: str, *, to_version: str | None) -> str:
        current, target = self._target(model, env, to_version, None)
        self.ops.check_free(model, env)
        endpoints = self.systems.model_config(model).environments[env].endpoints
        return (f"*Dry run*: `/mlops rollback {model} {env}` would load {target.version} (digest `{short(target.digest)}`, "
                f"triton version {target.triton_version}) on {len(endpoints)} {env} endpoint(s) ({', '.join(endpoints)}) in "
                f"place of {current.version}, and mark {current.version} rolled back on {env}. Nothing was changed.")
