"""The release train end to end: signed slash commands and button presses through the Slack emulator,
real tritonservers (one staging, two prod) over local model repositories, the real SQLite audit log."""
from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import load_config
from bot.releases.model import State
from bot.sandbox.local import local_bot
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.triton import Fleet
from tests.conftest import ROOT, write_config

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason=triton_missing() or "")

MONDAY_10_LA = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


class Clock:
    """Real time, shifted to a chosen instant, so deploy-hour rules see the day the test wants."""

    def __init__(self, at: datetime):
        self.set(at)

    def set(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture(scope="module")
def fleet_servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    repos = {env: root / "repos" / env for env in ("staging", "prod")}
    for path in repos.values():
        path.mkdir(parents=True)
    servers = {"staging": [TritonServer(str(repos["staging"])).start()],
               "prod": [TritonServer(str(repos["prod"])).start() for _ in range(2)]}
    yield root, repos, servers
    for group in servers.values():
        for server in group:
            server.stop()


@pytest.fixture
async def bot(fleet_servers, tmp_path):
    root, repos, servers = fleet_servers
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry)
    import yaml

    model = yaml.safe_load((ROOT / "examples" / "mlops-bot.yaml").read_text())["models"]["ranker"]
    model["registry"] = str(registry)
    model["environments"] = {env: {"repository": str(repos[env]), "endpoints": [s.url for s in servers[env]]} for env in repos}
    model.pop("retrain")
    path = write_config(tmp_path, models={"ranker": model}, datagen={"jobs": {}}, oncall={"rotations": []})
    clock = Clock(MONDAY_10_LA)
    async with local_bot(load_config(path), clock=clock) as running:
        running.clock = clock
        running.registry = registry
        yield running
    async with Fleet([s.url for group in servers.values() for s in group]) as fleet:
        await fleet.unload("ranker")


def card(bot, version: str) -> dict | None:
    for msg in bot.slack.messages("C0MLOPS"):
        if msg["text"].startswith(f"ranker {version} "):
            return msg
    return None


async def card_in_state(bot, version: str, state: str, timeout: float = 60) -> dict:
    """The card once it shows `state` (a State value), written as people read it."""
    words = State(state).words
    return await bot.slack.wait_for(lambda: (c := card(bot, version)) and c["text"].endswith(f": {words}") and c, timeout=timeout)


async def serving(servers, model: str = "ranker") -> dict[str, list[int]]:
    async with Fleet([s.url for s in servers]) as fleet:
        return await fleet.ready_versions(model)


def audit(bot, verb: str, status: str) -> list[dict]:
    return [r for r in bot.runtime.store.actions() if r["verb"] == verb and r["status"] == status]


async def deploy_verified(bot, version: str, user: str = "U0ALICE") -> dict:
    delivery = await bot.client.command(user, f"deploy ranker {version}")
    assert delivery.status == 200
    return await card_in_state(bot, version, "verified")


async def test_deploy_verify_unblock_and_roll_back(bot, fleet_servers):
    _, _, servers = fleet_servers
    first = await deploy_verified(bot, "v1")
    n1 = bot.runtime.releases.environment("ranker", "staging")["triton_version"]
    assert list((await serving(servers["staging"])).values()) == [[n1]]
    thread = " ".join(m["text"] for m in bot.slack.replies("C0MLOPS", first["ts"]))
    assert "Loaded endpoint 1/1" in thread and "Verified" in thread

    await bot.client.press_button("U0CAROL", "C0MLOPS", first["ts"], "Unblock prod")
    await card_in_state(bot, "v1", "live")
    assert list((await serving(servers["prod"])).values()) == [[n1], [n1]]

    await bot.client.command("U0ALICE", "verify ranker prod")
    await bot.slack.wait_for(lambda: any("Prod re-verified by <@U0ALICE>" in m["text"]
                                         for m in bot.slack.replies("C0MLOPS", first["ts"])), timeout=60)
    assert [r for r in audit(bot, "verify", "passed") if r["env"] == "prod"]
    assert card(bot, "v1")["text"].endswith(": live")

    second = await deploy_verified(bot, "v2")
    n2 = bot.runtime.releases.environment("ranker", "staging")["triton_version"]
    await bot.client.press_button("U0BOB", "C0MLOPS", second["ts"], "Unblock prod")
    await card_in_state(bot, "v2", "live")
    assert list((await serving(servers["prod"])).values()) == [[n2], [n2]]

    await bot.client.command("U0ALICE", 'rollback ranker prod reason="ranking metrics dropped"')
    await bot.slack.wait_for(lambda: audit(bot, "rollback", "succeeded"), timeout=60)
    assert list((await serving(servers["prod"])).values()) == [[n1], [n1]]
    assert bot.runtime.releases.environment("ranker", "prod")["version"] == "v1"
    # The audit row is written before the channel hears of it: wait for the message as a person would.
    await bot.slack.wait_for(lambda: any("serving v1 again" in m["text"] for m in bot.slack.messages("C0MLOPS")))
    row = audit(bot, "rollback", "succeeded")[-1]
    assert row["actor"] == "U0ALICE" and row["detail"]["reason"] == "ranking metrics dropped"
    assert [r["actor"] for r in audit(bot, "promote", "succeeded")] == ["U0CAROL", "U0BOB"]
    assert bot.runtime.store.verify_chain() is None


