"""Slack's Socket Mode, as the emulator speaks it: the app-level token, the WebSocket, envelopes and acks.

The protocol as Slack documents it (api.slack.com/apis/socket-mode, /apis/connections/socket-implement):
- `apps.connections.open`, called with the app-level token (xapp-) in the Authorization header, returns a
  WebSocket URL for one connection; here it is on the emulator's loopback port.
- On connect the server sends `hello`. Every delivery is an envelope `{envelope_id, type, payload,
  accepts_response_payload, retry_attempt, retry_reason}` of type `slash_commands`, `interactive` or
  `events_api`, sent on one of the app's open connections (an app may hold several; any one gets it).
- The app acks with `{"envelope_id": ..., "payload": ...}` within 3 s, on any of its connections. A payload
  counts only where `accepts_response_payload` is true: for a slash command it is the command's immediate
  response, shown as a response_url answer would be. An envelope not acked in time is sent again, to any
  connection, with `retry_attempt` + 1 and `retry_reason` "timeout": at once, after a minute, after five.
- `disconnect` with a `reason` (`warning`, `refresh_requested`, `link_disabled`, ...) tells the app to open
  a new connection; the server stops sending on that one and closes it shortly after.

What Slack leaves unsaid the emulator decides, and says so where it does: a URL is good for one connection
and for `TICKET_TTL` seconds; an envelope sent while no connection is open waits up to the ack timeout for
one; after `link_disabled` the app cannot connect (`socket_mode_disabled`) until `enable()`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from bot.sandbox.slack_api import APP_ID, Json, SlackApiError, message_content
from bot.sandbox.slack_events import Delivery, SlackEventsClient

if TYPE_CHECKING:  # annotations only: slack_emulator imports this module
    from bot.sandbox.slack_emulator import SlackEmulator

ENVELOPE_TYPES = ("slash_commands", "interactive", "events_api")
ACK_TIMEOUT = 3.0
RETRY_DELAYS = (0.0, 60.0, 300.0)  # after each unacked attempt: Slack's three retries
TICKET_TTL = 60.0
DISCONNECT_GRACE = 1.0  # how long a connection told to go away stays open for the app to replace it
# Interactive payloads whose ack may carry a response (response_action, options); the rest ignore it.
INTERACTIVE_WITH_RESPONSE = ("view_submission", "block_suggestion")


@dataclass
class Attempt:
    """One sending of an envelope; `connection` is None when no connection was open to take it."""

    connection: str | None
    retry_attempt: int
    retry_reason: str
    at: float  # time.monotonic()


@dataclass
class Ack:
    connection: str
    frame: Json
    at: float


@dataclass
class Envelope:
    """One delivery as Slack tracks it until acked: every attempt and every ack, for tests to assert."""

    envelope_id: str
    type: str
    payload: Json
    accepts_response_payload: bool
    attempts: list[Attempt] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    gave_up: bool = False  # every retry went unacked; Slack drops it
    response_error: str | None = None  # a slash command's ack payload Slack would have refused

    @property
    def acked(self) -> bool:
        return bool(self.acks)

    @property
    def response(self) -> Json | None:
        """The payload of the first ack, if it was one Slack accepts."""
        if not self.acks or not self.accepts_response_payload:
            return None
        payload = self.acks[0].frame.get("payload")
        return payload if isinstance(payload, dict) and payload else None

    def frame(self, retry_attempt: int, retry_reason: str) -> Json:
        return {
            "envelope_id": self.envelope_id, "type": self.type, "payload": self.payload,
            "accepts_response_payload": self.accepts_response_payload,
            "retry_attempt": retry_attempt, "retry_reason": retry_reason,
        }


@dataclass
class Connection:
    id: str
    ws: web.WebSocketResponse
    request: web.Request
    opened: float
    closed: float | None = None
    disconnect_reason: str | None = None  # set once told to go away: nothing more is sent on it
    disconnected: float | None = None  # when it was told (or cut)
    received: list[str] = field(default_factory=list)  # envelope ids sent on it, retries included

    @property
    def usable(self) -> bool:
        return self.closed is None and self.disconnect_reason is None and not self.ws.closed


class SocketModeServer:
    """The Socket Mode side of one app, served by a SlackEmulator at /link/."""

    def __init__(self, emulator: SlackEmulator, app_token: str, *, ack_timeout: float = ACK_TIMEOUT,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS, ticket_ttl: float = TICKET_TTL) -> None:
        self.emulator = emulator
        self.app_token = app_token
        self.ack_timeout = ack_timeout
        self.retry_delays = retry_delays
        self.ticket_ttl = ticket_ttl
        self.enabled = True
        self.connections: dict[str, Connection] = {}
        self.envelopes: list[Envelope] = []
        self.stray_acks: list[Json] = []  # acks naming no envelope the server sent
        self._by_id: dict[str, Envelope] = {}
        self._tickets: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what tests look at ---------------------------------------------------------------------------------

    @property
    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.usable]

    async def wait_for_connections(self, count: int, timeout: float = 30) -> list[Connection]:
        """Until `count` usable connections are open (e.g. the app reconnected)."""
        return await self.emulator.wait_for(lambda: c if len(c := self.open_connections) >= count else None,
                                            timeout=timeout)

    # -- Web API: apps.connections.open -----------------------------------------------------------------------

    def connections_open(self, token: str, in_header: bool) -> Json:
        if not in_header:
            raise SlackApiError("not_authed")  # Slack takes this method's token only in the Authorization header
        if token != self.app_token:
            raise SlackApiError("not_allowed_token_type" if token == self.emulator.bot_token else "invalid_auth")
        if not self.enabled:
            raise SlackApiError("socket_mode_disabled")
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = time.monotonic()
        return {"url": f"ws://{self.emulator.url.removeprefix('http://')}/link/?ticket={ticket}&app_id={APP_ID}"}

    # -- the WebSocket ----------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        issued = self._tickets.pop(request.query.get("ticket", ""), None)
        if issued is None or time.monotonic() - issued > self.ticket_ttl or not self.enabled:
            return web.Response(status=401, text="invalid or expired ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Connection(f"conn-{next(self._ids)}", ws, request, time.monotonic())
        self.connections[conn.id] = conn
        await ws.send_json({
            "type": "hello", "num_connections": len(self.open_connections),
            "debug_info": {"host": f"applink-emulator-{conn.id}", "build_number": 1,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        })
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(conn, message.data)
        finally:
            conn.closed = time.monotonic()
        return ws

    def _on_text(self, conn: Connection, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.stray_acks.append({"connection": conn.id, "raw": data})
            return
        envelope = self._by_id.get(frame.get("envelope_id")) if isinstance(frame, dict) else None
        if envelope is None:
            self.stray_acks.append({"connection": conn.id, "frame": frame})
            return
        first = not envelope.acks
        envelope.acks.append(Ack(conn.id, frame, time.monotonic()))
        if first and envelope.type == "slash_commands" and envelope.response is not None:
            self._show_command_response(envelope, envelope.response)

    def _show_command_response(self, envelope: Envelope, body: Json) -> None:
        """A slash command's ack payload, shown the way a response_url answer is."""
        channel, user = envelope.payload.get("channel_id", ""), envelope.payload.get("user_id", "")
        emulator = self.emulator
        try:
            text, blocks = message_content(body)
        except SlackApiError as e:
            envelope.response_error = e.error
            return
        emulator.responses.append({"channel": channel, "user": user, "body": body, "via": "socket_mode_ack"})
        if body.get("response_type") == "in_channel":
            emulator._post(emulator._channel(channel), text, blocks, None)
        else:
            emulator.ephemerals.append({
                "channel": channel, "user": user, "ts": emulator._next_ts(), "text": text, "blocks": blocks,
                "thread_ts": None, "source": "socket_mode_ack",
            })

    # -- deliveries -------------------------------------------------------------------------------------------

    def send(self, type: str, payload: Json, *, accepts_response_payload: bool | None = None,
             retry_attempt: int = 0, retry_reason: str = "", connection: Connection | None = None) -> Envelope:
        """Deliver a new envelope; Slack's retries follow until it is acked. Returns at once.

        Each attempt goes to the next open connection in turn; `connection` picks the first one's.
        """
        if type not in ENVELOPE_TYPES:
            raise ValueError(f"envelope type must be one of {ENVELOPE_TYPES}, got {type!r}")
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands" or (
                type == "interactive" and payload.get("type") in INTERACTIVE_WITH_RESPONSE)
        envelope = Envelope(secrets.token_hex(16), type, payload, accepts_response_payload)
        self.envelopes.append(envelope)
        self._by_id[envelope.envelope_id] = envelope
        self._spawn(self._deliver(envelope, retry_attempt, retry_reason, first=connection))
        return envelope

    def resend(self, envelope: Envelope, retry_attempt: int, retry_reason: str = "timeout") -> None:
        """Send an envelope again as one of Slack's retries, acked or not (an ack lost on the way)."""
        self._spawn(self._deliver(envelope, retry_attempt, retry_reason, acks_before=len(envelope.acks)))

    async def wait_acked(self, envelope: Envelope, acks: int = 1) -> bool:
        """Until the envelope has `acks` acks (True) or Slack has given up on it (False)."""
        while len(envelope.acks) < acks:
            if envelope.gave_up:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _deliver(self, envelope: Envelope, retry_attempt: int, retry_reason: str, acks_before: int = 0,
                       first: Connection | None = None) -> None:
        retries = iter(self.retry_delays)
        while True:
            await self._attempt(envelope, retry_attempt, retry_reason, first)
            first = None
            if await self._acked_within(envelope, acks_before, self.ack_timeout):
                return
            delay = next(retries, None)
            if delay is None:
                envelope.gave_up = True
                return
            if await self._acked_within(envelope, acks_before, delay):  # a late ack still counts
                return
            retry_attempt, retry_reason = retry_attempt + 1, "timeout"

    async def _attempt(self, envelope: Envelope, retry_attempt: int, retry_reason: str,
                       chosen: Connection | None = None) -> None:
        frame = json.dumps(envelope.frame(retry_attempt, retry_reason))
        deadline = time.monotonic() + self.ack_timeout
        while time.monotonic() < deadline:
            conns = self.open_connections
            if not conns:
                await asyncio.sleep(0.02)
                continue
            if chosen is not None and chosen.usable:
                conn, chosen = chosen, None
            else:
                conn = conns[next(self._turn) % len(conns)]
            try:
                await conn.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                continue  # closed under us: another connection may take it
            conn.received.append(envelope.envelope_id)
            envelope.attempts.append(Attempt(conn.id, retry_attempt, retry_reason, time.monotonic()))
            return
        envelope.attempts.append(Attempt(None, retry_attempt, retry_reason, time.monotonic()))

    @staticmethod
    async def _acked_within(envelope: Envelope, acks_before: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while len(envelope.acks) <= acks_before:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- connection lifecycle ---------------------------------------------------------------------------------

    async def disconnect(self, reason: str = "refresh_requested", connection: Connection | None = None,
                         grace: float = DISCONNECT_GRACE) -> None:
        """Tell a connection (default: every open one) to go away, then close it after `grace` seconds.

        `link_disabled` (Socket Mode turned off for the app) also refuses new connections until `enable()`.
        """
        if reason == "link_disabled":
            self.enabled = False
        for conn in [connection] if connection else self.open_connections:
            conn.disconnect_reason, conn.disconnected = reason, time.monotonic()
            frame = {"type": "disconnect", "reason": reason, "debug_info": {"host": f"applink-emulator-{conn.id}"}}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_json(frame)
            self._spawn(self._close_later(conn, grace))

    async def drop(self, connection: Connection | None = None) -> None:
        """Cut a connection (default: every open one) with no disconnect and no close frame, as a network does."""
        for conn in [connection] if connection else self.open_connections:
            conn.disconnect_reason, conn.disconnected = "dropped", time.monotonic()
            if conn.request.transport is not None:
                conn.request.transport.abort()

    def enable(self) -> None:
        """Socket Mode turned back on for the app."""
        self.enabled = True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self.connections.values()):
            if not conn.ws.closed:
                await conn.ws.close()

    @staticmethod
    async def _close_later(conn: Connection, grace: float) -> None:
        await asyncio.sleep(grace)
        if not conn.ws.closed:
            await conn.ws.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---------------------------------------------------------------------------------------------------------
