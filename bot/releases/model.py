"""Release states and the transitions between them: a pure table, so every path is visible in one place.

A release is one model version's trip through the train. Its Triton version number is the release's id,
so every release has its own directory in each repository and a rollback only reloads files already there.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class State(StrEnum):
    DEPLOYING = "deploying"  # copying to staging and loading the staging fleet
    DEPLOY_FAILED = "deploy_failed"
    STAGED = "staged"  # serving on staging, not verified yet
    VERIFYING = "verifying"
    VERIFIED = "verified"  # may be unblocked for prod
    VERIFY_FAILED = "verify_failed"
    PROMOTING = "promoting"  # copying to prod and loading the prod fleet
    LIVE = "live"  # serving in prod
    PROMOTE_FAILED = "promote_failed"  # prod verify failed; prod rolled back by the bot
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # a newer version took its place
    INTERRUPTED = "interrupted"  # the bot stopped mid-operation; reconciled at start


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
    ROLL_BACK = "roll_back"
    SUPERSEDE = "supersede"
    INTERRUPT = "interrupt"


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.DEPLOYING, E.DEPLOYED): S.STAGED,
    (S.DEPLOYING, E.DEPLOY_FAILED): S.DEPLOY_FAILED,
    (S.STAGED, E.VERIFY): S.VERIFYING,
    (S.VERIFIED, E.VERIFY): S.VERIFYING,
    (S.VERIFY_FAILED, E.VERIFY): S.VERIFYING,
    (S.VERIFYING, E.PASSED): S.VERIFIED,
    (S.VERIFYING, E.FAILED): S.VERIFY_FAILED,
    (S.VERIFIED, E.PROMOTE): S.PROMOTING,
    (S.PROMOTING, E.PROMOTED): S.LIVE,
    (S.PROMOTING, E.PROMOTE_FAILED): S.PROMOTE_FAILED,
    (S.VERIFIED, E.REJECT): S.REJECTED,
    (S.VERIFY_FAILED, E.REJECT): S.REJECTED,
    (S.STAGED, E.REJECT): S.REJECTED,
    (S.STAGED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.VERIFIED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.VERIFY_FAILED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.REJECTED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.LIVE, E.ROLL_BACK): S.ROLLED_BACK,
    (S.STAGED, E.SUPERSEDE): S.SUPERSEDED,
    (S.VERIFIED, E.SUPERSEDE): S.SUPERSEDED,
    (S.VERIFY_FAILED, E.SUPERSEDE): S.SUPERSEDED,
    (S.LIVE, E.SUPERSEDE): S.SUPERSEDED,
    (S.DEPLOYING, E.INTERRUPT): S.INTERRUPTED,
    (S.VERIFYING, E.INTERRUPT): S.INTERRUPTED,
    (S.PROMOTING, E.INTERRUPT): S.INTERRUPTED,
}

# States in which an operation holds the (model, env) lock.
BUSY = frozenset({S.DEPLOYING, S.VERIFYING, S.PROMOTING})


class InvalidTransition(Exception):
    def __init__(self, state: State, event: Event):
        super().__init__(f"cannot {event.value} a release that is {state.value}")
        self.state = state
        self.event = event


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


def sources(event: Event) -> list[State]:
    """Every state `event` may start from: the WHERE clause of a compare-and-set."""
    return [s for (s, e) in TRANSITIONS if e is event]


@dataclass(frozen=True)
class Release:
    id: int
    model: str
    version: str
    digest: str
    state: State
    deployed_by: str | None
    deployed_at: datetime | None
    verified_at: datetime | None
    approved_by: str | None
    approved_at: datetime | None
    channel: str | None
    card_ts: str | None

    @property
    def triton_version(self) -> int:
        return self.id
