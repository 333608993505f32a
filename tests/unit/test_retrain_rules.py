"""The pure parts of retraining: the /mlops retrain grammar and the polling backoff."""
from __future__ import annotations

import pytest

from bot.retrain.follow import next_delay
from bot.retrain.service import RetrainRequest, parse_request

MODELS = {"ranker": True, "blip": False}


def test_arguments_go_to_the_pipeline_and_force_does_not() -> None:
    assert parse_request(["ranker"], {"epochs": "2", "force": "true"}, MODELS) == RetrainRequest(
        "ranker", args={"epochs": "2"}, force=True)
    assert parse_request(["ranker"], {}, MODELS) == RetrainRequest("ranker", args={}, force=False)
    assert parse_request(["ranker"], {"force": "no"}, MODELS).force is False


def test_cancel() -> None:
    assert parse_request(["ranker", "cancel"], {}, MODELS) == RetrainRequest("ranker", cancel=True)
    with pytest.raises(ValueError, match="takes no key=value"):
        parse_request(["ranker", "cancel"], {"force": "true"}, MODELS)


@pytest.mark.parametrize(("words", "error"), [
    ([], "name a model"),
    (["rankr"], "unknown model `rankr`; known models: blip, ranker"),
    (["blip"], "blip has no retrain pipeline; add `models.blip.retrain`"),
    (["ranker", "15"], "unexpected words: 15"),
])
def test_bad_input_says_what_is_wrong(words: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("`", ".")):
        parse_request(words, {}, MODELS)


def test_polling_backs_off_while_nothing_changes_and_snaps_back_on_a_change() -> None:
    delays, delay = [], 1.0
    for changed in (False, False, False, False, False, False, False, True, False):
        delay = next_delay(delay, changed, base=1.0, cap=30.0)
        delays.append(delay)
    assert delays == [2, 4, 8, 16, 30, 30, 30, 1, 2]
