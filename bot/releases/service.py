"""The release train: deploy to staging, verify, unblock prod, reject, roll back; locks and reconciliation.

Every state change is a compare-and-set in SQLite taken together with the (model, env) lock and its audit
row, so a double click, a Slack retry or two people pressing the same button run the work exactly once.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.notifier import Message, SlackError
from bot.releases import messages
from bot.releases.model import BUSY, Event, Release, State, next_state, sources
from bot.releases.policy import may_promote
from bot.releases.verify import verify
from bot.serving.artifacts import ArtifactError, open_store
from bot.serving.registry import Registry, RegistryError, triton_config_json
from bot.serving.triton import Fleet, FleetError, deploy_files
from bot.store import iso

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


class ReleaseError(Exception):
    """A refusal or failure a person can act on; the message says what and what to do next."""


@dataclass(frozen=True)
class Lock:
    holder: str
    reason: str
    kind: str
    expires_at: datetime


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _release(row: dict[str, Any]) -> Release:
    return Release(
        id=row["id"], model=row["model"], version=row["version"], digest=row["digest"], state=State(row["state"]),
        deployed_by=row["deployed_by"], deployed_at=_dt(row["deployed_at"]), verified_at=_dt(row["verified_at"]),
        approved_by=row["approved_by"], approved_at=_dt(row["approved_at"]), channel=row["channel"], card_ts=row["card_ts"],
    )


class ReleaseService:
    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.config = runtime.config
        self.store = runtime.store

    # -- lookups ----------------------------------------------------------------------------------

    def model_config(self, model: str):
        try:
            return self.config.models[model]
        except KeyError:
            known = ", ".join(sorted(self.config.models)) or "none configured"
            raise ReleaseError(f"unknown model `{model}`; known models: {known}") from None

    def registry(self, model: str) -> Registry:
        return Registry(open_store(self.model_config(model).registry, s3_endpoint_url=self.config.s3.endpoint_url))

    def fleet(self, model: str, env: str) -> Fleet:
        environment = self.model_config(model).environments[env]
        return Fleet(list(environment.endpoints), concurrency=self.config.deploy.endpoint_concurrency,
                     timeout=self.config.deploy.load_timeout_s)

    def get(self, release_id: int) -> Release:
        rows = self._rows("SELECT * FROM releases WHERE id = ?", release_id)
        if not rows:
            raise ReleaseError(f"release {release_id} does not exist")
        return _release(rows[0])

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return self.store.query(sql, params)

    def environment(self, model: str, env: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM environments WHERE model = ? AND env = ?", model, env)
        return rows[0] if rows else None

    def lock_of(self, model: str, env: str) -> Lock | None:
        rows = self._rows("SELECT * FROM locks WHERE model = ? AND env = ?", model, env)
        if not rows or _dt(rows[0]["expires_at"]) <= self.rt.clock():
            return None
        r = rows[0]
        return Lock(r["holder"], r["reason"], r["kind"], _dt(r["expires_at"]))

    # -- state changes: compare-and-set + lock + audit in one transaction -----------------------

    def _transition(self, release: Release, event: Event, actor: str, *, env: str, take_lock: bool = False,
                    release_lock: bool = False, audit_status: str = "started", error: str | None = None,
                    **fields: Any) -> Release:
        now = self.rt.clock()
        new = next_state(release.state, event)
        with self.store.transaction() as conn:
            if take_lock:
                self._take_lock(release.model, env, actor, f"{event.value} {release.version}", "operation", now)
            allowed = [s.value for s in sources(event)]
            sets = ", ".join(f"{k} = ?" for k in ("state", "updated_at", *fields))
            cursor = conn.execute(
                f"UPDATE releases SET {sets} WHERE id = ? AND state IN ({', '.join('?' * len(allowed))})",
                (new.value, iso(now), *fields.values(), release.id, *allowed),
            )
            if cursor.rowcount != 1:
                raise ReleaseError(self._why_not(release.id, event))
            if release_lock:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (release.model, env))
            self.rt.audit(actor=actor, verb=_VERBS[event], status=audit_status, channel=release.channel,
                          model=release.model, env=env, version=release.version,
                          detail={"release": release.id, "state": new.value, **({"error": error} if error else {})})
        return self.get(release.id)

    def _take_lock(self, model: str, env: str, actor: str, reason: str, kind: str, now: datetime) -> None:
        held = self.lock_of(model, env)
        if held is not None and held.kind == "operation":
            raise ReleaseError(f"already in progress on {model} {env}: <@{held.holder}> started `{held.reason}`")
        if held is not None:
            raise ReleaseError(f"{model} {env} is locked by <@{held.holder}> ({held.reason}) until {messages.when(held.expires_at)}")
        expires = now + timedelta(hours=self.config.deploy.lock_ttl_hours)
        self.store.conn.execute(
            "INSERT OR REPLACE INTO locks (model, env, holder, reason, kind, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, env, actor, reason, kind, iso(expires), iso(now)),
        )

    def _why_not(self, release_id: int, event: Event) -> str:
        current = self.get(release_id)
        if current.state in BUSY:
            return f"{current.model} {current.version} is already {current.state.value}: started by <@{self._last_actor(current)}>"
        if current.state is State.LIVE:
            return f"{current.model} {current.version} is already live in prod, unblocked by <@{current.approved_by}>"
        if current.state is State.SUPERSEDED:
            newer = self._rows("SELECT version FROM releases WHERE model = ? AND id > ? ORDER BY id DESC LIMIT 1", current.model, current.id)
            return f"this card is out of date: {current.model} {current.version} was superseded by {newer[0]['version'] if newer else 'a newer version'}"
        return f"cannot {event.value.replace('_', ' ')} {current.model} {current.version}: it is {current.state.value.replace('_', ' ')}"

    def _last_actor(self, release: Release) -> str:
        rows = self._rows("SELECT actor FROM actions WHERE model = ? AND version = ? AND status = 'started' ORDER BY id DESC LIMIT 1",
                          release.model, release.version)
        return rows[0]["actor"] if rows else "someone"

    def _set_env(self, release: Release, env: str, *, approved_by: str | None = None) -> None:
        current = self.environment(release.model, env)
        previous = current if current and current["version"] != release.version else None
        self.store.conn.execute(
            "INSERT OR REPLACE INTO environments (model, env, version, triton_version, release_id, previous_version, "
            "previous_triton_version, deployed_by, approved_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (release.model, env, release.version, release.triton_version, release.id,
             previous["version"] if previous else (current or {}).get("previous_version"),
             previous["triton_version"] if previous else (current or {}).get("previous_triton_version"),
             release.deployed_by, approved_by, iso(self.rt.clock())),
        )

    # -- Slack side -------------------------------------------------------------------------------

    # Slack shows a release; the store holds it. So a card that cannot be edited or a note that cannot be posted
    # is logged and audited, and the release goes on: a promotion never stops half-way because someone deleted its card.

    def _card_ts(self, release: Release) -> str | None:
        """Where the card is now: an earlier edit may have posted it again."""
        row = self.store.conn.execute("SELECT card_ts FROM releases WHERE id = ?", (release.id,)).fetchone()
        return row[0] if release.channel and row else None

    async def _card(self, release: Release, env: str, *, report: dict | None = None, note: str = "") -> None:
        ts = self._card_ts(release)
        if ts is None:
            return
        card = messages.card(release, env=env, verify_report=report, note=note)
        try:
            shown = await self.rt.notifier.edit_or_repost(release.channel, ts, card)
        except SlackError as exc:
            self._unshown(release, "card", exc)
            return
        if shown != ts:
            self.store.conn.execute("UPDATE releases SET card_ts = ? WHERE id = ?", (shown, release.id))

    async def _thread(self, release: Release, text: str) -> None:
        ts = self._card_ts(release)
        if ts is None:
            return
        try:
            await self.rt.notifier.reply(release.channel, ts, messages.note(text))
        except SlackError as exc:
            self._unshown(release, "note", exc)

    def _unshown(self, release: Release, what: str, exc: SlackError) -> None:
        log.warning("could not show the %s of release %s", what, release.id, exc_info=True)
        self.rt.audit(actor="bot", verb=f"release.{what}", status="unshown", channel=release.channel, model=release.model,
                      version=release.version, detail={"release": release.id, "error": exc.error})

    def _report(self, release: Release) -> dict | None:
        row = self.store.conn.execute("SELECT verify_report FROM releases WHERE id = ?", (release.id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    # -- deploy -----------------------------------------------------------------------------------

    async def resolve_version(self, model: str, version: str | None) -> str:
        registry = self.registry(model)
        try:
            if version in (None, "latest"):
                return (await registry.latest(model)).version
            return (await registry.get(model, version)).version
        except (RegistryError, ArtifactError) as exc:
            raise ReleaseError(str(exc)) from None

    async def deploy(self, model: str, version: str | None, actor: str, channel: str) -> Release:
        """Copy a version to staging, load it on the staging fleet, then verify it; all on one card."""
        self.model_config(model)
        version = await self.resolve_version(model, version)
        registry = self.registry(model)
        try:
            await registry.validate(model, version)  # fail before the environment is touched
            digest = await registry.digest(model, version)
        except (RegistryError, ArtifactError) as exc:
            self.rt.audit(actor=actor, verb="deploy", status="failed", channel=channel, model=model, env="staging",
                          version=version, detail={"error": str(exc)})
            raise ReleaseError(str(exc)) from None
        now = self.rt.clock()
        with self.store.transaction() as conn:
            self._take_lock(model, "staging", actor, f"deploying {version}", "operation", now)
            release_id = conn.execute(
                "INSERT INTO releases (model, version, digest, state, deployed_by, deployed_at, channel, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model, version, digest, State.DEPLOYING.value, actor, iso(now), channel, iso(now)),
            ).lastrowid
            self.rt.audit(actor=actor, verb="deploy", status="started", channel=channel, model=model, env="staging",
                          version=version, detail={"release": release_id, "digest": digest})
        release = self.get(release_id)
        ts = await self.rt.notifier.post(channel, messages.card(release, env="staging", note=f"Deploying to staging for <@{actor}>…"))
        self.store.conn.execute("UPDATE releases SET card_ts = ? WHERE id = ?", (ts, release_id))
        release = self.get(release_id)

        async def progress(event: str, done: int, total: int, where: str) -> None:
            if event == "copying":
                await self._thread(release, f"Copying {total} files to {where}")
            elif event in ("ready", "failed"):
                await self._thread(release, f"{'Loaded' if event == 'ready' else 'Failed on'} endpoint {done}/{total}: {where}")

        environment = self.model_config(model).environments["staging"]
        try:
            repo = open_store(environment.repository, s3_endpoint_url=self.config.s3.endpoint_url)
            config_json = await deploy_files(registry, model, version, repo, release.triton_version, on_progress=progress)
            async with self.fleet(model, "staging") as fleet:
                await fleet.load(model, release.triton_version, config_json, on_progress=progress)
        except (RegistryError, ArtifactError, FleetError) as exc:
            release = self._transition(release, Event.DEPLOY_FAILED, actor, env="staging", release_lock=True, audit_status="failed",
                                       error=str(exc))
            await self._card(release, "staging", note=f":x: Deploy failed: {exc}\nNothing was switched over: staging keeps what it "
                             "served wherever it is still up. Fix what is named above and deploy again.")
            raise ReleaseError(f"deploy of {model} {version} to staging failed: {exc}") from None
        superseded = [r["id"] for r in self._rows("SELECT id FROM releases WHERE model = ? AND id != ? AND state IN (?, ?, ?)",
                                                    model, release.id, State.STAGED.value, State.VERIFIED.value, State.VERIFY_FAILED.value)]
        with self.store.transaction() as conn:
            for old in superseded:
                conn.execute("UPDATE releases SET state = ? WHERE id = ?", (State.SUPERSEDED.value, old))
            release = self._transition(release, Event.DEPLOYED, actor, env="staging", release_lock=True, audit_status="succeeded")
            self._set_env(release, "staging")
        for old in superseded:  # their buttons go; a press on a copy not yet refreshed is still refused
            await self._card(self.get(old), "staging", note=f"Superseded on staging by {version}, deployed by <@{actor}>.")
        await self._thread(release, f":package: {model} {version} is serving on staging. Verifying…")
        return await self.verify_release(release, actor, env="staging")

    # -- verify -----------------------------------------------------------------------------------

    async def _check(self, release: Release, env: str) -> tuple[bool, str | None, dict[str, Any]]:
        """Run verify against `env`'s fleet: (passed, reason, the report as stored and shown)."""
        cfg = self.model_config(release.model)
        try:
            spec = await self.registry(release.model).verify_spec(release.model, release.version)
        except (RegistryError, ArtifactError) as exc:
            spec = None
            log.warning("no usable verify.json for %s %s: %s", release.model, release.version, exc)
        prod = self.environment(release.model, "prod")
        baseline = None
        if env == "staging" and prod and prod["triton_version"] and "prod" in cfg.environments:
            baseline = (self.fleet(release.model, "prod"), prod["triton_version"])
        async with self.fleet(release.model, env) as fleet:
            report = await verify(fleet, release.model, release.triton_version, spec, requests=cfg.verify_requests,
                                  slo_p99_ms=cfg.slo_p99_ms, baseline=baseline)
        if baseline:
            await baseline[0].close()
        return report.passed, report.reason, {**report.model_dump(mode="json"), "reason": report.reason}

    async def verify_release(self, release: Release, actor: str, *, env: str = "staging") -> Release:
        release = self._transition(release, Event.VERIFY, actor, env=env, take_lock=True)
        await self._card(release, env)
        passed, reason, report = await self._check(release, env)
        event = Event.PASSED if passed else Event.FAILED
        release = self._transition(release, event, actor, env=env, release_lock=True,
                                   audit_status="passed" if passed else "failed",
                                   verify_report=json.dumps(report), verified_at=iso(self.rt.clock()) if passed else None)
        # The thread note first: once the card shows the outcome, its thread is complete.
        await self._thread(release, (":white_check_mark: Verified: ready to unblock for prod." if passed
                                     else f":x: Verification failed: {reason}. Roll back staging or deploy a fixed version."))
        await self._card(release, env, report=report)
        return release

    async def verify_live(self, release: Release, actor: str) -> Release:
        """Check what prod serves now; the release stays live either way, the report says what to do."""
        with self.store.transaction():
            self._take_lock(release.model, "prod", actor, f"verify {release.version}", "operation", self.rt.clock())
            self.rt.audit(actor=actor, verb="verify", status="started", channel=release.channel, model=release.model,
                          env="prod", version=release.version, detail={"release": release.id})
        try:
            passed, reason, report = await self._check(release, "prod")
        finally:
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = 'prod' AND kind = 'operation'", (release.model,))
        with self.store.transaction() as conn:
            conn.execute("UPDATE releases SET verify_report = ? WHERE id = ?", (json.dumps(report), release.id))
            self.rt.audit(actor=actor, verb="verify", status="passed" if passed else "failed", channel=release.channel,
                          model=release.model, env="prod", version=release.version, detail={"reason": reason})
        await self._thread(release, (f":white_check_mark: Prod re-verified by <@{actor}>: {release.model} {release.version} is healthy."
                                     if passed else f":x: Prod verification of {release.version} failed: {reason}. "
                                     f"Consider `/mlops rollback {release.model} prod`."))
        await self._card(release, "prod", report=report)
        return release

    async def verify_env(self, model: str, env: str, actor: str) -> Release:
        current = self.environment(model, env)
        if current is None or current["release_id"] is None:
            raise ReleaseError(f"nothing is deployed to {model} {env} yet; `/mlops deploy {model}` first")
        release = self.get(current["release_id"])
        if env == "prod":
            return await self.verify_live(release, actor)
        return await self.verify_release(release, actor, env=env)

    # -- promote ----------------------------------------------------------------------------------

    async def check_promote(self, release: Release, actor: str, *, urgent: bool = False):
        cfg = self.model_config(release.model)
        try:
            digest = await self.registry(release.model).digest(release.model, release.version)
        except (RegistryError, ArtifactError) as exc:
            raise ReleaseError(f"cannot read {release.model} {release.version} from the registry: {exc}") from None
        return may_promote(release, actor=actor, is_approver=await self.rt.roles.has(actor, "approvers"),
                           staging_only=cfg.staging_only, current_digest=digest, policy=self.config.deploy,
                           now=self.rt.clock(), urgent=urgent)

    async def promote(self, release: Release, actor: str, *, urgent_reason: str | None = None) -> Release:
        """Copy to prod, load on every prod endpoint, verify prod; on failure put the previous version back."""
        release = self.get(release.id)
        if release.state is not State.VERIFIED:  # a duplicate press, or a card gone stale
            raise ReleaseError(self._why_not(release.id, Event.PROMOTE))
        decision = await self.check_promote(release, actor, urgent=urgent_reason is not None)
        if not decision.allowed:
            self.rt.audit(actor=actor, verb="promote", status="denied", channel=release.channel, model=release.model,
                          env="prod", version=release.version, detail={"reason": decision.reason})
            raise ReleaseError(decision.reason)
        release = self._transition(release, Event.PROMOTE, actor, env="prod", take_lock=True,
                                   approved_by=actor, approved_at=iso(self.rt.clock()))
        if urgent_reason:
            self.rt.audit(actor=actor, verb="promote.urgent", status="ok", channel=release.channel, model=release.model,
                          env="prod", version=release.version, detail={"reason": urgent_reason})
            await self._thread(release, f":rotating_light: Urgent unblock outside deploy hours by <@{actor}>: {urgent_reason}"
                               + self._oncall_mention())
        await self._card(release, "staging", note=f"Unblocked by <@{actor}>: deploying to prod…")
        previous = self.environment(release.model, "prod")
        registry = self.registry(release.model)
        environment = self.model_config(release.model).environments["prod"]
        try:
            repo = open_store(environment.repository, s3_endpoint_url=self.config.s3.endpoint_url)
            config_json = await deploy_files(registry, release.model, release.version, repo, release.triton_version)
            async with self.fleet(release.model, "prod") as fleet:
                await fleet.load(release.model, release.triton_version, config_json)
                spec = await registry.verify_spec(release.model, release.version)
                cfg = self.model_config(release.model)
                report = await verify(fleet, release.model, release.triton_version, spec,
                                      requests=cfg.verify_requests, slo_p99_ms=cfg.slo_p99_ms, baseline=None)
                failure = None if report.passed else report.reason
        except (RegistryError, ArtifactError, FleetError) as exc:
            failure = str(exc)
        if failure is None:
            with self.store.transaction() as conn:
                if previous and previous["release_id"]:
                    conn.execute("UPDATE releases SET state = ? WHERE id = ? AND state = ?",
                                 (State.SUPERSEDED.value, previous["release_id"], State.LIVE.value))
                release = self._transition(release, Event.PROMOTED, actor, env="prod", release_lock=True, audit_status="succeeded")
                self._set_env(release, "prod", approved_by=actor)
            await self._card(release, "prod", note=f":rocket: Live in prod, unblocked by <@{actor}>.")
            await self._thread(release, f":large_green_circle: {release.model} {release.version} is serving in prod on every endpoint.")
            return release
        restored = await self._restore_prod(release.model, previous)
        release = self._transition(release, Event.PROMOTE_FAILED, actor, env="prod", release_lock=True, audit_status="failed",
                                   error=failure)
        loud = (f":rotating_light: <!here> Production verification of *{release.model} {release.version}* failed: {failure}. "
                f"{restored}{self._oncall_mention()}")
        await self._card(release, "prod", note=loud)
        if release.channel:
            await self.rt.notifier.post(release.channel, messages.note(loud))
        raise ReleaseError(f"promotion failed: {failure}. {restored}")

    async def _restore_prod(self, model: str, previous: dict[str, Any] | None) -> str:
        """Put prod back as it was before a failed promotion on every endpoint that answers; say where it could not."""
        back = previous["version"] if previous and previous["triton_version"] else None
        try:
            config_json = await self._config_for(model, back, previous["triton_version"]) if back else ""
        except (RegistryError, ArtifactError) as exc:
            return f"Rolling back to {back} ALSO FAILED ({exc}); prod needs a person now."
        failed: dict[str, str] = {}
        async with self.fleet(model, "prod") as fleet:
            try:
                if back:
                    await fleet.load(model, previous["triton_version"], config_json)
                else:
                    await fleet.unload(model)
            except FleetError as exc:
                failed = exc.failures
        # An endpoint that is down serves nothing, so putting the others back is still worth doing and saying.
        done = [e for e in self.model_config(model).environments["prod"].endpoints if e not in failed]
        status = "partial" if failed and done else "failed" if failed else "succeeded"
        self.rt.audit(actor="mlops-bot", verb="rollback", status=status, model=model, env="prod", version=back,
                      detail={"automatic": True, "failed": failed})
        what = f"rolled prod back to {back}" if back else "unloaded the failed version (nothing served in prod before)"
        if not failed:
            return f"The bot {what} by itself."
        problems = "; ".join(f"{e}: {m}" for e, m in failed.items())
        if not done:
            return f"{f'Rolling back to {back}' if back else 'Unloading the failed version'} ALSO FAILED ({problems}); prod needs a person now."
        return f"The bot {what} on {', '.join(done)}; {', '.join(failed)} still needs a person ({problems})."

    async def _config_for(self, model: str, version: str, n: int) -> str:
        return triton_config_json(await self.registry(model).validate(model, version), model, n)

    def _oncall_mention(self) -> str:
        groups = [r.usergroup for r in self.config.oncall.rotations if r.usergroup]
        return f" <!subteam^{groups[0]}>" if groups else ""

    # -- reject and roll back -----------------------------------------------------------------------

    async def reject(self, release: Release, actor: str) -> Release:
        release = self._transition(release, Event.REJECT, actor, env="staging", audit_status="succeeded")
        await self._card(release, "staging", note=f"Rejected by <@{actor}>; it will not go to prod.")
        return release

    async def rollback(self, model: str, env: str, actor: str, *, to_version: str | None, reason: str,
                       card_release: int | None = None) -> str:
        """Serve the previous known-good version again (or `to_version`); returns what happened."""
        cfg = self.model_config(model)
        if env not in cfg.environments:
            raise ReleaseError(f"{model} has no {env} environment; environments: {', '.join(cfg.environments)}")
        current = self.environment(model, env)
        if current is None:
            raise ReleaseError(f"nothing is deployed to {model} {env}, so there is nothing to roll back")
        if card_release is not None and current["release_id"] != card_release:
            raise ReleaseError(f"this card is out of date: {model} {env} now serves {current['version']}")
        target_version = to_version or current["previous_version"]
        if not target_version:
            raise ReleaseError(f"{model} {env} has no earlier version to go back to; deploy one with `/mlops deploy {model} <version>`")
        rows = self._rows("SELECT * FROM releases WHERE model = ? AND version = ? AND state NOT IN (?, ?) ORDER BY id DESC LIMIT 1",
                          model, target_version, State.DEPLOY_FAILED.value, State.DEPLOYING.value)
        if not rows:
            raise ReleaseError(f"{model} {target_version} was never deployed here; versions deployed: "
                               + ", ".join(r["version"] for r in self._rows("SELECT DISTINCT version FROM releases WHERE model = ?", model)))
        target = _release(rows[0])
        now = self.rt.clock()
        with self.store.transaction():
            self._take_lock(model, env, actor, f"rolling back to {target_version}", "operation", now)
            self.rt.audit(actor=actor, verb="rollback", status="started", model=model, env=env, version=target_version,
                          detail={"from": current["version"], "reason": reason})
        try:
            config_json = await self._config_for(model, target.version, target.triton_version)
            repo = open_store(cfg.environments[env].repository, s3_endpoint_url=self.config.s3.endpoint_url)
            if not await repo.list(f"{model}/{target.triton_version}/"):  # pruned or never copied here
                await deploy_files(self.registry(model), model, target.version, repo, target.triton_version)
            async with self.fleet(model, env) as fleet:
                await fleet.load(model, target.triton_version, config_json)
        except (RegistryError, ArtifactError, FleetError) as exc:
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (model, env))
                self.rt.audit(actor=actor, verb="rollback", status="failed", model=model, env=env, version=target_version,
                              detail={"error": str(exc)})
            raise ReleaseError(f"rollback of {model} {env} to {target_version} failed: {exc}") from None
        with self.store.transaction() as conn:
            if current["release_id"]:
                rolled = self.get(current["release_id"])
                if rolled.state in sources(Event.ROLL_BACK):
                    conn.execute("UPDATE releases SET state = ?, updated_at = ? WHERE id = ?",
                                 (next_state(rolled.state, Event.ROLL_BACK).value, iso(now), rolled.id))
            if env == "prod":
                conn.execute("UPDATE releases SET state = ? WHERE id = ?", (State.LIVE.value, target.id))
            conn.execute(
                "UPDATE environments SET version = ?, triton_version = ?, release_id = ?, previous_version = ?, "
                "previous_triton_version = ?, updated_at = ? WHERE model = ? AND env = ?",
                (target.version, target.triton_version, target.id, current["version"], current["triton_version"], iso(now), model, env),
            )
            conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (model, env))
            self.rt.audit(actor=actor, verb="rollback", status="succeeded", model=model, env=env, version=target_version,
                          detail={"from": current["version"], "reason": reason})
        if current["release_id"]:
            rolled = self.get(current["release_id"])
            await self._card(rolled, env, note=f":rewind: Rolled back by <@{actor}> to {target_version}: {reason}")
        return f":rewind: {model} {env} is serving {target_version} again (was {current['version']}). Reason: {reason}"

    # -- manual locks -------------------------------------------------------------------------------

    def lock(self, model: str, env: str, actor: str, reason: str) -> str:
        self._check_env(model, env)
        now = self.rt.clock()
        with self.store.transaction():
            self._take_lock(model, env, actor, reason, "manual", now)
            self.rt.audit(actor=actor, verb="lock", status="succeeded", model=model, env=env, detail={"reason": reason})
        return f":lock: {model} {env} is locked by <@{actor}>: {reason}. `/mlops unlock {model} {env}` releases it."

    def unlock(self, model: str, env: str, actor: str) -> str:
        self._check_env(model, env)
        held = self.lock_of(model, env)
        if held is None:
            raise ReleaseError(f"{model} {env} is not locked")
        if held.kind != "manual":
            raise ReleaseError(f"{model} {env} is held by a running operation ({held.reason}); it releases itself when that ends")
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM locks WHERE model = ? AND env = ?", (model, env))
            self.rt.audit(actor=actor, verb="unlock", status="succeeded", model=model, env=env, detail={"was": held.reason, "holder": held.holder})
        return f":unlock: {model} {env} unlocked (was locked by <@{held.holder}>: {held.reason})."

    def _check_env(self, model: str, env: str) -> None:
        cfg = self.model_config(model)
        if env not in cfg.environments:
            raise ReleaseError(f"{model} has no environment `{env}`; environments: {', '.join(cfg.environments)}")

    # -- status -----------------------------------------------------------------------------------

    def status_rows(self, model: str | None = None) -> list[dict[str, Any]]:
        rows = []
        for name, cfg in sorted(self.config.models.items()):
            if model and name != model:
                continue
            for env in cfg.environments:
                current = self.environment(name, env) or {}
                release = self.get(current["release_id"]) if current.get("release_id") else None
                report = self._report(release) if release else None
                rows.append({
                    "model": name, "env": env, "version": current.get("version"),
                    "state": release.state.value if release else None,
                    "deployed_by": current.get("deployed_by"), "approved_by": current.get("approved_by"),
                    "updated_at": _dt(current.get("updated_at")),
                    "verify": ("passed" if report.get("passed") else f"failed: {report.get('reason')}") if report else None,
                })
        return rows

    # -- restart --------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Operations cut short by a crash or restart (run at start, before anything takes a lock): read what
        each endpoint serves, mark them interrupted, free their locks and tell the channel. A promotion cut
        short may have left prod serving an unverified version on some endpoints, so prod is put back on
        the last version it served, as after a failed promotion."""
        for row in self._rows("SELECT * FROM releases WHERE state IN (?, ?, ?)", *(s.value for s in BUSY)):
            release = _release(row)
            env = "prod" if release.state is State.PROMOTING else "staging"
            restored = ""
            if release.state is State.PROMOTING:
                restored = await self._restore_prod(release.model, self.environment(release.model, "prod")) + " "
            seen = await self._served(release.model, env)
            with self.store.transaction() as conn:
                conn.execute("UPDATE releases SET state = ?, updated_at = ? WHERE id = ?",
                             (State.INTERRUPTED.value, iso(self.rt.clock()), release.id))
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (release.model, env))
                self.rt.audit(actor="mlops-bot", verb="reconcile", status="interrupted", model=release.model, env=env,
                              version=release.version, detail={"was": release.state.value, "serving": seen})
            text = (f":warning: The bot restarted while {release.model} {release.version} was {row['state']} on {env}. "
                    f"Marked interrupted; lock released. {restored}Triton index: {seen}. Verify or deploy again.")
            await self._tell_after_restart(release.channel or self.config.channels.main, text, self.get(release.id), env)
        # What is left is an operation that moves no release through a running state (a rollback): only its lock.
        for lock in self._rows("SELECT * FROM locks WHERE kind = 'operation'"):
            seen = await self._served(lock["model"], lock["env"])
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ?", (lock["model"], lock["env"]))
                self.rt.audit(actor="mlops-bot", verb="reconcile", status="interrupted", model=lock["model"], env=lock["env"],
                              detail={"was": lock["reason"], "holder": lock["holder"], "serving": seen})
            text = (f":warning: The bot restarted while <@{lock['holder']}> was {lock['reason']} on {lock['model']} {lock['env']}. "
                    f"Lock released. Triton index: {seen}. Check `/mlops status {lock['model']}` and run it again if needed.")
            await self._tell_after_restart(self.config.channels.main, text)

    async def _served(self, model: str, env: str) -> str:
        """The Triton versions READY on each endpoint of (model, env), as one line for people."""
        cfg = self.config.models.get(model)
        if cfg is None or env not in cfg.environments:
            return "not in the config any more"
        try:
            async with self.fleet(model, env) as fleet:
                serving = await fleet.ready_versions(model)
        except FleetError as exc:
            return f"endpoints not reachable ({exc})"
        return ", ".join(f"{e}: {v or 'nothing'}" for e, v in serving.items())

    async def _tell_after_restart(self, channel: str, text: str, release: Release | None = None, env: str = "") -> None:
        # The store is already reconciled; a Slack hiccup (or a deleted card) must not stop the bot from starting.
        try:
            if release is not None:
                await self._card(release, env, note=text)
        except SlackError as exc:
            log.warning("could not update the card of release %s: %s", release.id if release else None, exc)
        try:
            await self.rt.notifier.post(channel, Message(text))
        except SlackError as exc:
            log.warning("could not tell %s after a restart: %s", channel, exc)

_VERBS = {
    Event.DEPLOYED: "deploy", Event.DEPLOY_FAILED: "deploy", Event.VERIFY: "verify", Event.PASSED: "verify",
    Event.FAILED: "verify", Event.PROMOTE: "promote", Event.PROMOTED: "promote", Event.PROMOTE_FAILED: "promote",
    Event.REJECT: "reject", Event.ROLL_BACK: "rollback", Event.SUPERSEDE: "deploy", Event.INTERRUPT: "reconcile",
}
