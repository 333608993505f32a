"""What `/mlops status` and the digests show of each (model, env): the record, its standing and lock, and
where the endpoints serve something else (drift)."""
from __future__ import annotations

from typing import Any

from bot.context import Context
from bot.releases.operations import Operations
from bot.releases.records import Records, parse_dt
from bot.releases.served import Snapshot
from bot.releases.systems import Systems

STATUS_TIMEOUT_S = 5  # a status answer waits this long at most for an endpoint to say what it serves


class Status:
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, operations: Operations):
        self.ctx = ctx
        self.records = records
        self.systems = systems
        self.ops = operations

    async def status_rows(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every (model, env): what the bot records, its standing, the lock, and what the endpoints serve when
        that differs from the record."""
        rows = []
        served = Snapshot(self.systems, timeout=STATUS_TIMEOUT_S)  # each endpoint asked once for all its models
        for name, cfg in sorted(self.ctx.config.models.items()):
            if model and name != model:
                continue
            for env in cfg.environments:
                current = self.records.environment(name, env) or {}
                release = self.records.get(current["release_id"]) if current.get("release_id") else None
                report = self.records.report(release) if release else None
                lock = self.ops.lock_of(name, env)
                rows.append({
                    "model": name, "env": env, "version": current.get("version"),
                    "state": release.standing(env).words if release and release.standing(env) else None,
                    "deployed_by": current.get("deployed_by"), "approved_by": current.get("approved_by"),
                    "updated_at": parse_dt(current.get("updated_at")),
                    "verify": ("passed" if report.get("passed") else f"failed: {report.get('reason')}") if report else None,
                    "lock": lock, "drift": await self._drift(name, env, current.get("triton_version"), served),
                    "waiting": [r["version"] for r in self.records.queued(name)] if env == "staging" else [],
                })
        return rows

    async def _drift(self, model: str, env: str, recorded: int | None, snapshot: Snapshot) -> list[str]:
        """Where the endpoints serve something other than the record, as lines for people."""
        if self.ops.running and self.ops.lock_of(model, env):  # mid-operation the difference is the operation itself
            return []
        lines = []
        for endpoint, versions in (await snapshot.served(model, env)).items():
            if isinstance(versions, str):
                lines.append(f"{endpoint}: {versions}")  # what the fleet says: "unreachable (connection refused)", …
            elif versions != ([recorded] if recorded else []):
                serves = ", ".join(f"v{n}" for n in versions) or "nothing"
                lines.append(f"recorded v{recorded or '—'}, {endpoint} serves {serves}")
        return lines
