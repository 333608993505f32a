"""On-call through the Slack emulator, with the clock injected: handoffs and their summary, reminders,
Take races, @oncall and topic sync, overrides, and a handoff missed while the bot was down.

The example rotation `recsys` hands off Mondays 10:00 America/Los_Angeles: U0ALICE has the week of
2026-03-09, U0BOB the week of 2026-03-16, U0CAROL the week of 2026-03-23.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Config
from bot.sandbox.local import LocalBot, local_bot
from bot.store import iso
from tests.conftest import Clock

LA = ZoneInfo("America/Los_Angeles")
CHANNEL = "C0MLOPS"
GROUP = "S0ONCALL"


def march(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=LA)


def bot_for(config: Config, clock: Clock):
    # A generous posting rate: these tests are about on-call, not about waiting out 429s.
    return local_bot(config, clock=clock, post_rate=100, post_burst=100)


def text_of(message: dict[str, Any]) -> str:
    """Everything a person reads in a message: its sections and context lines."""
    parts = [message.get("text") or ""]
    for block in message.get("blocks") or []:
        if block.get("type") == "section":
            parts.append(block["text"]["text"])
        elif block.get("type") == "context":
            parts += [e.get("text", "") for e in block["elements"]]
    return "\n".join(parts)


def handoffs(bot: LocalBot) -> list[dict[str, Any]]:
    return [m for m in bot.slack.messages(CHANNEL) if m["text"].startswith("On-call handoff")]


def ephemerals_to(bot: LocalBot, user: str) -> list[str]:
    return [text_of(e) for e in bot.slack.ephemerals if e["user"] == user]


def audit_rows(bot: LocalBot, verb: str) -> list[dict[str, Any]]:
    return [a for a in bot.runtime.store.actions() if a["verb"] == verb]


async def test_handoff_summarises_the_shift_from_the_records_and_is_acknowledged_in_place(config: Config):
    clock = Clock(march(5, 12))
    async with bot_for(config, clock) as bot:
        rt = bot.runtime
        # Last week (Carol's shift): not part of Alice's handoff.
        rt.audit(actor="U0CAROL", verb="deploy", status="succeeded", model="ranker", env="staging", version="v5")
        clock.now = march(10, 12)
        rt.audit(actor="U0ALICE", verb="deploy", status="started", model="ranker", env="staging", version="v7")
        rt.audit(actor="U0ALICE", verb="deploy", status="succeeded", model="ranker", env="staging", version="v7")
        clock.now = march(11, 14)
        rt.audit(actor="U0CAROL", verb="promote", status="succeeded", model="ranker", env="prod", version="v7")
        rt.audit(actor="U0BOB", verb="rollback", status="succeeded", model="ranker", env="prod", version="v6")
        rt.audit(actor="U0ALICE", verb="retrain", status="failed", model="ranker")
        rt.audit(actor="U0ALICE", verb="retrain", status="succeeded", model="ranker", version="v8")
        db = rt.store.db
        db["alerts"].insert_all([
            {"source": "datagen", "key": "recsys/2026-03-11/events", "state": "open", "severity": "warning",
             "summary": "events fell 14% day over day", "opened_at": iso(march(11, 9)), "resolved_at": None},
            {"source": "datagen", "key": "recsys/2026-03-12/new_items", "state": "resolved", "severity": "warning",
             "summary": "new items in the index under 3%", "opened_at": iso(march(12, 9)),
             "resolved_at": iso(march(12, 15))},
        ])
        db["releases"].insert_all([
            {"model": "ranker", "version": "v8", "digest": "d8", "state": "staged", "deployed_by": "U0ALICE",
             "deployed_at": iso(march(13, 11)), "updated_at": iso(march(13, 11))},
            {"model": "ranker", "version": "v9", "digest": "d9", "state": "verified", "deployed_by": "U0BOB",
             "deployed_at": iso(march(13, 12)), "verified_at": iso(march(13, 13)), "updated_at": iso(march(13, 13))},
        ])
        db["locks"].insert({"model": "ranker", "env": "prod", "holder": "U0CAROL", "reason": "investigating p99",
                            "kind": "manual", "expires_at": iso(march(17, 12)), "created_at": iso(march(13, 12))})

        clock.now = march(15, 10, 1)  # a day before Bob's shift
        await rt.scheduler.run_due()
        reminder = await bot.slack.wait_for(lambda: bot.slack.messages("U0BOB"))
        assert "you are on call for recsys" in reminder[0]["text"]

        clock.now = march(16, 10, 0)
        await rt.scheduler.run_due()
        [card] = await bot.slack.wait_for(lambda: handoffs(bot))
        shown = text_of(card)
        assert "<@U0ALICE> → <@U0BOB>" in shown
        assert "*Deploys to staging*\n• *ranker* `v7` in staging by <@U0ALICE>" in shown
        assert "*Promotions to prod*\n• *ranker* `v7` in prod by <@U0CAROL>" in shown
        assert "*Rollbacks*\n• *ranker* `v6` in prod by <@U0BOB>" in shown
        assert "*ranker*: failed" in shown and "*ranker*: succeeded → `v8`" in shown
        assert "events fell 14% day over day" in shown and "*still open*" in shown
        assert "new items in the index under 3%" in shown
        assert "*Left on staging unverified*\n• *ranker* `v8` by <@U0ALICE>" in shown
        assert "*Approvals pending*\n• *ranker* `v9` asked by <@U0BOB>" in shown
        assert "*ranker* in prod held by <@U0CAROL>" in shown and "investigating p99" in shown
        assert "`v5`" not in shown  # last week's deploy belongs to last week's handoff
        assert "Keep the content pipelines running" in shown

        await bot.client.press_button("U0CAROL", CHANNEL, card["ts"], "Acknowledge handoff")
        await bot.slack.wait_for(lambda: ephemerals_to(bot, "U0CAROL"))
        assert "only they can acknowledge" in ephemerals_to(bot, "U0CAROL")[0]

        await bot.client.press_button("U0BOB", CHANNEL, card["ts"], "Acknowledge handoff")
        edited = await bot.slack.wait_for(lambda: [m for m in handoffs(bot) if m.get("edited")])
        assert "Acknowledged by <@U0BOB>" in text_of(edited[0])
        assert not any(b["type"] == "actions" for b in edited[0]["blocks"])
        assert "*Rollbacks*\n• *ranker* `v6`" in text_of(edited[0])  # the summary stays as posted

        clock.now = march(16, 12)  # acknowledged, so no nudge an hour later
        await rt.scheduler.run_due()
        assert len(bot.slack.messages("U0BOB")) == 1
        assert [a["status"] for a in audit_rows(bot, "oncall.ack_handoff")] == ["accepted", "rejected", "accepted", "succeeded"]


async def test_two_people_take_a_cover_request_at_once_and_one_gets_it(config: Config):
    clock = Clock(march(10, 12))
    async with bot_for(config, clock) as bot:
        await bot.client.command("U0ALICE", "oncall cover 2026-03-12 2026-03-13")
        [card] = await bot.slack.wait_for(lambda: [m for m in bot.slack.messages(CHANNEL) if "needs someone" in m["text"]])

        await asyncio.gather(
            bot.client.press_button("U0BOB", CHANNEL, card["ts"], "Take"),
            bot.client.press_button("U0CAROL", CHANNEL, card["ts"], "Take"),
        )
        edited = await bot.slack.wait_for(lambda: [m for m in bot.slack.messages(CHANNEL) if m.get("edited")])
        winner = "U0BOB" if "<@U0BOB> is covering" in edited[0]["text"] else "U0CAROL"
        loser = {"U0BOB": "U0CAROL", "U0CAROL": "U0BOB"}[winner]
        assert f"<@{winner}> is covering for <@U0ALICE>" in edited[0]["text"]
        assert not any(b["type"] == "actions" for b in edited[0]["blocks"])
        told = await bot.slack.wait_for(lambda: ephemerals_to(bot, loser))
        assert f"Already taken by <@{winner}>" in told[0]

        overrides = list(bot.runtime.store.db["oncall_overrides"].rows)
        assert [(o["user"], o["created_by"]) for o in overrides] == [(winner, "U0ALICE")]
        await bot.client.command("U0ALICE", "oncall schedule 1")
        [schedule] = await bot.slack.wait_for(lambda: [t for t in ephemerals_to(bot, "U0ALICE") if "schedule" in t])
        assert f"<@{winner}> _(override)_" in schedule


async def test_usergroup_and_topic_are_written_once_per_change(config: Config):
    clock = Clock(march(16, 12))  # Bob's shift; the workspace's @oncall still has Alice
    async with bot_for(config, clock) as bot:
        slack = bot.slack
        await slack.wait_for(lambda: slack.calls_to("conversations.setTopic"))
        assert slack.usergroup_members[GROUP] == ["U0BOB"]
        assert slack.topics[CHANNEL] == "on-call: <@U0BOB> until Mon 23 Mar"
        assert len(slack.calls_to("usergroups.users.update")) == 1

        for minutes in (15, 30, 45):  # ticks with nothing changed make no Slack calls at all
            clock.now = march(16, 12, minutes)
            await bot.runtime.scheduler.run_due()
        assert len(slack.calls_to("usergroups.users.list")) == 1
        assert len(slack.calls_to("usergroups.users.update")) == 1
        assert len(slack.calls_to("conversations.setTopic")) == 1

        await bot.client.command("U0BOB", "oncall override <@U0CAROL|carol> 2026-03-17 2026-03-18")
        await slack.wait_for(lambda: [m for m in slack.messages(CHANNEL) if "override #1" in m["text"]])
        assert len(slack.calls_to("usergroups.users.update")) == 1  # the override has not started yet
        assert slack.topics[CHANNEL] == "on-call: <@U0BOB> until Tue 17 Mar"  # but Bob's stint is shorter now

        clock.now = march(17, 10)
        await bot.runtime.scheduler.run_due()
        assert slack.usergroup_members[GROUP] == ["U0CAROL"]
        assert slack.topics[CHANNEL] == "on-call: <@U0CAROL> until Wed 18 Mar"
        clock.now = march(17, 10, 15)
        await bot.runtime.scheduler.run_due()
        clock.now = march(18, 10)
        await bot.runtime.scheduler.run_due()
        assert slack.usergroup_members[GROUP] == ["U0BOB"]
        assert len(slack.calls_to("usergroups.users.update")) == 3
        assert [c.args["topic"] for c in slack.calls_to("conversations.setTopic")] == [
            "on-call: <@U0BOB> until Mon 23 Mar",
            "on-call: <@U0BOB> until Tue 17 Mar",
            "on-call: <@U0CAROL> until Wed 18 Mar",
            "on-call: <@U0BOB> until Mon 23 Mar",
        ]


async def test_a_handoff_missed_while_down_is_posted_once_at_start_and_nudged_once(config: Config):
    clock = Clock(march(16, 9, 30))
    async with bot_for(config, clock) as bot:
        assert handoffs(bot) == []

    clock.now = march(16, 11)  # the 10:00 handoff passed while the bot was down
    async with bot_for(config, clock) as bot:
        [card] = await bot.slack.wait_for(lambda: handoffs(bot))
        assert "<@U0ALICE> → <@U0BOB>" in card["text"]
        await bot.runtime.scheduler.run_due()
        assert len(handoffs(bot)) == 1

    clock.now = march(16, 11, 40)  # a second restart: the slot is on record, nothing is posted again
    async with bot_for(config, clock) as bot:
        await bot.runtime.scheduler.run_due()
        assert handoffs(bot) == []

        clock.now = march(16, 12, 15)  # unacknowledged an hour after it was posted: one nudge to Bob
        await bot.runtime.scheduler.run_due()
        nudges = await bot.slack.wait_for(lambda: bot.slack.messages("U0BOB"))
        assert "not acknowledged yet" in nudges[0]["text"]
        clock.now = march(16, 13)
        await bot.runtime.scheduler.run_due()
        assert len(bot.slack.messages("U0BOB")) == 1
        assert [a["status"] for a in audit_rows(bot, "oncall.handoff")] == ["posted"]


async def test_override_mistakes_get_clear_answers_and_undo_belongs_to_its_creator(config: Config):
    clock = Clock(march(10, 12))
    async with bot_for(config, clock) as bot:
        slack = bot.slack

        async def answer(user: str, text: str) -> str:
            before = len(ephemerals_to(bot, user))
            delivery = await bot.client.command(user, text)
            if delivery.body:  # refused in the ack itself
                return delivery.json()["text"]
            return (await slack.wait_for(lambda: ephemerals_to(bot, user)[before:]))[0]

        said = await answer("U0ALICE", "oncall override <@U0DAVE|dave> 2026-03-12 2026-03-13")
        assert "<@U0DAVE> is not on the recsys rotation" in said
        said = await answer("U0ALICE", "oncall override <@U0BOB|bob> 2026-03-09 2026-03-11")
        assert "starts in the past" in said
        said = await answer("U0ALICE", "oncall override <@U0BOB|bob> tomorrow 2026-03-13")
        assert "`tomorrow` is not a date" in said and "Usage: `/mlops oncall" in said
        said = await answer("U0ALICE", "oncall override bob 2026-03-12 2026-03-13")
        assert "mention them with @" in said
        said = await answer("U0ALICE", "oncall override <@U0BOB|bob> 2026-03-13 2026-03-12")
        assert "before it starts" in said

        said = await answer("U0ALICE", "oncall override <@U0BOB|bob> 2026-03-12 2026-03-13")
        assert "Override #1 created" in said
        said = await answer("U0CAROL", "oncall override U0CAROL 2026-03-12T18:00 2026-03-14")
        assert "overlaps <@U0BOB>'s override" in said
        said = await answer("U0CAROL", "oncall undo 1")
        assert "Only <@U0ALICE>, who created override #1, can undo it" in said
        said = await answer("U0ALICE", "oncall")
        assert "On call for recsys: <@U0ALICE>" in said and "Next: <@U0BOB>" in said

        said = await answer("U0ALICE", "oncall undo 1")
        assert "undid it: override #1" in said
        said = await answer("U0ALICE", "oncall undo 1")
        assert "There is no override #1" in said
        assert not list(bot.runtime.store.db.query("SELECT * FROM oncall_overrides WHERE deleted_at IS NULL"))
        statuses = [a["status"] for a in audit_rows(bot, "oncall.override")]
        assert statuses == ["rejected", "rejected", "rejected", "succeeded", "rejected"]
        assert [a["status"] for a in audit_rows(bot, "oncall.undo")] == ["rejected", "succeeded", "rejected"]
