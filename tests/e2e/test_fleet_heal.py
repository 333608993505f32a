"""Fleets that grow and heal (issue 15): staging is a DNS name served by a real DNS server on loopback (dnslib's)
whose records are three real tritonservers, each on its own loopback address and one shared port, as the pods
behind a Kubernetes headless service. The reconcile loop's passes are run by the test (the loop's interval is
an hour, so none comes by itself) and checked as people would: what each tritonserver serves, the notes in the
release card's thread, the drift said in the channel, and the audit rows."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from bot.config import Config, load_config
from bot.sandbox.tritonserver import TritonServer
from bot.serving.artifacts import open_store
from bot.serving.registry import Registry, triton_config_json
from bot.serving.triton import Fleet
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.e2e.test_release_failures import start_bot
from tests.e2e.test_release_train import audit, card_in_state, deploy_verified, serving
from tests.support.dns import LoopbackDNS

TEAM = "C0MLOPS"
NAME = "triton-staging.ml.test"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def shared_port() -> int:
    """A port free on every one of HOSTS: the servers behind one name listen on the same port."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((HOSTS[0], 0))
            port = sock.getsockname()[1]
        try:
            for host in HOSTS[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address")


@pytest.fixture(scope="module")
def dns():
    with LoopbackDNS() as server:
        yield server


@pytest.fixture(scope="module")
def pods(triton_here, tmp_path_factory) -> tuple[Path, list[TritonServer]]:
    repository = tmp_path_factory.mktemp("heal") / "staging"
    repository.mkdir()
    port = shared_port()
    servers = [TritonServer(str(repository), host=host, port=port).start() for host in HOSTS]
    yield repository, servers
    for server in servers:
        server.stop()


def heal_config(directory: Path, repository: Path, dns: LoopbackDNS, port: int) -> Config:
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model["registry"] = str(ROOT / "examples" / "registry")
    model["staging_only"] = True  # three tritonservers in all: staging is the fleet that grows and heals
    model["environments"] = {"staging": {"repository": str(repository), "endpoints": [f"dns+http://{NAME}:{port}"]}}
    model.pop("retrain")
    return load_config(write_config(directory, models={"ranker": model}, datagen={"jobs": {}}, oncall={"rotations": []},
                                    fleet={"reconcile_seconds": 3600, "nameservers": [dns.nameserver]}))


def thread(bot, card: dict) -> str:
    return " ".join(m["text"] for m in bot.slack.replies(TEAM, card["ts"]))


def drift_said(bot) -> list[str]:
    return [m["text"] for m in bot.slack.messages(TEAM) if "drift" in m["text"]]


async def test_a_fleet_that_grows_and_restarts_is_healed_and_drift_is_said_once(pods, dns, tmp_path):
    repository, servers = pods
    first, second, third = servers
    dns.records.names[NAME] = HOSTS[:2]
    healing = heal_config(tmp_path, repository, dns, first.port)
    async with start_bot(healing) as bot:
        healer = bot.runtime.releases.healer
        card = await deploy_verified(bot, "v1")
        n1 = bot.runtime.releases.environment("ranker", "staging")["triton_version"]
        assert await serving(servers) == {first.url: [n1], second.url: [n1], third.url: []}

        # The name grows to a third pod: the next pass gives it the version staging is recorded to serve.
        dns.records.names[NAME] = HOSTS
        await healer.reconcile_pass()
        assert await serving(servers) == {first.url: [n1], second.url: [n1], third.url: [n1]}
        await bot.slack.wait_for(lambda: f"healed endpoint {HOSTS[2]}:{third.port}" in thread(bot, card))
        assert [r["detail"]["endpoint"] for r in audit(bot, "heal", "succeeded")] == [third.url]

        # A pod restarted empty is healed too; nothing else is touched.
        second.kill()
        second.start()
        assert await serving([second]) == {second.url: []}
        await healer.reconcile_pass()
        assert await serving(servers) == {s.url: [n1] for s in servers}
        await bot.slack.wait_for(lambda: f"healed endpoint {HOSTS[1]}:{second.port}" in thread(bot, card))

        # One pod is made to serve another version by hand: said in the channel once, and not overwritten.
        config = triton_config_json(await Registry(open_store(str(ROOT / "examples" / "registry"))).validate("ranker", "v2"),
                                    "ranker", n1 + 1)
        shutil.copytree(repository / "ranker" / str(n1), repository / "ranker" / str(n1 + 1))
        async with Fleet([third.url]) as by_hand:
            await by_hand.load("ranker", n1 + 1, config)
        for _ in range(2):
            await healer.reconcile_pass()
        said = await bot.slack.wait_for(lambda: drift_said(bot))
        assert len(said) == 1 and f"{HOSTS[2]}:{third.port} serves triton version {n1 + 1}" in said[0]
        assert f"records v1 (triton version {n1})" in said[0]
        assert "set `heal: true`" in said[0]
        assert await serving([third]) == {third.url: [n1 + 1]}
        assert len(audit(bot, "fleet.drift", "reported")) == 1
        assert await card_in_state(bot, "v1", "verified")  # the card itself unchanged by any of it

    # The bot restarted on its store (a Slack workspace of its own, so whatever it says is new): the drift it said
    # before is not said again.
    async with start_bot(healing) as bot:
        await bot.runtime.releases.healer.reconcile_pass()
        assert not drift_said(bot) and len(audit(bot, "fleet.drift", "reported")) == 1

        # The name gone from DNS: `status` names it with why, and a pass changes nothing and says nothing.
        del dns.records.names[NAME]
        await bot.runtime.releases.healer.reconcile_pass()
        await bot.client.command("U0ALICE", "status ranker")
        shown = await bot.slack.wait_for(lambda: next((str(e["blocks"]) for e in bot.slack.ephemerals
                                                       if e["text"] == "Models in service"), None))
        assert f"DNS name {NAME} does not exist (NXDOMAIN)" in shown
        assert not drift_said(bot) and bot.runtime.store.verify_chain() is None
        assert "Traceback" not in str(bot.slack.all_messages())
    async with Fleet([s.url for s in servers]) as everywhere:
        await everywhere.unload("ranker")
