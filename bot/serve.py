"""`mlops-bot serve`: the runtime on HTTP (/slack/events) or Socket Mode, until SIGINT or SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiohttp import web
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.metrics import request_kind
from bot.runtime import Runtime

log = logging.getLogger(__name__)


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
        except (TimeoutError, aiohttp.ClientError) as exc:
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
            kind = bolt_request.context.get("mlops_kind") or request_kind(bolt_request.body)
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
