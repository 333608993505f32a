"""Oversized input and answers (issue 18, item 10): a huge command is answered with a short excerpt of it, an
answer past Slack's limits (50 blocks, 3,000 characters a section, 40,000 of message text) arrives whole, split
over messages or attached as a file, never cut silently nor "failed unexpectedly (SlackError)", and a button value
whose id is past int64 is refused as a bad button instead of "(OverflowError)".

The whole bot runs on loopback against the Slack emulator, which refuses what Slack refuses; the Notifier tests
talk to the emulator directly.
"""
from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import load_config
from bot.notifier import Message, Notifier, web_client
from bot.sandbox.block_kit import MAX_MESSAGE_BLOCKS, MAX_MESSAGE_TEXT, block_problems
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.slack_emulator import SlackEmulator
from tests.conftest import Clock, write_config

MAIN = "C0MLOPS"
ADMIN = "U0CAROL"  # holds every role, so what is tested is the input, not a role check
HUGE = 700_000  # the size of the command text the issue saw echoed back whole
# An answer to a typo is a few lines: its usage, and at most a short excerpt of what was typed.
SHORT_REPLY = 2_500


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[LocalBot]:
    async with local_bot(load_config(write_config(tmp_path)), clock=Clock(), post_rate=200, post_burst=200) as b:
        yield b


def within_slack_limits(body: dict) -> None:
    assert len(body.get("text") or "") <= MAX_MESSAGE_TEXT
    assert block_problems(body.get("blocks") or [], max_blocks=MAX_MESSAGE_BLOCKS) == []


async def idle(bot: LocalBot) -> None:
    await bot.slack.wait_for(lambda: not bot.runtime.tasks.names, timeout=20)


def said_to(bot: LocalBot, user: str) -> list[str]:
    """The text of everything shown to `user` alone: ephemerals, response_url answers and files in their DM."""
    texts = [e["text"] or "" for e in bot.slack.ephemerals if e["user"] == user]
    texts += ["\n".join([e["text"] or ""] + [b["text"]["text"] for b in e["blocks"] or [] if isinstance(b.get("text"), dict)])
              for e in bot.slack.ephemerals if e["user"] == user and e["blocks"]]
    texts += [f["content"].decode() for f in bot.slack.files if f["channel"] == "D" + user[1:]]
    return texts


def failed_calls(bot: LocalBot) -> list[str]:
    return [f"{c.method}: {c.error}" for c in bot.slack.calls if not c.ok]


# --- a huge command is echoed as a short excerpt ----------------------------------------------------------

