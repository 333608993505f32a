"""Block Kit for monitoring: the alert of one run date (any monitor's), the datagen daily summary and its details."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from bot.config import RETRAIN_BUTTONS, Monitor
from bot.monitors.causes import Cause, explains, funnel_step, group
from bot.monitors.datagen import Report
from bot.monitors.record import Record
from bot.monitors.rules import Breach, StageMove, slack_time
from bot.notifier import Message

AlertState = Literal["open", "acked", "silenced", "expected", "resolved"]

_STATE_HEAD = {
    "open": ":rotating_light:",
    "acked": ":eyes:",
    "silenced": ":mute:",
    "expected": ":ok_hand:",
    "resolved": ":white_check_mark:",
}
SILENCE_CHOICES = {"next_run": "Silence until next run", "24h": "Silence 24 h", "7d": "Silence 7 d"}


class AlertRef(BaseModel):
    """The value of every datagen alert button: which run it is about, never its state."""

    job: str
    run_date: date


class SilenceRef(AlertRef):
    duration: Literal["next_run", "24h", "7d"]


class RetrainRef(AlertRef):
    model: str


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:3000]}]}


def _button(text: str, action_id: str, value: BaseModel, style: str | None = None) -> dict[str, Any]:
    element = {"type": "button", "text": {"type": "plain_text", "text": text}, "action_id": action_id,
               "value": value.model_dump_json()}
    return element | ({"style": style} if style else {})


def num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def pct(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f}%" if abs(value) != float("inf") else ("new" if value > 0 else "gone")


def breach_line(breach: Breach) -> str:
    """One breach as people read it: what moved, by how much, against what and which threshold."""
    icon = ":red_circle:" if breach.severity == "crit" else ":large_orange_circle:"
    if breach.metric is None:
        return f"{icon} *{breach.rule_id}*: {breach.message}"
    parts = [f"value {num(breach.value)}"]
    if breach.baseline is not None:
        parts.append(f"baseline {num(breach.baseline)}")
    if breach.change_pct is not None:
        parts.append(f"change {pct(breach.change_pct)}")
    if breach.threshold is not None:
        unit = "%" if breach.change_pct is not None else ""
        parts.append(f"{breach.severity} threshold {num(breach.threshold)}{unit}")
    return f"{icon} *{breach.rule_id}* `{breach.metric}`: {', '.join(parts)}"


def severity_of(breaches: list[Breach]) -> str:
    return "crit" if any(b.severity == "crit" for b in breaches) else "warn"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def breaches_count(n: int) -> str:
    return plural(n, "breach", "breaches")


MAX_CAUSE_LINES = 5  # with the head, an overflow line, the mover and the status, an alert stays within 8 lines


def _icon(breach: Breach) -> str:
    return ":red_circle:" if breach.severity == "crit" else ":large_orange_circle:"


def cause_title(cause: Cause) -> str:
    """What an alert's head says about its leading cause: the step and its move, or the rule that fired."""
    lead = cause.lead
    if (found := funnel_step(lead.metric)) is not None and lead.change_pct is not None:
        title = f"*{found[0]}* {found[1]} {pct(lead.change_pct)}"
    else:
        title = f"*{lead.rule_id}*" + (f" `{lead.metric}`" if lead.metric else "")
    return "; ".join(x for x in (title, cause.follow_text) if x)


def cause_line(cause: Cause) -> str:
    """One cause as a line of the alert: its rule, what its lead breach says, and how many breaches follow."""
    return f"{_icon(cause.lead)} *{cause.lead.rule_id}*: " + "; ".join(
        x for x in (cause.lead.message, cause.follow_text) if x)


def summary_text(breaches: list[Breach], tolerance_pct: float) -> str:
    """The alert in one plain line, cause by cause, for lists of alerts elsewhere (the digest, the App Home)."""
    return "; ".join("; ".join(x for x in (c.lead.message, c.follow_text) if x)
                     for c in group(breaches, tolerance_pct))[:1000]


