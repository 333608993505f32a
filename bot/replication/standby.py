"""A standby: the instance that found someone else's live lease in the replica waits here, before the runtime exists.

So it runs no scheduler, posts nothing and hears no Slack (no /slack/events, no Socket Mode connection) by
construction. It answers /healthz with 503 and says "standby", so a load balancer's health check sends Slack's
requests only to the active instance. It restores the replica afresh every poll and returns once the lease there
has expired, its store replaced by that restore.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from aiohttp import web

from bot.store import utcnow

from . import lease
from .litestream import Replica, ReplicaError

log = logging.getLogger(__name__)


def _remove_store(db: Path) -> None:
    # Litestream's tips: a replaced database goes with its -wal and -shm, and with Litestream's own state beside it.
    for side in ("", "-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    shutil.rmtree(db.parent / f".{db.name}-litestream", ignore_errors=True)


async def wait_for_lease(replica: Replica, holder: str, ttl_s: float, *, host: str, port: int) -> None:
    """Return when this instance may take the lease; meanwhile be a standby on host:port."""
    held = lease.read_file(replica.db) if replica.db.exists() else None
    if held is None or held.holder == holder or not held.live(utcnow()):
        return
    log.warning("standby: the store's lease is held by %s until %s; this instance runs nothing and forwards no "
                "Slack request (HTTP or Socket Mode) until that lease expires, then takes over",
                held.holder, held.expires_at.isoformat())

    shown = {"ok": False, "standby": True, "lease_holder": held.holder, "lease_expires_at": held.expires_at.isoformat(),
             "reason": f"standby: {held.holder} holds the store's lease"}

    async def healthz(_: web.Request) -> web.Response:
        # 503: a load balancer's check keeps Slack's requests on the active instance.
        return web.json_response(shown, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"mlops-bot standby on http://{host}:{port} (lease held by {held.holder})", flush=True)
    fresh = replica.db.parent / f".{replica.db.name}.standby"
    try:
        while held is not None and held.holder != holder and held.live(utcnow()):
            await asyncio.sleep(max(0.5, min(ttl_s / 3, (held.expires_at - utcnow()).total_seconds())))
            _remove_store(fresh)
            try:
                await asyncio.to_thread(replica.restore, fresh)
            except ReplicaError as exc:  # S3 away for a moment: the lease is read again at the next poll
                log.warning("standby: %s", exc)
                continue
            held = lease.read_file(fresh) if fresh.exists() else None
            if held is not None:
                shown.update(lease_holder=held.holder, lease_expires_at=held.expires_at.isoformat(),
                             reason=f"standby: {held.holder} holds the store's lease")
        log.warning("standby: the lease has expired; taking over with the replica as restored just now")
        if fresh.exists():
            _remove_store(replica.db)
            fresh.rename(replica.db)
        _remove_store(fresh)
    finally:
        await runner.cleanup()
