"""The domains' one door to Slack.

Domain services hand `Message`s built by their own messages.py to `Notifier`; nothing outside this module
and handlers/ talks to slack_sdk, so the domains stay testable and the Slack API surface stays in one place.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

import aiohttp
from pydantic import Field
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncSlackResponse, AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient


@dataclass(frozen=True)
class Message:
    """A Slack message: `text` is the notification/fallback text, `blocks` the Block Kit layout."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


def escape(text: str) -> str:
    """Slack's mrkdwn escapes: without them `<model>` reads as a link and echoed text could @-mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(text: object, limit: int) -> str:
    """Text from outside (a label, a stored row) shown literally on one line: escaped, cut to `limit`."""
    flat = " ".join(str(text).split())
    return escape(flat if len(flat) <= limit else flat[: limit - 1] + "…")


# Slack's limits on one message: blocks, characters of a section's text, characters of the message text.
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_TEXT = 40_000
# Messages one answer may take; past that its first part says where the whole of it is: a text file, not a flood
# (and a response_url takes only 5 answers in all).
MAX_PARTS = 3
# The last line of a part when the answer goes on elsewhere; every part keeps room for the longest.
CONTINUED = {"thread": "_… continued in the thread_", "below": "_… continued below_"}
IN_FILE = {"thread": ":page_facing_up: _Too long for Slack messages: the whole answer is in the file in the thread._",
           "dm": ":page_facing_up: _Too long for Slack messages: the whole answer is in a file in your DM with the bot._"}
NOTE_ROOM = max(map(len, [*CONTINUED.values(), *IN_FILE.values()])) + 1

# A row id as a button value or modal metadata carries it. Past int64 SQLite cannot even look it up
# (OverflowError), so such a value is refused with the button's other malformed values.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]


# chat.update's answers for a message that is no longer there to edit.
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message"})


class SlackError(Exception):
    """A Slack Web API call that failed even after the client's retries; `error` is Slack's code."""

    def __init__(self, method: str, error: str):
        super().__init__(f"Slack {method} failed: {error}")
        self.method = method
        self.error = error


# What a call into slack_sdk raises for reasons outside our code: Slack's refusals and the SDK's own errors, the
# network, and the SDK tripping over an answer that is not Slack's JSON (a proxy's text/plain page makes it call
# .get on a str; an undecodable body is a ValueError). Caught around the client call only. TypeError is left
# out: there it means arguments of ours the SDK cannot send (a block that is not JSON), which is our bug.
CLIENT_FAILURES = (SlackClientError, aiohttp.ClientError, asyncio.TimeoutError, AttributeError, ValueError)
# files_upload_v2 also reads Slack's answers with len() and passes the upload URL on, so a reply missing
# `files` or `upload_url` is a TypeError inside it.
UPLOAD_FAILURES = (*CLIENT_FAILURES, TypeError)

ERROR_CHARS = 200


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _failure(exc: BaseException) -> str:
    """A readable `SlackError.error` for a failed client call: Slack's error code when Slack answered with one."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        data = getattr(response, "data", None)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        status = getattr(response, "status_code", None) or getattr(response, "status", None)
        if isinstance(data, str) and data.strip():
            return f"HTTP {status}: {_short(data)}"
        if isinstance(response, AsyncSlackResponse):
            return f"HTTP {status}"
        # A body that did not parse as JSON: the SDK kept only its message, which quotes the body.
        first_line = str(exc).split("\n", 1)[0].removeprefix("Unexpectedly failed to read the response body: ")
        return f"HTTP {status}: {_short(first_line)}"
    raised = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, (AttributeError, ValueError, TypeError)) and not isinstance(exc, aiohttp.ClientError):
        return _short(f"slack_sdk could not read the answer ({raised})")
    return _short(raised)


def web_client(token: str, *, base_url: str | None = None) -> AsyncWebClient:
    """The bot's Web API client: waits out 429s (Retry-After) and retries dropped connections and 5xx."""
    handlers = [
        AsyncRateLimitErrorRetryHandler(max_retry_count=20),
        AsyncConnectionErrorRetryHandler(max_retry_count=3),
        AsyncServerErrorRetryHandler(max_retry_count=2),
    ]
    kwargs = {"base_url": base_url} if base_url else {}
    return AsyncWebClient(token=token, retry_handlers=handlers, timeout=15, **kwargs)


def chunks(blocks: list[dict[str, Any]], size: int = MAX_BLOCKS) -> list[list[dict[str, Any]]]:
    return [blocks[i : i + size] for i in range(0, len(blocks), size)] or [[]]


