"""The model registry: one folder per model version, in any artifact store.

`<root>/<model>/<version>/` holds `config.pbtxt` (the Triton model config), `metadata.json` (provenance),
an optional `verify.json` (golden requests) and the version's model files. Version names are free-form
strings (`v1`, `2026-11-22`); the integer Triton version a deploy gives them is the caller's business.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import triton_to_np_dtype

from bot.serving.artifacts import ArtifactError, ArtifactStore

CONFIG = "config.pbtxt"
METADATA = "metadata.json"
VERIFY = "verify.json"
REGISTRY_FILES = frozenset({CONFIG, METADATA, VERIFY})


class RegistryError(Exception):
    """A model or version is missing or not deployable; `problems` lists each reason."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class Metadata(BaseModel):
    """metadata.json: where a version came from. Unknown keys are kept, for provenance displays."""

    model_config = ConfigDict(extra="allow")

    created_at: datetime
    dataset_version: str | None = None
    git_sha: str | None = None
    pipeline_run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class Tensor(BaseModel):
    """A named input tensor as verify.json spells it: Triton datatype, shape and row-major data."""

    datatype: str
    shape: list[int]
    data: list[Any]

    def array(self) -> np.ndarray:
        dtype = triton_to_np_dtype(self.datatype)
        if dtype is None:
            raise ValueError(f"unknown Triton datatype {self.datatype!r}")
        return np.asarray(self.data, dtype=dtype).reshape(self.shape)


class Expected(BaseModel):
    """Expected values of one output; passes where |actual - data| <= atol + rtol * |data|."""

    data: list[float]
    atol: float = 1e-5
    rtol: float = 0.0


class GoldenRequest(BaseModel):
    name: str
    inputs: dict[str, Tensor]
    # Empty: a sanity-only request, whose outputs must merely be finite.
    expected: dict[str, Expected] = Field(default_factory=dict)


class VerifySpec(BaseModel):
    """verify.json: golden requests, and how far outputs may move from the version in prod."""

    requests: list[GoldenRequest] = Field(min_length=1)
    max_baseline_diff: float | None = None


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    # None when metadata.json is missing or unreadable; validate() says why.
    metadata: Metadata | None


