"""The digests and the App Home in Block Kit, from the plain values of `facts`.

Sections stay under Slack's 3000 characters; a digest of more than 50 blocks continues in its own thread
(`Notifier.post`). The App Home, one view of at most 100 blocks, pages its model table instead (Previous /
Next buttons), so no row is ever cut off.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from bot.digest.facts import (
    DailyFacts,
    DatagenStatus,
    ModelRow,
    OnCall,
    OpenAlert,
    StagedRelease,
    TrainRow,
    WeeklyFacts,
    by_engineer,
)
from bot.notifier import Message
from bot.releases.messages import ReleaseRef, btn, context, lock_line, section, when
from bot.releases.model import State
from bot.releases.queue import waiting_text

MAX_SECTION = 3000
MAX_HOME_BLOCKS = 100  # Slack's limit for a Home tab view
# Audit rows that only echo another row (the press before its outcome) or are plumbing, not news.
QUIET_STATUSES = ("accepted",)
QUIET_VERBS = ("help", "datagen.chart", "slack.request", "train.watch", "train.wait")
# Work the bot does on its own schedule: counted in one line when it went well, listed when it did not.
ROUTINE = {  # verb: what one of them is, and many
    "datagen.ingest": ("datagen record stored", "datagen records stored"),
    "digest.daily": ("daily digest", "daily digests"), "digest.weekly": ("weekly digest", "weekly digests"),
    "oncall.handoff": ("handoff", "handoffs"), "oncall.reminder": ("on-call reminder", "on-call reminders"),
    "oncall.ack_reminder": ("handoff reminder", "handoff reminders"),
}
ROUTINE_STATUSES = ("ok", "posted", "sent", "succeeded")
NOISIEST = 3


def duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return " ".join(f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n) or "under a minute"


# --- Block Kit ---------------------------------------------------------------------------------------------


def sections(title: str, lines: list[str], empty: str) -> list[dict[str, Any]]:
    """`title` and its lines packed into as few sections as fit Slack's 3000 characters each."""
    blocks, text = [], f"*{title}*"
    for line in lines or [f"_{empty}_"]:
        line = line[: MAX_SECTION - len(title) - 8]
        if len(text) + 1 + len(line) > MAX_SECTION:
            blocks.append(section(text))
            text = f"*{title}* (continued)"
        text += "\n" + line
    return [*blocks, section(text)]


def model_line(row: ModelRow) -> str:
    if row.version is None:
        return "\n".join([f"*{row.model}* · {row.env}: not deployed", *([lock_line(row.lock)] if row.lock else [])])
    who = f"deployed by <@{row.deployed_by}>" if row.deployed_by else "deployed by —"
    if row.approved_by:
        who += f", unblocked by <@{row.approved_by}>"
    trained = f" · trained {when(row.trained_at)}" if row.trained_at else ""
    line = (f"*{row.model}* · {row.env}: `{row.version}` {(row.state or '?').replace('_', ' ')} · {who} "
            f"{when(row.updated_at)}{trained}")
    return "\n".join([line, *([lock_line(row.lock)] if row.lock else []), *(f":warning: {d}" for d in row.drift)])


def datagen_line(status: DatagenStatus) -> str:
    if status.run_date is None:
        return f":grey_question: *{status.job}*: no record stored yet"
    late = status.run_date < status.expected
    icon = ":x:" if status.failed else ":warning:" if late or status.alert not in (None, "resolved") else ":white_check_mark:"
    words = "the run failed" if status.failed else "ran"
    line = f"{icon} *{status.job}* {status.run_date}: {words}"
    if status.alert:
        line += f", alert {status.alert}"
    if late:
        line += f"; no record for {status.expected} yet"
    return line


def pending_line(r: StagedRelease) -> str:
    by = f"deployed by <@{r.deployed_by}>" if r.deployed_by else ""
    return f"*{r.model} {r.version}* verified {when(r.verified_at)}, {by}: waiting for an approver to unblock prod"


def unverified_line(r: StagedRelease, now: datetime) -> str:
    since = duration(now - r.deployed_at) if r.deployed_at else "a while"
    who = f"<@{r.deployed_by}>" if r.deployed_by else "whoever deployed it"
    return f"*{r.model} {r.version}* has been on staging for {since} ({State(r.state).words}): {who}, verify it or roll it back"


