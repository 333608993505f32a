"""The outside systems of a model as the config names them: its registry, its environments' repositories and
fleets; and how their failures read on a card."""
from __future__ import annotations

from bot.config import Config, ModelConfig
from bot.releases.records import ReleaseError
from bot.serving.artifacts import ArtifactError, ArtifactStore, open_store
from bot.serving.registry import Registry, RegistryError, triton_config_json
from bot.serving.triton import Fleet, FleetError
from bot.serving.triton_metrics import metrics_url

# What the outside systems raise when they fail in a way the operation expected; anything else is a bug or a
# surprise (a malformed model answer), and still ends the operation, named as unexpected.
EXPECTED = (RegistryError, ArtifactError, FleetError)


def failure_text(exc: BaseException) -> str:
    """An error as a card shows it: expected failures speak for themselves, others are named as unexpected."""
    return str(exc) if isinstance(exc, EXPECTED) else f"unexpected {type(exc).__name__}: {exc}"


def describe_served(served: dict[str, list[int] | str]) -> str:
    return ", ".join(f"{e}: {', '.join(f'v{n}' for n in v) or 'nothing'}" if isinstance(v, list) else f"{e}: unreachable ({v})"
                     for e, v in served.items())


class Systems:
    def __init__(self, config: Config):
        self.config = config

    def model_config(self, model: str) -> ModelConfig:
        try:
            return self.config.models[model]
        except KeyError:
            known = ", ".join(sorted(self.config.models)) or "none configured"
            raise ReleaseError(f"unknown model `{model}`; known models: {known}") from None

    def registry(self, model: str) -> Registry:
        return Registry(open_store(self.model_config(model).registry, s3_endpoint_url=self.config.s3.endpoint_url))

    def repository(self, model: str, env: str) -> ArtifactStore:
        """Where `env`'s tritonservers read the model's files from."""
        return open_store(self.model_config(model).environments[env].repository, s3_endpoint_url=self.config.s3.endpoint_url)

    def fleet(self, model: str, env: str, *, timeout: float | None = None, endpoints: list[str] | None = None) -> Fleet:
        """`env`'s endpoints, or the part of them `endpoints` names (a canary's groups)."""
        environment = self.model_config(model).environments[env]
        return Fleet(list(environment.endpoints if endpoints is None else endpoints),
                     concurrency=self.config.deploy.endpoint_concurrency, timeout=timeout or self.config.deploy.load_timeout_s,
                     nameservers=self.config.fleet.nameservers, dns_timeout=self.config.fleet.dns_timeout_s)

    def metrics_urls(self, model: str, env: str) -> dict[str, str]:
        """Each endpoint's Triton metrics URL: as configured, else its host on Triton's default metrics port."""
        environment = self.model_config(model).environments[env]
        return {e: environment.metrics.get(e) or metrics_url(e) for e in environment.endpoints}

    async def config_for(self, model: str, version: str, n: int) -> str:
        """The Triton config of `version` loaded as Triton version `n`, from the registry."""
        return triton_config_json(await self.registry(model).validate(model, version), model, n)
