"""The Slack payloads the bot listens to, as far as the listeners read them: checked at the edge (handlers.refuse_shape),
so after it the listeners may read their fields as the strings they are."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

EVENTS = frozenset({"app_home_opened"})  # the event types listened to; others are acknowledged and dropped


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)  # ids, values and texts are strings in every Slack payload


class _Id(_Strict):
    id: str = Field(min_length=1)


class SlashCommand(_Strict):
    command: str
    text: str = ""
    user_id: str = Field(min_length=1)
    channel_id: str = Field(min_length=1)
    trigger_id: str = ""
    response_url: str = ""


# -- button presses ----------------------------------------------------------------------------------------

class _Action(_Strict):
    action_id: str = Field(min_length=1)
    value: str | None = None


class _Container(_Strict):
    type: str = "message"
    message_ts: str = ""
    channel_id: str = ""


class BlockActions(_Strict):
    type: str
    user: _Id
    actions: list[_Action] = Field(min_length=1)  # Bolt's matchers read the first
    trigger_id: str = ""
    response_url: str = ""
    channel: _Id | None = None
    container: _Container = _Container()


# -- modal submissions -------------------------------------------------------------------------------------

class _Option(_Strict):
    value: str = ""


class _Element(_Strict):
    value: str | None = None
    selected_option: _Option | None = None


class State(_Strict):
    values: dict[str, dict[str, _Element]] = {}


class View(_Strict):
    type: str  # Bolt's matchers read it
    callback_id: str
    private_metadata: str = ""
    state: State = State()
    blocks: list[dict[str, Any]] = []


class ViewSubmission(_Strict):
    type: str
    user: _Id
    view: View
    trigger_id: str = ""


# -- Events API --------------------------------------------------------------------------------------------

class Event(_Strict):
    type: str
    user: str | None = None
    tab: str = "home"

    @model_validator(mode="after")
    def _user_of_home(self) -> Event:
        if self.type == "app_home_opened" and not self.user:
            raise ValueError("app_home_opened without a user")
        return self


class EventCallback(_Strict):
    type: str
    event_id: str = Field(min_length=1)
    event: Event