async def test_twenty_presses_of_unblock_promote_once(bot, fleet_servers):
    verified = await deploy_verified(bot, "v2")
    await asyncio.gather(*(bot.client.press_button("U0CAROL", "C0MLOPS", verified["ts"], "Unblock prod") for _ in range(20)))
    await card_in_state(bot, "v2", "live")
    await bot.slack.wait_for(lambda: len([e for e in bot.slack.ephemerals if "already" in e["text"]]) >= 19, timeout=30)
    assert len(audit(bot, "promote", "succeeded")) == 1
    assert len(audit(bot, "promote", "started")) == 1


async def test_four_eyes_refuses_the_deployer(bot):
    verified = await deploy_verified(bot, "v1", user="U0BOB")
    await bot.client.press_button("U0BOB", "C0MLOPS", verified["ts"], "Unblock prod")
    await bot.slack.wait_for(lambda: any("four-eyes" in e["text"] for e in bot.slack.ephemerals))
    assert card(bot, "v1")["text"].endswith(": verified")


async def test_nan_version_fails_verify_and_cannot_be_unblocked(bot):
    await bot.client.command("U0ALICE", "deploy ranker v3")
    failed = await card_in_state(bot, "v3", "verify_failed")
    labels = [e["text"]["text"] for b in failed["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert "Unblock prod" not in labels and "Roll back staging" in labels
    assert "NaN" in str(failed["blocks"]) or "finite" in str(failed["blocks"])
    await bot.client.command("U0CAROL", "promote ranker")
    await bot.slack.wait_for(
        lambda: any("not verified on staging (verification failed)" in e["text"] for e in bot.slack.ephemerals))
    assert not audit(bot, "promote", "started")


async def test_unblock_outside_deploy_hours_asks_for_an_urgent_reason(bot):
    verified = await deploy_verified(bot, "v1")
    bot.clock.set(MONDAY_10_LA + timedelta(hours=8))  # 18:00 in Los Angeles: after deploy hours
    await bot.client.press_button("U0CAROL", "C0MLOPS", verified["ts"], "Unblock prod")
    view = await bot.slack.wait_for(
        lambda: next((v["view"] for v in bot.slack.views if v["view"].get("callback_id") == "release.urgent"), None)
    )
    assert "outside deploy hours" in str(view["blocks"])
    assert not audit(bot, "promote", "started")
    delivery = await bot.client.submit_view("U0CAROL", view, {"reason": {"reason": "fix for a bad ranking incident"}})
    assert delivery.status == 200
    await card_in_state(bot, "v1", "live")
    assert audit(bot, "promote.urgent", "ok")[0]["detail"]["reason"] == "fix for a bad ranking incident"


async def test_broken_config_fails_before_staging_is_touched(bot, fleet_servers):
    _, repos, _ = fleet_servers
    before = sorted(p.name for p in (repos["staging"] / "ranker").glob("*")) if (repos["staging"] / "ranker").exists() else []
    await bot.client.command("U0ALICE", "deploy ranker v4")
    await bot.slack.wait_for(lambda: any("cannot be deployed" in e["text"] for e in bot.slack.ephemerals))
    after = sorted(p.name for p in (repos["staging"] / "ranker").glob("*")) if (repos["staging"] / "ranker").exists() else []
    assert before == after and audit(bot, "deploy", "failed")


async def test_locked_environment_refuses_deploys(bot):
    await bot.client.command("U0BOB", 'lock ranker staging "load test until 3pm"')
    await bot.slack.wait_for(lambda: audit(bot, "lock", "succeeded"))
    await bot.client.command("U0ALICE", "deploy ranker v2")
    await bot.slack.wait_for(lambda: any("locked by <@U0BOB> (load test until 3pm)" in e["text"] for e in bot.slack.ephemerals))
    assert not audit(bot, "deploy", "started")
