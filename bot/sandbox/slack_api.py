"""What the emulator's Web API, its Socket Mode and its events client share: the workspace's ids, Slack's
error answer, and the readers of method arguments and message content."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.sandbox.block_kit import MAX_MESSAGE_BLOCKS, MAX_MESSAGE_TEXT, block_problems

Json = dict[str, Any]

TEAM_ID = "T0SANDBOX"
BOT_USER_ID = "U0SANDBOXBOT"
BOT_ID = "B0SANDBOXBOT"
APP_ID = "A0SANDBOX"
VERIFICATION_TOKEN = "sandbox-verification-token"


def dm_id(user: str) -> str:
    """The id of the bot's DM with `user`."""
    return "D" + user[1:]


class SlackApiError(Exception):
    """An answer other than ok: Slack's error code, plus the HTTP status and headers it comes with."""

    def __init__(
        self, error: str, *, status: int = 200, headers: dict[str, str] | None = None,
        messages: list[str] | None = None, raw: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = headers or {}
        self.messages = messages or []
        # (content type, body) when the answer comes from something in front of Slack, not Slack itself.
        self.raw = raw

    def body(self) -> Json:
        body: Json = {"ok": False, "error": self.error}
        if self.messages:
            body["response_metadata"] = {"messages": self.messages}
        return body

    def response(self, status: int | None = None) -> web.Response:
        status = self.status if status is None else status
        if self.raw is not None:
            content_type, text = self.raw
            return web.Response(text=text, status=status, headers=self.headers, content_type=content_type)
        return web.json_response(self.body(), status=status, headers=self.headers)


# Argument parsing: slack_sdk sends JSON for some methods, forms or query strings for others.


def required(args: Json, name: str, error: str = "invalid_arguments") -> Any:
    value = args.get(name)
    if value in (None, ""):
        raise SlackApiError(error, messages=[f"[ERROR] missing required field: {name}"])
    return value


def json_arg(value: Any, error: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise SlackApiError(error) from None
    return value


def id_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def flag(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def message_content(args: Json) -> tuple[str, list[Any] | None]:
    """The text and blocks of a message, rejected the way chat.postMessage rejects them."""
    text = args.get("text") or ""
    blocks = args.get("blocks")
    if blocks in (None, ""):
        blocks = None
    else:
        blocks = json_arg(blocks, "invalid_blocks_format")
        if not isinstance(blocks, list):
            raise SlackApiError("invalid_blocks_format")
        if problems := block_problems(blocks, max_blocks=MAX_MESSAGE_BLOCKS):
            raise SlackApiError("invalid_blocks", messages=problems)
    if not isinstance(text, str):
        raise SlackApiError("invalid_arguments")
    if len(text) > MAX_MESSAGE_TEXT:
        raise SlackApiError("msg_too_long")
    if not text and not blocks:
        raise SlackApiError("no_text")
    return text, blocks
