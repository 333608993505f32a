"""Builds the bot from a config: store, Slack client, services, the Bolt app, the scheduler, HTTP routes.

Listeners ack at once and hand the work to `Runtime.spawn`, which tracks it so shutdown can wait for it
(up to a bound) and record what it had to cut short.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.alertmanager import AlertmanagerIntake
from bot.config import Config, Role, Secrets
from bot.context import Clock, Context
from bot.datagen.hook import DatagenHook
from bot.datagen.service import DatagenService
from bot.digest.service import DigestService
from bot.hooks import HookQueue
from bot.notifier import Message, Notifier, SlackError, web_client
from bot.oncall.service import OnCallService
from bot.releases.service import ReleaseService
from bot.retrain.service import RetrainService
from bot.scheduler import Scheduler
from bot.silences import Silences
from bot.store import Store, utcnow

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlops_slack_requests", "Slack requests by kind", ["kind", "status"], registry=self.registry)
        self.ack_latency = Histogram(
            "mlops_ack_latency_seconds",
            "Time from receiving a Slack request to answering it",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
            registry=self.registry,
        )
        self.actions = Counter("mlops_actions", "Audited actions by verb and status", ["verb", "status"], registry=self.registry)
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self._sets: dict[Counter, int] = {}

    # A backstop, far above what the bot's own verbs, kinds and statuses make: label values that still come from
    # outside (a payload's type, say) must not grow /metrics without end, so past this many series of one counter
    # new ones count as "other". The handlers already fold unknown verbs and action ids into one label each.
    max_series = 1000

    def count(self, counter: Counter, *labels: str) -> None:
        """Increment one labelled child, kept once found: `labels()` costs more than the increment (ack path)."""
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            if self._sets.get(counter, 0) >= self.max_series:
                key = (counter, ("other",) * len(labels))
                child = self._children.get(key)
            if child is None:
                child = self._children[key] = counter.labels(*key[1])
                self._sets[counter] = self._sets.get(counter, 0) + 1
        child.inc()


class Rejections:
    """Slack requests refused before anything ran (unsigned, forged, stale, malformed), audited in summary.

    A flood of forged requests must not become a flood of undeletable audit rows and log lines: each (source,
    reason) gets one audit row per window with its count, written when the window closes, and one log line, at
    its first refusal. Bodies are never logged or stored: they are the sender's, and may hold a response_url.
    """

    window = 60.0  # seconds
    max_buckets = 100  # distinct (source, reason) pairs per window; more sources are summed as one

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._buckets: dict[tuple[str, str], dict[str, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, source: str, reason: str, example: str | None = None) -> None:
        key = (source, reason)
        if key not in self._buckets and len(self._buckets) >= self.max_buckets:
            key = ("other sources", reason)
        bucket = self._buckets.get(key)
        now = self.runtime.clock().isoformat()
        if bucket is None:
            bucket = self._buckets[key] = {"count": 0, "first": now}
            if example:
                bucket["example"] = example[:300]
            log.warning("refused a Slack request from %s: %s (like ones are counted and audited every %.0f s)",
                        key[0], reason, self.window)
            self._arm()
        bucket["count"] += 1
        bucket["last"] = now

    def _arm(self) -> None:
        if self._timer is not None:
            return
        try:
            self._timer = asyncio.get_running_loop().call_later(self.window, self.flush)
        except RuntimeError:  # no loop: nothing would close the window, so write now
            self.flush()

    def flush(self) -> None:
        """Write one row per (source, reason) seen since the last flush. Runtime.stop should call it first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buckets, self._buckets = self._buckets, {}
        for (source, reason), bucket in buckets.items():
            self.runtime.audit(actor="unknown", verb="slack.request", status="rejected",
                               detail={"source": source, "reason": reason, "window_s": self.window, **bucket})


