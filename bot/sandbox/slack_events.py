"""Slack's side of the HTTP deliveries: slash commands, button presses, view submissions and events posted to
the bot, signed exactly as Slack signs them, with the trigger_ids and response_urls the emulator issues."""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp

from bot.sandbox.slack_api import APP_ID, BOT_USER_ID, TEAM_ID, VERIFICATION_TOKEN, Json, dm_id

if TYPE_CHECKING:  # annotations only: slack_emulator imports this module, through socket_mode
    from bot.sandbox.slack_emulator import SlackEmulator


@dataclass(frozen=True)
class Delivery:
    """One request delivered to the bot and the bot's answer to it."""

    status: int
    body: str
    request_body: bytes
    content_type: str
    trigger_id: str | None = None
    response_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class SlackEventsClient:
    """Delivers slash commands, interactions and events to the bot, signed the way Slack signs them."""

    def __init__(self, app_url: str, signing_secret: str, emulator: SlackEmulator, team_id: str = TEAM_ID) -> None:
        self.app_url = app_url
        self.signing_secret = signing_secret
        self.emulator = emulator
        self.team_id = team_id
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._events = itertools.count(1)

    async def __aenter__(self) -> SlackEventsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        base = b"v0:" + str(timestamp).encode() + b":" + body
        digest = hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}

    async def send_raw(
        self, body: bytes, headers: dict[str, str], content_type: str = "application/x-www-form-urlencoded",
    ) -> Delivery:
        async with self._session.post(
            self.app_url, data=body, headers={**headers, "Content-Type": content_type}
        ) as response:
            return Delivery(
                status=response.status, body=await response.text(), request_body=body,
                content_type=content_type, headers=dict(response.headers),
            )

    async def _deliver(
        self, body: bytes, content_type: str, *, trigger_id: str | None = None, response_url: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> Delivery:
        delivery = await self.send_raw(body, {**self.sign(body), **(extra_headers or {})}, content_type)
        return Delivery(
            status=delivery.status, body=delivery.body, request_body=body, content_type=content_type,
            trigger_id=trigger_id, response_url=response_url, headers=delivery.headers,
        )

    async def redeliver(self, delivery: Delivery, retry_num: int = 1, reason: str = "http_timeout") -> Delivery:
        """Slack's retry: the very same body, freshly signed, with the retry headers."""
        return await self._deliver(
            delivery.request_body, delivery.content_type, trigger_id=delivery.trigger_id,
            response_url=delivery.response_url, extra_headers=_retry_headers(retry_num, reason),
        )

    def _user(self, user: str) -> Json:
        return {"id": user, "username": self._user_name(user), "name": self._user_name(user), "team_id": self.team_id}

    def _user_name(self, user: str) -> str:
        try:
            return self.emulator.user(user)["name"]
        except LookupError:
            return user.lower()

    async def command(
        self, user: str, text: str, channel: str = "C0MLOPS", command: str = "/mlops", retry_num: int | None = None,
    ) -> Delivery:
        trigger_id = self.emulator.issue_trigger(user)
        response_url = self.emulator.issue_response_url(channel, user)
        body = urlencode({
            "token": VERIFICATION_TOKEN, "team_id": self.team_id, "team_domain": "sandbox",
            "channel_id": channel, "channel_name": self.emulator.channel_name(channel), "user_id": user,
            "user_name": self._user_name(user), "command": command, "text": text, "api_app_id": APP_ID,
            "is_enterprise_install": "false", "response_url": response_url, "trigger_id": trigger_id,
        }).encode()
        extra = _retry_headers(retry_num, "http_timeout") if retry_num is not None else None
        return await self._deliver(
            body, "application/x-www-form-urlencoded", trigger_id=trigger_id, response_url=response_url,
            extra_headers=extra,
        )

    async def _interaction(self, payload: Json, *, trigger_id: str, response_url: str | None) -> Delivery:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self._deliver(
            body, "application/x-www-form-urlencoded", trigger_id=trigger_id, response_url=response_url
        )

    async def press(
        self, user: str, action_id: str, value: str, *, channel: str, message_ts: str, block_id: str = "b",
        text: str = "",
    ) -> Delivery:
        trigger_id = self.emulator.issue_trigger(user)
        response_url = self.emulator.issue_response_url(channel, user, message_ts)
        message = self.emulator.find_message(channel, message_ts)
        is_ephemeral = message is not None and "source" in message
        payload: Json = {
            "type": "block_actions", "team": {"id": self.team_id, "domain": "sandbox"}, "user": self._user(user),
            "api_app_id": APP_ID, "token": VERIFICATION_TOKEN, "trigger_id": trigger_id,
            "container": {
                "type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": is_ephemeral,
            },
            "channel": {"id": channel, "name": self.emulator.channel_name(channel)},
            "state": {"values": {}}, "response_url": response_url, "is_enterprise_install": False,
            "actions": [{
                "type": "button", "action_id": action_id, "block_id": block_id, "value": value,
                "text": {"type": "plain_text", "text": text}, "action_ts": f"{time.time():.6f}",
            }],
        }
        if message is not None and not is_ephemeral:
            payload["message"] = {k: v for k, v in message.items() if v is not None}
        return await self._interaction(payload, trigger_id=trigger_id, response_url=response_url)

    async def press_button(self, user: str, channel: str, message_ts: str, label_or_action_id: str) -> Delivery:
        """Press a button of a recorded message, found by its label or action_id."""
        message = self.emulator.find_message(channel, message_ts)
        if message is None:
            raise LookupError(f"no message {message_ts} in {channel}")
        buttons = list(_buttons(message.get("blocks") or []))
        for block_id, button in buttons:
            if label_or_action_id in (button["text"]["text"], button.get("action_id")):
                return await self.press(
                    user, button.get("action_id", ""), button.get("value", ""), channel=channel,
                    message_ts=message_ts, block_id=block_id, text=button["text"]["text"],
                )
        listed = ", ".join(f"{b['text']['text']!r} ({b.get('action_id')})" for _, b in buttons) or "none"
        raise LookupError(f"no button {label_or_action_id!r} on message {message_ts}; buttons: {listed}")

    async def submit_view(self, user: str, view: Json, values: dict[str, dict[str, str]]) -> Delivery:
        """Submit a modal with `values` (block_id → action_id → value) typed in its inputs."""
        elements = {
            b.get("block_id"): b["element"] for b in view.get("blocks", []) if b.get("type") == "input"
        }
        state = {
            block_id: {
                action_id: _input_state(elements.get(block_id, {}).get("type", "plain_text_input"), value)
                for action_id, value in actions.items()
            }
            for block_id, actions in values.items()
        }
        trigger_id = self.emulator.issue_trigger(user)
        payload = {
            "type": "view_submission", "team": {"id": self.team_id, "domain": "sandbox"}, "user": self._user(user),
            "api_app_id": APP_ID, "token": VERIFICATION_TOKEN, "trigger_id": trigger_id,
            "view": {**view, "state": {"values": state}}, "response_urls": [], "is_enterprise_install": False,
        }
        return await self._interaction(payload, trigger_id=trigger_id, response_url=None)

    async def home_opened(self, user: str) -> Delivery:
        now = time.time()
        event: Json = {
            "type": "app_home_opened", "user": user, "channel": dm_id(user), "tab": "home",
            "event_ts": f"{now:.6f}",
        }
        if user in self.emulator.home:
            event["view"] = self.emulator.home[user]
        body = json.dumps({
            "token": VERIFICATION_TOKEN, "team_id": self.team_id, "api_app_id": APP_ID, "event": event,
            "type": "event_callback", "event_id": f"Ev{next(self._events):08d}{secrets.token_hex(3).upper()}",
            "event_time": int(now),
            "authorizations": [{"team_id": self.team_id, "user_id": BOT_USER_ID, "is_bot": True}],
            "is_ext_shared_channel": False,
        }).encode()
        return await self._deliver(body, "application/json")


def _retry_headers(retry_num: int, reason: str) -> dict[str, str]:
    return {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": reason}


def _buttons(blocks: list[Json]) -> Iterator[tuple[str, Json]]:
    """Every button in `blocks` with the block_id Slack would report for it."""
    for i, block in enumerate(blocks):
        block_id = block.get("block_id", f"block-{i}")
        candidates = [*block.get("elements", []), block.get("accessory")] if block.get("type") in (
            "actions", "section") else []
        for element in candidates:
            if isinstance(element, dict) and element.get("type") == "button":
                yield block_id, element


def _input_state(element_type: str, value: str) -> Json:
    """One input's entry in view.state.values, shaped as Slack shapes it for that element type."""
    if element_type in ("static_select", "external_select"):
        option = {"text": {"type": "plain_text", "text": value}, "value": value}
        return {"type": element_type, "selected_option": option}
    if element_type == "users_select":
        return {"type": element_type, "selected_user": value}
    if element_type == "conversations_select":
        return {"type": element_type, "selected_conversation": value}
    if element_type == "datepicker":
        return {"type": element_type, "selected_date": value}
    return {"type": element_type, "value": value}