def alert(
    job: str, run_date: date, breaches: list[Breach], *, state: AlertState = "open", mover: StageMove | None = None,
    by: str | None = None, note: str = "", retrain: Sequence[str] = (), tolerance_pct: float = 5, kind: str = "datagen",
) -> Message:
    """The one alert message of a run date: its leading cause first, one line per cause, the biggest mover where it
    explains a funnel cause, and what people can do. Every breach is in the thread (`breach_list`)."""
    causes = group(breaches, tolerance_pct)
    title = cause_title(causes[0]) if causes else "no breaches"
    head = f"{_STATE_HEAD[state]} {kind} *{job}* {run_date}: {title}"
    if state == "resolved":
        head = f"{_STATE_HEAD[state]} ~{kind} *{job}* {run_date}: {title}~ resolved"
    text = f"{kind} {job} {run_date}: " + (
        "resolved" if state == "resolved" else f"{breaches_count(len(breaches))} ({severity_of(breaches)})")
    shown = causes if len(causes) <= MAX_CAUSE_LINES else causes[:MAX_CAUSE_LINES - 1]
    lines = [cause_line(c) for c in shown]
    if rest := causes[len(shown):]:  # counted and pointed at, never dropped silently
        lines.append(f"…and {plural(len(rest), 'more cause')} ({breaches_count(sum(len(c.breaches) for c in rest))}) "
                     f"in the thread and under {_view(job, run_date, kind)}")
    blocks = [_section(head), _section("\n".join(lines) or "no breaches")]
    if explains(mover, causes):
        assert mover is not None
        blocks.append(_section(
            f":mag: Biggest mover: *{mover.stage}*: {num(mover.items)} items vs {num(mover.baseline_items)} "
            f"({pct(mover.items_change_pct)}; pass rate {pct(mover.pass_rate_change_pct)})"))
    status = {"acked": f"Acked by <@{by}>", "silenced": f"Silenced by <@{by}>", "expected": f"Marked expected by <@{by}>",
              "resolved": "Cleared by a later report", "open": ""}[state]
    count = (f"{breaches_count(len(breaches))} from {plural(len(causes), 'cause')}: every one in the "
             f"thread and under {_view(job, run_date, kind)}") if len(breaches) > len(shown) else ""
    if status or note or count:
        blocks.append(_context(" · ".join(x for x in (status, note, count) if x)))
    if state != "resolved":
        ref = AlertRef(job=job, run_date=run_date)
        buttons = [_button("Ack", "datagen.ack", ref)]
        buttons += [_button(label, f"datagen.silence.{key}", SilenceRef(job=job, run_date=run_date, duration=key))
                    for key, label in SILENCE_CHOICES.items()]
        buttons.append(_button("Mark expected", "datagen.expected", ref))
        buttons += [_button(f"Retrain {model}", f"datagen.retrain.{i}", RetrainRef(job=job, run_date=run_date, model=model))
                    for i, model in enumerate(retrain[:RETRAIN_BUTTONS])]
        blocks.append({"type": "actions", "elements": buttons})
    return Message(text=text, blocks=blocks)


def _view(job: str, run_date: date, kind: str) -> str:
    return f"`/mlops datagen {run_date}`" if kind == "datagen" else f"`/mlops datagen {run_date} job={job}`"


_SECTION_CHARS = 2900  # under Slack's 3,000 a section


def breach_list(job: str, run_date: date, breaches: list[Breach], *, kind: str = "datagen") -> Message:
    """Every breach of an alert, one line each, in as many sections as they need: nothing cut. The notifier
    spreads a list past one message's blocks over several (or a file), so the whole list always arrives."""
    sections = [f"*Every breach of {kind} {job} {run_date}* ({len(breaches):,})"]
    for line in map(breach_line, breaches):
        if len(sections[-1]) + len(line) + 1 > _SECTION_CHARS:
            sections.append("")
        sections[-1] += "\n" + line[:_SECTION_CHARS]
    return Message(text=f"{kind} {job} {run_date}: every breach", blocks=[_section(t.strip()) for t in sections])


def unreadable(kind: str, run_date: date, reason: str, uri: str) -> Breach:
    """A record that cannot be read, as the breach its alert lists."""
    return Breach("unreadable", "crit", None, None, None, None, None,
                  f"{kind} report for {run_date} unreadable: {reason} ({uri})")


RUN_FAILED = "run_error"  # the rule id of a monitor run that gave no record


def run_failed(name: str, reason: str, monitor: Monitor) -> Breach:
    """A monitor's command or notebook that gave no record, as the one breach of its alert, with what to do."""
    what = "notebook" if monitor.notebook else "command"
    return Breach(RUN_FAILED, "crit", None, None, None, None, None,
                  f"monitor {name}: {reason}. Fix `monitors.{name}.{what}` (try it by hand with MLOPS_RUN_DATE set); "
                  f"it runs again at its next slot ({monitor.schedule.cron}, {monitor.schedule.tz}) and this alert "
                  "resolves at the first good run")


