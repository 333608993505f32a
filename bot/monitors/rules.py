"""Datagen alert rules: declarative models and their pure evaluation over a history of reports.

The rule models are what `datagen.jobs.<job>.rules` and `monitors.<name>.rules` hold in mlops-bot.yaml
(examples/datagen/rules.yaml has the datagen team's defaults). A rule names metrics by the dotted names of a
record's `metrics()` (bot/monitors/record.py), or by a glob of them (`stage.*.events`, `*.items`; `*` also
crosses dots).

Baselines skip incidents. A day is healthy when it has a successful report that breached no rule, or that
was marked expected: its numbers are the new normal, so no day before it is a baseline for the days after
it. For a report on day D:
- `lag_1d` is the newest healthy day from D-1 back, `lag_7d` the newest from D-7 back, looking at most
  `lookback` days: an anomaly does not become the baseline of the day after it, so the return to normal is
  quiet. With no healthy day in reach the rule has no baseline for D and stays silent.
- `median_same_weekday` is the per-metric median over the healthy days among D-7, D-14, ... D-7*weeks;
  silent when none is left.
Days are judged in date order (`Verdicts`), each against the healthy days before it, so `evaluate` and
`backtest` agree. A missing report yields only `freshness` breaches, a failed one only `failed` breaches:
every other rule would be judging numbers that are not there.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from statistics import median
from typing import Annotated, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from bot.monitors.datagen import Duration, Report
from bot.monitors.record import Record

Severity = Literal["warn", "crit"]
Direction = Literal["up", "down", "both"]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Thresholds(_Rule):
    """Warn/crit thresholds on the absolute % change, strictly exceeded, in the given direction."""

    metric: str
    warn_pct: PositiveFloat | None = None
    crit_pct: PositiveFloat | None = None
    direction: Direction = "both"

    @model_validator(mode="after")
    def _one_threshold(self) -> _Thresholds:
        if self.warn_pct is None and self.crit_pct is None:
            raise ValueError("give warn_pct, crit_pct or both")
        if self.warn_pct is not None and self.crit_pct is not None and self.crit_pct < self.warn_pct:
            raise ValueError("crit_pct must not be below warn_pct")
        return self

    @cached_property
    def quiet_below(self) -> float:
        """Changes up to this size breach nothing, whatever their direction."""
        return min(t for t in (self.warn_pct, self.crit_pct) if t is not None)

    def grade(self, change_pct: float) -> tuple[Severity, float] | None:
        """The severity and the threshold a change breaches, if any."""
        if (self.direction == "up" and change_pct <= 0) or (self.direction == "down" and change_pct >= 0):
            return None
        size = abs(change_pct)
        if self.crit_pct is not None and size > self.crit_pct:
            return "crit", self.crit_pct
        if self.warn_pct is not None and size > self.warn_pct:
            return "warn", self.warn_pct
        return None


class ChangeRule(_Thresholds):
    """A metric moved by more than a % against a baseline from the history."""

    kind: Literal["change"] = "change"
    baseline: Literal["lag_1d", "lag_7d", "median_same_weekday"] = "lag_1d"
    weeks: int = Field(4, ge=1, le=52, description="how many same weekdays median_same_weekday looks back")


class RecordedChangeRule(_Thresholds):
    """A % change the job computed itself moved by more than a %: `bucket.*.delta_7d_pct`,
    `items_diff_1d_pct`, `items_diff_7d_pct`. Works from the first report, with no history at all."""

    kind: Literal["recorded_change"] = "recorded_change"


class BoundRule(_Rule):
    """A metric is below `lt` or above `gt`."""

    kind: Literal["bound"] = "bound"
    metric: str
    lt: float | None = None
    gt: float | None = None
    severity: Severity = "warn"

    @model_validator(mode="after")
    def _one_bound(self) -> BoundRule:
        if self.lt is None and self.gt is None:
            raise ValueError("give lt, gt or both")
        return self


class FreshnessRule(_Rule):
    """No report by the expected time plus `grace` (unset: the job's `grace_hours`): the raw data was not found."""

    kind: Literal["freshness"] = "freshness"
    grace: Duration | None = None
    severity: Severity = "crit"


class FailedRule(_Rule):
    """The run reported SUCCESS false or an error."""

    kind: Literal["failed"] = "failed"
    severity: Severity = "crit"


Rule = Annotated[
    ChangeRule | RecordedChangeRule | BoundRule | FreshnessRule | FailedRule, Field(discriminator="kind")
]


def _unique_ids(rules: list[Rule]) -> list[Rule]:
    if duplicates := sorted(rule_id for rule_id, n in Counter(r.id for r in rules).items() if n > 1):
        raise ValueError(f"duplicate rule ids: {', '.join(duplicates)}")
    return rules


RuleSet = Annotated[list[Rule], AfterValidator(_unique_ids)]
"""The type of a job's `rules:` list in the config: rules with unique ids."""


def default_rules() -> list[Rule]:
    """The team's alerts (DOMAIN.md); examples/datagen/rules.yaml is the same list in YAML."""
    return [
        ChangeRule(id="events_1d", metric="*.events", baseline="lag_1d", warn_pct=10),
        ChangeRule(id="events_7d", metric="*.events", baseline="lag_7d", warn_pct=10),
        ChangeRule(id="items_1d", metric="*.items", baseline="lag_1d", warn_pct=10),
        ChangeRule(id="items_7d", metric="*.items", baseline="lag_7d", warn_pct=10),
        ChangeRule(id="item_age_bucket_7d", metric="bucket.*.count", baseline="lag_7d", warn_pct=10),
        BoundRule(id="new_items_floor", metric="new_items_1d_pct", lt=3, severity="warn"),
        FreshnessRule(id="raw_data_missing", severity="crit"),
        FailedRule(id="run_failed", severity="crit"),
    ]


@dataclass(frozen=True, slots=True)
class Breach:
    """One rule breached by one metric of one run. Numbers are None where the rule kind has none."""

    rule_id: str
    severity: Severity
    metric: str | None
    value: float | None
    baseline: float | None
    change_pct: float | None
    threshold: float | None
    message: str


class StageMove(NamedTuple):
    """The funnel step whose share of the previous step's items changed most against the baseline run."""

    stage: str
    items: int
    baseline_items: int
    items_change_pct: float
    pass_rate_change_pct: float


DEFAULT_GRACE = timedelta(hours=3)
DEFAULT_LOOKBACK = 7


def evaluate(
    rules: Sequence[Rule],
    history: Mapping[date, Record],
    run_date: date,
    *,
    expected: Collection[date] = frozenset(),
    now: datetime | None = None,
    expected_at: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
    lookback: int = DEFAULT_LOOKBACK,
    missing: str = "datagen report",
) -> list[Breach]:
    """Every breach of `rules` by the run of `run_date`, in rule order.

    `history` holds the reports by run date (it may include `run_date` itself); `expected` are the days marked
    expected. Freshness needs `now` and `expected_at` (when the report for `run_date` was due); without them a
    missing report breaches nothing. `grace` is the job's, for freshness rules that set none; `missing` names
    what did not come.
    """
    if run_date in history:
        return Verdicts(rules, history, expected=expected, lookback=lookback).of(run_date)
    if now is None or expected_at is None:
        return []
    rules_grace = [(r, grace if r.grace is None else r.grace) for r in rules if isinstance(r, FreshnessRule)]
    return [_overdue(r, run_date, expected_at, wait, missing) for r, wait in rules_grace
            if now >= expected_at + wait]


def backtest(
    rules: Sequence[Rule], history: Mapping[date, Record], days: int, *, expected: Collection[date] = frozenset(),
    lookback: int = DEFAULT_LOOKBACK,
) -> dict[str, int]:
    """On how many of the last `days` days (up to the newest report) each rule would have fired.

    Judged in hindsight: every deadline has passed, so a day without a report counts for freshness. Days
    before the first report are not counted. Baselines skip incidents exactly as they do live.
    """
    fired = dict.fromkeys((rule.id for rule in rules), 0)
    if not history:
        return fired
    verdicts = Verdicts(rules, history, expected=expected, lookback=lookback)
    freshness = {r.id for r in rules if isinstance(r, FreshnessRule)}  # in hindsight a missing day is overdue
    first, last = min(history), max(history)
    for offset in range(min(days, (last - first).days + 1)):
        day = last - timedelta(days=offset)
        for rule_id in {b.rule_id for b in verdicts.of(day)} if day in history else freshness:
            fired[rule_id] += 1
    return fired


class Verdicts:
    """The breaches of every reported day of one history, judged once each and in date order, so that a day's
    baselines know which days before it were healthy."""

    def __init__(self, rules: Sequence[Rule], history: Mapping[date, Record], *,
                 expected: Collection[date] = frozenset(), lookback: int = DEFAULT_LOOKBACK) -> None:
        self.rules, self.history, self.expected, self.lookback = rules, history, expected, lookback
        self._days, self._expected = sorted(history), sorted(expected)
        self._judged: dict[date, list[Breach]] = {}

    def of(self, day: date) -> list[Breach]:
        """The breaches of the reported `day`."""
        self._judge_until(day)
        return self._judged[day]

    def healthy(self, day: date) -> bool:
        """A usable baseline: a successful report that breached nothing, or whose numbers were marked expected."""
        report = self.history.get(day)
        if report is None or report.failed:
            return False
        return day in self.expected or not self.of(day)

    def baseline_day(self, run_date: date, lag: int) -> date | None:
        """The newest healthy day from `lag` days before `run_date` back, within the lookback."""
        return next((day for k in range(lag, lag + self.lookback)
                     if self.comparable(day := run_date - timedelta(days=k), run_date)), None)

    def comparable(self, day: date, run_date: date) -> bool:
        """`day` can be a baseline of `run_date`: healthy, and not older than the newest new normal before it."""
        since = next((e for e in reversed(self._expected) if e < run_date), None)
        return self.healthy(day) and (since is None or day >= since)

    def _judge_until(self, day: date) -> None:
        # Each day is judged after every day before it, so the recursion through `healthy` never goes deep.
        for earlier in self._days[len(self._judged):]:
            if earlier > day:
                return
            self._judged[earlier] = self._judge(earlier)

    def _judge(self, day: date) -> list[Breach]:
        report = self.history[day]
        if report.failed:
            return [_failed(r, report) for r in self.rules if isinstance(r, FailedRule)]
        baselines = _Baselines(self, day)
        breaches: list[Breach] = []
        for rule in self.rules:
            match rule:
                case ChangeRule():
                    breaches += _changed(rule, report, *baselines.lookup(rule.baseline, rule.weeks))
                case RecordedChangeRule():
                    breaches += _recorded(rule, report)
                case BoundRule():
                    breaches += _out_of_bounds(rule, report)
                # freshness and failed rules only concern missing and failed runs
        return breaches


def biggest_mover(report: Report, baseline: Report) -> StageMove | None:
    """The funnel step that moved most against `baseline`.

    A step is judged by its pass rate (its items over the previous step's), so a drop at the feed source
    points at the feed source and not at every stage after it; the first step is judged by its items.
    """
    then = {step.label: step.items for step in baseline.funnel() if step.items is not None}
    moves: list[StageMove] = []
    previous: tuple[int, int] | None = None
    for step in report.funnel():
        if step.items is None or step.label not in then:
            continue
        items, before = step.items, then[step.label]
        items_change = _change_pct(items, before)
        rate_change = items_change if previous is None else _change_pct(
            items * previous[1], before * previous[0])
        moves.append(StageMove(step.label, items, before, items_change, rate_change))
        previous = (items, before)
    return max(moves, key=lambda m: abs(m.pass_rate_change_pct), default=None)


# --- evaluation ---------------------------------------------------------------------------------------------


class _Baselines:
    """Baseline values for one run date, and how to name them, computed once per (baseline, weeks, metric)."""

    def __init__(self, verdicts: Verdicts, run_date: date) -> None:
        self._verdicts, self._run_date = verdicts, run_date
        self._lookups: dict[tuple[str, int], tuple[Callable[[str], float | None], str]] = {}

    def lookup(self, kind: str, weeks: int) -> tuple[Callable[[str], float | None], str]:
        key = (kind, weeks if kind == "median_same_weekday" else 0)
        if (found := self._lookups.get(key)) is None:
            found = self._lookups[key] = self._build(kind, weeks)
        return found

    def _build(self, kind: str, weeks: int) -> tuple[Callable[[str], float | None], str]:
        history = self._verdicts.history
        if kind != "median_same_weekday":
            lag = 1 if kind == "lag_1d" else 7
            day = self._verdicts.baseline_day(self._run_date, lag)
            if day is None:
                return (lambda metric: None), ""
            usual = "the day before" if lag == 1 else "7 days before"
            against = usual if day == self._run_date - timedelta(days=lag) else f"{day}, the last healthy day"
            return history[day].metrics().get, against
        runs = [history[day].metrics() for k in range(1, weeks + 1)
                if self._verdicts.comparable(day := self._run_date - timedelta(weeks=k), self._run_date)]
        medians: dict[str, float | None] = {}

        def of(metric: str) -> float | None:
            if metric not in medians:
                past = [run[metric] for run in runs if metric in run]
                medians[metric] = median(past) if past else None
            return medians[metric]

        return of, f"the median of the last {weeks} {self._run_date:%A}s"


def _changed(rule: ChangeRule, report: Record, baseline: Callable[[str], float | None],
             against: str) -> Iterator[Breach]:
    values = report.metrics()
    for metric in report.metric_names.matching(rule.metric):
        before = baseline(metric)
        if before is None:
            continue
        value = values[metric]
        change = _change_pct(value, before)
        if abs(change) <= rule.quiet_below or (graded := rule.grade(change)) is None:
            continue  # the first test settles most metrics on most days, cheaply
        severity, threshold = graded
        yield Breach(rule.id, severity, metric, value, before, change, threshold,
                     f"{metric} {_moved(change)} vs {against} ({_num(value)} vs {_num(before)}; "
                     f"{severity} above {_num(threshold)}%)")


def _recorded(rule: RecordedChangeRule, report: Record) -> Iterator[Breach]:
    values = report.metrics()
    for metric in report.metric_names.matching(rule.metric):
        change = values[metric]
        if (graded := rule.grade(change)) is None:
            continue
        severity, threshold = graded
        yield Breach(rule.id, severity, metric, change, None, change, threshold,
                     f"{metric} {_moved(change)} as reported by the job ({severity} above {_num(threshold)}%)")


def _out_of_bounds(rule: BoundRule, report: Record) -> Iterator[Breach]:
    values = report.metrics()
    for metric in report.metric_names.matching(rule.metric):
        value = values[metric]
        if rule.lt is not None and value < rule.lt:
            side, threshold = "below", rule.lt
        elif rule.gt is not None and value > rule.gt:
            side, threshold = "above", rule.gt
        else:
            continue
        yield Breach(rule.id, rule.severity, metric, value, None, None, threshold,
                     f"{metric} is {_num(value)}, {side} {_num(threshold)}")


def format_grace(grace: timedelta) -> str:
    """A grace period as the config writes it: 3h, 1h30m, 45m."""
    hours, minutes = divmod(int(grace.total_seconds()) // 60, 60)
    return f"{hours}h" + (f"{minutes:02d}m" if minutes else "") if hours else f"{minutes}m"


def slack_time(moment: datetime) -> str:
    """A time as Slack shows it to each reader, in their own zone; the fallback is UTC text."""
    fallback = f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _overdue(rule: FreshnessRule, run_date: date, expected_at: datetime, grace: timedelta, missing: str) -> Breach:
    return Breach(rule.id, rule.severity, None, None, None, None, None,
                  f"raw data not found: no {missing} for {run_date} by {slack_time(expected_at + grace)} "
                  f"(due {slack_time(expected_at)}, grace {format_grace(grace)})")


def _failed(rule: FailedRule, report: Record) -> Breach:
    cause = "; ".join(report.errors) or "SUCCESS is false"
    return Breach(rule.id, rule.severity, None, None, None, None, None,
                  f"{report.label} run for {report.run_date} failed: {cause}")


def _change_pct(value: float, before: float) -> float:
    # From nothing to something is an unbounded change, which every threshold catches.
    if before == 0:
        return 0.0 if value == 0 else float("inf") if value > 0 else float("-inf")
    return (value - before) / abs(before) * 100


def _moved(change: float) -> str:
    return f"{'rose' if change > 0 else 'fell'} {abs(change):.1f}%"


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
