"""How a canary reads in Slack: its line per step in the card's thread, the progress on the card, the report."""
from __future__ import annotations

from collections.abc import Sequence

from bot.releases.canary.judge import Group, Verdict
from bot.releases.canary.runs import Canary, StoredStep
from bot.releases.messages import when

ICON = {Verdict.PASS: ":white_check_mark:", Verdict.FAIL: ":x:", Verdict.INCONCLUSIVE: ":grey_question:"}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def figures(g: Group) -> str:
    rate = "—" if g.error_rate is None else f"{g.error_rate * 100:.1f}%"
    return f"{g.requests:.0f} req, {g.errors:.0f} err ({rate}), mean {_ms(g.mean_ms)}, p99 {_ms(g.p99_ms)}"


def step_line(number: int, planned: int, verdict: Verdict, canary: Group, baseline: Group, reasons: Sequence[str]) -> str:
    why = f" · {'; '.join(reasons)}" if reasons else ""
    return (f"{ICON[verdict]} step {number}/{planned} *{verdict.value}* · canary: {figures(canary)} · "
            f"baseline: {figures(baseline)}{why}")


def progress(canary: Canary, version: str, baseline_version: str, verdicts: Sequence[Verdict], failure_limit: int) -> str:
    """The card's canary section: who serves what, a progress bar, and the verdict so far."""
    done, planned = len(verdicts), canary.steps_planned
    filled = round(10 * done / planned)
    fails = sum(v is Verdict.FAIL for v in verdicts)
    passes = sum(v is Verdict.PASS for v in verdicts)
    so_far = ("failing" if fails else "passing" if passes else "no verdict yet") if verdicts else "starting"
    return (f"*Canary* of {version} on {len(canary.canary_endpoints)} of "
            f"{len(canary.canary_endpoints) + len(canary.baseline_endpoints)} prod endpoints "
            f"({', '.join(canary.canary_endpoints)}); baseline {baseline_version} on {', '.join(canary.baseline_endpoints)}. "
            f"Started by <@{canary.started_by}> {when(canary.started_at)}, until {when(canary.ends_at)}.\n"
            f"`{'█' * filled}{'░' * (10 - filled)}` step {done} of {planned} · {passes} passed, {fails} failed "
            f"(aborts at {failure_limit}), {done - passes - fails} inconclusive · verdict so far: *{so_far}*")


def report(canary: Canary, version: str, baseline_version: str, steps: Sequence[StoredStep]) -> str:
    head = (f"*Canary of {canary.model} {version}* against {baseline_version}, started by <@{canary.started_by}> "
            f"{when(canary.started_at)} on {', '.join(canary.canary_endpoints)}: "
            + (f"*{canary.state.replace('_', ' ')}*" + (f" ({canary.outcome})" if canary.outcome else "")))
    lines = [step_line(s.step, canary.steps_planned, s.verdict, s.canary, s.baseline, s.reasons) for s in steps]
    return "\n".join([head, *(lines or ["No step has been measured yet."])])
