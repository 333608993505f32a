"""What the fleets serve, read once for a whole pass over the models: many models share one fleet, and each
endpoint's repository index lists every model it has, so one request an endpoint (and one lookup a DNS name)
answers for all of them, instead of one per model."""
from __future__ import annotations

from typing import Any

from bot.releases.systems import Systems
from bot.serving.triton import ready_in


class Snapshot:
    def __init__(self, systems: Systems, *, timeout: float):
        self.systems = systems
        self.timeout = timeout
        self._endpoints: dict[tuple[str, ...], list[str]] = {}  # by the config's endpoints: as looked up
        self._index: dict[str, list[dict[str, Any]] | str] = {}  # by endpoint: its index, or why it could not be read

    async def served(self, model: str, env: str) -> dict[str, list[int] | str]:
        """Each endpoint of (model, env) → the versions of `model` READY there, or why it could not be asked."""
        specs = tuple(self.systems.model_config(model).environments[env].endpoints)
        if specs not in self._endpoints:
            async with self.systems.fleet(model, env, timeout=self.timeout) as fleet:
                self._endpoints[specs] = fleet.endpoints
                self._index.update(fleet.unresolved)  # a name that gave no address: why, in place of its index
        if unread := [e for e in self._endpoints[specs] if e not in self._index]:
            async with self.systems.fleet(model, env, timeout=self.timeout, endpoints=unread) as fleet:
                self._index.update(await fleet.indexes())
        return {e: ready_in(i, model) if isinstance(i, list) else i
                for e in self._endpoints[specs] for i in [self._index[e]]}
