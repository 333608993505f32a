"""A little traffic for the sandbox's prod fleet, spread over its endpoints as a load balancer would, so a canary
has requests to judge: each model's inputs are read from Triton's own model metadata and filled with 0.5."""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import aiohttp

from bot.config import Config

DTYPES = {"FP32", "FP64", "FP16", "INT32", "INT64", "INT8", "INT16", "UINT8"}


def _body(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """One request of batch 1 for a model whose inputs are all numeric, else None."""
    inputs = []
    for spec in metadata.get("inputs", []):
        if spec.get("datatype") not in DTYPES:
            return None
        shape = [1 if d == -1 else int(d) for d in spec.get("shape", [])]
        size = 1
        for d in shape:
            size *= d
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": [0.5] * size})
    return {"inputs": inputs} if inputs else None


async def send(config: Config, requests: int) -> str:
    """`requests` inference requests per model, round-robin over its prod endpoints; what they answered."""
    lines = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for model, cfg in sorted(config.models.items()):
            prod = cfg.environments.get("prod")
            if prod is None or not prod.endpoints:
                continue
            answered: Counter[str] = Counter()
            body = None
            for endpoint in prod.endpoints:  # the first that serves the model says what its inputs are
                try:
                    async with http.get(f"{endpoint}/v2/models/{model}") as response:
                        if response.status == 200:
                            body = _body(await response.json())
                            break
                except aiohttp.ClientError:
                    continue
            if body is None:
                lines.append(f"{model}: no prod endpoint serves it (or its inputs are not numeric); nothing sent")
                continue
            for endpoint in itertools.islice(itertools.cycle(prod.endpoints), requests):
                try:
                    async with http.post(f"{endpoint}/v2/models/{model}/infer", json=body) as response:
                        await response.read()
                        answered[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    answered[type(exc).__name__] += 1
            said = ", ".join(f"{n} × {status}" for status, n in answered.most_common())
            lines.append(f"{model}: {requests} requests over {len(prod.endpoints)} prod endpoints: {said}")
    return "\n".join(lines) or "no model has prod endpoints"
