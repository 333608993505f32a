"""A local stand-in for Slack, for tests, benchmarks and `mlops-bot sandbox`.

`SlackEmulator` is a real aiohttp server on loopback that answers the Web API methods the bot uses the way
Slack does: it checks the token, enforces Block Kit limits and the per-channel posting rate (HTTP 429 with
Retry-After), keeps channels, threads, views and files so tests can assert what a person would see, and
serves response_url and file-upload URLs. `SlackEventsClient` plays Slack's other half: it delivers slash
commands, button presses, view submissions and events to the bot, signed exactly as Slack signs them.
Given an app-level token, it also speaks Socket Mode (bot/sandbox/socket_mode.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from bot.sandbox.socket_mode import SocketModeServer

Json = dict[str, Any]
T = TypeVar("T")

TEAM_ID = "T0SANDBOX"
BOT_USER_ID = "U0SANDBOXBOT"
BOT_ID = "B0SANDBOXBOT"
APP_ID = "A0SANDBOX"
VERIFICATION_TOKEN = "sandbox-verification-token"

# Slack's documented limits (Block Kit reference and the methods' pages).
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_MESSAGE_TEXT = 40_000
MAX_TOPIC = 250
TRIGGER_TTL = 3.0
RESPONSE_URL_USES = 5
# What Envoy (in front of Slack's API) answers when it cannot reach a backend.
UPSTREAM_ERROR = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
# A proxy's error page sent as JSON, which no JSON parser reads.
NOT_JSON = "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"
KNOWN_BLOCKS = {
    "section", "header", "context", "divider", "actions", "image", "input",
    "rich_text", "markdown", "file", "video",
}


def dm_id(user: str) -> str:
    """The id of the bot's DM with `user`."""
    return "D" + user[1:]


class _SlackError(Exception):
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


# ---------------------------------------------------------------------------------------------------------
# Block Kit validation: returns Slack-style "[ERROR] ... [json-pointer:...]" lines, empty when valid.


def _too_long(value: Any, limit: int, pointer: str) -> list[str]:
    if isinstance(value, str) and len(value) > limit:
        return [f"[ERROR] must be less than {limit + 1} characters [json-pointer:{pointer}]"]
    return []


def _text_object(obj: Any, limit: int, pointer: str, *, plain_only: bool = False) -> list[str]:
    types = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in types or not isinstance(obj.get("text"), str):
        return [f"[ERROR] failed to match all allowed schemas [json-pointer:{pointer}]"]
    return _too_long(obj["text"], limit, f"{pointer}/text")


def _optional_text(obj: Json, key: str, limit: int, pointer: str, *, plain_only: bool = True) -> list[str]:
    if key not in obj:
        return []
    return _text_object(obj[key], limit, f"{pointer}/{key}", plain_only=plain_only)


def _confirm_problems(confirm: Any, pointer: str) -> list[str]:
    if not isinstance(confirm, dict):
        return [f"[ERROR] failed to match all allowed schemas [json-pointer:{pointer}]"]
    return [
        *_text_object(confirm.get("title"), 100, f"{pointer}/title", plain_only=True),
        *_text_object(confirm.get("text"), 300, f"{pointer}/text"),
        *_text_object(confirm.get("confirm"), 30, f"{pointer}/confirm", plain_only=True),
        *_text_object(confirm.get("deny"), 30, f"{pointer}/deny", plain_only=True),
    ]


def _element_problems(element: Any, pointer: str) -> list[str]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [f"[ERROR] missing required field: type [json-pointer:{pointer}]"]
    problems = _too_long(element.get("action_id"), 255, f"{pointer}/action_id")
    problems += _optional_text(element, "placeholder", 150, pointer)
    if "confirm" in element:
        problems += _confirm_problems(element["confirm"], f"{pointer}/confirm")
    if element["type"] == "button":
        problems += _text_object(element.get("text"), 75, f"{pointer}/text", plain_only=True)
        problems += _too_long(element.get("value"), 2000, f"{pointer}/value")
        problems += _too_long(element.get("url"), 3000, f"{pointer}/url")
        if element.get("style") not in (None, "primary", "danger"):
            problems.append(f"[ERROR] must be one of primary, danger [json-pointer:{pointer}/style]")
    for i, option in enumerate(element.get("options") or []):
        at = f"{pointer}/options/{i}"
        problems += _text_object(option.get("text") if isinstance(option, dict) else None, 75, f"{at}/text")
        problems += _too_long(option.get("value") if isinstance(option, dict) else None, 150, f"{at}/value")
    if len(element.get("options") or []) > 100:
        problems.append(f"[ERROR] no more than 100 items allowed [json-pointer:{pointer}/options]")
    return problems


