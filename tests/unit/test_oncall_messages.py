import json
import re
from datetime import UTC, datetime, timedelta

from bot.notifier import Message
from bot.oncall.messages import (
    DatagenAlert,
    HeldLock,
    PendingApproval,
    PipelineIncident,
    ReleaseEvent,
    RetrainRun,
    ShiftSummary,
    StagedVersion,
    ack_reminder,
    cover_request,
    cover_taken,
    handoff_acknowledged,
    handoff_message,
    now_and_next,
    reminder_message,
    schedule_table,
    topic_text,
)
from bot.oncall.schedule import Shift

MON = datetime(2026, 3, 9, 17, tzinfo=UTC)  # Mon 9 Mar 2026 10:00 PDT
WEEK = timedelta(days=7)
INCOMING = Shift(MON, MON + WEEK, "UBEN", overridden=False)
NEXT = Shift(MON + WEEK, MON + 2 * WEEK, "UCHO", overridden=False)
TOKEN = re.compile(r"<!date\^(\d+)\^\{date_short_pretty\} \{time\}\|([^>]+)>")


def texts(message: Message) -> list[str]:
    """Every piece of text a person can read in the blocks, in order."""
    found = []
    for block in message.blocks:
        if "text" in block:
            found.append(block["text"]["text"])
        found += [e["text"] if isinstance(e["text"], str) else e["text"]["text"] for e in block.get("elements", [])]
    return found


def readable(message: Message) -> str:
    return "\n".join(texts(message))


def tokens(text: str) -> list[tuple[datetime, str]]:
    return [(datetime.fromtimestamp(int(unix), UTC), fallback) for unix, fallback in TOKEN.findall(text)]


def buttons(message: Message) -> list[dict]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def within_slack_limits(message: Message) -> bool:
    sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    return len(message.blocks) <= 50 and all(len(t) <= 3000 for t in sections)


def handoff(summary: ShiftSummary | None = None, duties: list[str] | None = None, **kwargs) -> Message:
    summary = summary or ShiftSummary()
    return handoff_message(
        "ranker",
        "UANA",
        INCOMING,
        NEXT,
        duties if duties is not None else ["check feature skew"],
        summary,
        "h-17",
        **kwargs,
    )


def test_handoff_names_both_people_and_the_shift_window_in_date_tokens():
    message = handoff()
    assert "On-call handoff (ranker): <@UANA> → <@UBEN>" in message.text
    body = readable(message)
    assert "<@UANA> → <@UBEN>" in body
    assert tokens(body)[:3] == [
        (MON, "2026-03-09T17:00Z"),
        (MON + WEEK, "2026-03-16T17:00Z"),
        (MON + WEEK, "2026-03-16T17:00Z"),
    ]
    assert "*Next*: <@UCHO>" in body
    assert "• check feature skew" in body


def test_first_handoff_has_no_outgoing_person_and_missing_next_is_said():
    message = handoff_message("ranker", None, INCOMING, None, [], ShiftSummary(), "h-1")
    assert "<@UBEN> takes the first shift" in message.text
    assert "nobody scheduled" in readable(message)


def test_empty_summary_says_none_for_every_section():
    body = texts(handoff(duties=[]))
    for title in [
        "*Duties*",
        "*Deploys to staging*",
        "*Promotions to prod*",
        "*Rollbacks*",
        "*Retrains*",
        "*Datagen alerts* (0 fired, 0 still open)",
        "*Left on staging unverified*",
        "*Approvals pending*",
        "*Locks held*",
    ]:
        assert f"{title}\nnone" in body
    assert not [t for t in body if "Pipeline incidents" in t]  # a team watching no pipeline is not told about them


