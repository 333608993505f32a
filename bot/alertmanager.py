"""Alert intake: `POST /hooks/alertmanager` (Alertmanager's webhook, version 4, or Grafana's webhook contact point,
version 1 with its `orgId`) into one Slack message per group.

A notification group (Alertmanager's groupKey) gets one message: posted when it first fires, edited on
every later notification, ending as RESOLVED. The hook answers once the notification is queued in SQLite
(bot/hooks.py) and the message is brought in line from the queue, so Alertmanager never waits on Slack's
pacing. A group of thousands of alerts reads as counts by alertname and severity, its first few alerts and
"and N more"; only that much of it is kept. A group that fires again after it resolved gets a new
message, since nobody notices an edit to one that scrolled away; the old one stays as history. When the labels
name a configured model and environment the message carries "Roll back" (the same modal and code as
`/mlops rollback`) and "Silence" buttons. Grafana's alerts also link their panel and Grafana's own silence page.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sqlite3
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError, model_validator

from bot.context import Context
from bot.hooks import BodyTooLarge, HookQueue, max_body_bytes, not_stored, read_body
from bot.notifier import Message, RowId, escape, plain
from bot.releases.messages import RollbackRef, btn, context, section, when
from bot.silences import Silences
from bot.store import iso

log = logging.getLogger(__name__)

SOURCE = "alertmanager"
SILENCE_FOR = timedelta(hours=24)
MAX_ALERT_LINES = 10  # alerts shown one per line; the rest are counted
MAX_COUNTS = 8  # alertnames (and severities) counted by name; the others are summed
MAX_LINE = 200  # characters of one alert's line
ROLLBACK, SILENCE = "alerts.rollback", "alerts.silence"


class AlertItem(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""
    # Grafana's additions to each alert
    valueString: str = ""
    panelURL: str = ""
    silenceURL: str = ""


class Notification(BaseModel):
    """Alertmanager's webhook body (version 4), or Grafana's (version 1, the same shape plus its org)."""

    version: Literal["4", "1"]
    orgId: int | None = None
    groupKey: str = Field(min_length=1)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    truncatedAlerts: int = 0
    alerts: list[AlertItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _grafana_names_its_org(self) -> Notification:
        if self.version == "1" and self.orgId is None:
            raise ValueError("version 1 is Grafana's webhook, which names its orgId")
        return self

    @property
    def sender(self) -> str:
        return "alertmanager" if self.orgId is None else "grafana"

    @property
    def key(self) -> str:
        """The group's identity: Grafana's group keys are unique only within its org."""
        return self.groupKey if self.orgId is None else f"grafana:{self.orgId}:{self.groupKey}"


class Group(BaseModel):
    """What the bot keeps of a notification: all of it but the alerts past the first few, which it counts."""

    notification: Notification  # its alerts cut to the first MAX_ALERT_LINES, firing ones first
    alerts: int  # how many the notification carried
    firing: int
    by_alertname: list[tuple[str, int]]  # the MAX_COUNTS most common, most common first
    by_severity: list[tuple[str, int]]

    @property
    def more(self) -> int:
        """Alerts not shown line by line, the ones Alertmanager itself left out (truncatedAlerts) included."""
        return self.alerts - len(self.notification.alerts) + self.notification.truncatedAlerts


def group(n: Notification) -> Group:
    shown = sorted(n.alerts, key=lambda a: a.status != "firing")[:MAX_ALERT_LINES]  # stable: firing first
    names = Counter(a.labels.get("alertname", "alert") for a in n.alerts)
    severities = Counter(a.labels.get("severity", "none") for a in n.alerts)
    return Group(
        notification=n.model_copy(update={"alerts": shown}),
        alerts=len(n.alerts),
        firing=sum(a.status == "firing" for a in n.alerts),
        by_alertname=names.most_common(MAX_COUNTS),
        by_severity=severities.most_common(MAX_COUNTS),
    )


class AlertRef(BaseModel):
    """The Silence button's value: the alert group's row."""

    alert: RowId


class AlertmanagerError(ValueError):
    """A notification that cannot be taken; the message says what was wrong with it."""


def parse(body: bytes) -> Notification:
    try:
        return Notification.model_validate_json(body)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        raise AlertmanagerError("not an Alertmanager (version 4) or Grafana (version 1) notification: "
                                + "; ".join(problems)) from None


def label(n: Notification, name: str) -> str | None:
    return n.commonLabels.get(name) or n.groupLabels.get(name)


def alert_line(a: AlertItem) -> str:
    what = a.annotations.get("summary") or a.annotations.get("description") or a.labels.get("alertname", "alert")
    instance = a.labels.get("instance")
    icon = ":red_circle:" if a.status == "firing" else ":white_check_mark:"
    line = f"{icon} {plain(what, MAX_LINE)}" + (f" · `{plain(instance, 80)}`" if instance else "")
    line += f" · since {when(a.startsAt)}"
    if a.valueString:
        line += f" · `{plain(a.valueString, 120)}`"
    links = [f"<{escape(url.replace('|', '%7C'))}|{name}>"
             for url, name in ((a.panelURL, "panel"), (a.silenceURL, "silence in Grafana")) if url.startswith("http")]
    return " · ".join([line, *links])


def _counts(counted: list[tuple[str, int]], total: int) -> str:
    said = [f"{plain(name, 60)} {count:,}" for name, count in counted]
    rest = total - sum(count for _, count in counted)
    return " · ".join(said + ([f"others {rest:,}"] if rest > 0 else []))


def message(g: Group, *, row_id: int, target: tuple[str, str] | None, silenced: tuple[str, datetime] | None) -> Message:
    """The group's one message as it should read now."""
    n = g.notification
    # A group of several alertnames is known by what Alertmanager grouped it by.
    grouped_by = ", ".join(f"{k}={v}" for k, v in sorted(n.groupLabels.items()))
    name = plain(label(n, "alertname") or grouped_by or "alert", 100)
    where = f" · {target[0]} {target[1]}" if target else ""
    firing = n.status == "firing"
    head = (
        f":rotating_light: *FIRING* · {name}{where} · {g.firing:,} firing"
        if firing
        else f":white_check_mark: *RESOLVED* · ~{name}{where}~"
    )
    lines = [alert_line(a) for a in n.alerts]
    if g.more > 0:
        lines.append(f"and {g.more:,} more")
    summary = n.commonAnnotations.get("summary") or n.commonAnnotations.get("description")
    blocks = [section(head + (f"\n{plain(summary, 500)}" if summary else ""))]
    if g.more > 0 or len(g.by_alertname) > 1:  # a big or mixed group: say what it is made of first
        blocks.append(
            section(
                f"*{g.alerts:,} alerts* by alertname: {_counts(g.by_alertname, g.alerts)}\n"
                f"by severity: {_counts(g.by_severity, g.alerts)}"
            )
        )
    blocks.append(section("\n".join(lines)))
    facts = [
        f"severity {label(n, 'severity')}" if label(n, "severity") else "",
        f"<{n.externalURL}|{n.sender.capitalize()}>" if n.externalURL.startswith("http") else "",
        f"silenced by <@{silenced[0]}> until {when(silenced[1])}" if silenced and firing else "",
    ]
    if any(facts):
        blocks.append(context(" · ".join(f for f in facts if f)))
    if firing and target:
        buttons = [btn(f"Roll back {target[1]}", ROLLBACK, RollbackRef(model=target[0], env=target[1]), "danger")]
        if not silenced:
            buttons.append(btn("Silence 24h", SILENCE, AlertRef(alert=row_id)))
        blocks.append({"type": "actions", "block_id": f"alertmanager-{row_id}", "elements": buttons})
    return Message(text=f"{'FIRING' if firing else 'RESOLVED'}: {name}{where}", blocks=blocks)


