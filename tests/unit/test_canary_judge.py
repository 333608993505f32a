"""The canary's pure rules: Triton's metrics text parsed, k of n endpoints, each step's verdict, what follows it."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import CanaryConfig
from bot.releases.canary.judge import (
    CanaryRefused,
    Group,
    Next,
    Verdict,
    canary_count,
    group,
    healthy,
    increase,
    judge,
    next_move,
)
from bot.serving.triton_metrics import Counters, metrics_url, parse

# Captured from a real tritonserver (ranker version 1: three requests answered, one raised in the model).
CAPTURED = (Path(__file__).parents[1] / "fixtures" / "triton_metrics.txt").read_text()
CFG = CanaryConfig()


def test_the_counters_of_one_model_version_are_read_from_tritons_own_text():
    assert parse(CAPTURED, "ranker", 1) == Counters(success=3, failure=1, duration_us=21829)
    assert parse(CAPTURED, "ranker", 2) == Counters()  # a version it does not serve counts nothing
    assert parse(CAPTURED, "other", 1) == Counters()


def test_the_p99_comes_from_the_latency_summary_when_triton_has_it_enabled():
    text = CAPTURED + ('nv_inference_request_summary_us{model="ranker",version="1",quantile="0.5"} 800\n'
                       'nv_inference_request_summary_us{model="ranker",version="1",quantile="0.99"} 4200\n'
                       'nv_inference_request_summary_us{model="ranker",version="2",quantile="0.99"} 9900\n')
    assert parse(text, "ranker", 1).p99_us == 4200


def test_the_metrics_url_defaults_to_the_endpoints_host_on_port_8002():
    assert metrics_url("http://triton-0.prod:8000") == "http://triton-0.prod:8002/metrics"


@pytest.mark.parametrize(("percent", "n", "k"), [(20, 2, 1), (20, 3, 1), (20, 10, 2), (25, 10, 3), (50, 3, 2), (99, 3, 2),
                                                 (1, 16, 1)])
def test_k_is_the_percent_of_n_rounded_up(percent, n, k):
    assert canary_count(percent, n) == k


def test_one_prod_endpoint_refuses_a_canary_saying_it_needs_two():
    with pytest.raises(CanaryRefused, match="a canary needs two prod endpoints"):
        canary_count(20, 1)


@given(st.floats(min_value=0.01, max_value=99.99), st.integers(min_value=2, max_value=500))
def test_k_always_leaves_both_groups_an_endpoint(percent, n):
    k = canary_count(percent, n)
    assert 1 <= k <= n - 1
    assert k >= min(n - 1, percent * n / 100 - 1e-9)  # never less than the share asked for, unless n - 1 caps it


counters = st.builds(Counters, success=st.integers(0, 10**6).map(float), failure=st.integers(0, 10**4).map(float),
                     duration_us=st.integers(0, 10**9).map(float))
groups = st.builds(Group, requests=st.integers(0, 10**5).map(float), errors=st.just(0.0),
                   duration_us=st.integers(0, 10**8).map(float))


@given(counters, st.sampled_from([0, 5, 19]), groups)
def test_too_little_traffic_never_passes_and_never_fails(start, extra, other):
    """Fewer than min_requests on either side: inconclusive, whatever the figures."""
    few = Counters(start.success + extra, start.failure, start.duration_us + 1000 * extra)
    thin = group({"e": start}, {"e": few})
    assert judge(thin, other, CFG).verdict is Verdict.INCONCLUSIVE
    assert judge(other, thin, CFG).verdict is Verdict.INCONCLUSIVE


def test_a_server_restarted_mid_canary_counts_from_zero_again():
    assert increase(Counters(100, 5, 1000), Counters(7, 0, 70)) == Counters(7, 0, 70)
    assert increase(Counters(100, 5, 1000), Counters(130, 6, 1300)) == Counters(30, 1, 300)


def side(requests: int, errors: int, mean_ms: float) -> Group:
    return Group(requests=requests, errors=errors, duration_us=(requests - errors) * mean_ms * 1000)


def test_the_error_rate_may_be_at_most_one_point_above_the_baselines():
    assert judge(side(100, 2, 5), side(200, 2, 5), CFG).verdict is Verdict.PASS  # 2% against 1%
    failed = judge(side(100, 10, 5), side(200, 2, 5), CFG)
    assert failed.verdict is Verdict.FAIL and "error rate 10.0% > baseline 1.0% + 1 points" in failed.reasons[0]


def test_the_mean_latency_may_be_at_most_1_2_times_the_baselines():
    assert judge(side(100, 0, 11.9), side(200, 0, 10), CFG).verdict is Verdict.PASS
    failed = judge(side(100, 0, 13), side(200, 0, 10), CFG)
    assert failed.verdict is Verdict.FAIL and failed.reasons == ("mean latency 13.0 ms > 1.2x baseline 10.0 ms",)


def test_sub_millisecond_jitter_on_a_fast_model_is_no_regression():
    assert judge(side(100, 0, 1.5), side(200, 0, 1.0), CFG).verdict is Verdict.PASS


def test_failed_golden_requests_fail_the_step_whatever_the_metrics_say():
    step = judge(side(100, 0, 5), side(200, 0, 5), CFG, golden="golden requests: output 'score' is nan")
    assert step.verdict is Verdict.FAIL and "golden requests failed on the canary" in step.reasons[0]


def test_metrics_that_could_not_be_read_make_the_step_inconclusive():
    step = judge(side(100, 50, 5), side(200, 0, 5), CFG, unread={"http://a:8000": "unreachable"})
    assert step.verdict is Verdict.INCONCLUSIVE and "http://a:8000" in step.reasons[0]


P, F, NONE = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


def test_failure_limit_failed_steps_abort_and_a_healthy_window_asks_or_promotes():
    assert next_move([F, P], window_over=False, cfg=CFG) is Next.CONTINUE
    assert next_move([F, P, F], window_over=False, cfg=CFG) is Next.ABORT
    assert next_move([P, P], window_over=True, cfg=CFG) is Next.ASK
    assert next_move([P, P], window_over=True, cfg=CanaryConfig(auto_promote=True)) is Next.PROMOTE
    assert next_move([P, F], window_over=True, cfg=CanaryConfig(auto_promote=True)) is Next.ASK


@given(st.lists(st.just(NONE), min_size=1, max_size=50), st.booleans(), st.booleans())
def test_no_traffic_never_decides_by_itself(verdicts, over, auto):
    move = next_move(verdicts, window_over=over, cfg=CanaryConfig(auto_promote=auto))
    assert move in (Next.CONTINUE, Next.ASK) and not healthy(verdicts)


@given(st.lists(st.sampled_from(list(Verdict)), max_size=30), st.integers(1, 5))
def test_the_bot_aborts_exactly_when_failure_limit_steps_failed(verdicts, limit):
    move = next_move(verdicts, window_over=False, cfg=CanaryConfig(failure_limit=limit))
    assert (move is Next.ABORT) == (verdicts.count(F) >= limit)


def test_the_canary_config_reads_durations_and_refuses_metrics_of_unknown_endpoints():
    from pydantic import ValidationError

    from bot.config import EnvironmentConfig

    assert CanaryConfig(duration="30m", interval="5s").duration == 1800
    assert CanaryConfig(duration="2h", interval=1).interval == 1
    with pytest.raises(ValidationError, match="expected a duration like 90s"):
        CanaryConfig(duration="soon")
    with pytest.raises(ValidationError, match="not one of `endpoints`"):
        EnvironmentConfig(repository="/r", endpoints=["http://a:8000"], metrics={"http://b:8000": "http://b:8002/metrics"})