def _elements_problems(block: Json, key: str, limit: int, pointer: str) -> list[str]:
    elements = block.get(key)
    if not isinstance(elements, list) or not elements:
        return [f"[ERROR] missing required field: {key} [json-pointer:{pointer}]"]
    if len(elements) > limit:
        return [f"[ERROR] no more than {limit} items allowed [json-pointer:{pointer}/{key}]"]
    return []


def _block_problems(block: Any, pointer: str) -> list[str]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return [f"[ERROR] missing required field: type [json-pointer:{pointer}]"]
    kind = block["type"]
    if kind not in KNOWN_BLOCKS:
        return [f"[ERROR] failed to match all allowed schemas [json-pointer:{pointer}]"]
    problems = _too_long(block.get("block_id"), 255, f"{pointer}/block_id")
    if kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"[ERROR] must provide either text or fields [json-pointer:{pointer}]")
        problems += _optional_text(block, "text", 3000, pointer, plain_only=False)
        fields = block.get("fields", [])
        if len(fields) > 10:
            problems.append(f"[ERROR] no more than 10 items allowed [json-pointer:{pointer}/fields]")
        for i, item in enumerate(fields):
            problems += _text_object(item, 2000, f"{pointer}/fields/{i}")
        if "accessory" in block:
            problems += _element_problems(block["accessory"], f"{pointer}/accessory")
    elif kind == "header":
        problems += _text_object(block.get("text"), 150, f"{pointer}/text", plain_only=True)
    elif kind == "context":
        problems += _elements_problems(block, "elements", 10, pointer)
        for i, element in enumerate(block.get("elements") or []):
            at = f"{pointer}/elements/{i}"
            if isinstance(element, dict) and element.get("type") == "image":
                problems += _too_long(element.get("alt_text"), 2000, f"{at}/alt_text")
            else:
                problems += _text_object(element, 3000, at)
    elif kind == "actions":
        problems += _elements_problems(block, "elements", 25, pointer)
        action_ids = [e.get("action_id") for e in block.get("elements") or [] if isinstance(e, dict)]
        for i, element in enumerate(block.get("elements") or []):
            problems += _element_problems(element, f"{pointer}/elements/{i}")
        if len([a for a in action_ids if a]) != len({a for a in action_ids if a}):
            problems.append(f"[ERROR] action_id must be unique within a block [json-pointer:{pointer}/elements]")
    elif kind == "image":
        for key, limit in (("image_url", 3000), ("alt_text", 2000)):
            if not block.get(key):
                problems.append(f"[ERROR] missing required field: {key} [json-pointer:{pointer}]")
            problems += _too_long(block.get(key), limit, f"{pointer}/{key}")
        problems += _optional_text(block, "title", 2000, pointer)
    elif kind == "input":
        problems += _text_object(block.get("label"), 2000, f"{pointer}/label", plain_only=True)
        problems += _optional_text(block, "hint", 2000, pointer)
        problems += _element_problems(block.get("element"), f"{pointer}/element")
    return problems


def block_problems(blocks: list[Any], *, max_blocks: int, pointer: str = "/blocks") -> list[str]:
    """What Slack would say is wrong with `blocks`, one line per problem; empty when Slack would accept them."""
    if len(blocks) > max_blocks:
        return [f"[ERROR] no more than {max_blocks} items allowed [json-pointer:{pointer}]"]
    problems: list[str] = []
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        problems += _block_problems(block, f"{pointer}/{i}")
        block_id = block.get("block_id") if isinstance(block, dict) else None
        if block_id in block_ids:
            problems.append(f"[ERROR] block_id must be unique [json-pointer:{pointer}/{i}/block_id]")
        if block_id:
            block_ids.add(block_id)
    return problems


