"""dns+http:// endpoints against a real DNS server on loopback (dnslib's): every A and AAAA record is an
endpoint, names are looked up again for each fleet, and a name that does not resolve is named with why."""
from __future__ import annotations

import pytest
import yaml

from bot.config import ConfigError, load_config
from bot.sandbox.local import local_bot
from bot.serving.discovery import resolve
from bot.serving.triton import Fleet, FleetError
from tests.conftest import EXAMPLE_CONFIG, write_config
from tests.e2e.test_release_train import MONDAY_10_LA, Clock
from tests.support.dns import LoopbackDNS


@pytest.fixture(scope="module")
def dns():
    with LoopbackDNS() as server:
        yield server


async def test_every_a_and_aaaa_record_of_a_name_is_an_endpoint_on_its_port(dns):
    dns.records.names["triton-prod.ml.svc"] = ["10.0.3.7", "10.0.3.5", "fd00::7"]
    endpoints, unresolved = await resolve(["dns+http://triton-prod.ml.svc:8000", "http://10.0.9.9:8000"],
                                          nameservers=[dns.nameserver])
    assert endpoints == ["http://10.0.3.5:8000", "http://10.0.3.7:8000", "http://[fd00::7]:8000", "http://10.0.9.9:8000"]
    assert unresolved == {}


async def test_a_name_is_looked_up_again_for_each_fleet(dns):
    dns.records.names["grows.ml.svc"] = ["10.0.4.1"]
    async with Fleet(["dns+http://grows.ml.svc:8000"], nameservers=[dns.nameserver]) as fleet:
        assert fleet.endpoints == ["http://10.0.4.1:8000"]
    dns.records.names["grows.ml.svc"] = ["10.0.4.1", "10.0.4.2"]
    async with Fleet(["dns+http://grows.ml.svc:8000"], nameservers=[dns.nameserver]) as fleet:
        assert fleet.endpoints == ["http://10.0.4.1:8000", "http://10.0.4.2:8000"]


async def test_a_name_that_does_not_resolve_is_named_with_why_and_never_raises_from_observe(dns):
    dns.records.names["empty.ml.svc"] = []
    specs = ["dns+http://missing.ml.svc:8000", "dns+http://empty.ml.svc:8000"]
    async with Fleet(specs, nameservers=[dns.nameserver], timeout=2) as fleet:
        served = await fleet.observe("ranker")
        assert served == {"dns+http://missing.ml.svc:8000": "DNS name missing.ml.svc does not exist (NXDOMAIN)",
                          "dns+http://empty.ml.svc:8000": "DNS name empty.ml.svc has no A or AAAA records"}
        with pytest.raises(FleetError) as raised:
            await fleet.load("ranker", 1, "{}")
    assert raised.value.endpoints == specs
    assert "does not exist (NXDOMAIN)" in str(raised.value)


async def test_a_dns_server_that_does_not_answer_is_said_within_the_timeout():
    silent = "127.0.0.1:9"  # discard: nothing answers there
    _, unresolved = await resolve(["dns+http://triton.ml.svc:8000"], nameservers=[silent], timeout=0.5)
    assert unresolved["dns+http://triton.ml.svc:8000"].startswith("no DNS"), unresolved  # a timeout, or refused


def _config(tmp_path, endpoints, **fleet):
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["models"]["ranker"]["environments"]["prod"]["endpoints"] = endpoints
    raw["models"]["ranker"]["environments"]["prod"].pop("metrics", None)
    if fleet:
        raw["fleet"] = fleet
    path = tmp_path / "mlops-bot.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_config_takes_a_dns_name_with_its_port_and_refuses_one_without(tmp_path):
    config = load_config(_config(tmp_path, ["dns+http://triton-prod.ml.svc:8000"], nameservers=["127.0.0.1:5353"]))
    assert config.models["ranker"].environments["prod"].endpoints == ["dns+http://triton-prod.ml.svc:8000"]
    assert config.fleet.reconcile_seconds == 60
    with pytest.raises(ConfigError) as raised:
        load_config(_config(tmp_path, ["dns+http://triton-prod.ml.svc"], nameservers=["127.0.0.1:99999"]))
    assert any("models.ranker.environments.prod.endpoints.0: expected an http(s)://host:port URL, or dns+http(s)://name:port"
               in p for p in raised.value.problems), raised.value.problems
    assert any("fleet.nameservers.0: expected a DNS server as host or host:port" in p for p in raised.value.problems)


async def test_a_canary_on_a_prod_found_by_dns_is_refused_saying_why(tmp_path):
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    raw["environments"]["prod"] = {"repository": str(tmp_path / "prod"), "endpoints": ["dns+http://triton-prod.ml.svc:8000"]}
    config = load_config(write_config(tmp_path, models={"ranker": raw}))
    async with local_bot(config, clock=Clock(MONDAY_10_LA)) as bot:
        await bot.client.command("U0CAROL", "canary ranker")
        said = await bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals if "DNS" in e["text"]), None))
    assert "prod endpoints are found by DNS (dns+http://triton-prod.ml.svc:8000)" in said and "listed one by one" in said
