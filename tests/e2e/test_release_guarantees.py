"""The release train's promises off the happy path, one test per way a new team saw them broken: an exception
inside verify, Slack refusing or garbling its answers, a lock left by an operation that is gone, a rollback
run twice, a staging rollback beside a live prod release, a re-verify after the version's files changed.
Real tritonservers (one staging, two prod), the Slack emulator, the real SQLite store."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.releases.model import State
from bot.sandbox.tritonserver import triton_missing
from tests.conftest import ROOT
from tests.e2e.test_release_failures import bot_config, fleet, start_bot  # noqa: F401 - fixtures
from tests.e2e.test_release_train import MONDAY_10_LA, Clock, audit, card, card_in_state, deploy_verified, serving

if triton_missing() is not None:
    pytestmark = pytest.mark.skip(reason=triton_missing() or "")


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """The example registry plus v6: v1 whose golden request cannot even be built (a shape its data does not
    fill), so verify raises a ValueError of numpy's own rather than failing a check."""
    path = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", path, ignore=shutil.ignore_patterns("__pycache__"))
    broken = path / "ranker" / "v6"
    shutil.copytree(path / "ranker" / "v1", broken)
    spec = json.loads((broken / "verify.json").read_text())
    spec["requests"][0]["inputs"]["user"]["shape"] = [3, 5]
    (broken / "verify.json").write_text(json.dumps(spec))
    return path


@pytest.fixture
async def bot(fleet, registry, tmp_path):  # noqa: F811 - the fleet fixture above
    repos, servers = fleet
    config = bot_config(tmp_path, str(registry), {env: (str(repos[env]), [s.url for s in servers[env]]) for env in repos})
    async with start_bot(config, Clock(MONDAY_10_LA)) as running:
        running.registry = registry
        yield running
    from bot.serving.triton import Fleet

    async with Fleet([s.url for group in servers.values() for s in group]) as everywhere:
        await everywhere.unload("ranker")


def buttons(message: dict) -> list[str]:
    return [e["text"]["text"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def ephemeral(bot, words: str):
    return bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals if words in e["text"]), None), timeout=30)


async def test_a_verify_that_raises_is_a_failed_check_and_frees_the_lock(bot):
    await bot.client.command("U0ALICE", "deploy ranker v6")
    failed = await card_in_state(bot, "v6", "verify_failed")
    assert "cannot reshape" in json.dumps(failed["blocks"])  # the cause, named on the card
    assert "Unblock prod" not in buttons(failed) and "Verify" in buttons(failed)
    assert bot.runtime.releases.lock_of("ranker", "staging") is None
    assert audit(bot, "verify", "failed")[-1]["version"] == "v6"
    await deploy_verified(bot, "v1")  # staging takes the next deploy at once


@pytest.mark.parametrize("fault", ["not_in_channel", "server_error_text"])
async def test_slack_refusing_the_deploy_card_does_not_stop_or_wedge_the_deploy(bot, fault):
    # Enough refusals to outlast the client's own retries of a 5xx.
    bot.slack.inject_fault("chat.postMessage", fault, times=1 if fault == "not_in_channel" else 3)
    await bot.client.command("U0ALICE", "deploy ranker v1")
    verified = await card_in_state(bot, "v1", "verified")  # the card is posted at its next change
    assert "Unblock prod" in buttons(verified)
    release = bot.runtime.releases.serving("ranker", "staging")
    assert release.version == "v1" and release.state is State.VERIFIED
    assert bot.runtime.releases.lock_of("ranker", "staging") is None
    unshown = audit(bot, "release.card", "unshown")
    assert unshown and unshown[0]["version"] == "v1"


async def test_a_garbled_slack_answer_during_a_promotion_still_ends_live_with_the_lock_freed(bot, fleet):  # noqa: F811
    _, servers = fleet
    verified = await deploy_verified(bot, "v1")
    n1 = verified and bot.runtime.releases.serving("ranker", "staging").triton_version
    bot.slack.inject_fault("chat.update", "server_error_text", times=3)
    await bot.client.press_button("U0CAROL", "C0MLOPS", verified["ts"], "Unblock prod")
    await bot.slack.wait_for(lambda: audit(bot, "promote", "succeeded"), timeout=60)
    assert set(map(tuple, (await serving(servers["prod"])).values())) == {(n1,)}
    assert bot.runtime.releases.get(n1).prod_state is State.LIVE
    assert bot.runtime.releases.lock_of("ranker", "prod") is None


