"""Events API listeners."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from slack_bolt.async_app import AsyncApp

if TYPE_CHECKING:
    from bot.runtime import Runtime

EVENTS = frozenset({"app_home_opened"})  # the event types listened to; others are acknowledged and dropped


class Event(BaseModel):
    model_config = ConfigDict(strict=True)  # ids are strings in every Slack payload; anything else is not Slack's

    type: str
    user: str | None = None
    tab: str = "home"

    @model_validator(mode="after")
    def _user_of_home(self) -> Event:
        if self.type == "app_home_opened" and not self.user:
            raise ValueError("app_home_opened without a user")
        return self


class EventCallback(BaseModel):
    """The fields of an Events API delivery the bot reads (checked at the edge, handlers.refuse_shape)."""

    model_config = ConfigDict(strict=True)

    type: str
    event_id: str = Field(min_length=1)
    event: Event


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.event("app_home_opened")
    async def home_opened(context: dict[str, Any]) -> None:
        event: Event = context["mlops_payload"].event
        if event.tab == "home" and runtime.home is not None:
            runtime.spawn(runtime.home.publish(event.user), name="app_home")
