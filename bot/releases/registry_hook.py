"""POST /hooks/registry: a CI job or training pipeline says it uploaded a version; the train looks at once.

Signed as the datagen hook is (bot/hooks.py `sign`, over method, path, query and body) with
MLOPS_REGISTRY_HOOK_SECRET, in X-Registry-Timestamp and X-Registry-Signature. The look itself runs from the
hooks' durable queue, so a stop right after the answer still takes the version at the next start.
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Any

from aiohttp import web

from bot.context import Context
from bot.hooks import BodyTooLarge, HookQueue, max_body_bytes, not_stored, read_body, signed
from bot.releases.train import Train

log = logging.getLogger(__name__)

LOOK = "registry.look"  # the hook's queued work


class RegistryHook:
    def __init__(self, ctx: Context, *, hooks: HookQueue, train: Train) -> None:
        self.ctx = ctx
        self.hooks = hooks
        self.train = train
        hooks.handle(LOOK, self._look_queued)

    def _refuse(self, status: int, verb_status: str, error: str, **detail: Any) -> web.Response:
        self.ctx.audit(actor="registry.hook", verb="registry.hook", status=verb_status, detail={"error": error, **detail})
        return web.json_response({"error": error}, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        """POST /hooks/registry?model=M&version=V (the body is signed too; it may be empty). 202 once queued."""
        secret = self.ctx.secrets.registry_hook_secret
        if not secret:
            return web.json_response({"error": "the registry hook is off: set MLOPS_REGISTRY_HOOK_SECRET"}, status=503)
        try:
            body = await read_body(request, max_body_bytes())
        except BodyTooLarge as exc:
            return self._refuse(413, "too_large", f"refused: {exc}")
        if not signed(secret, request, body, "Registry"):
            return self._refuse(401, "rejected", "bad signature or timestamp (the signature covers the method, path, "
                                                 "query and body: see README, Webhooks)", remote=request.remote)
        model, version = request.query.get("model", ""), request.query.get("version", "")
        if not model or not version:
            return self._refuse(400, "invalid", "give model= and version= in the query")
        if model not in self.ctx.config.models:
            known = ", ".join(sorted(self.ctx.config.models)) or "none configured"
            return self._refuse(404, "invalid", f"unknown model `{model}`; known models: {known}", model=model)
        if model not in self.train.models():
            return self._refuse(409, "invalid", f"{model} does not deploy by itself: set models.{model}.auto_deploy: "
                                                "staging in the bot's config, or deploy it with `/mlops deploy`",
                                model=model)
        try:
            with self.ctx.store.transaction():
                self.ctx.audit(actor="registry.hook", verb="registry.hook", status="accepted", model=model, version=version,
                               detail={"remote": request.remote})
                queued = self.hooks.put(LOOK, f"registry:{model}", {"model": model, "version": version})
        except sqlite3.Error as failed:
            return not_stored("registry hook", failed)
        return web.json_response({"model": model, "version": version, "queued": queued}, status=202)

    async def _look_queued(self, item: dict[str, Any]) -> None:
        await self.train.look(item["model"], named=item["version"])
