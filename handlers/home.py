"""The App Home: published for whoever opens the app's Home tab."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp

from handlers.payloads import Event

if TYPE_CHECKING:
    from bot.runtime import Runtime


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.event("app_home_opened")
    async def home_opened(context: dict[str, Any]) -> None:
        event: Event = context["mlops_payload"].event
        if event.tab == "home" and runtime.home is not None:
            runtime.spawn(runtime.home.publish(event.user), name="app_home")