def test_summary_shows_what_happened_with_who_and_when():
    at = MON - timedelta(days=2)
    summary = ShiftSummary(
        deploys=[ReleaseEvent("ranker", "2026-03-07", "UANA", at, env="staging")],
        promotions=[ReleaseEvent("query-tower", "v12", "UCHO", at, env="prod")],
        rollbacks=[ReleaseEvent("retrieval", "v3", "UANA", at, env="prod")],
        retrains=[RetrainRun("ranker", "succeeded", at, version="2026-03-08"), RetrainRun("blip", "failed", at)],
        datagen_alerts=[
            DatagenAlert("items -14% day over day", at, still_open=True),
            DatagenAlert("raw data late 3h", at, still_open=False),
        ],
        pipeline_incidents=[
            PipelineIncident("pipeline refresh_pagerank failed (refresh)", at, still_open=False, retried_by="UANA"),
            PipelineIncident("pipeline content_index late: no successful run for 2026-03-08", at, still_open=True),
        ],
        unverified_staging=[StagedVersion("ranker", "2026-03-07", "UANA", at)],
        approvals_pending=[PendingApproval("query-tower", "v13", "UCHO", at)],
        locks_held=[HeldLock("ranker", "prod", "UANA", "investigating skew", at + WEEK)],
    )
    body = texts(handoff(summary))
    section = {text.split("\n")[0]: text for text in body}
    assert "*ranker* `2026-03-07` in staging by <@UANA>" in section["*Deploys to staging*"]
    assert "*query-tower* `v12` in prod by <@UCHO>" in section["*Promotions to prod*"]
    assert "*retrieval* `v3` in prod by <@UANA>" in section["*Rollbacks*"]
    assert "*ranker*: succeeded → `2026-03-08`" in section["*Retrains*"] and "*blip*: failed" in section["*Retrains*"]
    alerts = section["*Datagen alerts* (2 fired, 1 still open)"]
    assert [line.endswith("*still open*") for line in alerts.split("\n")[1:]] == [True, False]
    assert "items -14% day over day" in alerts
    incidents = section["*Pipeline incidents* (2, 1 still open)"].split("\n")[1:]
    assert "refresh_pagerank failed (refresh)" in incidents[0] and incidents[0].endswith("retried by <@UANA>")
    assert "content_index late" in incidents[1] and incidents[1].endswith("*still open*")
    assert "<@UANA>" in section["*Left on staging unverified*"]
    assert "*query-tower* `v13` asked by <@UCHO>" in section["*Approvals pending*"]
    locks = section["*Locks held*"]
    assert "*ranker* in prod held by <@UANA>" in locks and "investigating skew" in locks
    assert (at, "2026-03-07T17:00Z") in tokens(section["*Rollbacks*"])


def test_handoff_button_acknowledges_this_handoff():
    [button] = buttons(handoff())
    assert button["text"]["text"] == "Acknowledge handoff"
    assert button["action_id"] == "oncall.ack_handoff"
    assert json.loads(button["value"]) == {"handoff": "h-17"}


def test_usergroup_is_mentioned_as_reaching_the_incoming_person():
    assert "<!subteam^SONCALL> now reaches <@UBEN>" in readable(handoff(usergroup="SONCALL"))


def test_huge_shift_stays_within_slack_limits_and_counts_what_was_left_out():
    at = MON - timedelta(days=1)
    deploys = [ReleaseEvent(f"model-{i}", f"v{i}", "UANA", at, env="staging") for i in range(500)]
    message = handoff(ShiftSummary(deploys=deploys), duties=[f"duty {i}: " + "x" * 200 for i in range(100)])
    assert within_slack_limits(message)
    body = texts(message)
    deploy_text = next(t for t in body if t.startswith("*Deploys to staging*"))
    shown = deploy_text.count("\n• ")
    assert deploy_text.endswith(f"\nand {500 - shown} more") and 0 < shown < 500
    duty_text = next(t for t in body if t.startswith("*Duties*"))
    assert duty_text.endswith(f"and {100 - duty_text.count('• ')} more")


def test_one_very_long_duty_is_clipped_not_dropped():
    message = handoff(duties=["y" * 5000])
    assert within_slack_limits(message)
    duty_text = next(t for t in texts(message) if t.startswith("*Duties*"))
    assert "• yyy" in duty_text and duty_text.endswith("…")


def test_acknowledged_handoff_loses_its_button_and_says_who():
    original = handoff()
    at = MON + timedelta(minutes=20)
    done = handoff_acknowledged(original, "UBEN", at)
    assert buttons(done) == []
    assert f"Acknowledged by <@UBEN> <!date^{int(at.timestamp())}^" in readable(done)
    assert texts(original)[:3] == texts(done)[:3]
    assert "acknowledged by <@UBEN>" in done.text