def _duration(delta: timedelta | None) -> str:
    if delta is None:
        return "—"
    minutes = round(delta.total_seconds() / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _delta(today: float | None, then: float | None) -> str:
    if today is None or then is None or then == 0:
        return "—"
    return pct((today - then) / then * 100)


def funnel_table(report: Report, day_before: Report | None, week_before: Report | None) -> str:
    """The funnel as a fixed-width table: what each step left, its loss, and its change over 1 and 7 days."""
    def items_of(other: Report | None) -> dict[str, int | None]:
        return {s.label: s.items if s.items is not None else s.events for s in other.funnel()} if other else {}

    before, week = items_of(day_before), items_of(week_before)
    rows = [f"{'step':<22}{'items/rows':>14}{'loss %':>9}{'Δ1d':>9}{'Δ7d':>9}"]
    for step in report.funnel():
        count = step.items if step.items is not None else step.events
        loss = "" if step.item_loss_pct is None else f"{step.item_loss_pct:.2f}"
        rows.append(f"{step.label[:21]:<22}{count:>14,}{loss:>9}"
                    f"{_delta(count, before.get(step.label)):>9}{_delta(count, week.get(step.label)):>9}")
    return "```" + "\n".join(rows) + "```"


def summary(
    job: str, report: Report, day_before: Report | None, week_before: Report | None, *,
    usual_runtime: timedelta | None, breaches: int, missing: Sequence[date] = (),
) -> Message:
    """The daily post: status, run time against the usual, final rows, the days before it that have no record
    and the breach count, at a glance. A failed run shows its failure and none of its numbers."""
    if report.failed:
        cause = "; ".join(report.errors) or "SUCCESS is false"
        status = f":x: datagen *{job}* {report.run_date} *failed*: {cause[:500]}"
        facts = ["no numbers: the run failed"]
        if report.run_time is not None:
            facts.insert(0, f"stopped after {_duration(report.run_time)}")
    else:
        status = f":white_check_mark: datagen *{job}* {report.run_date} succeeded"
        facts = [f"run time {_duration(report.run_time)} (usual {_duration(usual_runtime)})"]
        if report.final_rows is not None:
            then = day_before.final_rows if day_before else None
            facts.append(f"final rows {report.final_rows:,} ({_delta(report.final_rows, then)} 1d)")
        if report.new_items_1d is not None:
            facts.append(f"new items {report.new_items_1d.count:,} ({report.new_items_1d.pct:.2f}%)")
    if missing:
        facts.append(f"no record for {', '.join(map(str, missing))}")
    count = breaches_count(breaches) if breaches else "no breaches"
    facts.append(count)
    text = f"datagen {job} {report.run_date}: {'failed' if report.failed else 'ok'}, {count}"
    return Message(text=text, blocks=[_section(status), _context(" · ".join(facts))])


def _job_time(moment: datetime, tz: str) -> str:
    # The job writes its times without a zone, in its own.
    return slack_time(moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(tz)))


def details(report: Report, day_before: Report | None, week_before: Report | None, *, tz: str) -> Message:
    """The thread under the summary: the funnel with losses and deltas, then the item-age buckets."""
    blocks = [_section("*Funnel* (raw → filters → embedding join → final rows)\n"
                       + funnel_table(report, day_before, week_before))]
    if report.buckets:
        rows = [f"{'item age':<16}{'items':>12}{'share':>8}{'Δ7d':>10}"]
        for label, share in report.buckets.items():
            change = report.buckets_delta_7d.get(label)
            rows.append(f"{label:<16}{share.count:>12,}{share.pct:>7.2f}%{pct(change.pct) if change else '—':>10}")
        blocks.append(_section("*Item-age buckets*\n```" + "\n".join(rows) + "```"))
    extra = []
    if report.items_diff_1d is not None and report.items_diff_7d is not None:
        extra.append(f"items Δ1d {report.items_diff_1d.count:+,} ({pct(report.items_diff_1d.pct)}), "
                     f"Δ7d {report.items_diff_7d.count:+,} ({pct(report.items_diff_7d.pct)})")
    if report.start_time and report.end_time:
        extra.append(f"ran {_job_time(report.start_time, tz)} → {_job_time(report.end_time, tz)}")
    if extra:
        blocks.append(_context(" · ".join(extra)))
    return Message(text=f"datagen {report.run_date} details", blocks=blocks)


def comparison(job: str, report: Report, other: Report, mover: StageMove | None) -> Message:
    """`/mlops datagen DATE compare DATE`: the funnel of one run against another."""
    blocks = [_section(f"datagen *{job}* {report.run_date} compared with {other.run_date}\n"
                       + funnel_table(report, other, None).replace("Δ1d", "Δ  "))]
    if mover is not None:
        blocks.append(_context(f"Biggest mover: {mover.stage} ({pct(mover.pass_rate_change_pct)} pass rate)"))
    return Message(text=f"datagen {job} {report.run_date} vs {other.run_date}", blocks=blocks)


MAX_METRICS_SHOWN = 40


def record_view(job: str, record: Record, breaches: int) -> Message:
    """A monitor's record of one day as `/mlops datagen DATE job=J` shows it: its status and its metrics."""
    status = (f":x: monitor *{job}* {record.run_date} *failed*: {'; '.join(record.errors)[:500] or 'success is false'}"
              if record.failed else f":white_check_mark: monitor *{job}* {record.run_date}: "
              + (breaches_count(breaches) if breaches else "no breaches"))
    values = record.metrics()
    rows = [f"{name[:48]:<50}{num(value):>16}" for name, value in list(values.items())[:MAX_METRICS_SHOWN]]
    if len(values) > MAX_METRICS_SHOWN:
        rows.append(f"…and {plural(len(values) - MAX_METRICS_SHOWN, 'more metric')}")
    blocks = [_section(status)] + ([_section("```" + "\n".join(rows) + "```")] if rows else [])
    return Message(text=f"monitor {job} {record.run_date}: {'failed' if record.failed else 'ok'}", blocks=blocks)


def text_only(text: str) -> Message:
    return Message(text=text, blocks=[_section(text)])
