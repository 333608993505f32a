"""`/mlops silence`: set, list and end silences; a silenced model+env's Alertmanager alerts are stored, not posted."""
from __future__ import annotations

from pathlib import Path

from bot.config import Secrets, load_config
from bot.sandbox.local import local_bot
from tests.conftest import Clock, write_config
from tests.integration.test_alertmanager import CHANNEL, TOKEN, deliver, notification

TEAM = "C0MLOPS"


async def test_silence_holds_back_alerts_until_it_is_ended(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), secrets=Secrets(alertmanager_token=TOKEN), post_rate=100, post_burst=100) as bot:
        slack = bot.slack

        async def answer(user: str, text: str) -> str:
            """What the person sees: the ack's own reply, else the next ephemeral or channel message."""
            before = len(slack.ephemerals), len(slack.messages(TEAM))
            delivery = await bot.client.command(user, text, channel=TEAM)
            if delivery.body:
                return delivery.json()["text"]
            ephemeral, posted = await slack.wait_for(
                lambda: (slack.ephemerals[before[0]:], slack.messages(TEAM)[before[1]:]) if (
                    len(slack.ephemerals) > before[0] or len(slack.messages(TEAM)) > before[1]) else None)
            return (ephemeral or posted)[0]["text"]

        assert await answer("U0ALICE", "silence") == "No silences are in force."
        said = await answer("U0ALICE", "silence ranker prod 2h")
        assert "<@U0ALICE> silenced alerts for ranker prod until" in said and "`/mlops silence end 1`" in said

        # A new alert group for ranker prod is stored as silenced and not posted.
        assert await deliver(bot, notification("firing")) == (200, "silenced")
        assert slack.messages(CHANNEL) == []

        said = await answer("U0BOB", "silence datagen recsys 3d")
        assert "silenced alerts for datagen `recsys`" in said
        listed = await answer("U0CAROL", "silence")
        assert listed.index("#1 ranker prod") < listed.index("#2 datagen `recsys`")  # soonest to end first
        assert "by <@U0ALICE>" in listed and "by <@U0BOB>" in listed

        said = await answer("U0BOB", "silence end 1")
        assert said == ":bell: <@U0BOB> ended silence #1: alerts for ranker prod are posted again."
        assert await deliver(bot, notification("firing", group='{}:{alertname="RankerErrors"}')) == (200, "open")
        assert len(slack.messages(CHANNEL)) == 1
        assert "#1" not in await answer("U0CAROL", "silence")

        rows = [(r["verb"], r["status"], r["actor"]) for r in bot.runtime.store.actions() if r["verb"].startswith("silence")]
        assert ("silence", "ok", "U0ALICE") in rows and ("silence.end", "ok", "U0BOB") in rows


async def test_silence_mistakes_get_usage_and_change_nothing(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    async with local_bot(config, clock=Clock(), post_rate=100, post_burst=100) as bot:
        async def refused(text: str) -> str:
            delivery = await bot.client.command("U0ALICE", text, channel=TEAM)
            return delivery.json()["text"]

        assert "a silence lasts from 1m up to 7d" in await refused("silence ranker prod 9d")
        assert "`soon` is not a duration" in await refused("silence ranker prod soon")
        assert "unknown environment `qa`" in await refused("silence ranker qa")
        assert "name a datagen job; jobs: recsys" in await refused("silence datagen nosuchjob")
        assert "name a watched pipeline (a DAG id); watched: none" in await refused("silence pipeline etl")
        assert "unknown model `nosuchmodel`" in await refused("silence nosuchmodel prod")
        assert "Usage: `/mlops silence" in await refused("silence end soon")
        delivery = await bot.client.command("U0ALICE", "silence end 7", channel=TEAM)
        assert not delivery.body  # well formed: answered after the ack
        said = await bot.slack.wait_for(lambda: [e["text"] for e in bot.slack.ephemerals if "#7" in e["text"]])
        assert said == [":warning: there is no active silence #7; `/mlops silence` lists them"]
        assert [r["status"] for r in bot.runtime.store.actions() if r["verb"] == "silence.end"] == ["refused"]
        assert bot.runtime.silences.active() == []