async def test_unlock_frees_a_lock_whose_operation_is_gone_and_names_it(bot):
    with sqlite3.connect(bot.runtime.config.store) as db:  # what a crashed task leaves behind
        db.execute("INSERT INTO locks (model, env, holder, reason, kind, operation_id, expires_at, created_at) VALUES "
                   "('ranker', 'staging', 'U0BOB', 'deploying v2', 'operation', 999, '2099-01-01T00:00:00+00:00', "
                   "'2026-11-23T18:00:00+00:00')")
    await bot.client.command("U0ALICE", "unlock ranker staging")
    told = await bot.slack.wait_for(
        lambda: (
            next((m["text"] for m in bot.slack.messages("C0MLOPS") if "unlock" in m["text"]), None)
            or next((e["text"] for e in bot.slack.ephemerals), None)
        )
    )
    assert "<@U0BOB>" in told and "deploying v2" in told and "releases itself" not in told
    assert bot.runtime.releases.lock_of("ranker", "staging") is None
    await deploy_verified(bot, "v1")


async def test_rolling_back_twice_never_goes_forward(bot, fleet):  # noqa: F811
    _, servers = fleet
    await deploy_verified(bot, "v1")
    n1 = bot.runtime.releases.serving("ranker", "staging").triton_version
    await deploy_verified(bot, "v2")
    await bot.client.command("U0ALICE", 'rollback ranker staging reason="bad v2"')
    await bot.slack.wait_for(lambda: audit(bot, "rollback", "succeeded"), timeout=60)
    assert await serving(servers["staging"]) == {servers["staging"][0].url: [n1]}

    await bot.client.command("U0ALICE", 'rollback ranker staging reason="again"')
    refused = await ephemeral(bot, "no earlier known-good version")
    assert "ranker staging" in refused
    assert await serving(servers["staging"]) == {servers["staging"][0].url: [n1]}  # not forward to v2
    assert bot.runtime.releases.serving("ranker", "staging").version == "v1"
    assert len(audit(bot, "rollback", "succeeded")) == 1


async def test_rolling_back_staging_leaves_the_live_prod_release_live(bot, fleet):  # noqa: F811
    _, servers = fleet
    await deploy_verified(bot, "v1")
    second = await deploy_verified(bot, "v2")
    n2 = bot.runtime.releases.serving("ranker", "staging").triton_version
    await bot.client.press_button("U0CAROL", "C0MLOPS", second["ts"], "Unblock prod")
    await card_in_state(bot, "v2", "live")

    await bot.client.command("U0ALICE", 'rollback ranker staging reason="try v1 on staging"')
    await bot.slack.wait_for(lambda: audit(bot, "rollback", "succeeded"), timeout=60)
    v2 = bot.runtime.releases.get(n2)
    assert v2.state is State.ROLLED_BACK and v2.prod_state is State.LIVE
    assert set(map(tuple, (await serving(servers["prod"])).values())) == {(n2,)}
    await bot.client.command("U0ALICE", "status ranker")
    status = await ephemeral(bot, "Models in service")
    shown = json.dumps([r for r in bot.slack.responses if "Models in service" in json.dumps(r)][-1])
    assert "prod: `v2` (live)" in shown and "rolled back" not in shown.split("prod:")[1].split("\\n")[0], status


async def test_a_reverify_after_the_files_changed_offers_no_unblock_and_says_why(bot):
    first = await deploy_verified(bot, "v1")
    assert "Unblock prod" in buttons(first)
    weights = bot.registry / "ranker" / "v1" / "weights.json"
    weights.write_text(weights.read_text().replace("}", ', "note": "retrained in place"}'))
    await bot.client.command("U0ALICE", "verify ranker staging")
    await bot.slack.wait_for(lambda: len(audit(bot, "verify", "passed")) == 2, timeout=60)
    again = await bot.slack.wait_for(lambda: (c := card(bot, "v1")) and "Cannot be unblocked" in json.dumps(c["blocks"]) and c)
    assert "Unblock prod" not in buttons(again)
    assert "files of v1 changed" in json.dumps(again["blocks"]) and "deploy it again" in json.dumps(again["blocks"])
