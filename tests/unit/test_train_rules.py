"""The train's pure parts (issue 19): what one listing of a registry says of each version, and the queue's plan."""
from __future__ import annotations

from datetime import UTC, datetime

from bot.releases.queue import Version, plan, waiting_text
from bot.releases.train import folders, uploaded

T = datetime(2026, 11, 23, tzinfo=UTC)


def test_one_listing_gives_each_version_its_files_and_whether_its_upload_is_done():
    keys = ["ranker/v1/config.pbtxt", "ranker/v1/metadata.json", "ranker/v1/model.py", "ranker/v2/model.py",
            "ranker/v2/config.pbtxt", "ranker/stray.txt", "rankers/v9/config.pbtxt",
            "ranker/.incoming-42/config.pbtxt", "ranker/.incoming-42/metadata.json"]
    found = folders(keys, "ranker")
    assert sorted(found) == ["v1", "v2"]  # a dot-folder is a version still being written
    assert uploaded(found["v1"]) and not uploaded(found["v2"])  # v2's metadata.json is not there yet


def test_a_version_older_than_what_prod_serves_is_skipped_and_never_sent():
    old, new = Version("v3", T.replace(hour=1)), Version("v5", T.replace(hour=5))
    decided = plan([new, old], on_tracks=False, live_created=T.replace(hour=3))
    assert decided.go == new and decided.skipped == (old,)
    assert plan([old], on_tracks=False, live_created=T.replace(hour=3)).go is None


def test_waiting_versions_are_said_as_people_count_them():
    assert waiting_text(["v7"]) == "1 version waiting: v7"
    assert waiting_text(["v7", "v8"]) == "2 versions waiting: v7, v8"
