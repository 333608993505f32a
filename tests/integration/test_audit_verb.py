"""`/mlops audit` from Slack: the newest rows as people read them, the chain's state, and bad input refused,
through the Slack emulator and the real SQLite store."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.config import load_config
from bot.sandbox.local import LocalBot, local_bot
from tests.conftest import Clock, write_config

TEAM = "C0MLOPS"


@pytest.fixture
async def bot(tmp_path: Path):
    async with local_bot(load_config(write_config(tmp_path)), clock=Clock(), post_rate=100, post_burst=100) as running:
        yield running


async def answer(bot: LocalBot, user: str, text: str) -> str:
    """What the person sees: the ack's own reply, else what follows it, to them alone or in the channel."""
    slack = bot.slack
    before = len(slack.ephemerals), len(slack.messages(TEAM))
    delivery = await bot.client.command(user, text, channel=TEAM)
    if delivery.body:
        return delivery.json()["text"]
    ephemeral, posted = await slack.wait_for(
        lambda: (slack.ephemerals[before[0]:], slack.messages(TEAM)[before[1]:]) if (
            len(slack.ephemerals) > before[0] or len(slack.messages(TEAM)) > before[1]) else None)
    return "\n".join(m["text"] for m in ephemeral or posted)


async def test_the_newest_rows_of_a_model_and_env_with_the_chain_verified(bot: LocalBot) -> None:
    assert "locked" in await answer(bot, "U0ALICE", "lock ranker staging for the migration")
    assert "unlocked" in await answer(bot, "U0BOB", "unlock ranker staging")
    await answer(bot, "U0ALICE", "lock ranker prod for the freeze")

    said = await answer(bot, "U0ALICE", "audit ranker staging n=4")
    lines = said.splitlines()
    # Five rows for ranker staging: lock and unlock (each accepted, then succeeded) and this audit itself.
    assert lines[0] == "*Audit log* · ranker staging: the newest 4 of 5 rows, oldest first"
    total = len(bot.runtime.store.actions())
    assert lines[1] == f":white_check_mark: Hash chain verified over all {total:,} rows."
    shown = [line.split(" · ")[2:4] for line in lines[2:]]
    assert shown == [["<@U0ALICE>", "`lock` succeeded"], ["<@U0BOB>", "`unlock` accepted"],
                     ["<@U0BOB>", "`unlock` succeeded"], ["<@U0ALICE>", "`audit` accepted"]]
    assert lines[2].endswith("ranker staging · reason: for the migration")
    assert "ranker prod" not in said  # the other environment's lock is not asked for
    assert all("<!date^" in line for line in lines[2:])  # times in each reader's own zone


async def test_a_broken_chain_is_said_first(bot: LocalBot, tmp_path: Path) -> None:
    await answer(bot, "U0ALICE", "lock ranker staging for the migration")
    await answer(bot, "U0ALICE", "audit")  # written and verified once
    db = sqlite3.connect(tmp_path / "mlops-bot.db")
    with db:  # someone with the file edits history behind the bot's back
        db.execute("DROP TRIGGER actions_no_update")
        db.execute("UPDATE actions SET actor = 'U0MALLORY' WHERE verb = 'lock'")
    db.close()
    broken = min(r["id"] for r in bot.runtime.store.actions() if r["verb"] == "lock")

    said = await answer(bot, "U0ALICE", "audit ranker")
    assert said.splitlines()[1].startswith(f":rotating_light: The audit log is broken at row {broken}: row {broken} was edited")


async def test_what_people_typed_is_shown_literally(bot: LocalBot) -> None:
    await answer(bot, "U0ALICE", 'lock ranker staging "<!channel> see <https://evil.example|here>"')
    said = await answer(bot, "U0ALICE", "audit ranker staging")
    assert "&lt;!channel&gt;" in said and "<!channel>" not in said and "<https://" not in said


async def test_since_a_day_with_no_rows(bot: LocalBot) -> None:
    said = await answer(bot, "U0ALICE", "audit since=2099-01-01")
    assert said.startswith("*Audit log* · all models since 2099-01-01: no rows\n:white_check_mark:")


@pytest.mark.parametrize(("text", "says"), [
    ("audit n=0", "n=`0` is not a number of rows from 1 to 100"),
    ("audit n=abc", "n=`abc` is not a number of rows from 1 to 100"),
    ("audit since=yesterday", "since=`yesterday` is not a date (YYYY-MM-DD)"),
    ("audit ranker nowhere", "unknown environment `nowhere` for ranker"),
    ("audit nosuchmodel", "unknown model `nosuchmodel`"),
    ("audit ranker staging extra", "unexpected words: extra"),
    ("audit limit=5", "does not understand `limit=`"),
])
async def test_bad_input_is_refused_with_the_usage(bot: LocalBot, text: str, says: str) -> None:
    said = await answer(bot, "U0ALICE", text)
    assert says in said and "/mlops audit [model] [env]" in said
    assert [r["status"] for r in bot.runtime.store.actions() if r["verb"] == "audit"] == ["invalid"]


async def test_only_deployers_and_up_read_it(bot: LocalBot) -> None:
    said = await answer(bot, "U0DAVE", "audit")
    assert said.startswith("You need the *deployers* role to run `/mlops audit`")