def view_problems(view: Json) -> list[str]:
    """What Slack would say is wrong with a modal or App Home view."""
    if view.get("type") not in ("modal", "home"):
        return ["[ERROR] failed to match all allowed schemas [json-pointer:/view/type]"]
    problems: list[str] = []
    if view["type"] == "modal":
        problems += _text_object(view.get("title"), 24, "/view/title", plain_only=True)
        problems += _optional_text(view, "submit", 24, "/view")
        problems += _optional_text(view, "close", 24, "/view")
        has_input = any(isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or [])
        if has_input and "submit" not in view:
            problems.append("[ERROR] submit is required when the view has input blocks [json-pointer:/view]")
    problems += _too_long(view.get("callback_id"), 255, "/view/callback_id")
    problems += _too_long(view.get("private_metadata"), 3000, "/view/private_metadata")
    problems += _too_long(view.get("external_id"), 255, "/view/external_id")
    blocks = view.get("blocks")
    if not isinstance(blocks, list):
        return problems + ["[ERROR] missing required field: blocks [json-pointer:/view]"]
    return problems + block_problems(blocks, max_blocks=MAX_VIEW_BLOCKS, pointer="/view/blocks")


# ---------------------------------------------------------------------------------------------------------
# Argument parsing: slack_sdk sends JSON for some methods, forms or query strings for others.


def _required(args: Json, name: str, error: str = "invalid_arguments") -> Any:
    value = args.get(name)
    if value in (None, ""):
        raise _SlackError(error, messages=[f"[ERROR] missing required field: {name}"])
    return value


def _json_arg(value: Any, error: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _SlackError(error) from None
    return value


def _id_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def _flag(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def _message_content(args: Json) -> tuple[str, list[Any] | None]:
    """The text and blocks of a message, rejected the way chat.postMessage rejects them."""
    text = args.get("text") or ""
    blocks = args.get("blocks")
    if blocks in (None, ""):
        blocks = None
    else:
        blocks = _json_arg(blocks, "invalid_blocks_format")
        if not isinstance(blocks, list):
            raise _SlackError("invalid_blocks_format")
        if problems := block_problems(blocks, max_blocks=MAX_MESSAGE_BLOCKS):
            raise _SlackError("invalid_blocks", messages=problems)
    if not isinstance(text, str):
        raise _SlackError("invalid_arguments")
    if len(text) > MAX_MESSAGE_TEXT:
        raise _SlackError("msg_too_long")
    if not text and not blocks:
        raise _SlackError("no_text")
    return text, blocks


# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCall:
    """One request to the Web API as the emulator answered it."""

    method: str
    args: Json
    status: int
    ok: bool
    error: str | None
    at: float  # time.monotonic()


@dataclass
class _Fault:
    kind: str
    times: int
    retry_after: int


@dataclass
class _Bucket:
    """Token bucket: `rate` tokens a second, at most `capacity`, refilled lazily."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> int:
        """Spend a token; return 0 when allowed, else the whole seconds to wait (at least 1)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate))


@dataclass
class _Grant:
    """A trigger_id or response_url token the emulator issued for one delivery."""

    user: str
    channel: str | None
    message_ts: str | None
    issued: float
    uses: int = 0


