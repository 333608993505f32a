"""At start: what a crash or a stop cut short is ended, and every environment it touched put back on its record."""
from __future__ import annotations

import json

from bot.context import Context
from bot.releases.delivery import Delivery
from bot.releases.model import BUSY, Event, Release
from bot.releases.records import Records
from bot.releases.restore import Restorer
from bot.releases.systems import Systems, describe_served
from bot.store import iso


class Reconciler:
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, delivery: Delivery, restorer: Restorer):
        self.ctx = ctx
        self.records = records
        self.systems = systems
        self.delivery = delivery
        self.restorer = restorer

    async def reconcile(self) -> None:
        """Operations cut short by a crash or a stop (run at start, before anything takes a lock): each
        release left running is marked interrupted, each lock freed, and every environment they touched is
        put back on the version the bot records once the loads in flight have finished, so what the
        endpoints serve is what the bot says. The channel is told what each endpoint serves afterwards."""
        touched: dict[tuple[str, str], dict[str, int | None]] = {}  # what was going on, and its release
        for op in self.records.rows("SELECT * FROM operations WHERE state IN ('running', 'interrupted') ORDER BY id"):
            doing = json.loads(op["detail"]).get("reason") or op["kind"]
            touched.setdefault((op["model"], op["env"]), {})[f"<@{op['actor']}> was {doing}"] = op["release_id"]
            with self.ctx.store.transaction() as conn:
                if op["release_id"]:
                    self._interrupt(self.records.get(op["release_id"]), op["env"])
                conn.execute("UPDATE operations SET state = 'reconciled', ended_at = coalesce(ended_at, ?) WHERE id = ?",
                             (iso(self.ctx.clock()), op["id"]))
        for lock in self.records.rows("SELECT * FROM locks WHERE kind = 'operation'"):
            with self.ctx.store.transaction() as conn:
                conn.execute("DELETE FROM locks WHERE model = ? AND env = ? AND kind = 'operation'", (lock["model"], lock["env"]))
                self.ctx.audit(actor="mlops-bot", verb="reconcile", status="interrupted", model=lock["model"], env=lock["env"],
                               detail={"was": lock["reason"], "holder": lock["holder"]})
            touched.setdefault((lock["model"], lock["env"]), {}).setdefault(f"<@{lock['holder']}> was {lock['reason']}", None)
        for (model, env), doing in touched.items():
            await self._reconcile_env(model, env, doing)

    def _interrupt(self, release: Release, env: str) -> None:
        standing = release.standing(env)
        if standing in BUSY:
            self.records.cas(release, Event.INTERRUPT, env)
            self.ctx.audit(actor="mlops-bot", verb="reconcile", status="interrupted", model=release.model, env=env,
                           version=release.version, detail={"release": release.id, "was": standing.value})

    async def _reconcile_env(self, model: str, env: str, doing: dict[str, int | None]) -> None:
        cfg = self.ctx.config.models.get(model)
        if cfg is None or env not in cfg.environments:
            return
        current = self.records.environment(model, env)
        recorded = current["triton_version"] if current else None
        async with self.systems.fleet(model, env) as fleet:
            before = await fleet.observe(model, settle=True)
        restored = ""
        if any(v != ([recorded] if recorded else []) for v in before.values() if isinstance(v, list)):
            restored = await self.restorer.restore(model, env) + " "
        async with self.systems.fleet(model, env) as fleet:
            after = describe_served(await fleet.observe(model))
        text = (f":warning: The bot restarted while {' and '.join(doing)} on {model} {env}. Marked interrupted; lock released. "
                f"Endpoints then served {describe_served(before)}. {restored}Serving now: {after}. Verify or deploy again.")
        for release_id in {r for r in doing.values() if r}:
            await self.delivery.card(self.records.get(release_id), env, note=text)
        await self.delivery.say(self.ctx.config.channels.main, text)
