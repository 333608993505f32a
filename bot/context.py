"""What every domain service is given: the shared parts of the running bot, and nothing else.

The runtime builds one `Context` and passes it to each service, with the other services a service truly calls
passed in by name. No service imports the runtime (which imports them all), so the layers stay one-way:
runtime -> handlers -> domain services -> context -> store, notifier, serving, config.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.config import Config, Secrets
from bot.notifier import Notifier
from bot.store import Store

Clock = Callable[[], datetime]


class Audit(Protocol):
    def __call__(self, **fields: Any) -> None: ...


class Spawn(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, Any], *, name: str,
                 on_error: Callable[[Exception], Awaitable[None]] | None = None) -> asyncio.Task[Any]: ...


@dataclass(frozen=True)
class Context:
    config: Config
    secrets: Secrets
    store: Store
    notifier: Notifier
    clock: Clock
    audit: Audit  # one row in the tamper-evident log (and its metric)
    spawn: Spawn  # tracked background work, so a stop waits for it and records what it cut short