class SlackEmulator:
    """Slack's Web API on loopback, with the state a test needs to assert what users would see."""

    def __init__(
        self, *, bot_token: str = "xoxb-sandbox", signing_secret: str = "sandbox-signing-secret",
        post_rate: float = 1.0, post_burst: int = 4, users: dict[str, dict] | None = None,
        usergroups: dict[str, dict] | None = None, channels: dict[str, dict] | None = None,
        trigger_ttl: float = TRIGGER_TTL, app_token: str | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.signing_secret = signing_secret
        self.post_rate = post_rate
        self.post_burst = post_burst
        self.trigger_ttl = trigger_ttl
        self._users = users
        self._known_channels = channels is not None
        self._channels: dict[str, Json] = {
            cid: {"id": cid, "name": c.get("name", cid.lower()), "is_channel": True, "is_im": False}
            for cid, c in (channels or {}).items()
        }
        self._usergroups: dict[str, Json] = {
            gid: {"id": gid, "handle": g.get("handle", gid.lower()), "name": g.get("name", gid)}
            for gid, g in (usergroups or {}).items()
        }
        self._auto_usergroups = usergroups is None
        self.usergroup_members: dict[str, list[str]] = {
            gid: list(g.get("users", [])) for gid, g in (usergroups or {}).items()
        }
        self.calls: list[ApiCall] = []
        self.topics: dict[str, str] = {}
        self.ephemerals: list[Json] = []
        self.responses: list[Json] = []
        self.views: list[Json] = []
        self.home: dict[str, Json] = {}
        self.files: list[Json] = []
        self._messages: dict[str, dict[str, Json]] = {}
        self._open_views: dict[str, Json] = {}
        self._uploads: dict[str, Json] = {}
        self._triggers: dict[str, _Grant] = {}
        self._response_urls: dict[str, _Grant] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._last_ts = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._methods: dict[str, Callable[[Json], Json]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.setTopic": self._conversations_set_topic,
            "conversations.info": self._conversations_info,
            "conversations.open": self._conversations_open,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "usergroups.users.update": self._usergroups_users_update,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
        }
        # Methods called with the app-level token, given (token, whether it came in the Authorization header).
        self._app_methods: dict[str, Callable[[str, bool], Json]] = {}
        self.socket_mode: SocketModeServer | None = None
        if app_token is not None:
            from bot.sandbox.socket_mode import SocketModeServer  # it builds on this module's client

            self.socket_mode = SocketModeServer(self, app_token)
            self._app_methods["apps.connections.open"] = self.socket_mode.connections_open

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/upload/{file_id}", self._handle_upload)
        app.router.add_post("/response/{token}", self._handle_response)
        if self.socket_mode is not None:
            app.router.add_get("/link/", self.socket_mode.handle)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host, self._port = self._runner.addresses[0][:2]

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()  # releases requests held by an injected "timeout"
        if self.socket_mode is not None:
            await self.socket_mode.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    # -- what tests look at ---------------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str) -> list[Json]:
        """Top-level messages of a channel (a user id means that user's DM), oldest first, as they are now."""
        stored = self._messages.get(dm_id(channel) if channel.startswith("U") else channel, {})
        return [dict(m) for m in stored.values() if m["thread_ts"] in (None, m["ts"])]

    def replies(self, channel: str, ts: str) -> list[Json]:
        stored = self._messages.get(dm_id(channel) if channel.startswith("U") else channel, {})
        return [dict(m) for m in stored.values() if m["thread_ts"] == ts and m["ts"] != ts]

    def all_messages(self) -> list[Json]:
        """Every message in every channel, replies included, in the order they were posted."""
        return sorted((dict(m) for ms in self._messages.values() for m in ms.values()), key=lambda m: m["ts"])

    def find_message(self, channel: str, ts: str) -> Json | None:
        """A message (or reply, or ephemeral) by its ts, as it is now."""
        stored = self._messages.get(channel, {}).get(ts)
        if stored is not None:
            return dict(stored)
        return next((dict(e) for e in self.ephemerals if e["channel"] == channel and e["ts"] == ts), None)

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10) -> T:
        """Poll the recorded state until `predicate()` is truthy and return its value."""
        deadline = time.monotonic() + timeout
        while True:
            if result := predicate():
                return result
            if time.monotonic() >= deadline:
                recent = ", ".join(
                    f"{c.method}={'ok' if c.ok else c.error}" for c in self.calls[-8:]
                ) or "none"
                raise TimeoutError(
                    f"condition {getattr(predicate, '__qualname__', predicate)} still false after {timeout}s; "
                    f"last API calls: {recent}"
                )
            await asyncio.sleep(0.02)

    def inject_fault(self, method: str, kind: str, times: int = 1, retry_after: int = 1) -> None:
        """Make the next `times` calls to `method` fail.

        kind: "ratelimited" (429 + Retry-After), "server_error" (HTTP 500), "server_error_text" (HTTP 503 with a
        text/plain body, as a load balancer in front of Slack answers), "not_json" (HTTP 200 labelled JSON whose
        body is an HTML page), "timeout" (no answer for 30 s) or any Slack error code, answered as
        {"ok": false, "error": kind}. `method` may be "response_url".
        """
        self._faults.setdefault(method, []).append(_Fault(kind, times, retry_after))

    # -- grants issued for deliveries ---------------------------------------------------------------------

    def issue_trigger(self, user: str) -> str:
        trigger_id = f"{next(self._ids)}.{secrets.token_hex(6)}"
        self._triggers[trigger_id] = _Grant(user, None, None, time.monotonic())
        return trigger_id

    def issue_response_url(self, channel: str, user: str, message_ts: str | None = None) -> str:
        token = secrets.token_urlsafe(12)
        self._response_urls[token] = _Grant(user, channel, message_ts, time.monotonic())
        return f"{self.url}/response/{token}"

    def user(self, user_id: str) -> Json:
        """users.info's view of a user; raises LookupError for a user the emulator was not told about."""
        if user_id == BOT_USER_ID:
            return {"id": BOT_USER_ID, "name": "mlops-bot", "real_name": "mlops-bot", "is_bot": True}
        if self._users is not None and user_id not in self._users:
            raise LookupError(user_id)
        given = (self._users or {}).get(user_id, {})
        name = given.get("name", user_id.lower())
        real_name = given.get("real_name", name)
        return {
            "id": user_id, "team_id": TEAM_ID, "name": name, "real_name": real_name, "is_bot": False,
            "tz": given.get("tz", "UTC"),
            "profile": {"real_name": real_name, "display_name": given.get("display_name", name)},
            **{k: v for k, v in given.items() if k not in ("name", "real_name", "tz", "display_name")},
        }

    def channel_name(self, channel: str) -> str:
        return self._channels[channel]["name"] if channel in self._channels else channel.lower()

    # -- HTTP ------------------------------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args = await self._request_args(request)
        token = args.pop("token", None)
        if auth := request.headers.get("Authorization", ""):
            token = auth.removeprefix("Bearer ").strip()
        try:
            await self._apply_fault(method)
            if not token:
                raise _SlackError("not_authed")
            if method in self._app_methods:
                body = {"ok": True, **self._app_methods[method](token, bool(auth))}
                self._record(method, args, 200, None)
                return web.json_response(body)
            if token != self.bot_token:
                app_token = self.socket_mode.app_token if self.socket_mode else None
                raise _SlackError("not_allowed_token_type" if token == app_token else "invalid_auth")
            handler = self._methods.get(method)
            if handler is None:
                raise _SlackError("unknown_method")
            body = {"ok": True, **handler(args)}
            self._record(method, args, 200, None)
            return web.json_response(body)
        except _SlackError as e:
            self._record(method, args, e.status, e.error)
            return e.response()

    @staticmethod
    async def _request_args(request: web.Request) -> Json:
        args: Json = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json() if request.can_read_body else {}
            args.update(body if isinstance(body, dict) else {})
        elif request.can_read_body:
            args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        return args

    async def _apply_fault(self, method: str) -> None:
        faults = self._faults.get(method)
        if not faults:
            return
        fault = faults[0]
        fault.times -= 1
        if fault.times <= 0:
            faults.pop(0)
        if fault.kind == "ratelimited":
            raise _SlackError("ratelimited", status=429, headers={"Retry-After": str(fault.retry_after)})
        if fault.kind == "server_error":
            raise _SlackError("internal_error", status=500)
        if fault.kind == "server_error_text":
            raise _SlackError("upstream_unavailable", status=503, raw=("text/plain", UPSTREAM_ERROR))
        if fault.kind == "not_json":
            raise _SlackError("not_json", raw=("application/json", NOT_JSON))
        if fault.kind == "timeout":
            assert self._stopping is not None
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=30)
            except TimeoutError:
                pass
            raise _SlackError("request_timeout", status=504)
        raise _SlackError(fault.kind)

    def _record(self, method: str, args: Json, status: int, error: str | None) -> None:
        self.calls.append(ApiCall(method, args, status, error is None, error, time.monotonic()))

    async def _handle_upload(self, request: web.Request) -> web.Response:
        upload = self._uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="file_not_found")
        if request.content_type.startswith("multipart/"):
            part = await (await request.multipart()).next()
            data = await part.read() if isinstance(part, aiohttp.BodyPartReader) else b""
        else:
            data = await request.read()
        upload["content"] = bytes(data)
        return web.Response(text=f"OK - {len(data)}")

    async def _handle_response(self, request: web.Request) -> web.Response:
        grant = self._response_urls.get(request.match_info["token"])
        try:
            await self._apply_fault("response_url")
            if grant is None:
                raise _SlackError("no_active_hooks", status=404)
            if time.monotonic() - grant.issued > 30 * 60:
                raise _SlackError("expired_url", status=404)
            if grant.uses >= RESPONSE_URL_USES:
                raise _SlackError("used_url", status=404)
            body = await request.json()
            self.responses.append({"channel": grant.channel, "user": grant.user, "body": body})
            self._respond(grant, body)
            grant.uses += 1
        except _SlackError as e:
            # response_url answers a rejected body with HTTP 400, not Web API's 200 + ok:false
            return e.response(400 if e.status == 200 else e.status)
        return web.json_response({"ok": True})

    def _respond(self, grant: _Grant, body: Json) -> None:
        assert grant.channel is not None
        original = self._messages.get(grant.channel, {}).get(grant.message_ts or "")
        if _flag(body.get("delete_original")):
            if original is None:
                raise _SlackError("message_not_found", status=404)
            self._delete(grant.channel, original["ts"])
            return
        text, blocks = _message_content(body)
        if _flag(body.get("replace_original")) and original is not None:
            original.update(text=text, blocks=blocks, edited=True)
        elif body.get("response_type") == "in_channel":
            self._post(grant.channel, text, blocks, body.get("thread_ts"))
        else:
            self.ephemerals.append({
                "channel": grant.channel, "user": grant.user, "ts": self._next_ts(), "text": text,
                "blocks": blocks, "thread_ts": body.get("thread_ts"), "source": "response_url",
            })

    # -- state helpers ---------------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        micros = max(time.time_ns() // 1000, self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def _channel(self, channel: Any) -> str:
        """Resolve a channel argument to a channel id, creating it when the emulator is open-world."""
        if not isinstance(channel, str) or not channel:
            raise _SlackError("channel_not_found")
        if channel.startswith("U"):
            return self._open_dm(channel, "channel_not_found")
        if channel not in self._channels:
            if self._known_channels or channel.startswith("D"):  # DMs exist only once opened
                raise _SlackError("channel_not_found")
            self._channels[channel] = {"id": channel, "name": channel.lower(), "is_channel": True, "is_im": False}
        return channel

    def _open_dm(self, user: str, error: str) -> str:
        try:
            self.user(user)
        except LookupError:
            raise _SlackError(error) from None
        dm = dm_id(user)
        self._channels.setdefault(dm, {"id": dm, "is_channel": False, "is_im": True, "user": user})
        return dm

    def _message(self, channel: str, ts: Any) -> Json:
        message = self._messages.get(channel, {}).get(ts)
        if message is None:
            if any(e["channel"] == channel and e["ts"] == ts for e in self.ephemerals):
                raise _SlackError("cant_update_message")
            raise _SlackError("message_not_found")
        return message

    def _post(self, channel: str, text: str, blocks: list[Any] | None, thread_ts: str | None,
              files: list[Json] | None = None) -> Json:
        stored = self._messages.setdefault(channel, {})
        parent = None
        if thread_ts:
            parent = stored.get(thread_ts)
            if parent is None:
                raise _SlackError("thread_not_found")
            parent = stored[parent["thread_ts"] or parent["ts"]]  # replying to a reply threads on its parent
        ts = self._next_ts()
        message = {
            "type": "message", "ts": ts, "channel": channel, "user": BOT_USER_ID, "bot_id": BOT_ID,
            "text": text, "blocks": blocks, "thread_ts": parent["ts"] if parent else None,
            "edited": False, "reply_count": 0, "replies": [], "files": files or [],
        }
        stored[ts] = message
        if parent is not None:
            parent["thread_ts"] = parent["ts"]
            parent["reply_count"] += 1
            parent["replies"] = [*parent["replies"], {"user": BOT_USER_ID, "ts": ts}]
        return message

    def _delete(self, channel: str, ts: str) -> None:
        message = self._messages[channel].pop(ts)
        parent = self._messages[channel].get(message["thread_ts"] or "")
        if parent is not None and parent is not message:
            parent["reply_count"] -= 1
            parent["replies"] = [r for r in parent["replies"] if r["ts"] != ts]

    def _take_trigger(self, trigger_id: Any) -> _Grant:
        grant = self._triggers.get(trigger_id) if isinstance(trigger_id, str) else None
        if grant is None:
            raise _SlackError("invalid_trigger_id")
        if time.monotonic() - grant.issued > self.trigger_ttl:
            raise _SlackError("expired_trigger_id")
        if grant.uses:
            raise _SlackError("exchanged_trigger_id")
        grant.uses += 1
        return grant

    def _view_arg(self, args: Json) -> Json:
        view = _json_arg(_required(args, "view"), "invalid_arguments")
        if not isinstance(view, dict):
            raise _SlackError("invalid_arguments")
        if problems := view_problems(view):
            raise _SlackError("invalid_arguments", messages=problems)
        return view

    def _store_view(self, method: str, user: str, view: Json, view_id: str | None = None,
                    previous: str | None = None) -> Json:
        view_id = view_id or self._new_id("V")
        stored = {
            **view, "id": view_id, "team_id": TEAM_ID, "app_id": APP_ID, "bot_id": BOT_ID,
            "hash": secrets.token_hex(8), "state": {"values": {}},
            "private_metadata": view.get("private_metadata", ""), "callback_id": view.get("callback_id", ""),
            "root_view_id": self._open_views[previous]["root_view_id"] if previous else view_id,
            "previous_view_id": previous,
        }
        self._open_views[view_id] = stored
        self.views.append({"method": method, "user": user, "view_id": view_id, "view": stored})
        return stored

    # -- Web API methods -------------------------------------------------------------------------------------

    def _auth_test(self, args: Json) -> Json:
        return {
            "url": "https://sandbox.slack.com/", "team": "Sandbox", "user": "mlops-bot", "team_id": TEAM_ID,
            "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        now = time.monotonic()
        bucket = self._buckets.setdefault(
            channel, _Bucket(self.post_rate, self.post_burst, self.post_burst, now)
        )
        if wait := bucket.take(now):
            raise _SlackError("ratelimited", status=429, headers={"Retry-After": str(wait)})
        text, blocks = _message_content(args)
        message = self._post(channel, text, blocks, args.get("thread_ts"))
        return {"channel": channel, "ts": message["ts"], "message": dict(message)}

    def _chat_update(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        message = self._message(channel, args.get("ts"))
        if message["user"] != BOT_USER_ID:
            raise _SlackError("cant_update_message")
        text, blocks = _message_content(args)
        # Like Slack, an update without blocks keeps the message's blocks.
        message.update(text=text, blocks=message["blocks"] if blocks is None else blocks, edited=True)
        return {"channel": channel, "ts": message["ts"], "text": text, "message": dict(message)}

    def _chat_post_ephemeral(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        user = _required(args, "user", "user_not_found")
        try:
            self.user(user)
        except LookupError:
            raise _SlackError("user_not_found") from None
        text, blocks = _message_content(args)
        ts = self._next_ts()
        self.ephemerals.append({
            "channel": channel, "user": user, "ts": ts, "text": text, "blocks": blocks,
            "thread_ts": args.get("thread_ts"), "source": "chat.postEphemeral",
        })
        return {"message_ts": ts}

    def _chat_delete(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        message = self._message(channel, args.get("ts"))
        if message["user"] != BOT_USER_ID:
            raise _SlackError("cant_delete_message")
        self._delete(channel, message["ts"])
        return {"channel": channel, "ts": message["ts"]}

    def _chat_get_permalink(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        message = self._message(channel, args.get("message_ts"))
        return {"channel": channel, "permalink": f"{self.url}/archives/{channel}/p{message['ts'].replace('.', '')}"}

    def _conversation(self, channel: str) -> Json:
        return {**self._channels[channel], "topic": {"value": self.topics.get(channel, "")}}

    def _conversations_set_topic(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        topic = args.get("topic") or ""
        if len(topic) > MAX_TOPIC:
            raise _SlackError("too_long")
        self.topics[channel] = topic
        return {"channel": self._conversation(channel)}

    def _conversations_info(self, args: Json) -> Json:
        return {"channel": self._conversation(self._channel(args.get("channel")))}

    def _conversations_open(self, args: Json) -> Json:
        users = _id_list(args.get("users"))
        if not users:
            raise _SlackError("users_list_not_supplied")
        if len(users) > 1:
            raise _SlackError("not_supported", messages=["[ERROR] the emulator opens DMs with one user only"])
        return {"channel": {"id": self._open_dm(users[0], "user_not_found")}}

    def _usergroup(self, args: Json) -> str:
        group = _required(args, "usergroup", "no_such_subteam")
        if group not in self._usergroups:
            if not self._auto_usergroups:
                raise _SlackError("no_such_subteam")
            self._usergroups[group] = {"id": group, "handle": group.lower(), "name": group}
        self.usergroup_members.setdefault(group, [])
        return group

    def _usergroup_info(self, group: str, with_users: bool) -> Json:
        members = self.usergroup_members.get(group, [])
        info = {**self._usergroups[group], "team_id": TEAM_ID, "user_count": len(members)}
        return {**info, "users": list(members)} if with_users else info

    def _usergroups_list(self, args: Json) -> Json:
        with_users = _flag(args.get("include_users"))
        return {"usergroups": [self._usergroup_info(g, with_users) for g in self._usergroups]}

    def _usergroups_users_list(self, args: Json) -> Json:
        return {"users": list(self.usergroup_members[self._usergroup(args)])}

    def _usergroups_users_update(self, args: Json) -> Json:
        group = self._usergroup(args)
        if "users" not in args:
            raise _SlackError("no_users_provided")
        users = _id_list(args["users"])
        if not users:
            raise _SlackError("invalid_users")
        for user in users:
            try:
                self.user(user)
            except LookupError:
                raise _SlackError("invalid_users") from None
        self.usergroup_members[group] = users
        return {"usergroup": self._usergroup_info(group, with_users=True)}

    def _users_info(self, args: Json) -> Json:
        try:
            return {"user": self.user(_required(args, "user", "user_not_found"))}
        except LookupError:
            raise _SlackError("user_not_found") from None

    def _views_open(self, args: Json) -> Json:
        grant = self._take_trigger(args.get("trigger_id"))
        view = self._view_arg(args)
        return {"view": self._store_view("views.open", grant.user, view)}

    def _views_push(self, args: Json) -> Json:
        grant = self._take_trigger(args.get("trigger_id"))
        view = self._view_arg(args)
        current = next(
            (v["view_id"] for v in reversed(self.views) if v["user"] == grant.user and v["method"] != "views.publish"),
            None,
        )
        if current is None:
            raise _SlackError("not_found")
        return {"view": self._store_view("views.push", grant.user, view, previous=current)}

    def _views_update(self, args: Json) -> Json:
        view_id = args.get("view_id") or next(
            (vid for vid, v in self._open_views.items() if v.get("external_id") == args.get("external_id")), None
        )
        current = self._open_views.get(view_id or "")
        if current is None:
            raise _SlackError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise _SlackError("hash_conflict")
        view = self._view_arg(args)
        user = next(v["user"] for v in self.views if v["view_id"] == view_id)
        return {"view": self._store_view("views.update", user, view, view_id, current["previous_view_id"])}

    def _views_publish(self, args: Json) -> Json:
        user = _required(args, "user_id", "user_not_found")
        view = self._view_arg(args)
        if view["type"] != "home":
            raise _SlackError("invalid_arguments", messages=["[ERROR] must be home [json-pointer:/view/type]"])
        self.home[user] = self._store_view("views.publish", user, view)
        return {"view": self.home[user]}

    def _files_get_upload_url(self, args: Json) -> Json:
        filename = _required(args, "filename")
        try:
            length = int(_required(args, "length"))
        except ValueError:
            raise _SlackError("invalid_arguments") from None
        file_id = self._new_id("F")
        self._uploads[file_id] = {"id": file_id, "name": filename, "length": length, "content": None}
        return {"file_id": file_id, "upload_url": f"{self.url}/upload/{file_id}"}

    def _files_complete_upload(self, args: Json) -> Json:
        listed = _json_arg(_required(args, "files"), "invalid_arguments")
        if not isinstance(listed, list) or not listed:
            raise _SlackError("invalid_arguments")
        uploads = []
        for item in listed:
            upload = self._uploads.get(item.get("id") if isinstance(item, dict) else None)
            if upload is None or upload["content"] is None:
                raise _SlackError("file_not_found")
            uploads.append({**upload, "title": item.get("title") or upload["name"]})
        channel = self._channel(args["channel_id"]) if args.get("channel_id") else None
        shared = [{"id": u["id"], "name": u["name"], "title": u["title"], "size": len(u["content"])} for u in uploads]
        # Sharing a file posts a message carrying it, in the thread when thread_ts is given.
        message_ts = None
        if channel is not None:
            comment = args.get("initial_comment") or ""
            message_ts = self._post(channel, comment, None, args.get("thread_ts"), shared)["ts"]
        for upload in uploads:
            del self._uploads[upload["id"]]
            self.files.append({
                **upload, "channel": channel, "thread_ts": args.get("thread_ts"),
                "initial_comment": args.get("initial_comment"), "message_ts": message_ts,
            })
        return {"files": shared}


# ---------------------------------------------------------------------------------------------------------
# The other direction: Slack delivering requests to the bot.


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
