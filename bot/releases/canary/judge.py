"""The canary's rules, pure: how many endpoints get the version, each step's verdict from the counters at the
start and now, and what follows a step. Plain values in, plain values out; no clock, no I/O."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.config import CanaryConfig
from bot.serving.triton_metrics import Counters


class CanaryRefused(Exception):
    """A canary that cannot run on this fleet; the message says why."""


def canary_count(percent: float, n: int) -> int:
    """k of the n prod endpoints get the new version: percent of n rounded up, at least 1, at most n - 1, so
    both groups serve traffic and a load balancer spreading requests evenly sends about k/n to the canary."""
    if n < 2:
        raise CanaryRefused(f"a canary needs two prod endpoints (one for the new version, one for the baseline); "
                            f"prod has {n}")
    return min(n - 1, max(1, math.ceil(percent * n / 100)))


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Group:
    """One side's traffic since the canary started, summed over its endpoints."""

    requests: float = 0.0
    errors: float = 0.0
    duration_us: float = 0.0
    p99_us: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def mean_ms(self) -> float | None:
        """Triton counts the duration of requests that succeeded."""
        ok = self.requests - self.errors
        return self.duration_us / ok / 1000 if ok > 0 else None

    @property
    def p99_ms(self) -> float | None:
        return None if self.p99_us is None else self.p99_us / 1000


def increase(start: Counters | None, now: Counters) -> Counters:
    """What a counter gained since `start`; a counter lower than at the start means the server restarted (as
    Prometheus' increase() reads it), so all it counts now is new."""
    if start is None or now.success < start.success or now.failure < start.failure or now.duration_us < start.duration_us:
        return now
    return Counters(now.success - start.success, now.failure - start.failure, now.duration_us - start.duration_us, now.p99_us)


def group(start: Mapping[str, Counters], now: Mapping[str, Counters]) -> Group:
    """The increase over the endpoints in `now`; the summaries' p99 is their worst (a quantile does not sum)."""
    gains = [increase(start.get(endpoint), counters) for endpoint, counters in now.items()]
    p99s = [g.p99_us for g in gains if g.p99_us is not None]
    return Group(requests=sum(g.success + g.failure for g in gains), errors=sum(g.failure for g in gains),
                 duration_us=sum(g.duration_us for g in gains), p99_us=max(p99s) if p99s else None)


@dataclass(frozen=True)
class Step:
    verdict: Verdict
    canary: Group
    baseline: Group
    reasons: tuple[str, ...] = ()


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def judge(canary: Group, baseline: Group, cfg: CanaryConfig, *, golden: str | None = None,
          unread: Mapping[str, str] | None = None) -> Step:
    """One step's verdict. `golden` is why the bot's own requests to the canary failed (None: they passed);
    `unread` the endpoints whose metrics could not be read, and why. Too little traffic on either side is
    inconclusive: no traffic never passes and never fails a canary by itself."""
    if golden:
        return Step(Verdict.FAIL, canary, baseline, (f"golden requests failed on the canary: {golden}",))
    if unread:
        return Step(Verdict.INCONCLUSIVE, canary, baseline,
                    tuple(f"metrics of {e} could not be read: {why}" for e, why in unread.items()))
    short = [f"{side} served {g.requests:.0f} requests (fewer than {cfg.min_requests})"
             for side, g in (("canary", canary), ("baseline", baseline)) if g.requests < cfg.min_requests]
    if short:
        return Step(Verdict.INCONCLUSIVE, canary, baseline, tuple(short))
    reasons = []
    if canary.error_rate is not None and baseline.error_rate is not None and \
            canary.error_rate > baseline.error_rate + cfg.max_error_rate_increase:
        reasons.append(f"error rate {_pct(canary.error_rate)} > baseline {_pct(baseline.error_rate)} + "
                       f"{cfg.max_error_rate_increase * 100:g} points")
    reasons += _slower("mean latency", canary.mean_ms, baseline.mean_ms, cfg)
    reasons += _slower("p99 latency", canary.p99_ms, baseline.p99_ms, cfg)
    return Step(Verdict.FAIL if reasons else Verdict.PASS, canary, baseline, tuple(reasons))


def _slower(what: str, ours: float | None, theirs: float | None, cfg: CanaryConfig) -> list[str]:
    """Slower than the baseline by more than the ratio and by more than the absolute slack: a model answering
    in 2 ms is not worse for a jitter of half a millisecond."""
    if ours is None or theirs is None:
        return []
    if ours > theirs * cfg.max_latency_ratio and ours - theirs > cfg.latency_slack_ms:
        return [f"{what} {ours:.1f} ms > {cfg.max_latency_ratio:g}x baseline {theirs:.1f} ms"]
    return []


class Next(StrEnum):
    CONTINUE = "continue"  # the window goes on
    ABORT = "abort"  # failure_limit failed steps: the bot aborts by itself
    PROMOTE = "promote"  # the window ended healthy and the model promotes by itself
    ASK = "ask"  # the window ended: a person decides


def next_move(verdicts: Sequence[Verdict], *, window_over: bool, cfg: CanaryConfig) -> Next:
    """What follows the steps so far. Healthy means at least one step passed and the last conclusive one did;
    only a healthy window promotes by itself, and only when the model's config says so."""
    if sum(v is Verdict.FAIL for v in verdicts) >= cfg.failure_limit:
        return Next.ABORT
    if not window_over:
        return Next.CONTINUE
    return Next.PROMOTE if cfg.auto_promote and healthy(verdicts) else Next.ASK


def healthy(verdicts: Sequence[Verdict]) -> bool:
    conclusive = [v for v in verdicts if v is not Verdict.INCONCLUSIVE]
    return bool(conclusive) and conclusive[-1] is Verdict.PASS
