"""What the bot's child programs (retrain commands, monitor commands) may see, and what is read back from them.

A child never sees the bot's own environment (its Slack token, signing secret, hook secrets): only an allowlist
and what its config names. Whatever it prints is read back through `scrub()`, so a secret it got anyway never
reaches Slack, the store or the log.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

# What any program needs to run as it would from a shell; nothing here can authenticate as the bot.
BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
BASE_ENV_PREFIXES = ("LC_",)
# Secrets the bot (or boto3) reads from its environment; their values are redacted from pipeline output.
SECRET_ENV = (
    "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "AWS_SECRET_ACCESS_KEY", "AIRFLOW_PASSWORD",
    "AIRFLOW_TOKEN", "MLOPS_DATAGEN_HOOK_SECRET", "MLOPS_ALERTMANAGER_TOKEN",
)
REDACTED = "[redacted]"
# Shorter values are not redacted: replacing every "1" or "dev" would garble the output and hide nothing.
MIN_SECRET_LEN = 4


def resolve_executable(program: str, cwd: Path, path: str | None) -> Path | None:
    """Where `program` is, the way exec would find it from `cwd`; None when it is not runnable."""
    if os.sep in program:
        candidate = cwd / program
        return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None
    found = shutil.which(program, path=path)
    return Path(found) if found else None


def pipeline_env(source: Mapping[str, str], names: Sequence[str] = ()) -> dict[str, str]:
    """The part of `source` a pipeline may see: the allowlist plus the variables `names` asks for."""
    wanted = set(BASE_ENV) | set(names)
    return {k: v for k, v in source.items() if k in wanted or k.startswith(BASE_ENV_PREFIXES)}


def secret_values(source: Mapping[str, str] | None = None) -> list[str]:
    """The values to redact, longest first so one secret containing another is redacted whole."""
    source = os.environ if source is None else source
    values = {source.get(name, "") for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str] | None = None) -> str:
    """`text` with every known secret value replaced by [redacted]."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    return text
