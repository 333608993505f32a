"""Manual locks: `/mlops lock` holds an environment for a person (no deploy, promotion or rollback starts
there) until it expires or is unlocked; unlock also frees an operation lock whose operation is gone."""
from __future__ import annotations

from datetime import timedelta

from bot.context import Context
from bot.releases import messages
from bot.releases.operations import Lock, Operations
from bot.releases.records import Records, ReleaseError
from bot.releases.systems import Systems
from bot.store import iso


class ManualLocks:
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, operations: Operations):
        self.ctx = ctx
        self.records = records
        self.systems = systems
        self.ops = operations

    def lock(self, model: str, env: str, actor: str, reason: str) -> str:
        self._check_env(model, env)
        now = self.ctx.clock()
        with self.ctx.store.transaction() as conn:
            self.ops.check_free(model, env)
            conn.execute("INSERT OR REPLACE INTO locks (model, env, holder, reason, kind, expires_at, created_at) "
                         "VALUES (?, ?, ?, ?, 'manual', ?, ?)",
                         (model, env, actor, reason, iso(now + self._ttl()), iso(now)))
            self.ctx.audit(actor=actor, verb="lock", status="succeeded", model=model, env=env, detail={"reason": reason})
        return f":lock: {model} {env} is locked by <@{actor}>: {reason}. `/mlops unlock {model} {env}` releases it."

    def plan_lock(self, model: str, env: str, actor: str, reason: str) -> str:
        self._check_env(model, env)
        self.ops.check_free(model, env)
        until = self.ctx.clock() + self._ttl()
        return (f"*Dry run*: `/mlops lock` would lock {model} {env} for <@{actor}> ({reason}) until {messages.when(until)}: "
                "no deploy, promotion or rollback could start there until then. Nothing was changed.")

    def unlock(self, model: str, env: str, actor: str) -> str:
        self._check_env(model, env)
        row = next(iter(self.records.rows("SELECT * FROM locks WHERE model = ? AND env = ?", model, env)), None)
        if row and row["kind"] == "operation" and row["operation_id"] not in self.ops.running:
            self.ops.lock_of(model, env)  # frees it, with its audit row
            self.ctx.audit(actor=actor, verb="unlock", status="succeeded", model=model, env=env,
                           detail={"was": row["reason"], "holder": row["holder"], "operation": "gone"})
            return (f":unlock: {model} {env} unlocked: freed the lock <@{row['holder']}> held for `{row['reason']}`, "
                    "whose operation is no longer running.")
        held = self._held_manual(model, env)
        with self.ctx.store.transaction() as conn:
            conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'manual'", (model, env))
            self.ctx.audit(actor=actor, verb="unlock", status="succeeded", model=model, env=env,
                           detail={"was": held.reason, "holder": held.holder})
        return f":unlock: {model} {env} unlocked (was locked by <@{held.holder}>: {held.reason})."

    def plan_unlock(self, model: str, env: str, actor: str) -> str:
        held = self._held_manual(model, env)
        return (f"*Dry run*: `/mlops unlock` would free {model} {env}, locked by <@{held.holder}> ({held.reason}) until "
                f"{messages.when(held.expires_at)}. Nothing was changed.")

    def _held_manual(self, model: str, env: str) -> Lock:
        self._check_env(model, env)
        held = self.ops.lock_of(model, env)
        if held is None:
            raise ReleaseError(f"{model} {env} is not locked")
        if held.kind != "manual":
            raise ReleaseError(f"{model} {env} is held by an operation that is running now (<@{held.holder}>: {held.reason}); "
                               "its lock is freed the moment it ends")
        return held

    def _check_env(self, model: str, env: str) -> None:
        cfg = self.systems.model_config(model)
        if env not in cfg.environments:
            raise ReleaseError(f"{model} has no environment `{env}`; environments: {', '.join(cfg.environments)}")

    def _ttl(self) -> timedelta:
        return timedelta(hours=self.ctx.config.deploy.lock_ttl_hours)
