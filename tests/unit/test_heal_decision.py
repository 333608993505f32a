"""The reconcile loop's decision for one (model, env): what to load, what drift to say, and what to remember."""
from bot.releases.heal import decide, where

A, B, C = "http://10.0.3.5:8000", "http://10.0.3.6:8000", "http://10.0.3.7:8000"


def test_an_endpoint_serving_nothing_gets_the_recorded_version_and_one_in_line_is_left():
    decision = decide(2, {A: [2], B: [], C: [2]}, {}, heal=False)
    assert decision.load == [B]
    assert decision.report == {} and decision.drifting == {}


def test_drift_is_reported_once_and_not_overwritten_without_heal():
    first = decide(2, {A: [2], B: [3]}, {}, heal=False)
    assert first.load == [] and first.report == {B: (3,)}
    second = decide(2, {A: [2], B: [3]}, first.drifting, heal=False)
    assert second.report == {} and second.drifting == first.drifting


def test_drift_that_changes_is_reported_again_and_drift_that_ends_is_forgotten():
    said = decide(2, {B: [3]}, {}, heal=False).drifting
    assert decide(2, {B: [1, 3]}, said, heal=False).report == {B: (1, 3)}
    assert decide(4, {B: [3]}, said, heal=False).report == {B: (3,)}  # a new record: the same version is new drift
    ended = decide(2, {B: [2]}, said, heal=False)
    assert ended.drifting == {}
    assert decide(2, {B: [3]}, ended.drifting, heal=False).report == {B: (3,)}


def test_with_heal_drift_is_reported_and_loaded_over():
    decision = decide(2, {A: [3], B: []}, {}, heal=True)
    assert decision.load == [A, B] and decision.report == {A: (3,)}


def test_an_unreachable_endpoint_is_left_alone_and_keeps_its_drift_said():
    said = decide(2, {B: [3]}, {}, heal=False).drifting
    unreachable = decide(2, {B: "unreachable (connection refused)", C: "DNS name x does not exist (NXDOMAIN)"}, said, heal=True)
    assert unreachable.load == [] and unreachable.report == {}
    assert decide(2, {B: [3]}, unreachable.drifting, heal=False).report == {}


def test_nothing_recorded_loads_nothing_and_a_served_version_is_drift_even_with_heal():
    decision = decide(None, {A: [], B: [1]}, {}, heal=True)
    assert decision.load == [] and decision.report == {B: (1,)}


def test_an_endpoint_reads_as_its_address_and_port():
    assert where("http://10.0.3.7:8000") == "10.0.3.7:8000"
    assert where("http://[fd00::7]:8000") == "[fd00::7]:8000"
