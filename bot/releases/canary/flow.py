"""A canary in prod: the version on k of the n prod endpoints while the rest keep the current one, an analysis
step every interval until the window ends, then promoted to every endpoint or aborted.

The whole canary is one operation on (model, prod): it holds the prod lock from the start to the end of its
promotion or abort. Its plan, start counters and every step are in the store, so a restart resumes it (or
aborts it, saying why, when the endpoints no longer match). A person's Promote or Abort is a compare-and-set
on the canary, then wakes its analysis, which carries it out inside the operation.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from bot.config import CanaryConfig
from bot.context import Context
from bot.releases.canary import messages
from bot.releases.canary.judge import CanaryRefused, Next, Step, Verdict, canary_count, group, healthy, judge, next_move
from bot.releases.canary.runs import RUNNING, Canary, Runs
from bot.releases.delivery import Delivery
from bot.releases.deploy import Deploys
from bot.releases.flow import Flow
from bot.releases.model import Event, Release, State
from bot.releases.operations import Operations
from bot.releases.policy import short
from bot.releases.promotion import Promotions
from bot.releases.records import Records, ReleaseError
from bot.releases.restore import Restorer
from bot.releases.systems import EXPECTED, Systems, failure_text
from bot.releases.verify import verify
from bot.serving.discovery import is_dns
from bot.serving.triton import deploy_files
from bot.serving.triton_metrics import Counters, read
from bot.store import iso

log = logging.getLogger(__name__)

BOT = "mlops-bot"  # the actor of what the bot decides by itself


class Canaries(Flow):
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, operations: Operations, delivery: Delivery,
                 restorer: Restorer, promotions: Promotions, deploys: Deploys):
        super().__init__(ctx, records=records, systems=systems, operations=operations, delivery=delivery, restorer=restorer)
        self.promotions = promotions  # the policy of an unblock, and the promotion to every endpoint
        self.deploys = deploys
        self.runs = Runs(ctx.store)
        self._wake: dict[int, asyncio.Event] = {}  # by canary: a decision was taken, act on it now
        self._tasks: set[asyncio.Task] = set()  # the analyses running here, cancelled by `stop`

    def config(self, model: str) -> CanaryConfig:
        return self.systems.model_config(model).canary

    # -- start ------------------------------------------------------------------------------------------

    async def _checked(self, model: str, actor: str, percent: float, urgent: bool,
                       release_id: int | None = None) -> tuple[Release, Release, list[str], list[str]]:
        """(the release, the baseline prod serves, canary endpoints, baseline endpoints), or ReleaseError saying why not."""
        environments = self.systems.model_config(model).environments
        endpoints = list(environments["prod"].endpoints) if "prod" in environments else []
        if names := [e for e in endpoints if is_dns(e)]:  # its split is by endpoint, and a name's records come and go
            raise ReleaseError(f"{model}'s prod endpoints are found by DNS ({', '.join(names)}): a canary needs them "
                               "listed one by one in the config; unblock to every endpoint instead")
        try:
            k = canary_count(percent, len(endpoints))
        except CanaryRefused as exc:
            raise ReleaseError(str(exc)) from None
        release = self.records.serving(model, "staging")
        if release is None:
            raise ReleaseError(f"nothing is on {model} staging; `/mlops deploy {model}` first")
        if release_id is not None and release.id != release_id:
            raise ReleaseError(f"this card is out of date: {model} staging now serves {release.version}")
        baseline = self.records.serving(model, "prod")
        if baseline is None:
            raise ReleaseError(f"{model} prod serves nothing yet, so a canary has no baseline to be judged against; "
                               f"unblock prod with `/mlops promote {model}` first")
        if baseline.id == release.id:
            raise ReleaseError(f"{model} prod already serves {release.version}")
        decision = await self.promotions.check_promote(release, actor, urgent=urgent)
        if not decision.allowed:
            self.ctx.audit(actor=actor, verb="canary", status="denied", channel=release.channel, model=model, env="prod",
                           version=release.version, detail={"reason": decision.reason})
            raise ReleaseError(f"a canary follows the policy of an unblock: {decision.reason}" +
                               ("; add urgent=\"reason\" to `/mlops canary` to start it anyway" if decision.needs_urgent else ""))
        return release, baseline, endpoints[:k], endpoints[k:]

    async def plan(self, model: str, actor: str, *, percent: float | None, duration: float | None, urgent: bool) -> str:
        cfg = self.config(model)
        release, baseline, canary, rest = await self._checked(model, actor, percent or cfg.percent, urgent)
        self.ops.check_free(model, "prod")
        return (f"*Dry run*: the policy allows <@{actor}> to start a canary of {model} {release.version} (digest "
                f"`{short(release.digest)}`): it would load it on {len(canary)} of {len(canary) + len(rest)} prod endpoints "
                f"({', '.join(canary)}) while {', '.join(rest)} keep {baseline.version}, compare them every "
                f"{cfg.interval:g} s for {duration or cfg.duration:g} s (error rate ≤ baseline + "
                f"{cfg.max_error_rate_increase * 100:g} points, latency ≤ {cfg.max_latency_ratio:g}x, at least "
                f"{cfg.min_requests} requests a side), abort after {cfg.failure_limit} failed steps, and "
                f"{'promote by itself' if cfg.auto_promote else 'ask before promoting'} when it ends healthy. "
                "Nothing was changed.")

    async def start(self, model: str, actor: str, *, percent: float | None = None, duration: float | None = None,
                    urgent_reason: str | None = None, release_id: int | None = None) -> None:
        """Start a canary of what staging serves and run it to its end: the caller's task lasts the window."""
        cfg = self.config(model)
        percent = percent or cfg.percent
        release, baseline, canary_endpoints, baseline_endpoints = await self._checked(
            model, actor, percent, urgent_reason is not None, release_id)
        made: dict[str, Canary] = {}

        def begin() -> Release:
            current = self.records.get(release.id)
            if current.state is not State.VERIFIED:  # staging's verdict is read in the same transaction
                raise ReleaseError(self.records.why_not(current.id, Event.PROMOTE, "staging"))
            now = self.ctx.clock()
            made["canary"] = self.runs.insert(
                release_id=current.id, model=model, baseline_release_id=baseline.id, canary_endpoints=canary_endpoints,
                baseline_endpoints=baseline_endpoints, percent=percent, interval_s=cfg.interval,
                duration_s=duration or cfg.duration, started_by=actor, started_at=now)
            return self.records.cas(current, Event.CANARY, "prod", approved_by=actor, approved_at=iso(now))

        self._track()
        async with self.ops.operation("canary", model, "prod", actor, f"running a canary of {release.version}", start=begin,
                                      detail={"canary": canary_endpoints, "baseline": baseline_endpoints}) as started:
            canary = made["canary"]
            if urgent_reason:
                self.ctx.audit(actor=actor, verb="canary.urgent", status="ok", channel=started.channel, model=model,
                               env="prod", version=started.version, detail={"reason": urgent_reason})
                await self.delivery.thread(started, f":rotating_light: Urgent canary outside deploy hours by <@{actor}>: "
                                                    f"{urgent_reason}" + self.promotions.oncall_mention())
            await self.delivery.thread(started, (
                f":hatching_chick: Canary of {model} {started.version} started by <@{actor}>: loading it on "
                f"{len(canary_endpoints)} of {len(canary_endpoints) + len(baseline_endpoints)} prod endpoints "
                f"({', '.join(canary_endpoints)}); {', '.join(baseline_endpoints)} keep {baseline.version}. A step every "
                f"{canary.interval_s:g} s for {canary.duration_s:g} s."))
            ready = await self._load(started, canary)
            if ready is not None:
                await self._analyse(started, ready)

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load(self, release: Release, canary: Canary) -> Canary | None:
        """Copy and load the version on the canary endpoints, check them, and take the counters the analysis
        measures from; on any failure the canary is aborted and None returned."""
        model = release.model
        try:
            repo = self.systems.repository(model, "prod")
            config_json = await deploy_files(self.systems.registry(model), model, release.version, repo, release.triton_version)
            async with self.systems.fleet(model, "prod", endpoints=canary.canary_endpoints) as fleet:
                await fleet.load(model, release.triton_version, config_json)
            problem = await self._golden(release, canary)
            counters, unread = await self._counters(release, canary) if problem is None else ({}, {})
        except Exception as exc:  # noqa: BLE001 - whatever failed, the canary endpoints go back to the baseline
            if not isinstance(exc, EXPECTED):
                log.error("canary %s failed to start unexpectedly", canary.id, exc_info=True)
            problem, counters, unread = failure_text(exc), {}, {}
        if problem is None and unread:
            problem = "; ".join(f"the metrics of {e} could not be read ({why}); set `metrics:` for it in the config"
                                for e, why in unread.items())
        if problem is not None:
            await self._abort(release, canary, BOT, f"the canary could not start: {problem}", loud=False)
            return None
        canary = self.runs.started(canary.id, counters, self.ctx.clock())
        await self.delivery.card(release, "prod", note=self._progress(release, canary, []))
        return canary

    async def _golden(self, release: Release, canary: Canary) -> str | None:
        """The bot's own golden requests against the canary endpoints: why they failed, or None."""
        try:
            spec = await self.systems.registry(release.model).verify_spec(release.model, release.version)
        except EXPECTED:
            spec = None
        async with self.systems.fleet(release.model, "prod", endpoints=canary.canary_endpoints) as fleet:
            report = await verify(fleet, release.model, release.triton_version, spec, requests=0)
        return None if report.passed else report.reason

    async def _counters(self, release: Release, canary: Canary) -> tuple[dict[str, Counters], dict[str, str]]:
        """Every endpoint's counters of the version it should serve, read at once; and those that could not be read."""
        baseline = self.records.get(canary.baseline_release_id)
        want = {**{e: (release.model, release.triton_version) for e in canary.canary_endpoints},
                **{e: (release.model, baseline.triton_version) for e in canary.baseline_endpoints}}
        urls = self.systems.metrics_urls(release.model, "prod")
        found = await read({e: urls.get(e) or "" for e in want}, want)
        return ({e: c for e, c in found.items() if isinstance(c, Counters)},
                {e: c for e, c in found.items() if isinstance(c, str)})

    # -- analysis ---------------------------------------------------------------------------------------

    def _progress(self, release: Release, canary: Canary, verdicts: list[Verdict]) -> str:
        baseline = self.records.get(canary.baseline_release_id)
        return messages.progress(canary, release.version, baseline.version, verdicts, self.config(release.model).failure_limit)

    async def _analyse(self, release: Release, canary: Canary) -> None:
        """Steps until the window ends or someone decides; then carry the decision out."""
        cfg = self.config(release.model)
        wake = self._wake.setdefault(canary.id, asyncio.Event())
        verdicts = [s.verdict for s in self.runs.steps(canary.id)]
        reason = ""
        try:
            while (canary := self.runs.get(canary.id)).decision is None:
                number = len(verdicts) + 1
                if number > canary.steps_planned:  # the window is over: a person decides
                    await wake.wait()
                    wake.clear()
                    continue
                await self._until(canary, number, wake)
                if self.runs.get(canary.id).decision is not None:
                    break
                step = await self._measure(release, canary, number, cfg)
                verdicts.append(step.verdict)
                move = next_move(verdicts, window_over=number >= canary.steps_planned, cfg=cfg)
                if move is Next.ABORT:
                    reason = (f"{sum(v is Verdict.FAIL for v in verdicts)} of {number} steps failed "
                              f"(failure_limit {cfg.failure_limit})")
                    self.runs.decide(canary.id, "abort", BOT, self.ctx.clock())
                elif move is Next.PROMOTE:
                    await self.delivery.thread(release, ":white_check_mark: The window ended healthy and "
                                                        f"{release.model} promotes by itself (canary.auto_promote).")
                    self.runs.decide(canary.id, "promote", BOT, self.ctx.clock())
                elif move is Next.ASK:
                    await self._ask(release, verdicts)
        finally:
            self._wake.pop(canary.id, None)
        canary = self.runs.get(canary.id)
        if canary.decision == "abort":
            by_bot = canary.decided_by == BOT
            await self._abort(release, canary, canary.decided_by or BOT, reason or f"aborted by <@{canary.decided_by}>",
                              loud=by_bot)
        else:
            await self._promote(release, canary, canary.decided_by or BOT)

    async def _until(self, canary: Canary, number: int, wake: asyncio.Event) -> None:
        """Sleep until step `number` is due, or until a decision wakes the analysis."""
        wait = (canary.step_due(number) - self.ctx.clock()).total_seconds()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
        wake.clear()

    async def _measure(self, release: Release, canary: Canary, number: int, cfg: CanaryConfig) -> Step:
        """One step: every endpoint's metrics and the golden requests at once, judged, stored, said."""
        (counters, unread), golden = await asyncio.gather(self._counters(release, canary), self._golden(release, canary))
        start = canary.start_counters or {}
        step = judge(group(start, {e: counters[e] for e in canary.canary_endpoints if e in counters}),
                     group(start, {e: counters[e] for e in canary.baseline_endpoints if e in counters}),
                     cfg, golden=golden, unread=unread)
        with self.ctx.store.transaction():
            self.runs.add_step(canary.id, number, self.ctx.clock(), step, {**counters, **unread})
            self.ctx.audit(actor=BOT, verb="canary.step", status=step.verdict.value, channel=release.channel,
                           model=release.model, env="prod", version=release.version,
                           detail={"canary": canary.id, "step": number, "reasons": list(step.reasons)})
        line = messages.step_line(number, canary.steps_planned, step.verdict, step.canary, step.baseline, step.reasons)
        if step.verdict is Verdict.INCONCLUSIVE:
            line += " · not enough to judge by; a person decides with *Promote to all* or *Abort*"
        await self.delivery.thread(release, line)
        verdicts = [s.verdict for s in self.runs.steps(canary.id)]
        await self.delivery.card(release, "prod", note=self._progress(release, canary, verdicts))
        return step

    async def _ask(self, release: Release, verdicts: list[Verdict]) -> None:
        why = ("ended healthy" if healthy(verdicts)
               else "ended without enough traffic to judge by" if all(v is Verdict.INCONCLUSIVE for v in verdicts)
               else "ended with a mixed verdict")
        await self.delivery.thread(release, f":raising_hand: The canary window {why}; <@{release.approved_by}>, "
                                            "press *Promote to all* or *Abort*.")

    # -- decisions --------------------------------------------------------------------------------------

    def decide(self, release_id: int, actor: str, decision: str) -> str:
        """A person's Promote to all or Abort: the first decision is taken, every later one told who decided."""
        canary = self.runs.of_release(release_id)
        release = self.records.get(release_id)
        if canary is None or canary.state != RUNNING:
            raise ReleaseError(f"no canary of {release.model} {release.version} is running")
        if not self.runs.decide(canary.id, decision, actor, self.ctx.clock()):
            canary = self.runs.get(canary.id)
            who = "the bot" if canary.decided_by == BOT else f"<@{canary.decided_by}>"
            raise ReleaseError(f"already decided: {who} chose to {canary.decision} the canary of {release.version}")
        self.ctx.audit(actor=actor, verb=f"canary.{decision}", status="accepted", channel=release.channel,
                       model=release.model, env="prod", version=release.version, detail={"canary": canary.id})
        if (wake := self._wake.get(canary.id)) is not None:
            wake.set()
        return f"{'Promoting' if decision == 'promote' else 'Aborting'} the canary of {release.model} {release.version}."

    async def _abort(self, release: Release, canary: Canary, actor: str, reason: str, *, loud: bool) -> None:
        """The canary endpoints back on the baseline version, verified; the whole of prod put back if that fails."""
        model = release.model
        baseline = self.records.get(canary.baseline_release_id)
        try:
            config = await self.systems.config_for(model, baseline.version, baseline.triton_version)
            try:
                spec = await self.systems.registry(model).verify_spec(model, baseline.version)
            except EXPECTED:
                spec = None
            async with self.systems.fleet(model, "prod", endpoints=canary.canary_endpoints) as fleet:
                await fleet.load(model, baseline.triton_version, config)
                report = await verify(fleet, model, baseline.triton_version, spec, requests=0)
            problem = None if report.passed else report.reason
        except Exception as exc:  # noqa: BLE001 - whatever failed, prod goes back to its record
            if not isinstance(exc, EXPECTED):
                log.error("abort of canary %s failed unexpectedly", canary.id, exc_info=True)
            problem = failure_text(exc)
        restored = await self.restorer.restore(model, "prod") if problem else ""
        with self.ctx.store.transaction():
            release = self.records.cas(self.records.get(release.id), Event.ABORT, "prod")
            self.runs.end(canary.id, "aborted", reason, self.ctx.clock())
            self.ctx.audit(actor=actor, verb="canary", status="aborted", channel=release.channel, model=model, env="prod",
                           version=release.version, detail={"canary": canary.id, "reason": reason, "problem": problem,
                                                            "restored": restored})
        back = (f"{', '.join(canary.canary_endpoints)} serve {baseline.version} again, verified." if problem is None
                else f"Putting {', '.join(canary.canary_endpoints)} back on {baseline.version} failed: {problem}. {restored}")
        who = "by the bot" if actor == BOT else f"by <@{actor}>"
        text = f":leftwards_arrow_with_hook: Canary of *{model} {release.version}* aborted {who}: {reason}. {back}"
        if loud:
            text = (f":rotating_light: <!here> {text} <@{release.approved_by}> started it"
                    f"{self.promotions.oncall_mention()}")
        await self.delivery.thread(release, text)
        await self.delivery.card(release, "prod", note=text)
        if loud and release.channel:
            await self.delivery.say(release.channel, text)

    async def _promote(self, release: Release, canary: Canary, actor: str) -> None:
        """The version on every prod endpoint, verified, through the usual promotion (and its automatic rollback)."""
        with self.ctx.store.transaction():
            release = self.records.cas(self.records.get(release.id), Event.PROMOTE, "prod",
                                       **({"approved_by": actor, "approved_at": iso(self.ctx.clock())} if actor != BOT else {}))
        await self.delivery.card(release, "prod", note=f"Canary healthy; promoting {release.version} to every prod endpoint…")
        failure = await self.promotions.load_prod(release)
        release, restored = await self.promotions.record(release, actor, failure)
        self.runs.end(canary.id, "promoted" if failure is None else "promote_failed", failure or "promoted to every endpoint",
                      self.ctx.clock())
        await self.promotions.announce(release, actor, failure, restored)

    # -- restart ----------------------------------------------------------------------------------------

    def claim_resumable(self) -> list[Canary]:
        """At start, before the reconciler: the canaries still running whose release is in canary are taken
        out of its hands (their operation and lock freed here), to be resumed; the others were cut short
        mid-promotion or mid-abort, which the reconciler puts back, and end here."""
        resumable = []
        for canary in self.runs.running():
            release = self.records.get(canary.release_id)
            with self.ctx.store.transaction() as conn:
                if release.prod_state is State.CANARY:
                    for op in self.records.rows("SELECT id FROM operations WHERE kind = 'canary' AND model = ? "
                                                "AND state IN ('running', 'interrupted')", canary.model):
                        conn.execute("UPDATE operations SET state = 'resumed', ended_at = coalesce(ended_at, ?) WHERE id = ?",
                                     (iso(self.ctx.clock()), op["id"]))
                        conn.execute("DELETE FROM locks WHERE operation_id = ?", (op["id"],))
                    resumable.append(canary)
                else:
                    self.runs.end(canary.id, "promoted" if release.prod_state is State.LIVE else "aborted",
                                  f"the bot restarted while the canary was ending ({release.standing('prod')})",
                                  self.ctx.clock())
        return resumable

    def resume(self, canaries: list[Canary]) -> None:
        for canary in canaries:
            self.ctx.spawn(self._resume(canary), name=f"canary {canary.id}: resumed")

    async def _resume(self, canary: Canary) -> None:
        self._track()
        release = self.records.get(canary.release_id)
        async with self.ops.operation("canary", canary.model, "prod", canary.started_by,
                                      f"running a canary of {release.version}", detail={"canary": canary.id, "resumed": True},
                                      channel=release.channel):
            problem = await self._mismatch(release, canary)
            if problem:
                await self._abort(release, canary, BOT, f"the bot restarted and {problem}", loud=True)
                return
            done = len(self.runs.steps(canary.id))
            await self.delivery.thread(release, f":arrows_counterclockwise: The bot restarted; the canary's analysis resumes "
                                                f"after step {done} of {canary.steps_planned}.")
            await self._analyse(release, canary)

    async def _mismatch(self, release: Release, canary: Canary) -> str | None:
        """Why the canary cannot go on after a restart: the config's prod endpoints changed, or the endpoints
        no longer serve what the canary put there; None when it can."""
        if canary.start_counters is None:
            return "the canary had not finished starting"
        configured = list(self.systems.model_config(canary.model).environments["prod"].endpoints)
        if sorted(configured) != sorted(canary.canary_endpoints + canary.baseline_endpoints):
            return f"the prod endpoints in the config changed (now {', '.join(configured)})"
        baseline = self.records.get(canary.baseline_release_id)
        async with self.systems.fleet(canary.model, "prod") as fleet:
            served = await fleet.observe(canary.model, settle=True)
        wrong = [f"{e} serves {v if isinstance(v, str) else ', '.join(f'v{n}' for n in v) or 'nothing'}"
                 for e, v in served.items()
                 if v != [release.triton_version if e in canary.canary_endpoints else baseline.triton_version]]
        return f"the endpoints no longer match the canary ({'; '.join(wrong)})" if wrong else None

    @property
    def analyses(self) -> frozenset[asyncio.Task]:
        """The tasks running a canary's analysis now: each lasts its canary's whole window."""
        return frozenset(self._tasks)

    async def stop(self) -> None:
        """Cancel the analyses running here: their canaries stay running in the store and resume at the next start."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- report -----------------------------------------------------------------------------------------

    def report(self, model: str) -> str:
        canary = self.runs.latest(model)
        if canary is None:
            return f"{model} has had no canary yet; start one with `/mlops canary {model}`."
        release = self.records.get(canary.release_id)
        baseline = self.records.get(canary.baseline_release_id)
        return messages.report(canary, release.version, baseline.version, self.runs.steps(canary.id))
