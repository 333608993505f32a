"""Triton fleets: copy a registry version into a model repository, load it on every endpoint, talk to it.

Endpoints run in model-control mode explicit: nothing is served until `Fleet.load` asks for it, and a load
names the exact Triton version through the config's version_policy, so the previous version keeps serving
until the new one is READY and a failed load leaves it in place.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from tritonclient.http import InferInput
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from bot.serving import discovery
from bot.serving.artifacts import ArtifactStore, copy
from bot.serving.registry import CONFIG, REGISTRY_FILES, Registry, triton_config_json

T = TypeVar("T")

# on_progress(event, done, total, where): events "copying", "copied", "loading", "ready", "unloaded", "failed".
ProgressCallback = Callable[[str, int, int, str], Awaitable[None] | None]


class FleetError(Exception):
    """Triton refused or could not be reached; `failures` maps each endpoint to what went wrong there."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        super().__init__("; ".join(f"{endpoint}: {message}" for endpoint, message in self.failures.items()))

    @property
    def endpoints(self) -> list[str]:
        return list(self.failures)


@dataclass(frozen=True)
class EndpointHealth:
    live: bool
    ready: bool
    error: str | None = None


# The python backend appends the model's Python stack to an error: "At:" then a frame a line, innermost first,
# each "  <file>(<line>): <function>". It is for the server's log; people get the error and where in the model.
_STACK = re.compile(r"\s*\bAt:\s*\n((?:[ \t]+\S.*\(\d+\): \S+[ \t]*(?:\n|$))+)\s*;?\s*")
_FRAME = re.compile(r"(\S+)\((\d+)\): (\S+)\s*$")


def readable_error(message: str) -> str:
    """Triton's error text on one line, the model's stack reduced to its outermost frame (the model's own code)."""

    def where(match: re.Match[str]) -> str:
        frames = [f for f in (_FRAME.search(line) for line in match.group(1).splitlines()) if f]
        if not frames:
            return " "
        path, line, function = frames[-1].groups()
        return f" ({os.path.basename(path)} line {line}, in {function}) "

    return " ".join(_STACK.sub(where, message).split()).rstrip(" ;")


def triton_repository_path(uri: str, s3_endpoint_url: str | None = None) -> str:
    """The repository path tritonserver understands: its S3 form carries a custom endpoint inside the URI."""
    if uri.startswith("s3://") and s3_endpoint_url:
        return f"s3://{s3_endpoint_url.rstrip('/')}/{uri.removeprefix('s3://')}".rstrip("/")
    return uri


async def _report(on_progress: ProgressCallback | None, event: str, done: int, total: int, where: str) -> None:
    if on_progress is not None:
        result = on_progress(event, done, total, where)
        if inspect.isawaitable(result):
            await result


async def deploy_files(
    registry: Registry,
    model: str,
    version: str,
    repository: ArtifactStore,
    n: int,
    *,
    on_progress: ProgressCallback | None = None,
    concurrency: int = 8,
) -> str:
    """Validate `version`, copy it into `<repo>/<model>/<n>/` plus `<repo>/<model>/config.pbtxt`.

    Returns the config JSON to pass to `Fleet.load` for version `n`. A version that fails validation raises
    RegistryError before the repository is touched.
    """
    config = await registry.validate(model, version)
    files = [f for f in await registry.files(model, version) if f not in REGISTRY_FILES]
    # A folder left by an interrupted deploy must not mix its files into this one.
    await repository.delete_prefix(f"{model}/{n}")
    semaphore = asyncio.Semaphore(concurrency)
    copied = 0

    async def copy_one(path: str) -> None:
        nonlocal copied
        async with semaphore:
            await copy(registry.store, registry.key(model, version, path), repository, f"{model}/{n}/{path}")
        copied += 1
        await _report(on_progress, "copied", copied, len(files), repository.key_uri(f"{model}/{n}/{path}"))

    await _report(on_progress, "copying", 0, len(files), repository.key_uri(f"{model}/{n}/"))
    await asyncio.gather(*(copy_one(path) for path in files))
    await copy(registry.store, registry.key(model, version, CONFIG), repository, f"{model}/{CONFIG}")
    return triton_config_json(config, model, n)


def ready_in(index: list[dict[str, Any]], model: str) -> list[int]:
    """The versions of `model` READY in one endpoint's repository index."""
    return sorted(int(e["version"]) for e in index if e.get("name") == model and e.get("state") == "READY")


