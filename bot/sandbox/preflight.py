"""The sandbox's first inference: one golden request on a started tritonserver, before the first prompt.

A python backend stub that imports other packages than the bot's (another interpreter's numpy 2.x, say)
still loads models and answers, with empty tensors; every verify would then fail on something that is
no release's fault. `preflight` finds that out at start and says what to do instead.

It loads the newest version that has a verify.json of the first model with a registry on this disk,
under a name of its own and from files sent with the load request (so neither the server's repository
nor any model the bot watches is touched), sends that version's first golden request, and unloads it.
It refuses on a failed load or inference and on empty or non-finite outputs; values merely off from
verify.json are the release's business, which verify reports.
"""
from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import aiohttp
import numpy as np
from tritonclient.http import InferInput
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from bot.config import Config
from bot.releases.verify import output_problems
from bot.sandbox.tritonserver import TritonServer, server_env
from bot.serving.artifacts import open_store
from bot.serving.registry import REGISTRY_FILES, GoldenRequest, Registry, RegistryError, triton_config_json

NAME = "mlops-bot-preflight"  # no model of the bot's: nothing it observes or verifies sees this one


async def example(config: Config) -> tuple[Registry, str, str, GoldenRequest] | None:
    """(registry, model, version, its first golden request), or None when no local model has one."""
    for model, cfg in config.models.items():
        if "://" in cfg.registry:  # kept fast and offline: registries on this disk only
            continue
        registry = Registry(open_store(cfg.registry))
        for version in await registry.versions(model):
            try:
                spec = await registry.verify_spec(model, version.version)
            except RegistryError:
                continue
            if spec is not None:
                return registry, model, version.version, spec.requests[0]
    return None


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str | None:
    """None when Triton said 200, else its error."""
    async with http.post(url, json=body) as answer:
        if answer.status == 200:
            return None
        text = await answer.text()
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or f"HTTP {answer.status}"


async def _ready(http: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> bool:
    """Wait for /v2/health/ready: after an unload the server is not ready for a second or so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"{url}/v2/health/ready") as answer:
            if answer.status == 200:
                return True
        await asyncio.sleep(0.1)
    return False


def _output_problems(result: Any, request: GoldenRequest) -> tuple[list[str], list[str]]:
    """(empty outputs, other problems) of one inference result."""
    outputs = result.get_response().get("outputs", [])
    empty, problems = [], []
    for out in outputs:
        name, shape = out["name"], out.get("shape", [])
        if math.prod(shape) > 0 and out.get("parameters", {}).get("binary_data_size") == 0:
            empty.append(f"output '{name}' has shape {shape} and no data")
        else:
            problems += output_problems(name, result.as_numpy(name), None)  # only: finite?
    problems += [f"no output '{name}'" for name in request.expected.keys() - {out["name"] for out in outputs}]
    return empty, problems


def stub_interpreter(server: TritonServer) -> tuple[str | None, str]:
    """The python3 the server's stubs take their packages from, and '<its sys.prefix> (numpy X)'."""
    python = shutil.which("python3", path=server_env(server.env).get("PATH"))
    if python is None:
        return None, "no python3 at all"
    # -I: the stub's interpreter is isolated too, so this sees what the stub sees.
    probe = "import sys\ntry:\n import numpy; v = numpy.__version__\nexcept ImportError: v = 'none'\nprint(sys.prefix, v)"
    try:
        said = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, timeout=30)
        prefix, numpy = said.stdout.split()
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return python, f"{python} (which did not say what it is)"
    return python, f"{prefix} (numpy {numpy})"


def empty_outputs_advice(server: TritonServer) -> str:
    python, stub = stub_interpreter(server)
    ours = f"{sys.prefix} (numpy {np.__version__})"
    if stub == ours:
        wants = next((r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("nvidia-pytriton") or []
                      if r.startswith("numpy")), "an older numpy")
        return (f"its stub uses this interpreter's packages, {ours}, and nvidia-pytriton needs {wants}: "
                f"run `{sys.executable} -m pip install '{wants}'` and start again")
    activate = " (activate the virtualenv)" if sys.prefix != sys.base_prefix else ""
    return (f"it is not using this interpreter's packages, {ours}, but {stub}, from the first python3 on "
            f"tritonserver's PATH ({python}); put {os.path.dirname(sys.executable)} first on that PATH{activate} "
            f"and start again")


async def _infer(server: TritonServer, request: GoldenRequest, what: str) -> str | None:
    client = InferenceServerClient(server.url.removeprefix("http://"))
    try:
        inputs = []
        for name, tensor in request.inputs.items():
            array = tensor.array()
            inputs.append(InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
            inputs[-1].set_data_from_numpy(array)
        try:
            result = await client.infer(NAME, inputs, model_version="1")
        except InferenceServerException as error:
            return f"tritonserver's inference on {what} failed: {error.message()}; its log: {server.log_path}"
    finally:
        await client.close()
    empty, problems = _output_problems(result, request)
    if empty:
        return (f"tritonserver's python backend returned empty outputs ({what}: {'; '.join(empty)}): "
                f"{empty_outputs_advice(server)}")
    if problems:
        return f"tritonserver answered {what} wrongly: {'; '.join(problems)}; its log: {server.log_path}"
    return None


async def preflight(config: Config, server: TritonServer) -> str | None:
    """One golden inference on `server`: None when it answered properly, else one line saying what is
    wrong and what to do. The server is back to ready, with nothing more loaded, when it returns None."""
    found = await example(config)
    if found is None:
        return None
    registry, model, version, request = found
    try:
        config_json = triton_config_json(await registry.validate(model, version), NAME, 1)
    except RegistryError as error:
        return f"the preflight's example {model} {version} is not deployable: {'; '.join(error.problems)}"
    files = {
        f"file:1/{path}": base64.b64encode(await registry.store.read(registry.key(model, version, path))).decode()
        for path in await registry.files(model, version) if path not in REGISTRY_FILES
    }
    models = f"{server.url}/v2/repository/models/{NAME}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        refused = await _post(http, f"{models}/load", {"parameters": {"config": config_json, **files}})
        if refused is not None:
            return f"tritonserver could not load {model} {version}: {refused}; its log: {server.log_path}"
        problem = await _infer(server, request, f"{model} {version}, request '{request.name}'")
        unload = await _post(http, f"{models}/unload", {})
        if problem is None and unload is not None:
            problem = f"tritonserver could not unload the preflight's {model} {version}: {unload}"
        if problem is None and not await _ready(http, server.url):
            problem = f"tritonserver stayed not ready after the preflight; its log: {server.log_path}"
    return problem
