"""The audit log from Slack: `/mlops audit`, the newest rows and whether the hash chain verifies."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from bot.audit import listing
from handlers.grammar import Command, UsageError, env_named, model_named, no_more_words, quoted
from handlers.router import tell, verb

if TYPE_CHECKING:
    from bot.runtime import Runtime

DEFAULT_ROWS = 20
MAX_ROWS = 100  # past this the answer is a file in the DM anyway; `mlops-bot audit export` gives everything


@dataclass(frozen=True)
class AuditQuery:
    model: str | None
    env: str | None
    n: int
    since: date | None


def _rows(word: str) -> int:
    if not (word.isascii() and word.isdigit()) or not 1 <= int(word) <= MAX_ROWS:
        raise UsageError(f"n=`{quoted(word)}` is not a number of rows from 1 to {MAX_ROWS}")
    return int(word)


def _since(word: str) -> date:
    try:
        return date.fromisoformat(word)
    except ValueError:
        raise UsageError(f"since=`{quoted(word)}` is not a date (YYYY-MM-DD)") from None


def _parse_audit(runtime: Runtime, cmd: Command) -> AuditQuery:
    no_more_words(cmd, 2)
    model = model_named(runtime.config, cmd) if cmd.args else None
    env = env_named(runtime.config, model, cmd.args[1]) if model and len(cmd.args) > 1 else None
    n = _rows(cmd.options["n"]) if "n" in cmd.options else DEFAULT_ROWS
    since = _since(cmd.options["since"]) if "since" in cmd.options else None
    return AuditQuery(model, env, n, since)


@verb("audit", f"audit [model] [env] [n={DEFAULT_ROWS}] [since=YYYY-MM-DD]",
      "the newest rows of the audit log, and whether its hash chain verifies",
      parse=_parse_audit, role="deployers", options=frozenset({"n", "since"}),
      audit_fields=lambda q: {"model": q.model, "env": q.env})
async def _audit(runtime: Runtime, cmd: Command, q: AuditQuery) -> None:
    store = runtime.store
    since = datetime.combine(q.since, datetime.min.time(), tzinfo=UTC) if q.since else None
    rows = store.actions(limit=q.n, model=q.model, env=q.env, since=since)
    matching = store.count_actions(model=q.model, env=q.env, since=since)
    broken = await store.verify_chain_aside()
    total = store.count_actions()
    await tell(runtime, cmd, listing(rows, matching=matching, total=total, broken=broken, model=q.model, env=q.env,
                                     since=q.since))
