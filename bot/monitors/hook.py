"""POST /hooks/datagen: a datagen record pushed by its job, signed, stored at once, announced from the queue.

The hook answers once the record is stored; its Slack posts (summary, alerts, charts) go through the hooks'
durable queue (bot/hooks.py), so a crash after the answer still gets them out.
"""
from __future__ import annotations

import logging
import sqlite3
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from bot.context import Context
from bot.hooks import BodyTooLarge, HookQueue, max_body_bytes, not_stored, read_body, sign, signed
from bot.monitors import messages
from bot.monitors.alerts import SOURCE
from bot.monitors.datagen import ReportError
from bot.monitors.history import run_date_at, save_record
from bot.monitors.service import DatagenError, DatagenService

__all__ = ["DatagenHook", "sign"]  # its senders (and tests) sign with the hooks' one signature

log = logging.getLogger(__name__)

HOOK_MAX_AHEAD = timedelta(days=1)  # a run date further ahead of today (in the job's zone) is refused
ANNOUNCE, UNREADABLE = "datagen.announce", "datagen.unreadable"  # the hook's queued work


class DatagenHook:
    """The route, and the queued work it leaves: announcing a stored record, or the alert of an unreadable one."""

    def __init__(self, ctx: Context, *, hooks: HookQueue, datagen: DatagenService) -> None:
        self.ctx = ctx
        self.hooks = hooks
        self.datagen = datagen
        hooks.handle(ANNOUNCE, self._announce_queued)
        hooks.handle(UNREADABLE, self._unreadable_queued)

    async def handle(self, request: web.Request) -> web.Response:
        """POST /hooks/datagen?job=J&date=YYYY-MM-DD with the record as the body, signed with
        MLOPS_DATAGEN_HOOK_SECRET (X-Datagen-Timestamp, X-Datagen-Signature; see `sign`). Answers once the
        record is stored; the summary, alerts and charts are posted from the hooks' queue."""
        secret = self.ctx.secrets.datagen_hook_secret
        if not secret:
            return web.json_response({"error": "the datagen hook is off: set MLOPS_DATAGEN_HOOK_SECRET"}, status=503)
        try:
            body = await read_body(request, max_body_bytes())
        except BodyTooLarge as exc:
            log.warning("datagen hook refused a request from %s: %s", request.remote, exc)
            self.ctx.audit(actor="unknown", verb="datagen.hook", status="too_large",
                           detail={"bytes": exc.size, "limit": exc.limit})
            return web.json_response({"error": f"record refused: {exc}"}, status=413)
        if not signed(secret, request, body, "Datagen"):
            self.ctx.audit(actor="unknown", verb="datagen.hook", status="rejected",
                           detail={"reason": "bad signature or timestamp"})
            return web.json_response({"error": "bad signature or timestamp (the signature covers the method, path, "
                                               "query and body: see README, Webhooks)"}, status=401)
        try:
            job = self.datagen.job_name(request.query.get("job"))
            day = date.fromisoformat(request.query["date"])
            self._not_ahead(job, day)
        except (DatagenError, KeyError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, DatagenError) else "give date=YYYY-MM-DD in the query"
            self.ctx.audit(actor="datagen.hook", verb="datagen.hook", status="invalid", detail={"error": reason})
            return web.json_response({"error": reason}, status=400)
        source = f"hook:{request.remote}"
        answer: dict[str, Any] = {"job": job, "run_date": day.isoformat()}
        try:
            self.datagen.parse(job, body, day)  # validate before storing; history keeps only readable records
        except ReportError as exc:
            # The alert saying so is posted from the queue; the audit row and the queued item commit together.
            try:
                with self.ctx.store.transaction():
                    self.ctx.audit(actor="datagen.hook", verb="datagen.ingest", status="unreadable", model=job,
                                   version=day.isoformat(), detail={"source": source, "reason": exc.reason})
                    queued = self.hooks.put(UNREADABLE, f"{SOURCE}:{job}", {
                        "job": job, "date": day.isoformat(), "reason": exc.reason, "source": source})
            except sqlite3.Error as failed:
                return not_stored("datagen hook", failed)
            return web.json_response({**answer, "stored": False, "queued": queued,
                                      "error": f"unreadable record: {exc.reason}"}, status=422)
        try:
            with self.ctx.store.transaction():  # stored and queued at once, so a crash cannot keep one without the other
                stored = save_record(self.ctx.store, job, day, body.decode("utf-8", "replace"), source,
                                     actor="datagen.hook", at=self.ctx.clock())
                queued = (self.hooks.put(ANNOUNCE, f"{SOURCE}:{job}", {"job": job, "date": day.isoformat()})
                          if stored else None)
        except sqlite3.Error as failed:
            return not_stored("datagen hook", failed)
        return web.json_response({**answer, "stored": stored, "queued": queued})

    def _not_ahead(self, job: str, day: date) -> None:
        zone = self.datagen.jobs[job].tz
        today = run_date_at(self.datagen.jobs[job], self.ctx.clock())
        if day > today + HOOK_MAX_AHEAD:
            raise DatagenError(f"date={day} is in the future: today is {today} in {zone}, and the hook "
                               f"takes run dates up to {today + HOOK_MAX_AHEAD}")

    async def _announce_queued(self, item: dict[str, Any]) -> None:
        await self.datagen.announce(item["job"], date.fromisoformat(item["date"]), actor="datagen.hook")

    async def _unreadable_queued(self, item: dict[str, Any]) -> None:
        job, day = item["job"], date.fromisoformat(item["date"])
        breach = messages.unreadable(self.datagen.kind(job), day, item["reason"], item["source"])
        await self.datagen.sync_alert(job, day, [breach], None, actor="datagen.hook")
