"""Builds the bot from a config: store, Slack client, services, the Bolt app, the scheduler, HTTP routes.

Listeners ack at once and hand the work to `Runtime.spawn`, which tracks it so shutdown can wait for it
(up to a bound) and record what it had to cut short. `bot.serve` runs it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.alertmanager import AlertmanagerIntake
from bot.config import Config, Secrets
from bot.context import Clock, Context
from bot.digest.service import DigestService
from bot.hooks import HookQueue
from bot.ingress import RefuseWhileStoreUnwritable, Rejections, unsigned
from bot.metrics import Metrics, request_kind
from bot.monitors.hook import DatagenHook
from bot.monitors.service import DatagenService
from bot.notifier import Notifier, web_client
from bot.oncall.service import OnCallService
from bot.pipelines.service import PipelineWatch
from bot.releases.registry_hook import RegistryHook
from bot.releases.service import ReleaseService
from bot.replication import ReplicaError, Replicator, lease
from bot.retrain.scheduled import ScheduledRetrains
from bot.retrain.service import RetrainService
from bot.roles import RoleDirectory
from bot.scheduler import Scheduler
from bot.silences import Silences
from bot.store import Store, StoreUnwritable, utcnow
from bot.tasks import Tasks

log = logging.getLogger(__name__)


class Runtime:
    shutdown_grace = 20.0

    def __init__(self, config: Config, secrets: Secrets, *, clock: Clock = utcnow, replicator: Replicator | None = None):
        self.config = config
        self.secrets = secrets
        self.clock = clock
        self.store = Store(config.store)
        self.replicator = replicator  # store_replica: Litestream replicates the store, one instance holds the lease
        self.holder = lease.instance_id()
        self._renewal: asyncio.Task[None] | None = None
        if replicator is not None:
            # Litestream checkpoints the WAL itself once it has copied it (its tips: no application autocheckpoints
            # under write load); the store's 10 s busy timeout covers the short locks it takes to do so.
            self.store.conn.execute("PRAGMA wal_autocheckpoint = 0")
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
        self.releases = ReleaseService(self.ctx, roles=self.roles, scheduler=self.scheduler)
        self.registry_hook = RegistryHook(self.ctx, hooks=self.hooks, train=self.releases.train)
        self.releases.healer.schedule(self.scheduler)  # the fleet reconcile loop, in the active instance only
        self.silences = Silences(self.ctx)
        self.datagen = DatagenService(self.ctx, scheduler=self.scheduler, silences=self.silences)
        self.datagen_hook = DatagenHook(self.ctx, hooks=self.hooks, datagen=self.datagen)
        self.oncall = OnCallService(self.ctx, scheduler=self.scheduler)
        self.digests = DigestService(self.ctx, scheduler=self.scheduler, roles=self.roles, releases=self.releases,
                                     datagen=self.datagen, oncall=self.oncall)
        self.home = self.digests  # handlers/home.py publishes the App Home through it
        self.alertmanager = AlertmanagerIntake(self.ctx, hooks=self.hooks, silences=self.silences)
        self.retrain = RetrainService(self.ctx)
        self.scheduled_retrains = ScheduledRetrains(self.ctx, scheduler=self.scheduler, runs=self.retrain)
        self.pipelines = PipelineWatch(self.ctx, scheduler=self.scheduler, silences=self.silences)
        self.app = self._bolt_app()
        # Set by `serve` in Socket Mode: whether the socket is up now. /healthz fails once it has been down for
        # longer than a reconnect takes, since a bot that cannot hear Slack answers nobody.
        self.socket_connected: Callable[[], Awaitable[bool]] | None = None
        self._socket_down_since: float | None = None

    socket_grace = 10.0  # seconds: a refresh_requested reconnect takes well under one

    def _bolt_app(self) -> AsyncApp:
        from handlers import SlackApp, register  # handlers depend on the runtime, not the other way round

        self.rejections = Rejections(self.ctx)  # what the edge and the handlers' shape check refuse, in summary
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
        app.use(RefuseWhileStoreUnwritable(self.ctx))  # before the handlers' own middleware: nothing is claimed
        register(app, self)
        return app

    # -- audit -----------------------------------------------------------------------------------------

    def audit(self, **fields: Any) -> None:
        self.store.audit(at=self.clock(), **fields)
        self.metrics.count(self.metrics.actions, fields["verb"], fields["status"])

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.replicator is not None:  # before anything that could act
            if held := lease.take(self.store, self.holder, self.clock(), self.config.store_lease_s):
                raise ReplicaError(f"the store's lease is held by {held.holder} until {held.expires_at.isoformat()}; "
                                   "another bot is active on this store")
            await self.replicator.start()
            self._renewal = asyncio.create_task(self._renew(), name="lease.renew")
        await self.releases.reconcile()
        await self.retrain.resume()
        self.scheduler.start()
        await self.scheduler.run_due()  # catch up on slots missed while the bot was down
        await self.datagen.catch_up()  # and on datagen deadlines that passed meanwhile
        self.hooks.start()  # including what the webhooks accepted before a stop or a crash
        self.releases.train.start()  # the registries of auto_deploy models, polled

    async def stop(self) -> None:
        self.scheduler.shutdown()
        await self.releases.train.stop()  # the poll; a deploy it started is one of the tasks drained below
        await self.hooks.stop()  # what it cuts short stays queued for the next start
        await self.retrain.stop()  # followers only; the runs go on and are followed again at the next start
        await self.pipelines.close()
        await self.releases.stop_canaries()  # they stay running in the store and resume at the next start
        for name in await self.tasks.drain(self.shutdown_grace):
            self.audit(actor="mlops-bot", verb="shutdown", status="interrupted", detail={"task": name})
        if self._renewal is not None:
            self._renewal.cancel()
            try:
                lease.release(self.store, self.holder, self.clock())  # a standby need not wait out the lease
            except StoreUnwritable as exc:  # then it expires by itself; close() still says what was not stored
                log.warning("could not release the store's lease: %s", exc.reason)
        self.store.close()
        if self.replicator is not None:
            await self.replicator.stop()  # after the last commit, which it ships before it stops

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.config.store_lease_s / 3)
            try:
                if held := lease.take(self.store, self.holder, self.clock(), self.config.store_lease_s):
                    log.error("the store's lease is held by %s, not this instance: two bots write this store", held.holder)
            except StoreUnwritable as exc:  # /healthz says so too; renewal is tried again
                log.error("renewing the store's lease failed: %s", exc.reason)

    # -- HTTP -------------------------------------------------------------------------------------

    def web_app(self, *, slack_events: bool = True) -> web.Application:
        app = web.Application()
        if slack_events:
            app.router.add_post("/slack/events", self._slack_events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/hooks/datagen", self.datagen_hook.handle)
        app.router.add_post("/hooks/alertmanager", self.alertmanager.hook)
        app.router.add_post("/hooks/registry", self.registry_hook.handle)
        return app

    async def _slack_events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        raw = await request.read()
        source = request.remote or "unknown"
        # The signature is checked here, on the bytes, before anything parses them: a header or body Bolt
        # cannot read raised inside it (500 and a traceback), and its own refusal logs the whole body.
        if refusal := unsigned(self.secrets.slack_signing_secret, raw, request.headers, time.time()):
            return self._refuse(started, source, 401, "rejected", refusal, {"error": "invalid request"})
        try:
            bolt_request = AsyncBoltRequest(body=raw.decode(), query=request.query_string, headers=request.headers,  # type: ignore[arg-type]
                                            context={"mlops_source": source})
        except Exception as exc:  # Bolt parses in its constructor: whatever a body that is no Slack payload raises there
            return self._refuse(started, source, 400, "malformed", "body is not a Slack payload (form or JSON object)",
                                {"error": "malformed body"}, type(exc).__name__)
        response = await self.app.async_dispatch(bolt_request)
        kind = bolt_request.context.get("mlops_kind") or request_kind(bolt_request.body)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        self.metrics.count(self.metrics.requests, kind, str(response.status))
        if response.status == 401:  # Bolt's own check, should the clock have moved past the window since ours
            self.rejections.note(source, "bad signature or timestamp")
        headers = response.first_headers_without_set_cookie()
        return web.Response(status=response.status, body=response.body.encode(), headers=headers)

    def _refuse(
        self, started: float, source: str, status: int, kind: str, reason: str, body: dict[str, str], example: str | None = None
    ) -> web.Response:
        self.rejections.note(source, reason, example)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        self.metrics.count(self.metrics.requests, kind, str(status))
        return web.json_response(body, status=status)

    async def _healthz(self, _: web.Request) -> web.Response:
        store_problem = self.store.probe()  # a real committed write, with whatever audit rows are waiting
        overdue = self.releases.overdue_operations()
        checks = {
            "store_writable": store_problem is None,
            "scheduler_running": self.scheduler.running,
            "operations_on_time": not overdue,
        }
        if self.socket_connected is not None:
            checks["socket_mode_connected"] = await self._socket_up()
        body = {"ok": all(checks.values()), **checks, "tasks": len(self.tasks.names), "overdue_operations": overdue}
        if self.replicator is not None:
            # Degraded, not down: the bot still serves Slack, only its durability is at risk, and a 503 would take
            # the only active instance out of the load balancer. Alert on mlops_replication_lag_seconds instead.
            body["replication"] = state = self.replicator.state()
            if "problem" in state:
                body["degraded"] = state["problem"]
        if store_problem:
            body["reason"] = store_problem
        elif not checks.get("socket_mode_connected", True):
            body["reason"] = (
                f"no Socket Mode connection to Slack for {time.monotonic() - (self._socket_down_since or 0):.0f} s "
                "(Socket Mode turned off for the app, or Slack unreachable); the bot keeps reconnecting"
            )
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
        if self.replicator is not None:
            self.metrics.replication(self.replicator.running, self.replicator.lag_s, self.replicator.restarts)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