class Tasks:
    """Background work started by listeners and services, so shutdown knows what is still running."""

    def __init__(self) -> None:
        self._running: dict[asyncio.Task[Any], str] = {}

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str,
        on_error: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guard(coro, name, on_error), name=name)
        self._running[task] = name
        task.add_done_callback(self._running.pop)
        return task

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, Any], name: str, on_error: Callable[[Exception], Awaitable[None]] | None):
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The traceback goes to the log; people get a short message from on_error, never the traceback.
            log.exception("background task %s failed", name)
            if on_error:
                try:
                    await on_error(exc)
                except Exception:
                    log.exception("reporting the failure of %s failed too", name)

    @property
    def names(self) -> list[str]:
        return list(self._running.values())

    async def drain(self, timeout: float) -> list[str]:
        """Wait up to `timeout` s for running work; cancel the rest and return its names."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout)
        left = dict(self._running)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        return list(left.values())


class RoleDirectory:
    """Who holds which role, resolving user groups through Slack (cached: a role check is on the ack path)."""

    ttl = 300.0

    def __init__(self, config: Config, notifier: Notifier):
        self.roles = config.roles
        self.notifier = notifier
        self._groups: dict[str, tuple[float, set[str]]] = {}

    async def _group(self, group: str) -> set[str]:
        cached = self._groups.get(group)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            members = set(await self.notifier.usergroup_members(group))
        except SlackError:
            log.warning("cannot resolve user group %s; treating it as empty", group, exc_info=True)
            members = cached[1] if cached else set()
        self._groups[group] = (time.monotonic(), members)
        return members

    async def _in(self, user: str, role: Role) -> bool:
        members = getattr(self.roles, role)
        if user in members.users:
            return True
        for group in members.groups:
            if user in await self._group(group):
                return True
        return False

    async def has(self, user: str, role: Role) -> bool:
        return await self._in(user, role) or (role != "admins" and await self._in(user, "admins"))

    def who_to_ask(self, role: Role) -> list[str]:
        """Slack mentions of the people and groups that hold (or can grant) a role."""
        admins = self.roles.admins
        return [f"<@{u}>" for u in admins.users] + [f"<!subteam^{g}>" for g in admins.groups] or [
            f"<@{u}>" for u in getattr(self.roles, role).users
        ]


class RefuseWhileStoreUnwritable(AsyncMiddleware):
    """While the store cannot take a write, Slack work that would change something is refused before it starts,
    with the reason: work never done leaves nothing half-done and no audit row to lose. Reads still answer.

    First in the chain, so a refused request claims nothing either (its delivery key, a press).
    """

    READ_ONLY_VERBS = frozenset({"help", "status", "models", "provenance"})

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
        body = req.body if isinstance(req.body, dict) else {}
        problem = self.runtime.store.write_problem()  # the last failure, else one statvfs
        if problem is None or self._reads_only(body):
            return await next()
        req.context["mlops_kind"] = "store_unwritable"
        text = (f":no_entry: The bot cannot write its audit log right now: {problem}. Nothing was done; "
                "try again when /healthz is green.")
        kind = "command" if "command" in body else str(body.get("type") or "other")
        user = body.get("user_id") or _get(body, "user", "id") or "unknown"
        channel = body.get("channel_id") or _get(body, "channel", "id") or _get(body, "container", "channel_id")
        if kind == "command":
            asked = f"{body.get('command', '')} {body.get('text', '')}"
        else:
            asked = _get(body, "actions", 0, "action_id") or _get(body, "view", "callback_id")
        # Kept in memory with the rest of the group and written once the store takes writes again.
        self.runtime.audit(actor=str(user), channel=channel, verb="slack.request", status="store_unwritable",
                           detail={"kind": kind, "asked": str(asked or "")[:200], "reason": problem},
                           key=body.get("trigger_id"))
        if kind == "command":
            return BoltResponse(status=200, body={"text": text, "response_type": "ephemeral"})
        if kind == "view_submission":
            return BoltResponse(status=200, body=_refused_view(body, text))
        if kind == "block_actions":
            if url := body.get("response_url"):
                self.runtime.spawn(self.runtime.notifier.respond(str(url), Message(text)), name="store.refused")
            elif channel and user != "unknown":
                self.runtime.spawn(self.runtime.notifier.ephemeral(str(channel), str(user), Message(text)),
                                   name="store.refused")
        return BoltResponse(status=200, body="")

    def _reads_only(self, body: dict[str, Any]) -> bool:
        if body.get("type") == "event_callback":  # app_home_opened: the Home tab is drawn from what is stored
            return True
        if "command" in body:
            words = str(body.get("text") or "").split()
            return (words[0].lower() if words else "help") in self.READ_ONLY_VERBS
        return False


def _get(value: Any, *path: str | int) -> Any:
    """A nested field of a Slack payload, or None when any step is missing or of another shape."""
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


def _refused_view(body: dict[str, Any], text: str) -> dict[str, Any]:
    """A modal stays open with the reason on its first input, so what was typed is not lost; else it says so."""
    blocks = _get(body, "view", "blocks") or []
    inputs = [b for b in blocks if isinstance(b, dict) and b.get("type") == "input" and b.get("block_id")]
    if inputs:
        return {"response_action": "errors", "errors": {inputs[0]["block_id"]: text}}
    return {"response_action": "update", "view": {
        "type": "modal", "title": {"type": "plain_text", "text": "Nothing was done"},
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}}


class Runtime:
    shutdown_grace = 20.0

    def __init__(self, config: Config, secrets: Secrets, *, clock: Clock = utcnow):
        self.config = config
        self.secrets = secrets
        self.clock = clock
        self.store = Store(config.store)
        self.metrics = Metrics()
        self.tasks = Tasks()
        self.spawn = self.tasks.spawn  # how listeners and services start tracked background work
        self.client = web_client(secrets.slack_bot_token or "", base_url=secrets.slack_api_url)
        self.notifier = Notifier(self.client)
        self.roles = RoleDirectory(config, self.notifier)
        self.scheduler = Scheduler(self.store, clock)
        self.hooks = HookQueue(self.store, self.audit, clock)  # the webhooks' Slack work, posted in the background
        # What each domain service is given (services still taking the runtime are being moved to it).
        self.ctx = Context(config=config, secrets=secrets, store=self.store, notifier=self.notifier, clock=clock,
                           audit=self.audit, spawn=self.spawn)
        # Domain services (each registers its scheduled jobs in its constructor).
        self.releases = ReleaseService(self)
        self.silences = Silences(self.ctx)
        self.datagen = DatagenService(self.ctx, scheduler=self.scheduler, silences=self.silences)
        self.datagen_hook = DatagenHook(self.ctx, hooks=self.hooks, datagen=self.datagen)
        self.oncall = OnCallService(self.ctx, scheduler=self.scheduler)
        self.digests = DigestService(self.ctx, scheduler=self.scheduler, roles=self.roles, releases=self.releases,
                                     datagen=self.datagen, oncall=self.oncall)
        self.home = self.digests  # handlers/events.py publishes the App Home through it
        self.alertmanager = AlertmanagerIntake(self.ctx, hooks=self.hooks, silences=self.silences)
        self.retrain = RetrainService(self.ctx)
        self.app = self._bolt_app()
        # Set by `serve` in Socket Mode: whether the socket is up now. /healthz fails once it has been down for
        # longer than a reconnect takes, since a bot that cannot hear Slack answers nobody.
        self.socket_connected: Callable[[], Awaitable[bool]] | None = None
        self._socket_down_since: float | None = None

    socket_grace = 10.0  # seconds: a refresh_requested reconnect takes well under one

    def _bolt_app(self) -> AsyncApp:
        from handlers import SlackApp, register  # handlers depend on the runtime, not the other way round

        self.rejections = Rejections(self)  # what the edge and the handlers' shape check refuse, in summary
        app = SlackApp(
            self,
            client=self.client,
            signing_secret=self.secrets.slack_signing_secret or "",
            # Listeners ack themselves within microseconds and spawn their work, so running them before
            # answering is both fastest (no ack polling) and safe on FaaS-like hosts.
            process_before_response=True,
            raise_error_for_unhandled_request=False,
            # The only event listened to is app_home_opened, which the bot's own posts cannot cause, so the
            # self-event filter would cost every request for nothing.
            ignoring_self_events_enabled=False,
        )
        app.use(RefuseWhileStoreUnwritable(self))  # before the handlers' own middleware: nothing is claimed
        register(app, self)
        return app

    # -- audit -----------------------------------------------------------------------------------------

    def audit(self, **fields: Any) -> None:
        self.store.audit(at=self.clock(), **fields)
        self.metrics.count(self.metrics.actions, fields["verb"], fields["status"])

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.releases.reconcile()
        await self.retrain.resume()
        self.scheduler.start()
        await self.scheduler.run_due()  # catch up on slots missed while the bot was down
        self.hooks.start()  # including what the webhooks accepted before a stop or a crash

    async def stop(self) -> None:
        self.scheduler.shutdown()
        await self.hooks.stop()  # what it cuts short stays queued for the next start
        await self.retrain.stop()  # followers only; the runs go on and are followed again at the next start
        for name in await self.tasks.drain(self.shutdown_grace):
            self.audit(actor="mlops-bot", verb="shutdown", status="interrupted", detail={"task": name})
        self.store.close()

    # -- HTTP -------------------------------------------------------------------------------------

    def web_app(self, *, slack_events: bool = True) -> web.Application:
        app = web.Application()
        if slack_events:
            app.router.add_post("/slack/events", self._slack_events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/hooks/datagen", self.datagen_hook.handle)
        app.router.add_post("/hooks/alertmanager", self.alertmanager.hook)
        return app

    async def _slack_events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        raw = await request.read()
        source = request.remote or "unknown"
        # The signature is checked here, on the bytes, before anything parses them: a header or body Bolt
        # cannot read raised inside it (500 and a traceback), and its own refusal logs the whole body.
        if refusal := self._unsigned(raw, request.headers):
            return self._refuse(started, source, 401, "rejected", refusal, {"error": "invalid request"})
        try:
            bolt_request = AsyncBoltRequest(body=raw.decode(), query=request.query_string, headers=request.headers,  # type: ignore[arg-type]
                                            context={"mlops_source": source})
        except Exception as exc:  # Bolt parses in its constructor: whatever a body that is no Slack payload raises there
            return self._refuse(started, source, 400, "malformed", "body is not a Slack payload (form or JSON object)",
                                {"error": "malformed body"}, type(exc).__name__)
        response = await self.app.async_dispatch(bolt_request)
        kind = bolt_request.context.get("mlops_kind") or _kind(bolt_request)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        self.metrics.count(self.metrics.requests, kind, str(response.status))
        if response.status == 401:  # Bolt's own check, should the clock have moved past the window since ours
            self.rejections.note(source, "bad signature or timestamp")
        return web.Response(status=response.status, body=response.body.encode(), headers=response.first_headers_without_set_cookie())

    # Slack's window for a request's timestamp, either way (slack_sdk's SignatureVerifier uses the same).
    signature_window = 300

    def _unsigned(self, raw: bytes, headers: Any) -> str | None:
        """Why a request is not signed by Slack now, or None (https://api.slack.com/authentication/verifying-requests-from-slack)."""
        secret = self.secrets.slack_signing_secret
        if not secret:  # an empty key would accept anyone's signature
            return "no signing secret is configured"
        timestamp, signature = headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
        if not timestamp or not signature:
            return "unsigned (no signature or timestamp)"
        if not (timestamp.isascii() and timestamp.isdecimal() and len(timestamp) <= 12):
            return "malformed timestamp"
        age = time.time() - int(timestamp)
        if age > self.signature_window:
            return "stale timestamp"
        if age < -self.signature_window:
            return "timestamp in the future"
        expected = "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return "bad signature"
        return None

    def _refuse(self, started: float, source: str, status: int, kind: str, reason: str, body: dict[str, str],
                example: str | None = None) -> web.Response:
        self.rejections.note(source, reason, example)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        self.metrics.count(self.metrics.requests, kind, str(status))
        return web.json_response(body, status=status)

    async def _healthz(self, _: web.Request) -> web.Response:
        store_problem = self.store.probe()  # a real committed write, with whatever audit rows are waiting
        overdue = self.releases.overdue_operations()
        checks = {"store_writable": store_problem is None, "scheduler_running": self.scheduler.running,
                  "operations_on_time": not overdue}
        if self.socket_connected is not None:
            checks["socket_mode_connected"] = await self._socket_up()
        body = {"ok": all(checks.values()), **checks, "tasks": len(self.tasks.names), "overdue_operations": overdue}
        if store_problem:
            body["reason"] = store_problem
        elif not checks.get("socket_mode_connected", True):
            body["reason"] = (f"no Socket Mode connection to Slack for {time.monotonic() - (self._socket_down_since or 0):.0f} s "
                              "(Socket Mode turned off for the app, or Slack unreachable); the bot keeps reconnecting")
        return web.json_response(body, status=200 if all(checks.values()) else 503)

    async def _socket_up(self) -> bool:
        """False once the socket has been down for longer than `socket_grace`."""
        assert self.socket_connected is not None
        if await self.socket_connected():
            self._socket_down_since = None
            return True
        if self._socket_down_since is None:
            self._socket_down_since = time.monotonic()
        return time.monotonic() - self._socket_down_since < self.socket_grace

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _kind(request: AsyncBoltRequest) -> str:
    body = request.body if isinstance(request.body, dict) else {}
    return str(body.get("type") or ("command" if "command" in body else "other"))


async def serve(runtime: Runtime, *, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM: Socket Mode when SLACK_APP_TOKEN is set, else HTTP /slack/events."""
    socket_mode = None
    if runtime.secrets.slack_app_token:
        import sys

        import aiohttp
        from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
        from slack_bolt.adapter.socket_mode.async_internals import send_async_response
        from slack_sdk.errors import SlackApiError
        from slack_sdk.socket_mode.request import SocketModeRequest

        app_token = runtime.secrets.slack_app_token
        # The Socket Mode client retries a refused token forever without a word, so ask once: a token Slack
        # will not take stops the bot here, as a bad config does.
        try:
            await runtime.client.apps_connections_open(app_token=app_token)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("cannot reach Slack to open Socket Mode yet (%s); retrying", exc)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            if error not in ("ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"):
                print(f"mlops-bot serve: Slack refused SLACK_APP_TOKEN for Socket Mode ({error}); set an app-level "
                      "token (xapp-) with connections:write (see README: Slack app)", file=sys.stderr)
                raise SystemExit(2) from None
        socket_mode = AsyncSocketModeHandler(runtime.app, app_token)

        async def handle(client: Any, req: SocketModeRequest) -> None:
            """Bolt's own dispatch and ack, counted in /metrics the way an HTTP request is."""
            started = time.perf_counter()
            headers: dict[str, str] = {}  # the envelope's retry fields, as the HTTP retry headers Bolt knows
            if req.retry_attempt is not None:
                headers["x-slack-retry-num"] = str(req.retry_attempt)
            if req.retry_reason is not None:
                headers["x-slack-retry-reason"] = req.retry_reason
            bolt_request = AsyncBoltRequest(mode="socket_mode", body=req.payload, headers=headers or None)
            response = await runtime.app.async_dispatch(bolt_request)
            await send_async_response(client, req, response, started)  # acks only a 200, as Bolt does
            runtime.metrics.ack_latency.observe(time.perf_counter() - started)
            kind = bolt_request.context.get("mlops_kind") or _kind(bolt_request)
            runtime.metrics.count(runtime.metrics.requests, kind, str(response.status))

        socket_mode.client.socket_mode_request_listeners[:] = [handle]
    web_runner = web.AppRunner(runtime.web_app(slack_events=socket_mode is None), access_log=None)
    await web_runner.setup()
    site = web.TCPSite(web_runner, host, port)
    await site.start()
    await runtime.start()
    if socket_mode:
        await socket_mode.connect_async()
        runtime.socket_connected = socket_mode.client.is_connected
    log.info("mlops-bot listening on http://%s:%s (%s)", host, port, "socket mode" if socket_mode else "HTTP events")
    print(f"mlops-bot ready on http://{host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: waiting up to %.0f s for running work", runtime.shutdown_grace)
    if socket_mode:
        await socket_mode.close_async()
    await web_runner.cleanup()
    await runtime.stop()
