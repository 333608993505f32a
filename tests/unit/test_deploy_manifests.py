"""deploy/kubernetes checked without a cluster: every manifest against the Kubernetes schemas kubernetes-validate
ships (strict: a misspelt field fails), the wiring between them, and the ConfigMap's mlops-bot.yaml against the
bot's own config validation."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bot.config import load_config
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"  # the oldest minor still supported upstream when this was written; newer ones accept it too


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def resources() -> dict[str, dict]:
    """Every object kustomization.yaml applies, and the Secret's example, by kind/name."""
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    return {f"{d['kind']}/{d['metadata']['name']}": d for name in [*listed, "secret.example.yaml"] for d in documents(name)}


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"))
@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
def test_each_manifest_is_valid_kubernetes(name, version):
    for document in documents(name):
        kubernetes_validate.validate(document, version, strict=True)


def test_every_manifest_is_applied_but_the_secret_example():
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}


def test_one_bot_restored_before_it_starts_probed_on_healthz_and_given_its_secrets_by_reference():
    found = resources()
    bot = found["StatefulSet/mlops-bot"]["spec"]
    pod = bot["template"]["spec"]
    assert bot["replicas"] == 1
    [restore] = pod["initContainers"]
    assert restore["command"][:2] == ["litestream", "restore"]
    assert {"-if-db-not-exists", "-if-replica-exists", "/data/mlops-bot.db"} <= set(restore["command"])
    [container] = pod["containers"]
    assert container["args"] == ["mlops-bot", "serve"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret_keys = set(found["Secret/mlops-bot"]["stringData"])
    referenced = {e["valueFrom"]["secretKeyRef"]["key"] for c in [restore, container] for e in c.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
    assert referenced == secret_keys
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"} <= referenced
    config_map = found["ConfigMap/mlops-bot"]["data"]
    mounts = {m["mountPath"]: m.get("subPath") for c in [restore, container] for m in c["volumeMounts"]}
    assert mounts["/etc/mlops-bot/mlops-bot.yaml"] in config_map and mounts["/etc/litestream/litestream.yml"] in config_map
    service = found["Service/mlops-bot"]["spec"]
    assert service["selector"] == bot["selector"]["matchLabels"] and service["ports"][0]["targetPort"] == "http"
    assert found["Service/mlops-bot-headless"]["metadata"]["name"] == bot["serviceName"]


def test_the_configmaps_config_passes_the_bots_validation_and_its_litestream_restores_that_replica(tmp_path: Path):
    data = resources()["ConfigMap/mlops-bot"]["data"]
    (tmp_path / "mlops-bot.yaml").write_text(data["mlops-bot.yaml"])
    config = load_config(tmp_path / "mlops-bot.yaml")
    assert config.store == "/data/mlops-bot.db" and config.store_replica
    assert all(e.startswith("dns+http://") for m in config.models.values() for env in m.environments.values()
               for e in env.endpoints)
    [db] = yaml.safe_load(data["litestream.yml"])["dbs"]
    bucket, _, prefix = config.store_replica.removeprefix("s3://").partition("/")
    assert db["path"] == config.store
    assert (db["replica"]["bucket"], db["replica"]["path"], db["replica"]["region"]) == (bucket, prefix, config.s3.region)
