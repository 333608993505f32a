"""A month of datagen records with planted trouble of several kinds, and quiet days around each.

Built on `make_history` (bounded noise, so only the planted days can breach the team's 10 % rules). Each
`Trouble` says what was planted, which rules its alert must name and what the alert must lead with; every
other day of the month must stay silent, including the day after each trouble (its recovery) and the day a
week after it (whose 7-day baseline it would have been).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from tests.support.datagen_history import make_history, real_record

START = date(2026, 10, 1)
DAYS = 30
_FUNNEL_RULES = frozenset({"events_1d", "events_7d", "items_1d", "items_7d", "item_age_bucket_7d"})


@dataclass(frozen=True)
class Trouble:
    day: date
    planted: str
    rules: frozenset[str]  # the rules the day's alert names, no more
    lead: str  # how the alert's head names the cause


def _day(offset: int) -> date:
    return START + timedelta(days=offset)


FEED_DROP = Trouble(_day(9), "the feed source keeps 40 % fewer items and events", _FUNNEL_RULES,
                    "*feed source* events -")
RAW_SPIKE = Trouble(_day(12), "25 % more raw data", _FUNNEL_RULES, "*raw* events +")
FAILED = Trouble(_day(15), "the run fails in the embedding join", frozenset({"run_failed"}), "*run_failed*")
MISSING = Trouble(_day(18), "no record at all", frozenset({"raw_data_missing"}), "*raw_data_missing*")
BUCKET = Trouble(_day(21), "the newest item-age bucket grows by half", frozenset({"item_age_bucket_7d"}),
                 "*item_age_bucket_7d* `bucket.0_1d.count`")
FEW_NEW = Trouble(_day(24), "new items in the index fall to 2.5 %", frozenset({"new_items_floor"}),
                  "*new_items_floor* `new_items_1d_pct`")
NEW_NORMAL = Trouble(_day(26), "the video-length filter keeps 20 % fewer from now on (a planned change)",
                     _FUNNEL_RULES, "*video length* events -2")
PLANTED = (FEED_DROP, RAW_SPIKE, FAILED, MISSING, BUCKET, FEW_NEW, NEW_NORMAL)
MONTH = [_day(i) for i in range(DAYS)]


def planted_month(seed: int = 0) -> dict[date, dict]:
    """The raw records of the month, keyed by run date (none for MISSING)."""
    return make_history(
        real_record(), START, DAYS, seed=seed,
        drops={FEED_DROP.day: ("feed_source", 40), RAW_SPIKE.day: ("raw", -25)},
        shifts={NEW_NORMAL.day: ("video_length", 20)},
        bucket_moves={BUCKET.day: ("(0.0, 1.0]", 50)},
        new_items_pct={FEW_NEW.day: 2.5},
        failed={FAILED.day},
        missing={MISSING.day},
    )
