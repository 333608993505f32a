"""A local stand-in for Slack, for tests, benchmarks and `mlops-bot sandbox`.

`SlackEmulator` is a real aiohttp server on loopback that answers the Web API methods the bot uses the way
Slack does: it checks the token, enforces Block Kit limits and the per-channel posting rate (HTTP 429 with
Retry-After), keeps channels, threads, views and files so tests can assert what a person would see, and
serves response_url and file-upload URLs. The methods and their state are in slack_methods.py, the Block Kit
checks in block_kit.py; Slack's other half, delivering requests to the bot, is slack_events.py. Given an
app-level token, it also speaks Socket Mode (socket_mode.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from aiohttp import web

from bot.sandbox.slack_api import Json, SlackApiError, dm_id, flag, message_content
from bot.sandbox.slack_methods import Grant, SlackMethods
from bot.sandbox.socket_mode import SocketModeServer

T = TypeVar("T")

# Slack's documented limits: a trigger_id expires after 3 s, a response_url takes at most 5 answers.
TRIGGER_TTL = 3.0
RESPONSE_URL_USES = 5
# What Envoy (in front of Slack's API) answers when it cannot reach a backend.
UPSTREAM_ERROR = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
# A proxy's error page sent as JSON, which no JSON parser reads.
NOT_JSON = "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"


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


class SlackEmulator(SlackMethods):
    """Slack's Web API on loopback, with the state a test needs to assert what users would see."""

    def __init__(
        self, *, bot_token: str = "xoxb-sandbox", signing_secret: str = "sandbox-signing-secret",
        post_rate: float = 1.0, post_burst: int = 4, users: dict[str, dict] | None = None,
        usergroups: dict[str, dict] | None = None, channels: dict[str, dict] | None = None,
        trigger_ttl: float = TRIGGER_TTL, app_token: str | None = None,
    ) -> None:
        super().__init__(
            post_rate=post_rate, post_burst=post_burst, users=users, usergroups=usergroups, channels=channels,
            trigger_ttl=trigger_ttl,
        )
        self.bot_token = bot_token
        self.signing_secret = signing_secret
        self.calls: list[ApiCall] = []
        self.responses: list[Json] = []
        self._response_urls: dict[str, Grant] = {}
        self._faults: dict[str, list[_Fault]] = {}
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
            "users.lookupByEmail": self._users_lookup_by_email,
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
        self._triggers[trigger_id] = Grant(user, None, None, time.monotonic())
        return trigger_id

    def issue_response_url(self, channel: str, user: str, message_ts: str | None = None) -> str:
        token = secrets.token_urlsafe(12)
        self._response_urls[token] = Grant(user, channel, message_ts, time.monotonic())
        return f"{self.url}/response/{token}"

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
                raise SlackApiError("not_authed")
            if method in self._app_methods:
                body = {"ok": True, **self._app_methods[method](token, bool(auth))}
                self._record(method, args, 200, None)
                return web.json_response(body)
            if token != self.bot_token:
                app_token = self.socket_mode.app_token if self.socket_mode else None
                raise SlackApiError("not_allowed_token_type" if token == app_token else "invalid_auth")
            handler = self._methods.get(method)
            if handler is None:
                raise SlackApiError("unknown_method")
            body = {"ok": True, **handler(args)}
            self._record(method, args, 200, None)
            return web.json_response(body)
        except SlackApiError as e:
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
            raise SlackApiError("ratelimited", status=429, headers={"Retry-After": str(fault.retry_after)})
        if fault.kind == "server_error":
            raise SlackApiError("internal_error", status=500)
        if fault.kind == "server_error_text":
            raise SlackApiError("upstream_unavailable", status=503, raw=("text/plain", UPSTREAM_ERROR))
        if fault.kind == "not_json":
            raise SlackApiError("not_json", raw=("application/json", NOT_JSON))
        if fault.kind == "timeout":
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=30)
            raise SlackApiError("request_timeout", status=504)
        raise SlackApiError(fault.kind)

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
                raise SlackApiError("no_active_hooks", status=404)
            if time.monotonic() - grant.issued > 30 * 60:
                raise SlackApiError("expired_url", status=404)
            if grant.uses >= RESPONSE_URL_USES:
                raise SlackApiError("used_url", status=404)
            body = await request.json()
            self.responses.append({"channel": grant.channel, "user": grant.user, "body": body})
            self._respond(grant, body)
            grant.uses += 1
        except SlackApiError as e:
            # response_url answers a rejected body with HTTP 400, not Web API's 200 + ok:false
            return e.response(400 if e.status == 200 else e.status)
        return web.json_response({"ok": True})

    def _respond(self, grant: Grant, body: Json) -> None:
        assert grant.channel is not None
        original = self._messages.get(grant.channel, {}).get(grant.message_ts or "")
        if flag(body.get("delete_original")):
            if original is None:
                raise SlackApiError("message_not_found", status=404)
            self._delete(grant.channel, original["ts"])
            return
        text, blocks = message_content(body)
        if flag(body.get("replace_original")) and original is not None:
            original.update(text=text, blocks=blocks, edited=True)
        elif body.get("response_type") == "in_channel":
            self._post(grant.channel, text, blocks, body.get("thread_ts"))
        else:
            self.ephemerals.append({
                "channel": grant.channel, "user": grant.user, "ts": self._next_ts(), "text": text,
                "blocks": blocks, "thread_ts": body.get("thread_ts"), "source": "response_url",
            })
