"""Alertmanager intake: `POST /hooks/alertmanager` (webhook format version 4) into one Slack message per group.

A notification group (Alertmanager's groupKey) gets one message: posted when it first fires, edited on
every later notification, ending as RESOLVED. A group that fires again after it resolved gets a new
message, since nobody notices an edit to one that scrolled away; the old one stays as history. When the labels name a configured model and environment
the message carries "Roll back" (the same modal and code as `/mlops rollback`) and "Silence" buttons.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from bot.notifier import Message
from bot.releases.messages import RollbackRef, btn, context, section, when
from bot.store import iso

if TYPE_CHECKING:
    from bot.runtime import Runtime

SOURCE = "alertmanager"
SILENCE_FOR = timedelta(hours=24)
MAX_ALERT_LINES = 20
ROLLBACK, SILENCE = "alerts.rollback", "alerts.silence"


class AlertItem(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class Notification(BaseModel):
    """Alertmanager's webhook body, version 4."""

    version: Literal["4"]
    groupKey: str = Field(min_length=1)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    truncatedAlerts: int = 0
    alerts: list[AlertItem] = Field(min_length=1)


class AlertRef(BaseModel):
    """The Silence button's value: the alert group's row."""

    alert: int


class AlertmanagerError(ValueError):
    """A notification that cannot be taken; the message says what was wrong with it."""


def parse(body: bytes) -> Notification:
    try:
        return Notification.model_validate_json(body)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        raise AlertmanagerError("not an Alertmanager v4 notification: " + "; ".join(problems)) from None


def label(n: Notification, name: str) -> str | None:
    return n.commonLabels.get(name) or n.groupLabels.get(name)


def alert_line(a: AlertItem) -> str:
    what = a.annotations.get("summary") or a.annotations.get("description") or a.labels.get("alertname", "alert")
    instance = a.labels.get("instance")
    icon = ":red_circle:" if a.status == "firing" else ":white_check_mark:"
    return f"{icon} {what}" + (f" · `{instance}`" if instance else "") + f" · since {when(a.startsAt)}"


def message(n: Notification, *, row_id: int, target: tuple[str, str] | None, silenced: tuple[str, datetime] | None) -> Message:
    """The group's one message as it should read now."""
    name = label(n, "alertname") or "alert"
    where = f" · {target[0]} {target[1]}" if target else ""
    firing = n.status == "firing"
    head = (f":rotating_light: *FIRING* · {name}{where} · {sum(a.status == 'firing' for a in n.alerts)} firing" if firing
            else f":white_check_mark: *RESOLVED* · ~{name}{where}~")
    lines = [alert_line(a) for a in n.alerts[:MAX_ALERT_LINES]]
    more = len(n.alerts) - MAX_ALERT_LINES + n.truncatedAlerts
    if more > 0:
        lines.append(f"and {more} more")
    summary = n.commonAnnotations.get("summary") or n.commonAnnotations.get("description")
    blocks = [section(head + (f"\n{summary}" if summary else "")), section("\n".join(lines))]
    facts = [f"severity {label(n, 'severity')}" if label(n, "severity") else "",
             f"<{n.externalURL}|Alertmanager>" if n.externalURL.startswith("http") else "",
             f"silenced by <@{silenced[0]}> until {when(silenced[1])}" if silenced and firing else ""]
    if any(facts):
        blocks.append(context(" · ".join(f for f in facts if f)))
    if firing and target:
        buttons = [btn(f"Roll back {target[1]}", ROLLBACK, RollbackRef(model=target[0], env=target[1]), "danger")]
        if not silenced:
            buttons.append(btn("Silence 24h", SILENCE, AlertRef(alert=row_id)))
        blocks.append({"type": "actions", "block_id": f"alertmanager-{row_id}", "elements": buttons})
    return Message(text=f"{'FIRING' if firing else 'RESOLVED'}: {name}{where}", blocks=blocks)


