"""Triton's own metrics (Prometheus text on each endpoint's metrics port): the request counters of one model
version, parsed, and read from many endpoints at once."""
from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

METRICS_PORT = 8002  # tritonserver's default --metrics-port

# name{labels} value; Triton writes no timestamps.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Counters:
    """The cumulative counters of one model version on one endpoint (zeros where it has served nothing)."""

    success: float = 0.0
    failure: float = 0.0  # every reason Triton counts (BACKEND, REJECTED, CANCELED, OTHER)
    duration_us: float = 0.0  # cumulative request duration
    p99_us: float | None = None  # from nv_inference_request_summary_us, when summaries are enabled


def metrics_url(endpoint: str) -> str:
    """The metrics URL of an endpoint when the config names none: its host on Triton's default metrics port."""
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return f"{url.scheme}://{url.hostname}:{METRICS_PORT}/metrics"


def parse(text: str, model: str, version: int) -> Counters:
    """The counters of `model` version `version` in a Prometheus text exposition."""
    wanted = {"model": model, "version": str(version)}
    found = {"success": 0.0, "failure": 0.0, "duration_us": 0.0}
    p99 = None
    for line in text.splitlines():
        if not line.startswith("nv_inference_request_"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        tags = dict(_LABEL.findall(labels or ""))
        if any(tags.get(k) != v for k, v in wanted.items()):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if name == "nv_inference_request_success":
            found["success"] += number
        elif name == "nv_inference_request_failure":
            found["failure"] += number
        elif name == "nv_inference_request_duration_us":
            found["duration_us"] += number
        elif name == "nv_inference_request_summary_us" and tags.get("quantile") == "0.99" and number == number:
            p99 = number
    return Counters(**found, p99_us=p99)


async def read(urls: Mapping[str, str], want: Mapping[str, tuple[str, int]], *,
               timeout: float = 5.0) -> dict[str, Counters | str]:
    """Per endpoint, the counters of the (model, version) `want` names for it, read from its metrics URL in
    `urls`, all at once; or why they could not be read. Never raises for an endpoint that is down."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:

        async def one(endpoint: str) -> Counters | str:
            url = urls[endpoint]
            try:
                async with http.get(url) as response:
                    if response.status != 200:
                        return f"{url} answered HTTP {response.status}"
                    return parse(await response.text(), *want[endpoint])
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return f"{url} unreachable ({str(exc) or type(exc).__name__})"

        endpoints = list(want)
        return dict(zip(endpoints, await asyncio.gather(*(one(e) for e in endpoints)), strict=True))