# Slack's side of a delivery over Socket Mode, for tests: the same commands, presses and events as
# SlackEventsClient builds, sent as envelopes instead of signed HTTP requests.


@dataclass(frozen=True)
class SocketDelivery(Delivery):
    envelope: Envelope | None = None


def envelope_of(body: bytes, content_type: str) -> tuple[str, Json]:
    """The envelope type and payload Slack sends over the socket for what it would POST over HTTP."""
    if content_type == "application/json":
        return "events_api", json.loads(body)
    form = dict(parse_qsl(body.decode()))
    if "payload" in form:
        return "interactive", json.loads(form["payload"])
    return "slash_commands", form


class SocketModeEventsClient(SlackEventsClient):
    """Delivers commands, presses, submissions and events as envelopes and waits for each to be acked.

    A Delivery's status is 200 once acked (its body the ack's accepted payload, as JSON) and 408 when
    Slack gave up after its retries.
    """

    def __init__(self, emulator: SlackEmulator) -> None:
        if emulator.socket_mode is None:
            raise ValueError("the emulator has no Socket Mode: create it with app_token=")
        super().__init__("", emulator.signing_secret, emulator)
        self.server = emulator.socket_mode
        self.connection: Connection | None = None  # where the next envelope goes first (default: Slack's turn)

    async def _deliver(self, body: bytes, content_type: str, *, trigger_id: str | None = None,
                       response_url: str | None = None, extra_headers: dict[str, str] | None = None) -> Delivery:
        kind, payload = envelope_of(body, content_type)
        headers = extra_headers or {}
        envelope = self.server.send(kind, payload, retry_attempt=int(headers.get("X-Slack-Retry-Num", 0)),
                                    retry_reason=headers.get("X-Slack-Retry-Reason", ""), connection=self.connection)
        return await self._result(envelope, body, content_type, trigger_id, response_url, 1)

    async def redeliver(self, delivery: Delivery, retry_num: int = 1, reason: str = "timeout") -> Delivery:
        """Slack's retry of an envelope already sent: the same envelope_id, retry_attempt `retry_num`."""
        envelope = getattr(delivery, "envelope", None)
        if envelope is None:
            raise ValueError("redeliver takes a Delivery this client made")
        acks = len(envelope.acks) + 1
        self.server.resend(envelope, retry_num, reason)
        return await self._result(envelope, delivery.request_body, delivery.content_type, delivery.trigger_id,
                                  delivery.response_url, acks)

    async def _result(self, envelope: Envelope, body: bytes, content_type: str, trigger_id: str | None,
                      response_url: str | None, acks: int) -> SocketDelivery:
        acked = await self.server.wait_acked(envelope, acks)
        payload = envelope.acks[acks - 1].frame.get("payload") if acked and envelope.accepts_response_payload else None
        return SocketDelivery(
            status=200 if acked else 408, body=json.dumps(payload) if payload else "", request_body=body,
            content_type=content_type, trigger_id=trigger_id, response_url=response_url, envelope=envelope,
        )

    async def send_raw(self, body: bytes, headers: dict[str, str],
                       content_type: str = "application/x-www-form-urlencoded") -> Delivery:
        raise NotImplementedError("Socket Mode has no HTTP request to forge; send envelopes with the server")
