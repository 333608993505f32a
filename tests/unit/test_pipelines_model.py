"""The pipeline watch's rules: how an alert follows its run, when a DAG is late, how repeat failures and tasks
marked success are said."""
from __future__ import annotations

from datetime import UTC, date, datetime, time

from hypothesis import given
from hypothesis import strategies as st

from bot.pipelines.messages import Marked, RunAlert, run_alert
from bot.pipelines.model import FailedTask, failed_tasks, late_day, next_state, ordinal
from bot.sandbox.render import render_message

ALERT_STATES = [None, "open", "acked", "silenced", "retrying", "resolved"]
RUN_STATES = ["queued", "running", "success", "failed", "restarting", "up_for_retry"]


@given(alert=st.sampled_from(ALERT_STATES), runs=st.lists(st.sampled_from(RUN_STATES), max_size=12))
def test_an_alert_follows_its_run_and_only_a_failure_opens_one(alert: str | None, runs: list[str]) -> None:
    for run in runs:
        new = next_state(alert, run)
        if new is not None:
            assert new != alert  # a change or nothing: no message is redrawn for nothing
            assert (new == "open") == (run == "failed")
            assert new != "resolved" or run == "success"
            assert alert is not None or new == "open"  # no alert appears for a run that did not fail
            alert = new
    # A run that fails again after a retry, or after it recovered, is news again.
    if alert in ("retrying", "resolved"):
        assert next_state(alert, "failed") == "open"


def test_a_retry_in_progress_then_success_resolves() -> None:
    assert [next_state(s, r) for s, r in [("open", "queued"), ("retrying", "running"), ("retrying", "success")]] == [
        "retrying", None, "resolved"]
    assert next_state(None, "success") is None and next_state("resolved", "running") is None


def test_late_by_the_dags_own_zone_and_a_success_that_day_counts() -> None:
    at = time(6, 0)
    # 05:59 in Los Angeles: not due yet; 06:00: late, for that local day.
    assert late_day(datetime(2026, 12, 3, 13, 59, tzinfo=UTC), at, "America/Los_Angeles", None) is None
    assert late_day(datetime(2026, 12, 3, 14, 0, tzinfo=UTC), at, "America/Los_Angeles", None) == date(2026, 12, 3)
    # A success at 23:30 UTC on the 2nd was 15:30 in Los Angeles that day: yesterday's, not today's.
    yesterday = datetime(2026, 12, 2, 23, 30, tzinfo=UTC)
    assert late_day(datetime(2026, 12, 3, 15, 0, tzinfo=UTC), at, "America/Los_Angeles", yesterday) == date(2026, 12, 3)
    today = datetime(2026, 12, 3, 14, 30, tzinfo=UTC)
    assert late_day(datetime(2026, 12, 3, 15, 0, tzinfo=UTC), at, "America/Los_Angeles", today) is None
    assert late_day(datetime(2026, 12, 3, 15, 0, tzinfo=UTC), None, "UTC", None) is None


def test_failed_tasks_put_the_one_that_failed_before_those_it_skipped() -> None:
    instances = [{"task_id": "publish", "state": "upstream_failed", "try_number": 0},
                 {"task_id": "train", "state": "failed", "try_number": 2},
                 {"task_id": "load", "state": "success", "try_number": 1}]
    assert [(t.task_id, t.state, t.try_number) for t in failed_tasks(instances)] == [
        ("train", "failed", 2), ("publish", "upstream_failed", 1)]


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]


def test_a_task_marked_success_is_said_and_the_tasks_still_failed_keep_their_buttons() -> None:
    marked = Marked(task_id="refresh", by="U0BOB", reason="source fixed by hand")
    still = RunAlert(dag_id="refresh_pagerank", run_id="manual__1", state="open", marked=[marked],
                     tasks=[FailedTask(task_id="publish", try_number=1, state="upstream_failed")])
    shown = run_alert(still, 7)
    text = render_message({"text": shown.text, "blocks": shown.blocks})
    assert "`publish` did not run (an upstream task failed)" in text
    assert "`refresh` marked success by @U0BOB: source fixed by hand" in text
    labels = [e["text"]["text"] for b in shown.blocks if b["type"] == "actions" for e in b["elements"]]
    assert labels == ["Retry failed tasks", "Ack", "Silence 24h", "Mark publish success"]

    done = run_alert(still.model_copy(update={"state": "resolved", "tasks": []}), 7)
    assert done.blocks[0]["text"]["text"].startswith(":white_check_mark: *Marked success*")
    assert not [b for b in done.blocks if b["type"] == "actions"]