class AlertmanagerIntake:
    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.config = runtime.config.alertmanager
        self._groups: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one notification per group at a time

    @property
    def channel(self) -> str:
        return self.config.channel or self.rt.config.channels.error

    def target(self, n: Notification) -> tuple[str, str] | None:
        """(model, env) when the labels name a configured model and one of its environments."""
        model, env = label(n, self.config.model_label), label(n, self.config.env_label)
        if model in self.rt.config.models and env in self.rt.config.models[model].environments:
            return model, env
        return None

    def row(self, key: str) -> dict[str, Any] | None:
        return next(iter(self.rt.store.db.query("SELECT * FROM alerts WHERE source = ? AND key = ?", [SOURCE, key])), None)

    def _silence(self, target: tuple[str, str] | None) -> tuple[str, datetime] | None:
        found = self.rt.silences.current(SOURCE, "/".join(target)) if target else None
        return (found.created_by, found.until) if found else None

    async def hook(self, request: web.Request) -> web.Response:
        token = self.rt.secrets.alertmanager_token
        if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
            self.rt.audit(actor="unknown", verb="alertmanager.hook", status="rejected", detail={"reason": "bad bearer token"})
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            notification = parse(await request.read())
        except AlertmanagerError as exc:
            self.rt.audit(actor="alertmanager", verb="alertmanager.hook", status="invalid", detail={"error": str(exc)})
            return web.json_response({"error": str(exc)}, status=400)
        state = await self.receive(notification)
        return web.json_response({"group": notification.groupKey, "state": state})

    async def receive(self, n: Notification) -> str:
        """Store the group's state and bring its message in line; returns the stored state."""
        async with self._groups[n.groupKey]:
            now = self.rt.clock()
            target = self.target(n)
            silenced = self._silence(target)
            existing = self.row(n.groupKey)
            state = "resolved" if n.status == "resolved" else "silenced" if silenced else "open"
            fields = {
                "state": state, "severity": label(n, "severity") or "warning",
                "summary": (n.commonAnnotations.get("summary") or label(n, "alertname") or n.groupKey)[:1000],
                "detail": json.dumps({"alertname": label(n, "alertname"), "target": target, "notification": n.model_dump(mode="json")}),
                "resolved_at": iso(now) if state == "resolved" else None,
            }
            if existing is None:
                self.rt.store.db["alerts"].insert({"source": SOURCE, "key": n.groupKey, "channel": self.channel,
                                                   "opened_at": iso(now), **fields})
            elif existing["state"] == "resolved" and state != "resolved":  # fired again: a fresh message
                self.rt.store.db["alerts"].update(existing["id"], {**fields, "ts": None, "acked_by": None,
                                                                   "opened_at": iso(now), "channel": self.channel})
            else:
                self.rt.store.db["alerts"].update(existing["id"], fields)
            row = self.row(n.groupKey)
            assert row is not None
            model, env = target or (None, None)
            self.rt.audit(actor="alertmanager", verb="alertmanager.alert", status=state, channel=row["channel"],
                          model=model, env=env, detail={"group": n.groupKey, "alerts": len(n.alerts)})
            shown = message(n, row_id=row["id"], target=target, silenced=silenced)
            if row["ts"]:
                ts = await self.rt.notifier.edit_or_repost(row["channel"], row["ts"], shown)
                if ts != row["ts"]:
                    self.rt.store.db["alerts"].update(row["id"], {"ts": ts})
            elif state == "open":  # a group silenced or resolved before anyone saw it stays quiet
                ts = await self.rt.notifier.post(row["channel"], shown)
                self.rt.store.db["alerts"].update(row["id"], {"ts": ts})
            return state

    async def silence(self, alert_id: int, user: str) -> str:
        """Silence the model+env of an alert group for 24 h: later groups for it are stored, not posted."""
        found = next(iter(self.rt.store.db.query("SELECT * FROM alerts WHERE id = ? AND source = ?", [alert_id, SOURCE])), None)
        detail = json.loads(found["detail"]) if found else {}
        if found is None or not detail.get("target"):
            self.rt.audit(actor=user, verb=SILENCE, status="refused", detail={"alert": alert_id, "reason": "no such alert"})
            return "That alert is not known to this bot any more; silence it in Alertmanager."
        if found["state"] == "resolved":
            self.rt.audit(actor=user, verb=SILENCE, status="refused", detail={"alert": alert_id, "reason": "resolved"})
            return "That alert is already resolved."
        model, env = detail["target"]
        now = self.rt.clock()
        until = now + SILENCE_FOR
        with self.rt.store.transaction():
            self.rt.silences.add(SOURCE, f"{model}/{env}", until, user)
            self.rt.store.db["alerts"].update(alert_id, {"state": "silenced", "acked_by": user})
            self.rt.audit(actor=user, verb=SILENCE, status="ok", model=model, env=env, detail={"alert": alert_id, "until": iso(until)})
        n = Notification.model_validate(detail["notification"])
        if found["ts"]:
            await self.rt.notifier.update(found["channel"], found["ts"],
                                          message(n, row_id=alert_id, target=(model, env), silenced=(user, until)))
        return f"Alerts for {model} {env} are silenced until {when(until)}."
