"""Breaches grouped by cause, so that one drop reads as one line per rule and not one per stage.

A funnel breach is explained by the first stage that moved: the stages after it that moved by about the same
amount (on their own, after the first stage's move, by no more than a tolerance) only carry the drop along,
and fold under it. Item-age
buckets that moved alike fold the same way. Any other breach is its own cause. Pure: breaches in, causes out.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.monitors.rules import Breach, StageMove

_FUNNEL = re.compile(r"(?P<step>raw|stage\.(?P<stage>[^.]+)|post_filters|embedding_join)\.(?P<measure>events|items)")
_BUCKET = re.compile(r"bucket\.[^.]+\.(?P<field>[a-z0-9_]+)")


def funnel_step(metric: str | None) -> tuple[str, str] | None:
    """(funnel step label, measure) of a funnel metric: 'stage.feed_source.items' -> ('feed source', 'items')."""
    if metric == "final_rows":
        return "final rows", "rows"
    if metric is None or (match := _FUNNEL.fullmatch(metric)) is None:
        return None
    return (match["stage"] or match["step"]).replace("_", " "), match["measure"]


def _family(breach: Breach) -> tuple[str, str] | None:
    """Breaches of one family can carry the same cause; None for a breach that stands alone."""
    if breach.change_pct is None or not math.isfinite(breach.change_pct) or breach.metric is None:
        return None
    if (step := funnel_step(breach.metric)) is not None:
        return "funnel", "events" if step[1] == "rows" else step[1]  # final rows are the joined events
    if (match := _BUCKET.fullmatch(breach.metric)) is not None:
        return "bucket", match["field"]
    return None


@dataclass(frozen=True, slots=True)
class Cause:
    """The breach that explains a group (`lead`) and the breaches that only follow it."""

    lead: Breach
    followers: tuple[Breach, ...] = ()

    @property
    def breaches(self) -> tuple[Breach, ...]:
        return (self.lead, *self.followers)

    @property
    def step(self) -> str | None:
        """The funnel step the cause is at, if it is a funnel cause."""
        found = funnel_step(self.lead.metric)
        return found[0] if found else None

    @property
    def follow_text(self) -> str:
        if not self.followers:
            return ""
        n = len(self.followers)
        if self.step is not None:
            return f"{n} downstream stage{'s' if n != 1 else ''} follow{'s' if n == 1 else ''}"
        return f"{n} more bucket{'s' if n != 1 else ''} moved alike"


def group(breaches: Sequence[Breach], tolerance_pct: float) -> list[Cause]:
    """The causes of a run's breaches, most severe first, then in rule and funnel order.

    Breaches come per rule in report order, which is funnel order, so the first of a rule's funnel breaches is
    upstream of the rest; a later one whose change differs from every earlier lead's by more than the tolerance
    moved on its own and leads a cause of its own.
    """
    leads: list[Breach] = []
    followers: list[list[Breach]] = []
    for breach in breaches:
        home = _home(leads, breach, tolerance_pct)
        if home is None:
            leads.append(breach)
            followers.append([])
        else:
            followers[home].append(breach)
    causes = [Cause(lead, tuple(more)) for lead, more in zip(leads, followers, strict=True)]
    return sorted(causes, key=lambda c: c.lead.severity != "crit")  # stable: rule and funnel order stay


def own_move_pct(change_pct: float, lead_change_pct: float) -> float:
    """How much a breach moved on its own, after its lead's move: -40 % after a -40 % lead is 0, -48 % is -13.3."""
    carried = 1 + lead_change_pct / 100
    if carried == 0:  # the lead lost everything: nothing after it can move on its own
        return 0.0 if change_pct == lead_change_pct else float("inf")
    return ((1 + change_pct / 100) / carried - 1) * 100


def _home(leads: Sequence[Breach], breach: Breach, tolerance_pct: float) -> int | None:
    """The index of the newest lead of the same rule and family that the breach only follows, if any."""
    if (family := _family(breach)) is None:
        return None
    assert breach.change_pct is not None  # a breach with a family has a finite change
    return next((i for i in range(len(leads) - 1, -1, -1)
                 if leads[i].rule_id == breach.rule_id and _family(leads[i]) == family
                 and abs(own_move_pct(breach.change_pct, leads[i].change_pct or 0)) <= tolerance_pct), None)


def explains(mover: StageMove | None, causes: Sequence[Cause]) -> bool:
    """The biggest mover belongs in an alert only when it is a funnel cause's own step, moving its way."""
    return mover is not None and any(
        cause.step == mover.stage and (cause.lead.change_pct or 0) * mover.pass_rate_change_pct > 0
        for cause in causes)
