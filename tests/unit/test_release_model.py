"""The release standings as pure rules: random event sequences per environment, random release histories."""
from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from bot.releases.model import BAD, PROD, STAGING, Event, InvalidTransition, Release, State, next_state, rollback_target

NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
STANDINGS = st.sampled_from(list(State))


def release(i: int, staging: State, prod: State | None, verified: bool) -> Release:
    return Release(id=i, model="ranker", version=f"v{i}", digest=f"sha256:{i}", state=staging, prod_state=prod,
                   deployed_by="U0ALICE", deployed_at=NOW, verified_at=NOW if verified else None, approved_by=None,
                   approved_at=None, channel="C0MLOPS", card_ts=None)


histories = st.lists(st.tuples(STANDINGS, st.none() | STANDINGS, st.booleans()), min_size=1, max_size=12)


@given(histories, st.data(), st.sampled_from(["staging", "prod"]))
def test_a_rollback_target_is_older_known_good_and_never_the_current_version(history, data, env):
    releases = [release(i + 1, s, p, v) for i, (s, p, v) in enumerate(history)]
    current = data.draw(st.sampled_from(releases))
    target = rollback_target(current, releases, env)
    if target is None:
        assert not [r for r in releases if r.id < current.id and r.version != current.version and r.known_good(env)]
    else:
        assert target.id < current.id and target.known_good(env) and target.version != current.version
        assert target.standing(env) not in BAD
        assert all(r.id <= target.id for r in releases if r.id < current.id and r.known_good(env))


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_a_rejected_release_is_never_known_good_on_staging_whatever_follows(events):
    standing = State.REJECTED
    for event in events:
        try:
            standing = next_state("staging", standing, event)
        except InvalidTransition:
            continue
        if event is Event.RESTORE:  # served again only by an explicit `rollback to`: then it is simply staged
            return
        assert release(1, standing, None, verified=True).known_good("staging") is False


def test_every_running_standing_has_a_way_to_fail_and_to_be_interrupted():
    for table in (STAGING, PROD):
        running = {s for (s, _e) in table if s in {State.DEPLOYING, State.VERIFYING, State.PROMOTING}}
        for s in running:
            assert (s, Event.INTERRUPT) in table
            assert any(e in (Event.DEPLOY_FAILED, Event.FAILED, Event.PROMOTE_FAILED) for (t, e) in table if t is s)


def test_a_canary_ends_aborted_or_through_the_usual_promotion_and_may_start_again_after_an_abort():
    started = next_state("prod", None, Event.CANARY)
    assert started is State.CANARY
    assert next_state("prod", started, Event.ABORT) is State.CANARY_ABORTED
    assert next_state("prod", next_state("prod", started, Event.PROMOTE), Event.PROMOTED) is State.LIVE
    assert next_state("prod", State.CANARY_ABORTED, Event.CANARY) is State.CANARY
    for event in (Event.CANARY, Event.ROLL_BACK, Event.SUPERSEDE):  # nothing else happens to it while it runs
        try:
            next_state("prod", started, event)
        except InvalidTransition:
            continue
        raise AssertionError(f"{event} moved a release in canary")


@given(st.sampled_from([State.CANARY, State.CANARY_ABORTED]))
def test_a_release_in_or_aborted_from_a_canary_is_never_a_prod_rollback_target(prod):
    current = release(9, State.VERIFIED, State.LIVE, True)
    assert rollback_target(current, [release(1, State.VERIFIED, prod, True), current], "prod") is None
