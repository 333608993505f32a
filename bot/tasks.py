"""Background work started by listeners and services, tracked so a stop can wait for it."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    """What is running now, by name; `drain` waits for it up to a bound and cancels the rest."""

    def __init__(self) -> None:
        self._running: dict[asyncio.Task[Any], str] = {}

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str,
        on_error: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guard(coro, name, on_error), name=name)
        self._running[task] = name
        task.add_done_callback(self._running.pop)
        return task

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, Any], name: str, on_error: Callable[[Exception], Awaitable[None]] | None):
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The traceback goes to the log; people get a short message from on_error, never the traceback.
            log.exception("background task %s failed", name)
            if on_error:
                try:
                    await on_error(exc)
                except Exception:
                    log.exception("reporting the failure of %s failed too", name)

    @property
    def names(self) -> list[str]:
        return list(self._running.values())

    @property
    def running(self) -> list[asyncio.Task[Any]]:
        return list(self._running)

    async def drain(self, timeout: float) -> list[str]:
        """Wait up to `timeout` s for running work; cancel the rest and return its names."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout)
        left = dict(self._running)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        return list(left.values())
