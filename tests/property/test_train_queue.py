"""One train per model (issue 19): the queue's rules as properties over any order of uploads and train ends.

Whatever arrives when, the version that goes is the newest waiting one, no version goes twice, none goes that is
older than what prod serves, and every waiting version is either sent, skipped or still waiting, never lost.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bot.releases.queue import Version, plan

T0 = datetime(2026, 11, 23, tzinfo=UTC)

# An upload (minutes after T0 its metadata says it was made: uploads need not come in the order they were made),
# or the end of the train on the tracks: live (prod then serves it) or failed/rejected (prod keeps what it had).
events = st.lists(st.one_of(st.tuples(st.just("upload"), st.integers(0, 500)),
                            st.tuples(st.sampled_from(["live", "failed"]), st.none())), max_size=40)


@given(events)
def test_the_newest_goes_never_twice_never_older_than_live(steps):
    queued: list[Version] = []
    tracks: Version | None = None
    live: Version | None = None
    sent: list[str] = []
    for n, (kind, minutes) in enumerate(steps):
        if kind == "upload":
            queued.append(Version(f"v{n}", T0 + timedelta(minutes=minutes)))
        elif tracks is not None:
            live = tracks if kind == "live" else live
            tracks = None
        decided = plan(queued, on_tracks=tracks is not None, live_created=live.created_at if live else None)
        outcome = ([decided.go] if decided.go else []) + list(decided.skipped) + list(decided.waiting)
        assert sorted(v.version for v in outcome) == sorted(v.version for v in queued)  # each decided once
        if tracks is not None:
            assert decided.go is None and not decided.skipped  # one train at a time
            continue
        assert not decided.waiting
        if decided.go is not None:
            assert decided.go.version not in sent
            assert all(decided.go.created_at >= v.created_at for v in queued)  # the newest waiting one
            assert live is None or decided.go.created_at > live.created_at  # never older than what prod serves
            sent.append(decided.go.version)
            tracks = decided.go
        queued = []  # what was not sent was skipped
    assert len(sent) == len(set(sent))


@given(st.lists(st.integers(0, 100), min_size=1, max_size=10, unique=True))
def test_while_a_train_is_on_the_tracks_everything_waits_in_the_order_it_was_made(minutes):
    queued = [Version(f"v{m}", T0 + timedelta(minutes=m)) for m in minutes]
    decided = plan(queued, on_tracks=True, live_created=None)
    assert decided.go is None and not decided.skipped
    assert [v.created_at for v in decided.waiting] == sorted(v.created_at for v in queued)
