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


async def wait_for_lease(replica: Replica, holder: str, ttl_s: float, *, host: str, port: int, restored: bool) -> None:
    """Return when this instance may take the lease, its store as current as the replica; meanwhile be a standby.

    The replica's lease decides, not this disk's: a bot coming back on its old disk after another took over
    finds the other's lease there, waits it out if it is live, and then starts from the replica, not its disk."""
    fresh = replica.db.parent / f".{replica.db.name}.standby"
    if restored:  # the store was restored just now: it is the replica
        held = lease.read_file(replica.db)
    else:
        _remove_store(fresh)
        await asyncio.to_thread(replica.restore, fresh)
        held = lease.read_file(fresh) if fresh.exists() else None
    if held is None or held.holder == holder:  # nobody else wrote since: this disk is current
        _remove_store(fresh)
        return
    if held.live(utcnow()):
        await _standby(replica, holder, ttl_s, held, fresh, host=host, port=port)
    if fresh.exists():  # another bot wrote after this disk did: start from what it left on the replica
        log.warning("taking over from %s with the replica as restored just now", held.holder)
        _remove_store(replica.db)
        fresh.rename(replica.db)
    _remove_store(fresh)


async def _standby(replica: Replica, holder: str, ttl_s: float, held: lease.Lease, fresh: Path, *, host: str,
                   port: int) -> None:
    """Serve /healthz as a standby and restore the replica into `fresh` until the lease there has expired."""
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
    current: lease.Lease | None = held
    try:
        while current is not None and current.holder != holder and current.live(utcnow()):
            await asyncio.sleep(max(0.5, min(ttl_s / 3, (current.expires_at - utcnow()).total_seconds())))
            _remove_store(fresh)
            try:
                await asyncio.to_thread(replica.restore, fresh)
            except ReplicaError as exc:  # S3 away for a moment: the lease is read again at the next poll
                log.warning("standby: %s", exc)
                continue
            current = lease.read_file(fresh) if fresh.exists() else None
            if current is not None:
                shown.update(lease_holder=current.holder, lease_expires_at=current.expires_at.isoformat(),
                             reason=f"standby: {current.holder} holds the store's lease")
        log.warning("standby: the lease has expired")
    finally:
        await runner.cleanup()
