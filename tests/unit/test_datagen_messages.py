"""What the datagen posts say: counts that name breaches, a failed run without numbers, times as Slack tokens,
and an alert that counts what it cannot show line by line."""
from __future__ import annotations

import json
from datetime import date

from bot.monitors import messages
from bot.monitors.datagen import parse_report
from bot.monitors.rules import Breach
from tests.support.datagen_history import real_record

DAY = date(2026, 11, 21)


def _said(message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def _breach(rule_id: str, metric: str | None = None, change: float | None = None) -> Breach:
    return Breach(rule_id, "warn", metric, 1.0, 2.0 if change is not None else None, change, 10,
                  f"{metric or rule_id} moved")


def test_the_summary_counts_breaches_as_breaches():
    report = parse_report(real_record(), run_date=DAY)

    for count, words in ((0, "no breaches"), (1, "1 breach"), (32, "32 breaches")):
        shown = messages.summary("recsys", report, None, None, usual_runtime=None, breaches=count)
        assert shown.text == f"datagen recsys {DAY}: ok, {words}"
        assert shown.blocks[1]["elements"][0]["text"].endswith(f" · {words}")


def test_a_failed_runs_summary_shows_the_failure_and_none_of_its_numbers():
    record = real_record() | {"SUCCESS": False, "error": "disk full"}
    shown = messages.summary("recsys", parse_report(record, run_date=DAY), None, None, usual_runtime=None, breaches=1)

    said = _said(shown)
    assert f":x: datagen *recsys* {DAY} *failed*: disk full" in said
    assert "stopped after 3h21m · no numbers: the run failed · 1 breach" in said
    assert "final rows" not in said and "new items" not in said
    assert shown.text == f"datagen recsys {DAY}: failed, 1 breach"


def test_one_breach_reads_in_the_singular_open_or_resolved():
    one = [_breach("run_failed")]

    assert messages.alert("recsys", DAY, one).text == f"datagen recsys {DAY}: 1 breach (warn)"
    resolved = messages.alert("recsys", DAY, one, state="resolved")
    assert resolved.text == f"datagen recsys {DAY}: resolved"
    assert resolved.blocks[0]["text"]["text"] == f":white_check_mark: ~datagen *recsys* {DAY}: *run_failed*~ resolved"


def test_an_alert_with_more_causes_than_lines_counts_the_rest_and_says_where_they_are():
    breaches = [_breach(f"rule_{i}", f"metric_{i}") for i in range(9)]

    shown = messages.alert("recsys", DAY, breaches)
    lines = "\n".join(b["text"]["text"] for b in shown.blocks if b["type"] == "section").splitlines()
    lines += [e["text"] for b in shown.blocks if b["type"] == "context" for e in b["elements"]]

    assert len(lines) == 1 + 4 + 1 + 1
    assert lines[5] == f"…and 5 more causes (5 breaches) in the thread and under `/mlops datagen {DAY}`"
    assert lines[6] == f"9 breaches from 9 causes: every one in the thread and under `/mlops datagen {DAY}`"
    listed = _said(messages.breach_list("recsys", DAY, breaches))
    assert all(f"*rule_{i}* `metric_{i}`" in listed for i in range(9))


def test_a_long_breach_list_is_split_into_sections_not_cut():
    breaches = [_breach("items_1d", f"stage.s{i}.items", -20.0 - i) for i in range(400)]

    listed = messages.breach_list("recsys", DAY, breaches)

    assert all(len(b["text"]["text"]) <= 3000 for b in listed.blocks)
    assert sum(b["text"]["text"].count("\n") for b in listed.blocks) + len(listed.blocks) == 401


def test_the_run_times_in_the_thread_are_slack_date_tokens():
    report = parse_report(real_record(), run_date=DAY)

    said = _said(messages.details(report, None, None, tz="Asia/Kolkata"))

    # 10:08:51 in Kolkata is 04:38:51 UTC.
    assert "ran <!date^1694666331^{date_short_pretty} {time}|2023-09-14 04:38 UTC> → <!date^" in said
