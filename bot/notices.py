"""What the bot has said once about a condition that lasts (an endpoint's drift, a registry it cannot reach),
kept in the store so that a restart or a standby taking over does not say it again. A notice is a JSON value
per (topic, key); setting it to what it already is writes nothing, and clearing it lets the next change be said.
"""
from __future__ import annotations

import json
from typing import Any

from bot.context import Context
from bot.store import iso


class Notices:
    def __init__(self, ctx: Context, topic: str) -> None:
        self.ctx = ctx
        self.topic = topic

    def get(self, key: str) -> Any | None:
        row = self.ctx.store.conn.execute("SELECT value FROM notices WHERE topic = ? AND key = ?",
                                          (self.topic, key)).fetchone()
        return json.loads(row[0]) if row else None

    def set(self, key: str, value: Any) -> None:
        """Remember `value` as said; an empty value (nothing to say any more) forgets the key."""
        if not value:
            self.ctx.store.conn.execute("DELETE FROM notices WHERE topic = ? AND key = ?", (self.topic, key))
        elif self.get(key) != value:
            self.ctx.store.conn.execute(
                "INSERT OR REPLACE INTO notices (topic, key, value, said_at) VALUES (?, ?, ?, ?)",
                (self.topic, key, json.dumps(value), iso(self.ctx.clock())))