def split_text(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at a line end, else a space, else anywhere; only the
    line end or space a cut falls on is dropped."""
    pieces = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = text.rfind(" ", 0, limit + 1)
        if cut <= 0:
            pieces.append(text[:limit])
            text = text[limit:]
            continue
        pieces.append(text[:cut])
        text = text[cut + 1 :]
    return [*pieces, text]


def excerpt(text: str, limit: int) -> str:
    """The start of `text`, marked as cut when it is: for echoes and fallback texts, never for an answer itself."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section_pieces(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A section whose text is past Slack's 3,000 characters as several sections; the accessory stays on the first."""
    text = block.get("text")
    if block.get("type") != "section" or not isinstance(text, dict) or len(text.get("text") or "") <= MAX_SECTION_TEXT:
        return [block]
    first, *rest = split_text(text["text"], MAX_SECTION_TEXT)
    return [{**block, "text": {**text, "text": first}}, *({"type": "section", "text": {**text, "text": t}} for t in rest)]


def fit(msg: Message) -> list[Message]:
    """`msg` as messages within Slack's limits, in order, nothing left out; when there are several, each has room
    for one more line (see `noted`)."""
    if not msg.blocks:
        if len(msg.text) <= MAX_TEXT:
            return [msg]
        return [Message(piece) for piece in split_text(msg.text, MAX_TEXT - NOTE_ROOM)]
    blocks = [piece for block in msg.blocks for piece in _section_pieces(block)]
    # With blocks, `text` is only the notification's fallback: the blocks carry the answer.
    text = excerpt(msg.text, MAX_TEXT)
    if len(blocks) <= MAX_BLOCKS:
        return [Message(text, blocks)]
    return [Message(text, part) for part in chunks(blocks, MAX_BLOCKS - 1)]


def noted(msg: Message, note: str) -> Message:
    """A part of an answer with a last line saying where the answer goes on."""
    if not msg.blocks:
        return Message(f"{msg.text}\n{note}")
    return Message(msg.text, [*msg.blocks, {"type": "context", "elements": [{"type": "mrkdwn", "text": note}]}])


def _in_order(parts: list[Message]) -> list[Message]:
    return [noted(p, CONTINUED["below"]) if i < len(parts) - 1 else p for i, p in enumerate(parts)]


def plain_text(msg: Message) -> str:
    """Everything `msg` says, as text for a file: the text of each block, or the message text without blocks."""
    if not msg.blocks:
        return msg.text
    said = []
    for block in msg.blocks:
        texts = [block.get("text"), *(block.get("fields") or []), *(block.get("elements") or [])]
        said += [t["text"] for t in texts if isinstance(t, dict) and isinstance(t.get("text"), str)]
    return "\n\n".join(said)


class ChannelPacer:
    """A token bucket per channel: `rate` writes per second with bursts of `burst`, as Slack allows.

    Waiting here rather than on Slack's 429s keeps a storm from hammering the API, and a writer that waits
    lets the callers queued behind it (see DatagenService._show) fold their edits into one.
    """

    def __init__(self, rate: float = 1.0, burst: int = 4):
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, when counted)

    async def take(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            tokens, counted = self._buckets.get(channel, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - counted) * self.rate)
            if tokens >= 1:
                self._buckets[channel] = (tokens - 1, now)
                return
            self._buckets[channel] = (tokens, now)
            await asyncio.sleep((1 - tokens) / self.rate)


