"""The fleet reconcile loop: every `fleet.reconcile_seconds`, what each endpoint serves is compared with what the
bot records for its environment. An endpoint that serves nothing of the model (a new pod behind a DNS name, a
tritonserver restarted empty) is given the recorded version, audited and noted in the release card's thread;
one that serves another version (drift) is said in the channel once, and left alone unless the environment
has `heal: true`. An environment under a lock (an operation, a canary, `/mlops lock`) is not touched: there
the difference is someone's work in progress.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from apscheduler.triggers.interval import IntervalTrigger

from bot.context import Context
from bot.notices import Notices
from bot.releases.delivery import Delivery
from bot.releases.operations import Operations
from bot.releases.records import Records, ReleaseError
from bot.releases.served import Snapshot
from bot.releases.systems import EXPECTED, Systems, failure_text
from bot.scheduler import Scheduler

log = logging.getLogger(__name__)

OBSERVE_TIMEOUT_S = 5  # a pass waits this long at most for an endpoint to say what it serves

Served = Mapping[str, list[int] | str]  # endpoint → its READY versions, or why it could not be asked
Drift = tuple[int | None, tuple[int, ...]]  # (the recorded version, what the endpoint serves instead)


@dataclass(frozen=True)
class Decision:
    load: list[str] = field(default_factory=list)  # endpoints to give the recorded version
    report: dict[str, tuple[int, ...]] = field(default_factory=dict)  # drift not said before: endpoint → what it serves
    drifting: dict[str, Drift] = field(default_factory=dict)  # every drift now, remembered so each is said once


def decide(recorded: int | None, served: Served, said: Mapping[str, Drift], *, heal: bool) -> Decision:
    """What one pass does on one (model, env): `recorded` is the Triton version the bot records it serves, `said`
    the drift reported by earlier passes. An endpoint that cannot be asked is left as it was (status names it)."""
    expected = [recorded] if recorded else []
    decision = Decision()
    for endpoint, versions in served.items():
        if isinstance(versions, str):
            if endpoint in said:
                decision.drifting[endpoint] = said[endpoint]  # unreachable for now: its drift is not said again
            continue
        if versions == expected:
            continue
        if not versions:
            decision.load.append(endpoint)  # new or restarted empty: nothing of anyone's is overwritten
            continue
        drift = (recorded, tuple(versions))
        decision.drifting[endpoint] = drift
        if said.get(endpoint) != drift:
            decision.report[endpoint] = drift[1]
        if heal and recorded:
            decision.load.append(endpoint)
    return decision


def triton_versions(versions: list[int] | tuple[int, ...] | str) -> str:
    if not versions:
        return "nothing"
    return f"triton version{'s' * (len(versions) > 1)} {', '.join(map(str, versions))}"


def where(endpoint: str) -> str:
    """An endpoint as people read it: its address and port."""
    return urlsplit(endpoint).netloc or endpoint


class Healer:
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, operations: Operations, delivery: Delivery):
        self.ctx = ctx
        self.records = records
        self.systems = systems
        self.ops = operations
        self.delivery = delivery
        self._drift = Notices(ctx, "fleet.drift")  # per "model/env": the drift already reported, across restarts
        self._failed = Notices(ctx, "fleet.heal_failed")  # "model/env/endpoint" → the heal failure already said
        self._pass = asyncio.Lock()  # one pass at a time: each decides from what the one before it said

    def _said(self, model: str, env: str) -> dict[str, Drift]:
        said = self._drift.get(f"{model}/{env}") or {}
        return {endpoint: (recorded, tuple(served)) for endpoint, (recorded, served) in said.items()}

    def schedule(self, scheduler: Scheduler) -> None:
        every = self.ctx.config.fleet.reconcile_seconds
        if every > 0:
            trigger = IntervalTrigger(seconds=every, start_date=datetime(2000, 1, 1, tzinfo=UTC), timezone=UTC)
            scheduler.add("fleet.reconcile", trigger, self._scheduled, grace=timedelta(seconds=every))

    async def _scheduled(self, slot: datetime) -> None:
        # In the background, like the pipeline watch: a slow endpoint holds up neither the start nor other jobs.
        if not self._pass.locked():
            self.ctx.spawn(self.reconcile_pass(), name="fleet.reconcile")

    async def reconcile_pass(self) -> None:
        """One pass over every (model, env) of the config. Each endpoint's repository index is read once a pass
        (fleets are shared by many models), and each name looked up once; only what differs is asked again."""
        async with self._pass:
            indexes = Snapshot(self.systems, timeout=OBSERVE_TIMEOUT_S)
            for model, cfg in sorted(self.ctx.config.models.items()):
                for env in cfg.environments:
                    try:
                        await self._environment(model, env, indexes)
                    except EXPECTED as exc:  # the registry unreadable, say: this environment waits for the next pass
                        log.warning("fleet reconcile of %s %s: %s", model, env, exc)

    async def _environment(self, model: str, env: str, indexes: Snapshot) -> None:
        if self.ops.lock_of(model, env) is not None:
            return
        heal = self.systems.model_config(model).environments[env].heal
        current = self.records.environment(model, env)
        recorded = current["triton_version"] if current else None
        decision = decide(recorded, await indexes.served(model, env), self._said(model, env), heal=heal)
        if decision.load or decision.report:  # the index may be from before an operation that just ended: ask again
            current = self.records.environment(model, env)
            recorded = current["triton_version"] if current else None
            async with self.systems.fleet(model, env, timeout=OBSERVE_TIMEOUT_S) as fleet:
                served = await fleet.observe(model)
            decision = decide(recorded, served, self._said(model, env), heal=heal)
        if decision.load and current:
            try:
                async with self.ops.operation("heal", model, env, "mlops-bot", f"healing {len(decision.load)} endpoint(s)"):
                    decision = await self._heal(model, env, current, heal)  # decided again under the lock
            except ReleaseError:  # someone took the environment in between: the next pass looks again
                return
        self._drift.set(f"{model}/{env}", {e: [was, list(now)] for e, (was, now) in decision.drifting.items()})
        if decision.report:
            await self._report(model, env, current, decision.report, heal)

    async def _heal(self, model: str, env: str, current: dict, heal: bool) -> Decision:
        """Load the recorded version where it is missing, as seen now that the environment's lock is held."""
        current = self.records.environment(model, env) or current
        version, n = current["version"], current["triton_version"]
        async with self.systems.fleet(model, env, timeout=OBSERVE_TIMEOUT_S) as fleet:
            served = await fleet.observe(model)
        decision = decide(n, served, self._said(model, env), heal=heal)
        if not decision.load:
            return decision
        config = await self.systems.config_for(model, version, n)
        failed: dict[str, str] = {}
        async with self.systems.fleet(model, env, endpoints=decision.load) as fleet:
            try:
                await fleet.load(model, n, config)
            except EXPECTED as exc:
                failed = getattr(exc, "failures", None) or {e: failure_text(exc) for e in decision.load}
        healed = [e for e in decision.load if e not in failed]
        for endpoint in decision.load:
            error = {"error": failed[endpoint]} if endpoint in failed else {}
            self.ctx.audit(actor="mlops-bot", verb="heal", status="failed" if error else "succeeded", model=model, env=env,
                           version=version, detail={"endpoint": endpoint, "served": served[endpoint], **error})
        release = self.records.get(current["release_id"]) if current.get("release_id") else None
        notes = [f":adhesive_bandage: healed endpoint {where(e)}: it served {triton_versions(served[e])}; "
                 f"{version} (triton version {n}) loaded" for e in healed]
        for endpoint, error in failed.items():
            if self._failed.get(f"{model}/{env}/{endpoint}") != error:  # a heal that keeps failing is said once
                notes.append(f":x: could not heal endpoint {where(endpoint)} with {version}: {error}")
            self._failed.set(f"{model}/{env}/{endpoint}", error)
        for endpoint in healed:
            self._failed.set(f"{model}/{env}/{endpoint}", None)
        for note in notes:
            if release is not None:
                await self.delivery.thread(release, note)
            else:
                await self.delivery.say(self.ctx.config.channels.main, f"{model} {env}: {note}")
        return Decision(report=decision.report,
                        drifting={e: d for e, d in decision.drifting.items() if e in failed or not heal})

    async def _report(self, model: str, env: str, current: dict | None, report: dict[str, tuple[int, ...]], heal: bool) -> None:
        record = (f"{current['version']} (triton version {current['triton_version']})" if current and current["triton_version"]
                  else "nothing")
        lines = [f"{where(e)} serves {triton_versions(versions)}" for e, versions in sorted(report.items())]
        then = ("The bot loads the recorded version there (`heal: true`)." if heal and current else
                f"Left as it is: deploy or roll back {model} {env} to settle it, or set `heal: true` on the environment "
                "for the bot to put its record back by itself.")
        self.ctx.audit(actor="mlops-bot", verb="fleet.drift", status="reported", model=model, env=env,
                       version=current["version"] if current else None,
                       detail={"recorded": current["triton_version"] if current else None,
                               "served": {e: list(v) for e, v in report.items()}})
        await self.delivery.say(self.ctx.config.channels.main,
                                f":warning: *{model} {env}* drift: the bot records {record}, but {'; '.join(lines)}. "
                                f"{then}")