def parse_model_config(text: str, model: str) -> ModelConfig:
    """Parse config.pbtxt and check what a deploy needs; ValueError lists every problem found."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"{CONFIG} does not parse: {error}") from error
    problems = []
    if not (config.backend or config.platform):
        problems.append(f"{CONFIG} names neither a backend nor a platform")
    if not config.input:
        problems.append(f"{CONFIG} declares no inputs")
    if not config.output:
        problems.append(f"{CONFIG} declares no outputs")
    if config.name not in ("", model):
        problems.append(f"{CONFIG} is for model {config.name!r}, not {model!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return config


def triton_config_json(config: ModelConfig, model: str, n: int) -> str:
    """The config to load with: the version's own config, serving only Triton version `n`.

    Passed to load_model rather than relying on the repository's config.pbtxt, which is shared by every
    version of the model and so may belong to another one (a rollback loads an older version).
    """
    override = ModelConfig()
    override.CopyFrom(config)
    override.name = model
    override.version_policy.specific.versions[:] = [n]
    return json_format.MessageToJson(override, preserving_proto_field_name=True, indent=None)


def files_digest(file_hashes: Mapping[str, str]) -> str:
    """sha256 over sorted (relative path, sha256 of content) pairs: renames and edits both change it."""
    outer = hashlib.sha256()
    for path in sorted(file_hashes):
        outer.update(f"{path}\0{file_hashes[path]}\n".encode())
    return f"sha256:{outer.hexdigest()}"


def newest_first(versions: list[ModelVersion]) -> list[ModelVersion]:
    """By created_at, then name, newest first; versions without metadata last."""

    def key(v: ModelVersion) -> tuple[bool, float, str]:
        return v.metadata is not None, v.metadata.created_at.timestamp() if v.metadata else 0.0, v.version

    return sorted(versions, key=key, reverse=True)


class Registry:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    async def models(self) -> list[str]:
        return sorted({key.split("/", 1)[0] for key in await self.store.list() if "/" in key})

    async def versions(self, model: str) -> list[ModelVersion]:
        """Every version of `model`, newest first; [] for an unknown model."""
        names = sorted({key.split("/")[1] for key in await self.store.list(model) if key.count("/") >= 2})
        return newest_first(list(await asyncio.gather(*(self._version(model, name) for name in names))))

    async def latest(self, model: str) -> ModelVersion:
        versions = await self.versions(model)
        if not versions:
            models = await self._model_names()
            raise RegistryError(f"no versions of {model} in {self.store.uri}; models there: {models}")
        return versions[0]

    async def get(self, model: str, version: str) -> ModelVersion:
        """One version; the error for an unknown one lists the versions that exist."""
        versions = await self.versions(model)
        for candidate in versions:
            if candidate.version == version:
                return candidate
        if not versions:
            raise RegistryError(f"no model {model} in {self.store.uri}; models there: {await self._model_names()}")
        names = ", ".join(v.version for v in versions)
        raise RegistryError(f"{model} has no version {version} in {self.store.uri}; versions: {names}")

    async def find_by_run_id(self, model: str, run_id: str) -> ModelVersion | None:
        """The newest version a pipeline run produced, by metadata.json's pipeline_run_id."""
        for version in await self.versions(model):
            if version.metadata is not None and version.metadata.pipeline_run_id == run_id:
                return version
        return None

    async def files(self, model: str, version: str) -> list[str]:
        """All of a version's files, relative to its folder."""
        folder = f"{model}/{version}/"
        # __pycache__ appears when someone imports model.py in place; it is no part of the version.
        return [
            key.removeprefix(folder)
            for key in await self.store.list(folder)
            if "__pycache__" not in key.split("/")
        ]

    def key(self, model: str, version: str, path: str) -> str:
        return f"{model}/{version}/{path}"

    async def metadata(self, model: str, version: str) -> Metadata:
        return await self._parsed(model, version, METADATA, Metadata)

    async def verify_spec(self, model: str, version: str) -> VerifySpec | None:
        if not await self.store.exists(self.key(model, version, VERIFY)):
            return None
        return await self._parsed(model, version, VERIFY, VerifySpec)

    async def validate(self, model: str, version: str) -> ModelConfig:
        """Check a version is deployable before any environment is touched; returns its parsed config."""
        files = await self.files(model, version)
        if not files:
            await self.get(model, version)  # raises, listing the versions that do exist
        problems: list[str] = []
        config = ModelConfig()
        if CONFIG not in files:
            problems.append(f"{CONFIG} is missing")
        else:
            try:
                config = parse_model_config((await self.store.read(self.key(model, version, CONFIG))).decode(), model)
            except (ValueError, UnicodeDecodeError) as error:
                problems.append(str(error))
        for name, read in ((METADATA, self.metadata), (VERIFY, self.verify_spec)):
            if name in files:
                try:
                    await read(model, version)
                except RegistryError as error:
                    problems.extend(error.problems)
        if METADATA not in files:
            problems.append(f"{METADATA} is missing")
        if not [f for f in files if f not in REGISTRY_FILES]:
            problems.append(f"no model files besides {', '.join(sorted(REGISTRY_FILES))}")
        if problems:
            raise RegistryError(f"{model} {version} cannot be deployed: {'; '.join(problems)}", problems)
        return config

    async def digest(self, model: str, version: str) -> str:
        """The artifact digest recorded at deploy: changes whenever any file of the version does."""
        files = await self.files(model, version)
        if not files:
            await self.get(model, version)
        hashes = await asyncio.gather(*(self.store.sha256(self.key(model, version, f)) for f in files))
        return files_digest(dict(zip(files, hashes, strict=True)))

    async def _version(self, model: str, version: str) -> ModelVersion:
        try:
            metadata: Metadata | None = await self.metadata(model, version)
        except (RegistryError, ArtifactError):
            metadata = None
        return ModelVersion(model, version, metadata)

    async def _parsed(self, model: str, version: str, name: str, schema: type[Any]) -> Any:
        raw = await self.store.read(self.key(model, version, name))
        try:
            return schema.model_validate_json(raw)
        except ValidationError as error:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in error.errors())
            problem = f"{name} is invalid: {details}"
            raise RegistryError(f"{model} {version}: {problem}", [problem]) from error

    async def _model_names(self) -> str:
        return ", ".join(await self.models()) or "none"
