"""Events API listeners."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp

if TYPE_CHECKING:
    from bot.runtime import Runtime


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab", "home") == "home" and runtime.home is not None:
            runtime.spawn(runtime.home.publish(event["user"]), name="app_home")