class AlertmanagerIntake:
    def __init__(self, ctx: Context, *, hooks: HookQueue, silences: Silences):
        self.ctx = ctx
        self.hooks = hooks
        self.silences = silences
        self.config = ctx.config.alertmanager
        self.max_bytes = max_body_bytes()
        self._groups: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one notification per group at a time
        hooks.handle(SOURCE, self._deliver)

    @property
    def channel(self) -> str:
        return self.config.channel or self.ctx.config.channels.error

    def target(self, n: Notification) -> tuple[str, str] | None:
        """(model, env) when the labels name a configured model and one of its environments."""
        model, env = label(n, self.config.model_label), label(n, self.config.env_label)
        if model in self.ctx.config.models and env in self.ctx.config.models[model].environments:
            return model, env
        return None

    def row(self, key: str) -> dict[str, Any] | None:
        return next(iter(self.ctx.store.db.query("SELECT * FROM alerts WHERE source = ? AND key = ?", [SOURCE, key])), None)

    def _silence(self, target: tuple[str, str] | None) -> tuple[str, datetime] | None:
        found = self.silences.current(SOURCE, "/".join(target)) if target else None
        return (found.created_by, found.until) if found else None

    async def hook(self, request: web.Request) -> web.Response:
        """Check, queue durably, answer; the message is brought in line from the queue (see _deliver)."""
        token = self.ctx.secrets.alertmanager_token
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if token and not hmac.compare_digest(given, f"Bearer {token}".encode()):
            self.ctx.audit(actor="unknown", verb="alertmanager.hook", status="rejected", detail={"reason": "bad bearer token"})
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            body = await read_body(request, self.max_bytes)
        except BodyTooLarge as exc:
            # Said loudly: Alertmanager keeps sending a group it cannot deliver, and nobody sees it in Slack.
            log.warning("alertmanager hook refused a notification from %s: %s", request.remote, exc)
            self.ctx.audit(
                actor="alertmanager", verb="alertmanager.hook", status="too_large", detail={"bytes": exc.size, "limit": exc.limit}
            )
            return web.json_response({"error": f"notification refused: {exc}"}, status=413)
        try:
            notification = parse(body)
        except AlertmanagerError as exc:
            self.ctx.audit(actor="alertmanager", verb="alertmanager.hook", status="invalid", detail={"error": str(exc)})
            return web.json_response({"error": str(exc)}, status=400)
        kept = group(notification)
        try:
            item = self.hooks.put(SOURCE, f"{SOURCE}:{notification.key}", kept.model_dump(mode="json"))
        except sqlite3.Error as exc:
            return not_stored("alertmanager hook", exc)
        return web.json_response({"group": notification.groupKey, "queued": item, "alerts": kept.alerts})

    async def _deliver(self, payload: dict[str, Any]) -> None:
        await self.receive(Group.model_validate(payload))

    async def receive(self, taken: Group | Notification) -> str:
        """Store the group's state and bring its message in line; returns the stored state."""
        g = group(taken) if isinstance(taken, Notification) else taken
        n = g.notification
        async with self._groups[n.key]:
            now = self.ctx.clock()
            target = self.target(n)
            silenced = self._silence(target)
            existing = self.row(n.key)
            state = "resolved" if n.status == "resolved" else "silenced" if silenced else "open"
            fields = {
                "state": state,
                "severity": label(n, "severity") or "warning",
                "summary": (n.commonAnnotations.get("summary") or label(n, "alertname") or n.groupKey)[:1000],
                "detail": json.dumps({"alertname": label(n, "alertname"), "target": target, "group": g.model_dump(mode="json")}),
                "resolved_at": iso(now) if state == "resolved" else None,
            }
            if existing is None:
                self.ctx.store.db["alerts"].insert(
                    {"source": SOURCE, "key": n.key, "channel": self.channel, "opened_at": iso(now), **fields}
                )
            elif existing["state"] == "resolved" and state != "resolved":  # fired again: a fresh message
                self.ctx.store.db["alerts"].update(
                    existing["id"], {**fields, "ts": None, "acked_by": None, "opened_at": iso(now), "channel": self.channel}
                )
            else:
                self.ctx.store.db["alerts"].update(existing["id"], fields)
            row = self.row(n.key)
            assert row is not None
            model, env = target or (None, None)
            self.ctx.audit(
                actor=n.sender,
                verb="alertmanager.alert",
                status=state,
                channel=row["channel"],
                model=model,
                env=env,
                detail={"group": n.groupKey, "alerts": g.alerts},
            )
            shown = message(g, row_id=row["id"], target=target, silenced=silenced)
            if row["ts"]:
                ts = await self.ctx.notifier.edit_or_repost(row["channel"], row["ts"], shown)
                if ts != row["ts"]:
                    self.ctx.store.db["alerts"].update(row["id"], {"ts": ts})
            elif state == "open":  # a group silenced or resolved before anyone saw it stays quiet
                ts = await self.ctx.notifier.post(row["channel"], shown)
                self.ctx.store.db["alerts"].update(row["id"], {"ts": ts})
            return state

    async def silence(self, alert_id: int, user: str) -> str:
        """Silence the model+env of an alert group for 24 h: later groups for it are stored, not posted."""
        found = next(iter(self.ctx.store.db.query("SELECT * FROM alerts WHERE id = ? AND source = ?", [alert_id, SOURCE])), None)
        detail = json.loads(found["detail"]) if found else {}
        if found is None or not detail.get("target"):
            self.ctx.audit(actor=user, verb=SILENCE, status="refused", detail={"alert": alert_id, "reason": "no such alert"})
            return "That alert is not known to this bot any more; silence it in Alertmanager."
        if found["state"] == "resolved":
            self.ctx.audit(actor=user, verb=SILENCE, status="refused", detail={"alert": alert_id, "reason": "resolved"})
            return "That alert is already resolved."
        model, env = detail["target"]
        now = self.ctx.clock()
        until = now + SILENCE_FOR
        with self.ctx.store.transaction():
            self.silences.add(SOURCE, f"{model}/{env}", until, user)
            self.ctx.store.db["alerts"].update(alert_id, {"state": "silenced", "acked_by": user})
            self.ctx.audit(
                actor=user, verb=SILENCE, status="ok", model=model, env=env, detail={"alert": alert_id, "until": iso(until)}
            )
        # Rows stored before groups were kept cut down hold the whole notification.
        g = (
            Group.model_validate(detail["group"])
            if "group" in detail
            else group(Notification.model_validate(detail["notification"]))
        )
        if found["ts"]:
            await self.ctx.notifier.update(
                found["channel"], found["ts"], message(g, row_id=alert_id, target=(model, env), silenced=(user, until))
            )
        return f"Alerts for {model} {env} are silenced until {when(until)}."
