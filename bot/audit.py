"""The audit log as people read it in Slack: its newest rows, compact, and whether its hash chain verifies."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from bot.notifier import Message, plain
from bot.releases.messages import context, section, when
from bot.store import ChainBreak

USER = re.compile(r"[UW][A-Z0-9]{2,}")
# The detail fields worth a glance on one line; the rest stays in `mlops-bot audit export`.
GLANCE = ("error", "reason", "why", "role", "to", "topic")
GLANCE_CHARS = 80


def _plain(text: Any, limit: int = GLANCE_CHARS) -> str:
    """Stored text shown literally, so a row can never mention or link."""
    return plain(text, limit)


def _who(actor: str) -> str:
    return f"<@{actor}>" if USER.fullmatch(actor) else _plain(actor, 40)


def row_line(row: Mapping[str, Any]) -> str:
    """`#412` · when · who · `verb` status · ranker staging v2 · reason: …"""
    where = " ".join(_plain(row[k], 40) for k in ("model", "env", "version") if row.get(k))
    detail = row.get("detail") or {}
    glance = "; ".join(f"{k}: {_plain(detail[k])}" for k in GLANCE if isinstance(detail, dict) and detail.get(k))
    parts = [f"`#{row['id']}`", when(datetime.fromisoformat(row["ts"])), _who(row["actor"]),
             f"`{_plain(row['verb'], 40)}` {_plain(row['status'], 20)}", where, glance]
    return " · ".join(p for p in parts if p)


def chain_line(broken: ChainBreak | None, total: int) -> str:
    if broken is None:
        return f":white_check_mark: Hash chain verified over all {total:,} rows."
    return (f":rotating_light: The audit log is broken at row {broken.row_id}: {broken.reason}. "
            "Run `mlops-bot audit verify` on the bot's host and tell an admin.")


def listing(rows: Sequence[Mapping[str, Any]], *, matching: int, total: int, broken: ChainBreak | None,
            model: str | None, env: str | None, since: date | None) -> Message:
    """The answer to `/mlops audit`: what was asked, the chain's state, then the rows, oldest first."""
    scope = " ".join(x for x in (model, env) if x) or "all models"
    since_text = f" since {since.isoformat()}" if since else ""
    if rows:
        head = f"*Audit log* · {scope}{since_text}: the newest {len(rows):,} of {matching:,} rows, oldest first"
    else:
        head = f"*Audit log* · {scope}{since_text}: no rows"
    lines = [row_line(r) for r in rows]
    text = "\n".join([head, chain_line(broken, total), *lines])
    blocks = [section(head), context(chain_line(broken, total))]
    if lines:
        blocks.append(section("\n".join(lines)))
    return Message(text=text, blocks=blocks)
