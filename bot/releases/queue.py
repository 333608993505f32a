"""One train per model: the pure rules of which registry version goes to staging next.

While a release of the model is between staging and prod (on the tracks), newer versions wait. When it ends,
the newest waiting version goes, and the older ones are skipped: a version older than the newest is never
worth a trip, and one older than what prod serves never goes at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.releases.model import Release, State

# Staging standings of a release still on its way to prod; with a prod standing of its own, it is on the tracks
# only while prod is being given it (promoting, or a canary on part of prod).
MOVING = frozenset({State.DEPLOYING, State.STAGED, State.VERIFYING, State.VERIFIED})
PROD_MOVING = frozenset({State.PROMOTING, State.CANARY})


def on_the_tracks(release: Release) -> bool:
    if release.prod_state is not None:
        return release.prod_state in PROD_MOVING
    return release.state in MOVING


@dataclass(frozen=True)
class Version:
    version: str
    created_at: datetime  # its metadata.json's creation time: the order of the queue


@dataclass(frozen=True)
class Plan:
    go: Version | None  # deploys to staging now
    skipped: tuple[Version, ...]  # never deployed: something newer went, or prod already serves newer
    waiting: tuple[Version, ...]  # oldest first, as the card lists them


def order(versions: list[Version]) -> list[Version]:
    return sorted(versions, key=lambda v: (v.created_at, v.version))


def plan(queued: list[Version], *, on_tracks: bool, live_created: datetime | None) -> Plan:
    """What to do with the versions waiting for `model` (each taken from the registry once)."""
    if on_tracks:
        return Plan(None, (), tuple(order(queued)))
    stale = [v for v in queued if live_created is not None and v.created_at <= live_created]
    fresh = order([v for v in queued if v not in stale])
    if not fresh:
        return Plan(None, tuple(order(stale)), ())
    return Plan(fresh[-1], tuple(order(stale + fresh[:-1])), ())


def waiting_text(versions: list[str]) -> str:
    """How a card and status list the versions queued behind a train: "2 versions waiting: v7, v8"."""
    return f"{len(versions)} version{'s' if len(versions) != 1 else ''} waiting: {', '.join(versions)}"
