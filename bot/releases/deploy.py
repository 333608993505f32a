"""Deploy to staging and verify: copy a version's files, load it on the staging fleet, check what it answers.

A deploy is one operation on staging; the verify that follows it is another, so a verify can also be run
again by itself (`/mlops verify`), on staging or on what prod serves.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from bot.releases import messages
from bot.releases.flow import Flow
from bot.releases.model import Event, Release, State, sources
from bot.releases.policy import short
from bot.releases.records import ReleaseError, release_of
from bot.releases.systems import EXPECTED, failure_text
from bot.releases.verify import verify
from bot.serving.triton import deploy_files
from bot.store import iso

log = logging.getLogger(__name__)


class Deploys(Flow):
    async def resolve_version(self, model: str, version: str | None) -> str:
        registry = self.systems.registry(model)
        try:
            if version in (None, "latest"):
                return (await registry.latest(model)).version
            return (await registry.get(model, version)).version
        except EXPECTED as exc:
            raise ReleaseError(str(exc)) from None

    async def _checked_version(self, model: str, version: str | None, actor: str, channel: str | None) -> tuple[str, str]:
        """The version to deploy and its digest, validated before any environment is touched."""
        self.systems.model_config(model)
        try:
            version = await self.resolve_version(model, version)
        except ReleaseError as exc:  # refused before anything started, and audited as any deploy that fails is
            self.ctx.audit(actor=actor, verb="deploy", status="failed", channel=channel, model=model, env="staging",
                           version=version, detail={"error": str(exc)})
            raise
        registry = self.systems.registry(model)
        try:
            await registry.validate(model, version)
            return version, await registry.digest(model, version)
        except EXPECTED as exc:
            self.ctx.audit(actor=actor, verb="deploy", status="failed", channel=channel, model=model, env="staging",
                           version=version, detail={"error": str(exc)})
            raise ReleaseError(str(exc)) from None

    async def deploy(self, model: str, version: str | None, actor: str, channel: str, *, note: str = "",
                     started: Callable[[Release], None] | None = None) -> Release:
        """Copy a version to staging, load it on the staging fleet, then verify it; all on one card. `note` goes on
        the first rendering of the card; `started` is called with the new release inside the transaction that
        records it (the train notes which release took a registry version)."""
        version, digest = await self._checked_version(model, version, actor, channel)

        def insert() -> Release:
            now = iso(self.ctx.clock())
            release_id = self.ctx.store.conn.execute(
                "INSERT INTO releases (model, version, digest, state, deployed_by, deployed_at, channel, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (model, version, digest, State.DEPLOYING.value, actor, now, channel, now),
            ).lastrowid
            release = self.records.get(release_id)
            if started is not None:
                started(release)
            return release

        async with self.ops.operation("deploy", model, "staging", actor, f"deploying {version}", start=insert,
                                      detail={"digest": digest}, channel=channel) as release:
            first = f"Deploying to staging for <@{actor}>…" + (f"\n{note}" if note else "")
            await self.delivery.card(release, "staging", note=first)
            release = await self._deploy_staging(release, actor)
        await self.delivery.thread(release, f":package: {model} {version} is serving on staging. Verifying…")
        return await self.verify_release(release, actor, env="staging")

    async def _deploy_staging(self, release: Release, actor: str) -> Release:
        model, version = release.model, release.version

        async def progress(event: str, done: int, total: int, where: str) -> None:
            if event == "copying":
                await self.delivery.thread(release, f"Copying {total} files to {where}")
            elif event in ("ready", "failed"):
                done_or_failed = "Loaded" if event == "ready" else "Failed on"
                await self.delivery.thread(release, f"{done_or_failed} endpoint {done}/{total}: {where}")

        try:
            repo = self.systems.repository(model, "staging")
            config_json = await deploy_files(self.systems.registry(model), model, version, repo, release.triton_version,
                                             on_progress=progress)
            async with self.systems.fleet(model, "staging") as fleet:
                await fleet.load(model, release.triton_version, config_json, on_progress=progress)
        except Exception as exc:  # noqa: BLE001 - whatever failed, staging goes back to what the bot records
            if not isinstance(exc, EXPECTED):
                log.error("deploy of release %s failed unexpectedly", release.id, exc_info=True)
            restored = await self.restorer.restore(model, "staging")
            with self.ctx.store.transaction():
                release = self.records.cas(release, Event.DEPLOY_FAILED, "staging")
                self.ctx.audit(actor=actor, verb="deploy", status="failed", channel=release.channel, model=model, env="staging",
                               version=version, detail={"release": release.id, "error": failure_text(exc), "restored": restored})
            await self.delivery.card(release, "staging", note=f":x: Deploy failed: {failure_text(exc)}\n{restored} "
                                                              "Fix what is named above and deploy again.")
            await self.delivery.failed(release, f"deploy failed: {failure_text(exc)}")
            raise ReleaseError(f"deploy of {model} {version} to staging failed: {failure_text(exc)}") from None
        supersedable = [s.value for s in sources("staging", Event.SUPERSEDE) if s]
        superseded = [release_of(r) for r in self.records.rows(
            f"SELECT * FROM releases WHERE model = ? AND id != ? AND state IN ({', '.join('?' * len(supersedable))})",
            model, release.id, *supersedable)]
        with self.ctx.store.transaction():
            for old in superseded:
                self.records.cas(old, Event.SUPERSEDE, "staging")
            release = self.records.cas(release, Event.DEPLOYED, "staging")
            self.records.set_env(release, "staging", actor=actor)
            self.ctx.audit(actor=actor, verb="deploy", status="succeeded", channel=release.channel, model=model, env="staging",
                           version=version, detail={"release": release.id, "superseded": [r.id for r in superseded]})
        for old in superseded:  # their buttons go; a press on a copy not yet refreshed is still refused
            await self.delivery.card(old, "staging", note=f"Superseded on staging by {version}, deployed by <@{actor}>.")
        return release

    async def plan_deploy(self, model: str, version: str | None, actor: str) -> str:
        """What `deploy` would do, changing nothing."""
        cfg = self.systems.model_config(model)
        version = await self.resolve_version(model, version)
        registry = self.systems.registry(model)
        try:
            await registry.validate(model, version)
            digest = await registry.digest(model, version)
            files = await registry.files(model, version)
            size = sum([await registry.store.size(registry.key(model, version, f)) for f in files])
        except EXPECTED as exc:
            raise ReleaseError(str(exc)) from None
        self.ops.check_free(model, "staging")
        current = self.records.serving(model, "staging")
        endpoints = cfg.environments["staging"].endpoints
        return (f"*Dry run*: `/mlops deploy {model} {version}` would copy {len(files)} files ({messages.size(size)}) of "
                f"{model} {version} (digest `{short(digest)}`) to {cfg.environments['staging'].repository}, load it on "
                f"{len(endpoints)} staging endpoint(s) ({', '.join(endpoints)}) in place of "
                f"{current.version if current else 'nothing'}, then verify it. Nothing was changed.")

    # -- verify -----------------------------------------------------------------------------------

    async def check(self, release: Release, env: str) -> tuple[bool, str | None, dict[str, Any]]:
        """Run verify against `env`'s fleet: (passed, reason, the report as stored and shown). Whatever it
        raises is a failed check named on the card, never a release stuck verifying."""
        cfg = self.systems.model_config(release.model)
        registry = self.systems.registry(release.model)
        try:
            spec = await registry.verify_spec(release.model, release.version)
        except EXPECTED as exc:
            spec = None
            log.warning("no usable verify.json for %s %s: %s", release.model, release.version, exc)
        prod = self.records.environment(release.model, "prod")
        baseline = None
        if env == "staging" and prod and prod["triton_version"] and "prod" in cfg.environments:
            baseline = (self.systems.fleet(release.model, "prod"), prod["triton_version"])
        try:
            async with self.systems.fleet(release.model, env) as fleet:
                report = await verify(fleet, release.model, release.triton_version, spec, requests=cfg.verify_requests,
                                      slo_p99_ms=cfg.slo_p99_ms, baseline=baseline)
            shown = {**report.model_dump(mode="json"), "reason": report.reason}
        except Exception as exc:  # noqa: BLE001 - a verify that cannot finish is a failed verify
            log.error("verify of release %s raised", release.id, exc_info=True)
            reason = f"verify could not finish: {failure_text(exc)}"
            shown = {"passed": False, "reason": reason,
                     "checks": [{"name": "verify", "passed": False, "detail": failure_text(exc)}]}
        finally:
            if baseline:
                await baseline[0].close()
        try:
            shown["registry_digest"] = await registry.digest(release.model, release.version)
        except EXPECTED:
            shown["registry_digest"] = None
        return bool(shown["passed"]), shown["reason"], shown

    async def verify_release(self, release: Release, actor: str, *, env: str = "staging") -> Release:
        def start() -> Release:
            return self.records.cas(self.records.get(release.id), Event.VERIFY, env, verified_at=None)

        async with self.ops.operation("verify", release.model, env, actor, f"verifying {release.version}",
                                      start=start) as release:
            await self.delivery.card(release, env)
            passed, reason, report = await self.check(release, env)
            with self.ctx.store.transaction():
                outcome = Event.PASSED if passed else Event.FAILED
                release = self.records.cas(release, outcome, env, verify_report=json.dumps(report),
                                           verified_at=iso(self.ctx.clock()) if passed else None)
                self.ctx.audit(actor=actor, verb="verify", status="passed" if passed else "failed", channel=release.channel,
                               model=release.model, env=env, version=release.version,
                               detail={"release": release.id, "state": release.state.value,
                                       **({"reason": reason} if reason else {})})
        blocker = self.delivery.blocker(release, report)
        # The thread note first: once the card shows the outcome, its thread is complete.
        await self.delivery.thread(release, (
            f":white_check_mark: Verified, but it cannot be unblocked: {blocker}." if passed and blocker
            else ":white_check_mark: Verified: ready to unblock for prod." if passed
            else f":x: Verification failed: {reason}. Roll back staging or deploy a fixed version."))
        await self.delivery.card(release, env, report=report)
        if not passed and env == "staging":
            await self.delivery.failed(release, f"verification failed: {reason}")
        return release

    async def verify_live(self, release: Release, actor: str) -> Release:
        """Check what prod serves now; the release stays live either way, the report says what to do."""
        async with self.ops.operation("verify", release.model, "prod", actor, f"verifying {release.version}",
                                      detail={"release": release.id}, channel=release.channel):
            passed, reason, report = await self.check(release, "prod")
            with self.ctx.store.transaction() as conn:
                conn.execute("UPDATE releases SET verify_report = ? WHERE id = ?", (json.dumps(report), release.id))
                self.ctx.audit(actor=actor, verb="verify", status="passed" if passed else "failed", channel=release.channel,
                               model=release.model, env="prod", version=release.version, detail={"reason": reason})
        await self.delivery.thread(release, (
            f":white_check_mark: Prod re-verified by <@{actor}>: {release.model} {release.version} is healthy." if passed
            else f":x: Prod verification of {release.version} failed: {reason}. "
                 f"Consider `/mlops rollback {release.model} prod`."))
        await self.delivery.card(release, "prod", report=report)
        return release

    async def verify_env(self, model: str, env: str, actor: str) -> Release:
        release = self.records.serving(model, env)
        if release is None:
            raise ReleaseError(f"nothing is deployed to {model} {env} yet; `/mlops deploy {model}` first")
        if env == "prod":
            return await self.verify_live(release, actor)
        return await self.verify_release(release, actor, env=env)