def train_lines(trains: list[TrainRow]) -> list[str]:
    """One line per train engineer: the trains they drive between staging and prod."""
    def one(t: TrainRow) -> str:
        return (f"*{t.model} {t.version}* {t.state} since {when(t.since)}"
                + (f" ({waiting_text(list(t.waiting))})" if t.waiting else ""))

    return [f"{f'<@{engineer}>' if engineer else 'no engineer'}: " + "; ".join(one(t) for t in trains)
            for engineer, trains in by_engineer(trains)]


TRAINS = "Trains on the tracks, by engineer"
NO_TRAINS = "no release between staging and prod"


def alert_line(a: OpenAlert) -> str:
    icon = ":red_circle:" if a.severity in ("crit", "critical", "page") else ":large_orange_circle:"
    summary = a.summary if len(a.summary) <= 200 else a.summary[:199] + "…"
    return f"{icon} {a.source} · {summary} ({a.state}, since {when(a.opened_at)})"


def action_line(row: Mapping[str, Any]) -> str:
    what = " ".join(str(row[k]) for k in ("model", "env", "version") if row.get(k))
    return f"{when(row['ts'])} <@{row['actor']}> {row['verb']} {what} · {row['status']}".replace("  ", " ")


def newsworthy(row: Mapping[str, Any]) -> bool:
    return row["status"] not in QUIET_STATUSES and row["verb"] not in QUIET_VERBS


def routine(row: Mapping[str, Any]) -> bool:
    return row["verb"] in ROUTINE and row["status"] in ROUTINE_STATUSES


def news_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    """One line per action a person would want to read, then one line counting the routine ones by kind."""
    counts = Counter(ROUTINE[r["verb"]] for r in rows if routine(r))
    lines = [action_line(r) for r in rows if not routine(r)]
    if counts:
        lines.append("Routine: " + ", ".join(f"{n} {one if n == 1 else many}" for (one, many), n in counts.most_common()))
    return lines


def daily(facts: DailyFacts) -> Message:
    news = [row for row in facts.actions if newsworthy(row)]
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Daily digest · {facts.now:%a %d %b %Y}"}},
        *sections("Models in service", [model_line(r) for r in facts.models], "no models configured"),
        *sections("Datagen and monitors", [datagen_line(s) for s in facts.datagen], "no datagen jobs or monitors configured"),
        *sections(TRAINS, train_lines(facts.trains), NO_TRAINS),
        *sections("Approvals pending", [pending_line(r) for r in facts.pending], "nothing waiting for an approver"),
        *sections(f"On staging unverified for more than {facts.unverified_hours:g} h",
                  [unverified_line(r, facts.now) for r in facts.unverified], "nothing left unverified on staging"),
        *sections("Open alerts", [alert_line(a) for a in facts.alerts], "no open alerts"),
        *sections(f"Last 24 h: {len(news)} actions", news_lines(news), "nothing happened"),
    ]
    text = (f"Daily digest: {len(facts.pending)} approvals pending, {len(facts.unverified)} unverified on staging, "
            f"{len(facts.alerts)} open alerts")
    return Message(text=text, blocks=blocks)


def weekly(facts: WeeklyFacts) -> Message:
    models = sorted(set(facts.deploys) | set(facts.promotions) | set(facts.rollbacks))
    per_model = [f"*{m}*: {facts.deploys[m]} deploys to staging, {facts.promotions[m]} to prod, "
                 f"{facts.rollbacks[m]} rollbacks" for m in models]
    rules = [f"{n} × {rule}" for rule, n in facts.alerts_per_rule.most_common()]
    noisiest = ", ".join(f"*{rule}* ({n})" for rule, n in facts.alerts_per_rule.most_common(NOISIEST))
    lead = facts.staging_to_prod
    mean = (f"mean time from staging to prod: *{duration(sum(lead, timedelta()) / len(lead))}* over {len(lead)} releases"
            if lead else "mean time from staging to prod: no release reached prod this week")
    blocks = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"Weekly digest · {facts.since:%d %b} – {facts.until:%d %b %Y}"},
        },
        section(f"Noisiest alert rules: {noisiest}" if noisiest else "No alerts fired this week."),
        *sections("Alerts per rule", rules, "no alerts"),
        *sections("Releases per model", per_model, "no deploys or rollbacks"),
        section(mean),
    ]
    text = (
        f"Weekly digest: {sum(facts.alerts_per_rule.values())} alerts, {sum(facts.deploys.values())} deploys, "
        f"{sum(facts.rollbacks.values())} rollbacks"
    )
    return Message(text=text, blocks=blocks)


