"""The release train: deploy to staging, verify, unblock prod, reject, roll back; locks and reconciliation.

`ReleaseService` is what the handlers, the digests and the runtime call; it is made of one part per flow,
each in its own module, built here on the parts they share:

- records.py: the store's releases and environments, and the compare-and-set that moves a standing
- systems.py: a model's registry, repositories and fleets, as the config names them
- delivery.py: cards and thread notes in Slack, and what Slack refused, tried again
- restore.py: putting an environment back on what the bot records it serves
- operations.py: one operation at a time per (model, env), its lock, and none left running
- deploy.py (deploy and verify), promotion.py, rollback.py (and reject), locks.py (manual locks),
  status.py, reconcile.py (at start), heal.py (the fleet reconcile loop: endpoints kept on the record),
  canary/ (a version on part of prod, judged by Triton's metrics)
- train.py: new registry versions to staging by themselves, one train per model (queue.py holds its rules);
  registry_hook.py is its webhook; hygiene.py (nothing broken or unverified left on staging overnight)

The pure rules are model.py (standings and transitions) and policy.py (who may unblock prod, and when).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bot.context import Context
from bot.releases.canary.flow import Canaries
from bot.releases.delivery import Delivery
from bot.releases.deploy import Deploys
from bot.releases.heal import Healer
from bot.releases.hygiene import StagingHygiene
from bot.releases.locks import ManualLocks
from bot.releases.operations import Operations
from bot.releases.promotion import Promotions
from bot.releases.reconcile import Reconciler
from bot.releases.records import Records, ReleaseError
from bot.releases.restore import Restorer
from bot.releases.rollback import Rollbacks
from bot.releases.status import Status
from bot.releases.systems import Systems
from bot.releases.train import Train
from bot.roles import RoleDirectory
from bot.scheduler import Scheduler

__all__ = ["ReleaseError", "ReleaseService"]  # the handlers catch the one and call the other

T = TypeVar("T")


class ReleaseService:
    def __init__(self, ctx: Context, *, roles: RoleDirectory, scheduler: Scheduler):
        records = Records(ctx.store, ctx.clock)
        systems = Systems(ctx.config)
        delivery = Delivery(ctx, records)
        restorer = Restorer(ctx, records, systems)
        operations = Operations(ctx, records, restorer, delivery)
        deploys = Deploys(ctx, records=records, systems=systems, operations=operations, delivery=delivery, restorer=restorer)
        promotions = Promotions(ctx, records=records, systems=systems, operations=operations, delivery=delivery,
                                restorer=restorer, deploys=deploys, roles=roles)
        rollbacks = Rollbacks(ctx, records=records, systems=systems, operations=operations, delivery=delivery, restorer=restorer)
        locks = ManualLocks(ctx, records=records, systems=systems, operations=operations)
        status = Status(ctx, records=records, systems=systems, operations=operations)
        self.healer = Healer(ctx, records=records, systems=systems, operations=operations, delivery=delivery)
        self._reconciler = Reconciler(ctx, records=records, systems=systems, delivery=delivery, restorer=restorer)
        self.train = Train(ctx, records=records, systems=systems, delivery=delivery, deploys=deploys)
        self.hygiene = StagingHygiene(ctx, scheduler=scheduler, records=records, delivery=delivery, rollbacks=rollbacks)
        self.canaries = Canaries(ctx, records=records, systems=systems, operations=operations, delivery=delivery,
                                 restorer=restorer, promotions=promotions, deploys=deploys)

        # What is called from outside, each answered by the part that does it.
        self.get, self.environment, self.serving, self.queued = records.get, records.environment, records.serving, records.queued
        self.registry = systems.registry
        self.lock_of, self.overdue_operations = operations.lock_of, operations.overdue_operations
        self.deploy, self.plan_deploy = self.train.by_hand, deploys.plan_deploy
        self.verify_release, self.verify_env = deploys.verify_release, deploys.verify_env
        self.promote, self.check_promote = self._train_moves(promotions.promote), promotions.check_promote
        self.plan_promote = promotions.plan_promote
        self.reject, self.plan_rollback = self._train_moves(rollbacks.reject), rollbacks.plan_rollback
        self.rollback = self._train_moves(rollbacks.rollback)
        self.lock, self.plan_lock, self.unlock, self.plan_unlock = locks.lock, locks.plan_lock, locks.unlock, locks.plan_unlock
        self.status_rows = status.status_rows
        self.stop_canaries = self.canaries.stop

    def _train_moves(self, flow: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """`flow`, after which the model's queued registry versions move at once, however it ended."""
        async def moved(first: Any, *args: Any, **kwargs: Any) -> T:
            try:
                return await flow(first, *args, **kwargs)
            finally:
                self.train.ended(first if isinstance(first, str) else first.model)  # a model name, or a release

        return moved

    async def reconcile(self) -> None:
        """At start: the canaries still running are taken out of the reconciler's hands and resumed once it has
        put back whatever else a stop or a crash cut short."""
        resumable = self.canaries.claim_resumable()
        await self._reconciler.reconcile()
        self.canaries.resume(resumable)