class Notifier:
    def __init__(self, client: AsyncWebClient, *, rate: float = 1.0, burst: int = 4):
        self.client = client
        # Posts follow Slack's documented ~1 message/s per channel; edits get a bucket of their own so a
        # card's few edits never wait behind its thread replies.
        self.posts = ChannelPacer(rate, burst)
        self.edits = ChannelPacer(rate, burst)

    async def _call(self, method: str, **kwargs: Any) -> AsyncSlackResponse:
        # The SDK's named methods know each endpoint's encoding (JSON or form), so use them; looked up outside
        # the try so that a method name of ours that does not exist stays an AttributeError.
        call = getattr(self.client, method.replace(".", "_"))
        try:
            return await call(**kwargs)
        except CLIENT_FAILURES as exc:
            raise SlackError(method, _failure(exc)) from exc

    async def post(self, channel: str, msg: Message, *, thread_ts: str | None = None) -> str:
        """Post a message. One past Slack's limits continues in its thread (in the same thread for a reply); past
        MAX_PARTS messages, its first part is posted and the whole of it attached there as a file."""
        first, *rest = fit(msg)
        if rest:
            first = noted(first, IN_FILE["thread"] if len(rest) >= MAX_PARTS else CONTINUED["below" if thread_ts else "thread"])
        await self.posts.take(channel)
        resp = await self._call("chat.postMessage", channel=channel, text=first.text, blocks=first.blocks, thread_ts=thread_ts)
        await self._rest_in_thread(resp["channel"], thread_ts or resp["ts"], msg, rest)
        return resp["ts"]

    async def _rest_in_thread(self, channel: str, thread_ts: str, msg: Message, rest: list[Message]) -> None:
        if len(rest) >= MAX_PARTS:
            await self.upload(channel, "answer.txt", plain_text(msg).encode(), title="The whole answer", thread_ts=thread_ts)
            return
        for part in _in_order(rest):
            await self.posts.take(channel)
            await self._call("chat.postMessage", channel=channel, text=part.text, blocks=part.blocks, thread_ts=thread_ts)

    async def reply(self, channel: str, thread_ts: str, msg: Message) -> str:
        return await self.post(channel, msg, thread_ts=thread_ts)

    async def update(self, channel: str, ts: str, msg: Message) -> None:
        """Edit a message in place; what does not fit in one message goes on in its thread, as a post's does."""
        first, *rest = fit(msg)
        if rest:
            first = noted(first, IN_FILE["thread"] if len(rest) >= MAX_PARTS else CONTINUED["thread"])
        await self.edits.take(channel)
        await self._call("chat.update", channel=channel, ts=ts, text=first.text, blocks=first.blocks)
        await self._rest_in_thread(channel, ts, msg, rest)

    async def edit_or_repost(self, channel: str, ts: str, msg: Message) -> str:
        """Edit a message in place, or post it again when it is gone (someone deleted it); the ts now showing it."""
        try:
            await self.update(channel, ts, msg)
            return ts
        except SlackError as exc:
            if exc.error not in MESSAGE_GONE:
                raise
        return await self.post(channel, msg)

    async def _to_one_person(self, user: str | None, msg: Message) -> list[Message]:
        """The parts of an answer only `user` sees. Past MAX_PARTS: the whole of it as a file in their DM, and its
        first part saying so; without a user, the first parts and a last saying how much did not fit."""
        parts = fit(msg)
        if len(parts) <= MAX_PARTS:
            return _in_order(parts)
        if user is not None:
            opened = await self._call("conversations.open", users=user)
            await self.upload(opened["channel"]["id"], "answer.txt", plain_text(msg).encode(), title="The whole answer")
            return [noted(parts[0], IN_FILE["dm"])]
        left = sum(len(plain_text(p)) for p in parts[MAX_PARTS - 1 :])
        return [*_in_order(parts[: MAX_PARTS - 1]),
                Message(f":warning: _{left:,} more characters of this answer do not fit in the answers Slack allows here._")]

    async def ephemeral(self, channel: str, user: str, msg: Message) -> None:
        for part in await self._to_one_person(user, msg):
            await self._call("chat.postEphemeral", channel=channel, user=user, text=part.text, blocks=part.blocks)

    async def respond(self, response_url: str, msg: Message, *, replace_original: bool = False,
                      user: str | None = None) -> None:
        """Answer through a command's or button's response_url (ephemeral unless replacing the card). An answer past
        Slack's limits goes as several; past MAX_PARTS, as a file in `user`'s DM (see `_to_one_person`)."""
        for i, part in enumerate(await self._to_one_person(user, msg)):
            await self._respond(response_url, part, replace_original=replace_original and i == 0)

    async def _respond(self, response_url: str, msg: Message, *, replace_original: bool) -> None:
        webhook = AsyncWebhookClient(response_url, timeout=15, retry_handlers=self.client.retry_handlers)
        try:
            resp = await webhook.send(
                text=msg.text, blocks=msg.blocks, response_type="ephemeral", replace_original=replace_original
            )
        except CLIENT_FAILURES as exc:
            raise SlackError("response_url", _failure(exc)) from exc
        if resp.status_code != 200:
            body = _short(resp.body or "")
            raise SlackError("response_url", f"HTTP {resp.status_code}: {body}" if body else f"HTTP {resp.status_code}")

    async def dm(self, user: str, msg: Message) -> str:
        opened = await self._call("conversations.open", users=user)
        return await self.post(opened["channel"]["id"], msg)

    async def upload(self, channel: str, filename: str, content: bytes, *, title: str, thread_ts: str | None = None) -> None:
        # Three requests inside (get an upload URL, upload, complete), any of which can fail.
        try:
            await self.client.files_upload_v2(
                channel=channel, filename=filename, content=content, title=title, thread_ts=thread_ts
            )
        except UPLOAD_FAILURES as exc:
            raise SlackError("files.upload", _failure(exc)) from exc

    async def set_topic(self, channel: str, topic: str) -> None:
        await self._call("conversations.setTopic", channel=channel, topic=topic)

    async def usergroup_members(self, group: str) -> list[str]:
        resp = await self._call("usergroups.users.list", usergroup=group)
        return list(resp["users"])

    async def set_usergroup(self, group: str, users: list[str]) -> None:
        if not users:  # Slack refuses it, and an empty @oncall would page nobody
            raise ValueError("refusing to empty a user group")
        await self._call("usergroups.users.update", usergroup=group, users=",".join(users))

    async def user_by_email(self, email: str) -> str | None:
        """The id of the workspace member with this email (users.lookupByEmail), or None when there is none."""
        try:
            resp = await self._call("users.lookupByEmail", email=email)
        except SlackError as exc:
            if exc.error == "users_not_found":
                return None
            raise
        return str(resp["user"]["id"])

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        await self._call("views.open", trigger_id=trigger_id, view=view)

    async def publish_home(self, user: str, view: dict[str, Any]) -> None:
        await self._call("views.publish", user_id=user, view=view)