def oncall_line(o: OnCall) -> str:
    now = f"<@{o.now.user}> until {when(o.now.end)}" if o.now else "nobody"
    following = f"<@{o.next.user}> from {when(o.next.start)}" if o.next else "—"
    return f"*{o.rotation}*: now {now} · next {following}"


def operation_line(op: Mapping[str, Any]) -> str:
    return f":hourglass_flowing_sand: {op['what']} since {when(op['since'])}"


class HomePage(BaseModel):
    """The value of the App Home's Previous / Next buttons: which page of the model table to show."""

    page: int = Field(default=0, ge=0, le=100_000)


def pages(lines: list[str], title: str, budget: int) -> list[list[dict[str, Any]]]:
    """`title` and its lines as pages of at most `budget` blocks each, packed as `sections` packs them; when there
    are several, each page's title says which rows it holds."""
    if not lines:
        return [sections(title, [], "no models configured")]
    widest = f"{title} · page {len(lines)} of {len(lines)} (rows {len(lines)}–{len(lines)} of {len(lines)}) (continued)"
    cuts, start, blocks, used = [], 0, 1, len(widest) + 2
    for i, line in enumerate(lines):
        size = 1 + min(len(line), MAX_SECTION - len(title) - 8)
        if used + size > MAX_SECTION:  # the next section of the page
            if blocks == budget and i > start:  # the next page
                cuts.append((start, i))
                start, blocks = i, 0
            blocks, used = blocks + 1, len(widest) + 2
        used += size
    cuts.append((start, len(lines)))
    if len(cuts) == 1:
        return [sections(title, lines, "")]
    return [sections(f"{title} · page {n + 1} of {len(cuts)} (rows {a + 1}–{b} of {len(lines)})", lines[a:b], "")
            for n, (a, b) in enumerate(cuts)]


def home_view(
    *,
    user: str,
    now: datetime,
    models: list[ModelRow],
    oncall: list[OnCall],
    alerts: list[OpenAlert],
    approvals: list[StagedRelease],
    operations: list[Mapping[str, Any]],
    trains: list[TrainRow] | None = None,
    page: int = 0,
) -> dict[str, Any]:
    """The App Home of `user`: the model table (page `page` of it, when it does not fit with the rest), the trains
    on the tracks, on call, open alerts, their approvals and running work."""
    rest: list[dict[str, Any]] = [
        *sections(TRAINS, train_lines(trains or []), NO_TRAINS),
        *sections("On call", [oncall_line(o) for o in oncall], "no rotations configured"),
        *sections(
            "Open alerts",
            [alert_line(a) for a in alerts[:20]] + ([f"and {len(alerts) - 20} more"] if len(alerts) > 20 else []),
            "no open alerts",
        ),
        {"type": "divider"},
        section("*Waiting for you to unblock*" if approvals else "*Waiting for you to unblock*\n_nothing_"),
    ]
    for r in approvals[:10]:
        rest.append(
            {**section(pending_line(r)), "accessory": btn("Unblock prod", "release.promote", ReleaseRef(release=r.id), "primary")}
        )
    if len(approvals) > 10:
        rest.append(context(f"and {len(approvals) - 10} more: the daily digest lists every approval pending"))
    rest += sections("Your running operations", [operation_line(op) for op in operations], "none")
    head = [{"type": "header", "text": {"type": "plain_text", "text": "MLOps dashboard"}},
            context(f"for <@{user}> · as of {when(now)}")]
    table = pages([model_line(r) for r in models], "Models in service", max(1, MAX_HOME_BLOCKS - len(head) - len(rest) - 1))
    page = min(page, len(table) - 1)
    nav = [btn(label, "home.page", HomePage(page=to)) for label, to, shown in
           (("Previous models", page - 1, page > 0), ("Next models", page + 1, page < len(table) - 1)) if shown]
    blocks = [*head, *table[page], *([{"type": "actions", "elements": nav}] if nav else []), *rest]
    return {"type": "home", "blocks": blocks}