class Fleet:
    """The Triton endpoints of one environment, called concurrently (at most `concurrency` at once).

    Endpoints given as `dns+http://name:port` are looked up once per fleet (`resolve`, done on entering it and
    before any call), so each operation works on the records of its start. A name that gives no record stays
    an endpoint of its own that fails every call with the reason, so it is named wherever the fleet is used.
    """

    def __init__(self, endpoints: list[str], *, concurrency: int = 8, timeout: float = 120.0,
                 nameservers: list[str] | tuple[str, ...] = (), dns_timeout: float = 5.0) -> None:
        self.specs = list(endpoints)
        self.endpoints = list(endpoints)  # the specs until `resolve` has looked their names up
        self.unresolved: dict[str, str] = {}
        self.concurrency = concurrency
        self.timeout = timeout
        self._nameservers = list(nameservers)
        self._dns_timeout = dns_timeout
        self._resolved = not any(discovery.is_dns(e) for e in self.specs)
        self._clients: dict[str, InferenceServerClient] = {}

    async def resolve(self) -> list[str]:
        """The endpoints, each DNS name replaced by its records (looked up the first time only)."""
        if not self._resolved:
            found, self.unresolved = await discovery.resolve(self.specs, nameservers=self._nameservers,
                                                             timeout=self._dns_timeout)
            self.endpoints = found + list(self.unresolved)
            self._resolved = True
        return self.endpoints

    async def __aenter__(self) -> Fleet:
        await self.resolve()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(client.close() for client in clients.values()))

    def _client(self, endpoint: str) -> InferenceServerClient:
        if endpoint not in self._clients:
            url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            self._clients[endpoint] = InferenceServerClient(
                url.netloc, conn_timeout=self.timeout, ssl=url.scheme == "https"
            )
        return self._clients[endpoint]

    async def _call(self, endpoint: str, request: Callable[[InferenceServerClient], Awaitable[T]]) -> T:
        """One request to one endpoint; every way it can fail becomes a FleetError naming the endpoint."""
        if endpoint in self.unresolved:
            raise FleetError({endpoint: self.unresolved[endpoint]})
        try:
            return await request(self._client(endpoint))
        except InferenceServerException as error:
            message = readable_error(error.message() or str(error))
        except aiohttp.ClientConnectorError as error:
            cause = os.strerror(error.os_error.errno) if error.os_error.errno else str(error.os_error)
            message = f"unreachable ({cause.lower()})"
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as error:
            message = f"connection lost ({error})"
        except TimeoutError:
            message = f"no answer within {self.timeout:.0f}s"
        except aiohttp.ClientError as error:
            message = f"HTTP error: {error}"
        raise FleetError({endpoint: message})

    async def _everywhere(self, work: Callable[[str], Awaitable[T]]) -> dict[str, T]:
        """Run `work` on every endpoint, `concurrency` at a time; one FleetError collects every failure."""
        await self.resolve()
        semaphore = asyncio.Semaphore(self.concurrency)

        async def bounded(endpoint: str) -> T:
            async with semaphore:
                return await work(endpoint)

        results = await asyncio.gather(*(bounded(endpoint) for endpoint in self.endpoints), return_exceptions=True)
        failures: dict[str, str] = {}
        for result in results:
            if isinstance(result, FleetError):
                failures.update(result.failures)
            elif isinstance(result, BaseException):
                raise result
        if failures:
            raise FleetError(failures)
        return dict(zip(self.endpoints, results, strict=True))  # type: ignore[arg-type]

    async def health(self) -> dict[str, EndpointHealth]:
        """Liveness and readiness of every endpoint; never raises for an endpoint that is down."""

        async def check(endpoint: str) -> EndpointHealth:
            try:
                live = await self._call(endpoint, lambda c: c.is_server_live())
                ready = await self._call(endpoint, lambda c: c.is_server_ready())
            except FleetError as error:
                return EndpointHealth(live=False, ready=False, error=error.failures[endpoint])
            return EndpointHealth(live=live, ready=ready)

        return await self._everywhere(check)

    async def ready_versions(self, model: str) -> dict[str, list[int]]:
        """The Triton versions of `model` READY on each endpoint, from its repository index."""

        async def index(endpoint: str) -> list[int]:
            entries = await self._call(endpoint, lambda c: c.get_model_repository_index())
            return sorted(int(e["version"]) for e in entries if e.get("name") == model and e.get("state") == "READY")

        return await self._everywhere(index)

    async def indexes(self) -> dict[str, list[dict[str, Any]] | str]:
        """Each endpoint's repository index (every model it knows, with its versions' states), or why it could not
        be asked; never raises. One request an endpoint, however many models it serves."""

        async def one(endpoint: str) -> list[dict[str, Any]] | str:
            try:
                return await self._call(endpoint, lambda c: c.get_model_repository_index())
            except FleetError as exc:
                return exc.failures[endpoint]

        return await self._everywhere(one)

    async def observe(self, model: str, *, settle: bool = False) -> dict[str, list[int] | str]:
        """What each endpoint serves of `model` (its READY versions), or why it could not be asked; never raises.

        With `settle`, wait (up to the load timeout) until no endpoint is still loading or unloading it: after
        a crash, a load the bot asked for may still finish, and what it leaves must be seen.
        """
        deadline = time.monotonic() + self.timeout

        async def one(endpoint: str) -> list[int] | str:
            while True:
                try:
                    index = await self._call(endpoint, lambda c: c.get_model_repository_index())
                except FleetError as exc:
                    return exc.failures[endpoint]
                busy = any(e.get("state") in ("LOADING", "UNLOADING") for e in index if e.get("name") == model)
                if not (settle and busy) or time.monotonic() > deadline:
                    return ready_in(index, model)
                await asyncio.sleep(0.1)

        return await self._everywhere(one)

    async def failed_loads(self) -> dict[str, dict[str, str]]:
        """Per endpoint, each model version whose load failed there ("ranker version 2") and why; never raises.

        Triton keeps a failed load in its index, through later loads and unloads of the model, and while it does
        a server with strict readiness (the default) reports not ready: only a restart clears it.
        """

        async def one(endpoint: str) -> dict[str, str]:
            try:
                entries = await self._call(endpoint, lambda c: c.get_model_repository_index())
            except FleetError:
                return {}  # unreachable: said elsewhere
            return {f"{e.get('name')} version {e.get('version')}": readable_error(e["reason"])
                    for e in entries if e.get("state") == "UNAVAILABLE" and e.get("reason") not in (None, "", "unloaded")}

        return await self._everywhere(one)

    async def load(
        self, model: str, n: int, config_json: str, *, on_progress: ProgressCallback | None = None
    ) -> None:
        """Load version `n` of `model` with `config_json` on every endpoint; return once it is READY on all.

        Each endpoint keeps serving its previous version until `n` is READY there, then unloads it; a failed
        load leaves the previous version serving.
        """
        await self.resolve()
        total, started, ready = len(self.endpoints), 0, 0

        async def load_one(endpoint: str) -> None:
            nonlocal started, ready
            started += 1
            await _report(on_progress, "loading", started, total, endpoint)
            try:
                await self._call(endpoint, lambda c: c.load_model(model, config=config_json))
                await self._wait_ready(endpoint, model, n)
            except FleetError:
                await _report(on_progress, "failed", ready, total, endpoint)
                raise
            ready += 1
            await _report(on_progress, "ready", ready, total, endpoint)

        await self._everywhere(load_one)

    async def _wait_ready(self, endpoint: str, model: str, n: int) -> None:
        """Wait until version `n` is READY and the previous version has finished unloading.

        Triton's load call returns once `n` is READY, but the old version is still UNLOADING for a second
        or so, and meanwhile the server reports not-ready (strict readiness); waiting here means a verify
        right after a load sees the endpoint as it will stay.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            entries = await self._call(endpoint, lambda c: c.get_model_repository_index())
            mine = [e for e in entries if e.get("name") == model]
            target = next((e for e in mine if e.get("version") == str(n)), None)
            state = target.get("state") if target else "absent"
            if state == "UNAVAILABLE" and target and target.get("reason"):
                raise FleetError({endpoint: f"{model} version {n} is unavailable: {readable_error(target['reason'])}"})
            settling = [e for e in mine if e.get("state") in ("LOADING", "UNLOADING")]
            if state == "READY" and not settling:
                return
            if time.monotonic() > deadline:
                raise FleetError({endpoint: f"{model} version {n} not READY after {self.timeout:.0f}s ({state})"})
            await asyncio.sleep(0.1)

    async def unload(self, model: str, *, on_progress: ProgressCallback | None = None) -> None:
        """Stop serving every version of `model` on every endpoint."""
        await self.resolve()
        total, done = len(self.endpoints), 0

        async def unload_one(endpoint: str) -> None:
            nonlocal done
            await self._call(endpoint, lambda c: c.unload_model(model))
            done += 1
            await _report(on_progress, "unloaded", done, total, endpoint)

        await self._everywhere(unload_one)

    async def infer(
        self, endpoint: str, model: str, n: int, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One inference on one endpoint against Triton version `n`; returns every output by name."""
        request = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        result: Any = await self._call(endpoint, lambda c: c.infer(model, request, model_version=str(n)))
        return {out["name"]: result.as_numpy(out["name"]) for out in result.get_response()["outputs"]}