def test_reminder_tells_the_person_when_their_shift_runs():
    message = reminder_message("UCHO", NEXT, rotation_name="ranker")
    assert message.text.startswith("<@UCHO>, you are on call for ranker")
    assert [when for when, _ in tokens(message.text)] == [NEXT.start, NEXT.end]


def test_ack_reminder_points_to_the_handoff():
    message = ack_reminder("ranker", "UBEN", INCOMING, "https://team.slack.com/archives/C1/p17")
    assert "<@UBEN>" in message.text and "<https://team.slack.com/archives/C1/p17|handoff>" in message.text
    assert "Acknowledge handoff" in message.text


def test_now_and_next_shows_current_cover_and_next():
    current = Shift(MON, MON + timedelta(days=1), "UCHO", overridden=True)
    message = now_and_next("ranker", current, NEXT, usergroup="SONCALL")
    body = readable(message)
    assert "*On call for ranker*: <@UCHO> (covering) until" in body
    assert "*Next*: <@UCHO>" in body
    assert [when for when, _ in tokens(body)] == [current.end, NEXT.start, NEXT.end]
    assert "<!subteam^SONCALL>" in body


def test_now_and_next_before_the_rotation_starts():
    assert "nobody yet" in now_and_next("ranker", None, NEXT).text


def test_schedule_table_lists_each_shift_and_marks_overrides():
    rows = [INCOMING, Shift(MON + WEEK, MON + WEEK + timedelta(days=2), "UANA", overridden=True), NEXT]
    body = readable(schedule_table("ranker", rows))
    lines = [line for line in body.split("\n") if line.startswith("• ")]
    assert [re.findall(r"<@(\w+)>", line) for line in lines] == [["UBEN"], ["UANA"], ["UCHO"]]
    assert "_(override)_" in lines[1] and "override" not in lines[0]
    assert [when for when, _ in tokens(lines[1])] == [rows[1].start, rows[1].end]


def test_long_schedule_spreads_over_sections_within_limits():
    day = timedelta(days=1)
    rows = [Shift(MON + i * day, MON + (i + 1) * day, "UANA", overridden=False) for i in range(3000)]
    message = schedule_table("ranker", rows)
    assert within_slack_limits(message) and len(message.blocks) > 1
    body = readable(message)
    shown = body.count("• ")
    assert body.endswith(f"and {3000 - shown} more")


def test_empty_schedule_says_none():
    assert "none" in readable(schedule_table("ranker", []))


def test_cover_request_has_a_take_button_for_this_request():
    start, end = MON + timedelta(days=2), MON + timedelta(days=3)
    message = cover_request("UBEN", start, end, "r-42", rotation_name="ranker")
    assert "<@UBEN> needs someone to cover ranker on-call" in message.text
    assert [when for when, _ in tokens(message.text)] == [start, end]
    [button] = buttons(message)
    assert (button["text"]["text"], button["action_id"]) == ("Take", "oncall.take")
    assert json.loads(button["value"]) == {"request": "r-42"}


def test_cover_taken_says_who_took_it_and_has_no_button():
    message = cover_taken("UBEN", MON, MON + timedelta(days=1), "UCHO")
    assert message.text.startswith("<@UCHO> is covering for <@UBEN>")
    assert buttons(message) == []


def test_topic_is_written_in_the_rotation_zone():
    until = datetime(2026, 11, 30, 18, tzinfo=UTC)  # Mon 30 Nov 10:00 PST
    assert topic_text("UBEN", until, "America/Los_Angeles") == "on-call: <@UBEN> until Mon 30 Nov"
    early = datetime(2026, 11, 30, 2, tzinfo=UTC)  # still Sunday evening in Los Angeles
    assert topic_text("UBEN", early, "America/Los_Angeles") == "on-call: <@UBEN> until Sun 29 Nov"
    assert topic_text("UBEN", early, "Asia/Kolkata") == "on-call: <@UBEN> until Mon 30 Nov"
    assert len(topic_text("W" + "X" * 20, until, "Asia/Kolkata")) <= 250
