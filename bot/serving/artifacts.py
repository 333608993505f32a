"""Artifact stores: one small interface over a local directory and S3 (or any S3-compatible endpoint).

Keys are `/`-separated paths relative to the store's root; a prefix always means a folder, so `ranker/v1`
never matches `ranker/v10/...`. Every failure is an `ArtifactError` naming the URI and the cause.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

T = TypeVar("T")

# Fail fast on an unreachable endpoint; botocore's standard mode retries throttling and 5xx on its own.
S3_CONFIG = Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 3})


class ArtifactError(Exception):
    """An artifact operation failed; the message says which URI and why."""


def _folder(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


class ArtifactStore(ABC):
    uri: str

    def key_uri(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    @abstractmethod
    async def list(self, prefix: str = "") -> list[str]:
        """Every key under the folder `prefix`, sorted."""

    @abstractmethod
    async def read(self, key: str) -> bytes: ...

    @abstractmethod
    async def write(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    async def sha256(self, key: str) -> str:
        """Hex SHA-256 of one object, streamed so model files of any size fit."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def size(self, key: str) -> int:
        """Bytes of one object, without reading it."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> None:
        """Delete everything under the folder `prefix`; nothing there is not an error."""


class LocalStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def path(self, key: str) -> Path:
        return self.root / key

    async def list(self, prefix: str = "") -> list[str]:
        folder = self.root / _folder(prefix)

        def walk() -> list[str]:
            if not folder.is_dir():
                return []
            return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())

        return await _local(self.key_uri(_folder(prefix)), walk)

    async def read(self, key: str) -> bytes:
        return await _local(self.key_uri(key), self.path(key).read_bytes)

    async def write(self, key: str, data: bytes) -> None:
        def write() -> None:
            self.path(key).parent.mkdir(parents=True, exist_ok=True)
            self.path(key).write_bytes(data)

        await _local(self.key_uri(key), write)

    async def sha256(self, key: str) -> str:
        def digest() -> str:
            with self.path(key).open("rb") as file:
                return hashlib.file_digest(file, "sha256").hexdigest()

        return await _local(self.key_uri(key), digest)

    async def exists(self, key: str) -> bool:
        return await _local(self.key_uri(key), self.path(key).is_file)

    async def size(self, key: str) -> int:
        return await _local(self.key_uri(key), lambda: self.path(key).stat().st_size)

    async def delete_prefix(self, prefix: str) -> None:
        folder = self.root / _folder(prefix)

        def delete() -> None:
            if folder.exists():
                shutil.rmtree(folder)

        await _local(self.key_uri(_folder(prefix)), delete)


@functools.cache
def _s3_client(endpoint_url: str | None) -> Any:
    """One thread-safe client per endpoint: creating one costs tens of milliseconds.

    Credentials come from the environment (or an instance role), never from the bot's config.
    """
    return boto3.client("s3", endpoint_url=endpoint_url, config=S3_CONFIG)


class S3Store(ArtifactStore):
    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = _folder(prefix)
        self.endpoint_url = endpoint_url
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = _s3_client(endpoint_url)

    def object_key(self, key: str) -> str:
        return self.prefix + key

    async def list(self, prefix: str = "") -> list[str]:
        folder = self.prefix + _folder(prefix)

        def walk() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            keys = (obj["Key"] for page in pages for obj in page.get("Contents", []))
            return sorted(k.removeprefix(self.prefix) for k in keys if not k.endswith("/"))

        return await self._call(self.key_uri(_folder(prefix)), walk)

    async def read(self, key: str) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()

        return await self._call(self.key_uri(key), get)

    async def write(self, key: str, data: bytes) -> None:
        await self._call(
            self.key_uri(key), self.client.put_object, Bucket=self.bucket, Key=self.object_key(key), Body=data
        )

    async def sha256(self, key: str) -> str:
        def digest() -> str:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
            hasher = hashlib.sha256()
            for chunk in body.iter_chunks(1 << 20):
                hasher.update(chunk)
            return hasher.hexdigest()

        return await self._call(self.key_uri(key), digest)

    async def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            except ClientError as error:
                if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
                    return False
                raise
            return True

        return await self._call(self.key_uri(key), head)

    async def size(self, key: str) -> int:
        def head() -> int:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))["ContentLength"]

        return await self._call(self.key_uri(key), head)

    async def delete_prefix(self, prefix: str) -> None:
        keys = [self.object_key(k) for k in await self.list(prefix)]

        def delete() -> None:
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise ArtifactError(f"s3://{self.bucket}/{first['Key']}: {first['Code']}: {first['Message']}")

        await self._call(self.key_uri(_folder(prefix)), delete)

    async def _call(self, uri: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with _s3_errors(uri, self.endpoint_url):
            return await asyncio.to_thread(fn, *args, **kwargs)


def open_store(uri: str, *, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """`s3://bucket/prefix` (boto3; `s3_endpoint_url` for MinIO, moto, ...) or a local directory path."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ArtifactError(f"{uri}: no bucket in the URI (expected s3://bucket/prefix)")
        return S3Store(bucket, prefix, endpoint_url=s3_endpoint_url)
    if "://" in uri and not uri.startswith("file://"):
        raise ArtifactError(f"{uri}: unsupported scheme (expected s3://bucket/prefix or a local directory)")
    return LocalStore(Path(uri.removeprefix("file://")).expanduser())


async def copy(src: ArtifactStore, src_key: str, dst: ArtifactStore, dst_key: str) -> None:
    """Copy one object: server-side within one S3 endpoint, a streamed upload/download across kinds."""
    where = f"{src.key_uri(src_key)} -> {dst.key_uri(dst_key)}"
    match src, dst:
        case S3Store(), S3Store() if src.endpoint_url == dst.endpoint_url:
            source = {"Bucket": src.bucket, "Key": src.object_key(src_key)}
            await dst._call(where, dst.client.copy, source, dst.bucket, dst.object_key(dst_key))
        case LocalStore(), S3Store():
            local = str(src.path(src_key))
            await dst._call(where, dst.client.upload_file, local, dst.bucket, dst.object_key(dst_key))
        case S3Store(), LocalStore():
            local = str(dst.path(dst_key))
            await _local(where, dst.path(dst_key).parent.mkdir, parents=True, exist_ok=True)
            await src._call(where, src.client.download_file, src.bucket, src.object_key(src_key), local)
        case LocalStore(), LocalStore():
            await _local(where, dst.path(dst_key).parent.mkdir, parents=True, exist_ok=True)
            await _local(where, shutil.copyfile, src.path(src_key), dst.path(dst_key))
        case _:  # two different S3 endpoints: no server-side path between them
            await dst.write(dst_key, await src.read(src_key))


async def _local(uri: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except FileNotFoundError as error:
        raise ArtifactError(f"{uri}: not found") from error
    except OSError as error:
        raise ArtifactError(f"{uri}: {error.strerror or error}") from error


@contextmanager
def _s3_errors(uri: str, endpoint_url: str | None) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "Unknown")
        message = error.response.get("Error", {}).get("Message") or ""
        if code in ("404", "NoSuchKey"):
            code, message = "NoSuchKey", message or "no such object"
        raise ArtifactError(f"{uri}: {code}: {message}".rstrip(": ")) from error
    except EndpointConnectionError as error:
        cause = str(error.kwargs.get("error", error))
        # urllib3 says "AWSHTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111]
        # Connection refused": the OS's words are the cause a person can act on.
        why = errno_text.group(1) if (errno_text := re.search(r"\[Errno -?\d+\] ([^)\]]+)", cause)) else cause
        raise ArtifactError(f"{uri}: cannot reach the S3 endpoint {endpoint_url or 'of AWS'} ({why.strip()}); check that it "
                            "runs and that s3.endpoint_url in the bot's config names it") from error
    except NoCredentialsError as error:
        raise ArtifactError(f"{uri}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from error
    except BotoCoreError as error:
        raise ArtifactError(f"{uri}: {error}") from error
