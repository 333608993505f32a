"""What every release flow (deploy, promotion, rollback) works with: the records, the endpoints and registry,
the operations and their locks, the cards, and the restorer that puts an environment back."""
from __future__ import annotations

from bot.context import Context
from bot.releases.delivery import Delivery
from bot.releases.operations import Operations
from bot.releases.records import Records
from bot.releases.restore import Restorer
from bot.releases.systems import Systems


class Flow:
    def __init__(self, ctx: Context, *, records: Records, systems: Systems, operations: Operations, delivery: Delivery,
                 restorer: Restorer):
        self.ctx = ctx
        self.records = records
        self.systems = systems
        self.ops = operations
        self.delivery = delivery
        self.restorer = restorer