ECHOES = {
    "unknown verb": "x" * HUGE,
    "help on an unknown verb": "help " + "y" * HUGE,
    "unknown model": "deploy " + "m" * HUGE,
    "unknown environment": "verify ranker " + "e" * HUGE,
    "unexpected words": "deploy ranker v1 " + "w " * (HUGE // 2),
    "not a date": "datagen " + "2" * HUGE,
    "a flag that is not true or false": "deploy ranker dry_run=" + "t" * HUGE,
    "thousands of unknown options": "status " + " ".join(f"o{i}=1" for i in range(HUGE // 8)),
    "another module's grammar": "retrain ranker cancel " + "r " * (HUGE // 2),
}


@pytest.mark.parametrize("name", ECHOES)
async def test_a_huge_command_is_answered_with_a_short_excerpt_of_it(name: str, bot: LocalBot) -> None:
    text = ECHOES[name]
    delivery = await bot.client.command(ADMIN, text)

    assert delivery.status == 200
    body = delivery.json()
    within_slack_limits(body)
    assert len(body["text"]) <= SHORT_REPLY, f"{len(body['text']):,} characters echoed back"
    assert "…" in body["text"] or "more" in body["text"]  # the cut is shown, not hidden
    await idle(bot)
    assert failed_calls(bot) == []


async def test_echoed_input_is_escaped_so_it_cannot_mention_anyone(bot: LocalBot) -> None:
    delivery = await bot.client.command(ADMIN, "deploy <!channel>" + "!" * 5_000)

    said = delivery.json()["text"]
    assert "<!channel>" not in said and "&lt;!channel&gt;" in said
    assert len(said) <= SHORT_REPLY


async def test_a_silence_number_past_int64_is_a_usage_error_not_an_overflow(bot: LocalBot) -> None:
    delivery = await bot.client.command(ADMIN, f"silence end {2**64}")

    assert "name the silence to end by its number" in delivery.json()["text"]
    await idle(bot)
    assert not [t for t in said_to(bot, ADMIN) if "failed unexpectedly" in t]


# --- answers past Slack's limits arrive whole ---------------------------------------------------------------

@pytest.mark.parametrize("silences", [600, 3_000], ids=["a few messages", "a file in the DM"])
async def test_a_listing_longer_than_a_slack_message_arrives_whole(silences: int, bot: LocalBot) -> None:
    now = bot.runtime.clock()
    ids = [bot.runtime.silences.add("datagen", "recsys", now + timedelta(hours=1, seconds=i), ADMIN) for i in range(silences)]

    await bot.client.command(ADMIN, "silence")
    await idle(bot)

    assert failed_calls(bot) == []
    said = "\n".join(said_to(bot, ADMIN))
    assert "failed unexpectedly" not in said
    assert set(map(int, re.findall(r"• #(\d+) ", said))) == set(ids)  # every silence is listed, none cut off
    for answer in bot.slack.responses:
        within_slack_limits(answer["body"])
    if silences > 1_000:  # ~100 characters a line: more than MAX_PARTS messages would take
        assert len(bot.slack.responses) == 1 and "file in your DM" in bot.slack.responses[0]["body"]["text"]
        assert [f["name"] for f in bot.slack.files] == ["answer.txt"]


@pytest.mark.parametrize(("words", "first_part_says"), [
    (12_000, "continued in the thread"),  # 82 KB: three messages
    (60_000, "whole answer is in the file in the thread"),  # 460 KB: more messages than a thread should take
], ids=["the thread", "a file in the thread"])
async def test_an_announcement_longer_than_a_message_goes_on_in_its_thread(
    words: int, first_part_says: str, bot: LocalBot,
) -> None:
    reason = " ".join(f"r{i}" for i in range(words))

    await bot.client.command(ADMIN, f"lock ranker staging {reason}")
    await idle(bot)

    assert failed_calls(bot) == []
    [card] = [m for m in bot.slack.messages(MAIN) if "locked" in (m["text"] or "") or "lock" in (m["text"] or "")]
    replies = bot.slack.replies(MAIN, card["ts"])
    assert replies, "the rest of the announcement is not in the thread"
    shown = "\n".join([card["text"], *(r["text"] for r in replies),
                       *(f["content"].decode() for f in bot.slack.files if f["thread_ts"] == card["ts"])])
    assert set(re.findall(r"\br\d+\b", shown)) == {f"r{i}" for i in range(words)}  # no word of it lost
    assert first_part_says in card["text"]


# --- Notifier against the emulator: blocks and sections past the limits ---------------------------------------

def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


BIG = Message("a long card", [section(f"line {i}") for i in range(120)] + [section("long " * 1_500)])


def block_texts(messages: list[dict]) -> str:
    """The text of every section and context block of `messages`."""
    texts = [t for m in messages for b in m["blocks"] or [] for t in [b.get("text"), *b.get("elements", [])]]
    return "\n".join(t["text"] for t in texts if isinstance(t, dict) and isinstance(t.get("text"), str))


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(users={"U1": {"name": "alice"}}, post_rate=200, post_burst=200) as e:
        yield e


async def test_a_post_past_the_limits_goes_on_in_its_thread(emu: SlackEmulator) -> None:
    notifier = Notifier(web_client("xoxb-sandbox", base_url=emu.api_url))

    ts = await notifier.post("C1", BIG)

    [parent] = emu.messages("C1")
    shown = [parent, *emu.replies("C1", ts)]
    assert all(len(m["blocks"]) <= MAX_MESSAGE_BLOCKS for m in shown)
    text = block_texts(shown)
    assert all(f"line {i}\n" in text + "\n" for i in range(120)) and text.count("long") == 1_500
    assert "continued in the thread" in block_texts([parent])


async def test_an_edit_past_the_limits_keeps_every_block(emu: SlackEmulator) -> None:
    notifier = Notifier(web_client("xoxb-sandbox", base_url=emu.api_url))
    ts = await notifier.post("C1", Message("card", [section("first version")]))

    await notifier.update("C1", ts, BIG)

    parent = emu.find_message("C1", ts)
    assert parent is not None and parent["edited"]
    text = block_texts([parent, *emu.replies("C1", ts)])
    assert all(f"line {i}\n" in text + "\n" for i in range(120)) and text.count("long") == 1_500  # none dropped


async def test_an_answer_to_one_person_past_the_limits_arrives_whole(emu: SlackEmulator) -> None:
    notifier = Notifier(web_client("xoxb-sandbox", base_url=emu.api_url))

    await notifier.respond(emu.issue_response_url("C1", "U1"), BIG)
    await notifier.ephemeral("C1", "U1", BIG)

    by_source = {s: [e for e in emu.ephemerals if e["source"] == s] for s in ("response_url", "chat.postEphemeral")}
    for shown in by_source.values():
        assert len(shown) > 1
        text = block_texts(shown)
        assert all(f"line {i}\n" in text + "\n" for i in range(120)) and text.count("long") == 1_500
    assert [c.error for c in emu.calls if not c.ok] == []


async def test_a_text_past_40000_characters_is_split_at_line_ends(emu: SlackEmulator) -> None:
    notifier = Notifier(web_client("xoxb-sandbox", base_url=emu.api_url))
    lines = [f"row {i}: " + "x" * 90 for i in range(1_000)]  # 100 KB

    ts = await notifier.post("C1", Message("\n".join(lines)))

    shown = [emu.find_message("C1", ts), *emu.replies("C1", ts)]
    assert all(len(m["text"]) <= MAX_MESSAGE_TEXT for m in shown)
    said = "\n".join(m["text"] for m in shown).splitlines()
    assert [line for line in said if line.startswith("row ")] == lines  # whole lines, in order, none lost


# --- button values with an id past int64 -----------------------------------------------------------------------

PAST_INT64 = 2**63  # one past SQLite's largest integer
BUTTONS = {
    "release.promote": {"release": PAST_INT64},
    "release.verify": {"release": 10**30},
    "release.rollback": {"model": "ranker", "env": "staging", "release": PAST_INT64},
    "retrain.cancel": {"run": PAST_INT64},
    "retrain.deploy": {"run": PAST_INT64},
    "oncall.ack_handoff": {"handoff": PAST_INT64},
    "oncall.take": {"request": PAST_INT64},
    "alerts.silence": {"alert": PAST_INT64},
}


@pytest.mark.parametrize("action_id", BUTTONS)
async def test_a_button_value_with_an_id_past_int64_is_refused_as_a_bad_button(action_id: str, bot: LocalBot) -> None:
    card_ts = await bot.runtime.notifier.post(MAIN, Message("a card"))

    delivery = await bot.client.press(ADMIN, action_id, json.dumps(BUTTONS[action_id]), channel=MAIN, message_ts=card_ts)
    await idle(bot)

    assert delivery.status == 200
    said = "\n".join(said_to(bot, ADMIN))
    assert "could not be used" in said, said
    assert "failed unexpectedly" not in said and "OverflowError" not in said
    [row] = bot.runtime.store.query("SELECT status FROM actions WHERE verb = ?", [action_id])
    assert row["status"] == "invalid"
