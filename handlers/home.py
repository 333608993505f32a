"""The App Home: published for whoever opens the app's Home tab, and again at another page of its model table."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp

from bot.digest.messages import HomePage
from handlers.buttons import Press, button
from handlers.payloads import Event

if TYPE_CHECKING:
    from bot.runtime import Runtime


@button("home.page", HomePage)
async def turn_page(runtime: Runtime, press: Press, value: HomePage) -> None:
    await runtime.home.publish(press.user, value.page)


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.event("app_home_opened")
    async def home_opened(context: dict[str, Any]) -> None:
        event: Event = context["mlops_payload"].event
        if event.tab == "home" and runtime.home is not None:
            runtime.spawn(runtime.home.publish(event.user), name="app_home")
