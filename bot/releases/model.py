"""Release standings and the transitions between them: pure tables, so every path is visible in one place.

A release is one model version's trip through the train. It has a standing in each environment, and only an
operation in that environment changes it: rolling staging back never touches what prod records, and the
other way round. Its Triton version number is the release's id, so every release has its own directory in
each repository and a rollback only reloads files already there.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class State(StrEnum):
    DEPLOYING = "deploying"  # staging: copying and loading the staging fleet
    DEPLOY_FAILED = "deploy_failed"
    STAGED = "staged"  # serving on staging, not verified yet
    VERIFYING = "verifying"
    VERIFIED = "verified"  # may be unblocked for prod
    VERIFY_FAILED = "verify_failed"
    REJECTED = "rejected"
    PROMOTING = "promoting"  # prod: copying and loading the prod fleet
    LIVE = "live"  # serving in prod
    PROMOTE_FAILED = "promote_failed"  # prod verify failed; prod put back by the bot
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # a newer version took its place in that environment
    INTERRUPTED = "interrupted"  # the bot stopped mid-operation; reconciled at start
    CANARY = "canary"  # prod: serving on part of the prod fleet, judged against the rest
    CANARY_ABORTED = "canary_aborted"  # prod: the canary endpoints were put back on the baseline

    @property
    def words(self) -> str:
        """How people read the state: "verification failed", not verify_failed."""
        return WORDS.get(self, self.value.replace("_", " "))


WORDS = {State.DEPLOY_FAILED: "deploy failed", State.VERIFY_FAILED: "verification failed",
         State.PROMOTE_FAILED: "promotion failed", State.ROLLED_BACK: "rolled back", State.CANARY: "in canary"}


class Event(StrEnum):
    DEPLOYED = "deployed"
    DEPLOY_FAILED = "deploy_failed"
    VERIFY = "verify"
    PASSED = "passed"
    FAILED = "failed"
    PROMOTE = "promote"
    PROMOTED = "promoted"
    PROMOTE_FAILED = "promote_failed"
    REJECT = "reject"
    ROLL_BACK = "roll_back"  # the release is rolled away from
    RESTORE = "restore"  # the release is rolled back to
    SUPERSEDE = "supersede"
    INTERRUPT = "interrupt"
    CANARY = "canary"  # the release starts serving part of prod
    ABORT = "abort"  # its canary ends with the canary endpoints put back


S, E = State, Event
STAGING: dict[tuple[State, Event], State] = {
    (S.DEPLOYING, E.DEPLOYED): S.STAGED,
    (S.DEPLOYING, E.DEPLOY_FAILED): S.DEPLOY_FAILED,
    (S.STAGED, E.VERIFY): S.VERIFYING,
    (S.VERIFIED, E.VERIFY): S.VERIFYING,
    (S.VERIFY_FAILED, E.VERIFY): S.VERIFYING,
    (S.INTERRUPTED, E.VERIFY): S.VERIFYING,
    (S.VERIFYING, E.PASSED): S.VERIFIED,
    (S.VERIFYING, E.FAILED): S.VERIFY_FAILED,
    (S.STAGED, E.REJECT): S.REJECTED,
    (S.VERIFIED, E.REJECT): S.REJECTED,
    (S.VERIFY_FAILED, E.REJECT): S.REJECTED,
    **{(s, E.ROLL_BACK): S.ROLLED_BACK for s in (S.STAGED, S.VERIFIED, S.VERIFY_FAILED, S.REJECTED, S.INTERRUPTED)},
    # Served again after a rollback: it must be verified again before it can be unblocked.
    **{(s, E.RESTORE): S.STAGED for s in (S.SUPERSEDED, S.ROLLED_BACK, S.INTERRUPTED, S.VERIFIED, S.STAGED)},
    # A rejected release stays rejected when a newer one replaces it: it must never become a rollback target.
    **{(s, E.SUPERSEDE): S.SUPERSEDED for s in (S.STAGED, S.VERIFIED, S.VERIFY_FAILED, S.INTERRUPTED)},
    (S.DEPLOYING, E.INTERRUPT): S.INTERRUPTED,
    (S.VERIFYING, E.INTERRUPT): S.INTERRUPTED,
}
# Prod standings start from None: the release has not been sent to prod.
# A canary holds the prod lock while it runs, so nothing else starts in prod meanwhile; it ends aborted, or
# promoted to every endpoint through the usual promotion (canary → promoting → live or promote_failed).
_SENDABLE = (None, S.PROMOTE_FAILED, S.ROLLED_BACK, S.SUPERSEDED, S.INTERRUPTED, S.CANARY_ABORTED)
PROD: dict[tuple[State | None, Event], State] = {
    **{(s, E.PROMOTE): S.PROMOTING for s in _SENDABLE},
    **{(s, E.CANARY): S.CANARY for s in _SENDABLE},
    (S.CANARY, E.PROMOTE): S.PROMOTING,
    (S.CANARY, E.ABORT): S.CANARY_ABORTED,
    (S.PROMOTING, E.PROMOTED): S.LIVE,
    (S.PROMOTING, E.PROMOTE_FAILED): S.PROMOTE_FAILED,
    (S.PROMOTING, E.INTERRUPT): S.INTERRUPTED,
    (S.LIVE, E.ROLL_BACK): S.ROLLED_BACK,
    (S.LIVE, E.SUPERSEDE): S.SUPERSEDED,
    **{(s, E.RESTORE): S.LIVE for s in (S.SUPERSEDED, S.ROLLED_BACK, S.LIVE)},
}
TRANSITIONS = {"staging": STAGING, "prod": PROD}

# The standing an operation holds while it runs, and the one it ends in when it fails or is cut short.
BUSY = frozenset({S.DEPLOYING, S.VERIFYING, S.PROMOTING})
FAILS = {S.DEPLOYING: E.DEPLOY_FAILED, S.VERIFYING: E.FAILED, S.PROMOTING: E.PROMOTE_FAILED}
# Standings that rule a release out as a rollback target: it was judged bad where it ran.
BAD = frozenset({S.DEPLOY_FAILED, S.VERIFY_FAILED, S.PROMOTE_FAILED, S.REJECTED, S.ROLLED_BACK, S.INTERRUPTED,
                 S.DEPLOYING, S.VERIFYING, S.PROMOTING, S.CANARY, S.CANARY_ABORTED})


class InvalidTransition(Exception):
    def __init__(self, env: str, state: State | None, event: Event):
        where = f"{state.words} on {env}" if state else f"not in {env}"
        super().__init__(f"cannot {event.value.replace('_', ' ')} a release that is {where}")
        self.state = state
        self.event = event


def next_state(env: str, state: State | None, event: Event) -> State:
    try:
        return TRANSITIONS[env][(state, event)]  # type: ignore[index]
    except KeyError:
        raise InvalidTransition(env, state, event) from None


def sources(env: str, event: Event) -> list[State | None]:
    """Every standing `event` may start from in `env`: the WHERE clause of a compare-and-set."""
    return [s for (s, e) in TRANSITIONS[env] if e is event]


def env_of(env: str) -> str:
    """Environments other than prod follow the staging table (a train has one gate: prod)."""
    return "prod" if env == "prod" else "staging"


@dataclass(frozen=True)
class Release:
    id: int
    model: str
    version: str
    digest: str
    state: State  # the standing on staging, where every release starts
    prod_state: State | None  # the standing in prod; None until it is sent there
    deployed_by: str | None
    deployed_at: datetime | None
    verified_at: datetime | None
    approved_by: str | None
    approved_at: datetime | None
    channel: str | None
    card_ts: str | None
    updated_at: datetime | None = None

    @property
    def triton_version(self) -> int:
        return self.id

    def standing(self, env: str) -> State | None:
        return self.prod_state if env_of(env) == "prod" else self.state

    def known_good(self, env: str) -> bool:
        """Served `env` and was neither failed, rejected nor rolled back there: a rollback may go to it."""
        if env_of(env) == "prod":
            return self.prod_state in (S.LIVE, S.SUPERSEDED)
        return self.verified_at is not None and self.state not in BAD


def rollback_target(current: Release, candidates: list[Release], env: str) -> Release | None:
    """The newest known-good release older than the one `env` serves: a rollback never goes forward."""
    older = [r for r in candidates if r.id < current.id and r.version != current.version and r.known_good(env)]
    return max(older, key=lambda r: r.id, default=None)
