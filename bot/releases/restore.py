"""Putting an environment back on what the bot records it serves: after a failed deploy, promotion or
rollback, an operation cut short, or a restart that finds the endpoints serving something else."""
from __future__ import annotations

from bot.context import Context
from bot.releases.records import Records
from bot.releases.systems import EXPECTED, Systems, describe_served
from bot.serving.triton import FleetError


class Restorer:
    def __init__(self, ctx: Context, records: Records, systems: Systems):
        self.ctx = ctx
        self.records = records
        self.systems = systems

    async def restore(self, model: str, env: str) -> str:
        """Put every endpoint of (model, env) back on the version the bot records it serves (or unload the model
        where it records nothing): after a failed or cut-short operation, one truth per environment. Says where
        it could not."""
        current = self.records.environment(model, env)
        back, n = (current["version"], current["triton_version"]) if current and current["triton_version"] else (None, None)
        config = None
        if back:
            try:
                config = await self.systems.config_for(model, back, n)
            except EXPECTED as exc:  # the registry cannot be read, so nothing can be loaded from it
                return await self._unrestorable(model, env, back, n, exc)
        failed: dict[str, str] = {}
        stuck: dict[str, dict[str, str]] = {}
        endpoints: list[str] = []
        try:
            async with self.systems.fleet(model, env) as fleet:
                endpoints = fleet.endpoints  # a DNS name's records, as looked up now
                try:
                    await (fleet.load(model, n, config) if back and config else fleet.unload(model))
                finally:
                    # A load that failed stays in Triton's index and keeps the endpoint not ready until it restarts.
                    stuck = {e: f for e, f in (await fleet.failed_loads()).items() if f}
        except FleetError as exc:
            failed = exc.failures
        # An endpoint that is down serves nothing, so putting the others back is still worth doing and saying.
        done = [e for e in endpoints if e not in failed]
        status = "partial" if failed and done else "failed" if failed else "succeeded"
        self.ctx.audit(actor="mlops-bot", verb="rollback", status=status, model=model, env=env, version=back,
                       detail={"automatic": True, "failed": failed, **({"not_ready": stuck} if stuck else {})})
        what = f"put {env} back on {back}" if back else f"unloaded {model} from {env} (the bot records nothing served there)"
        restart = "".join(f" {e} still holds the failed load of {', '.join(f)}, so it reports not ready until it restarts: "
                          f"restart the tritonserver at {e}." for e, f in stuck.items())
        if not failed:
            return f"The bot {what} by itself.{restart}"
        problems = "; ".join(f"{e}: {m}" for e, m in failed.items())
        if not done:
            on = f"on {back}" if back else ""
            return f"Putting {env} back {on} ALSO FAILED ({problems}); {env} needs a person now.{restart}"
        return f"The bot {what} on {', '.join(done)}; {', '.join(failed)} still needs a person ({problems}).{restart}"

    async def _unrestorable(self, model: str, env: str, back: str, n: int, exc: Exception) -> str:
        """`restore` when the version to go back to cannot be read from the registry: what the endpoints serve
        decides what to say, since the operation that failed may never have touched them."""
        async with self.systems.fleet(model, env) as fleet:
            served = await fleet.observe(model, settle=True)
        off = {e: v for e, v in served.items() if v != [n]}
        self.ctx.audit(actor="mlops-bot", verb="rollback", status="failed" if off else "unchanged", model=model, env=env,
                       version=back,
                       detail={"automatic": True, "failed": {e: str(v) for e, v in off.items()}, "registry": str(exc)})
        if not off:
            return f"{env} still serves {back} on every endpoint."
        return (f"Putting {env} back on {back} ALSO FAILED: it could not be read from the registry ({exc}); "
                f"{describe_served(off)}; {env} needs a person now.")
