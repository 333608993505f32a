"""What the store records of the train: releases, what each environment serves, and the move of a release's
standing, done as a compare-and-set so that of two presses of one button only the first moves it."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from bot.context import Clock
from bot.releases.model import BUSY, Event, Release, State, env_of, next_state, sources
from bot.store import Store, iso


class ReleaseError(Exception):
    """A refusal or failure a person can act on; the message says what and what to do next."""


def parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def release_of(row: dict[str, Any]) -> Release:
    return Release(
        id=row["id"], model=row["model"], version=row["version"], digest=row["digest"], state=State(row["state"]),
        prod_state=State(row["prod_state"]) if row.get("prod_state") else None,
        deployed_by=row["deployed_by"], deployed_at=parse_dt(row["deployed_at"]), verified_at=parse_dt(row["verified_at"]),
        approved_by=row["approved_by"], approved_at=parse_dt(row["approved_at"]), channel=row["channel"],
        card_ts=row["card_ts"], updated_at=parse_dt(row["updated_at"]),
    )


def _column(env: str) -> str:
    return "prod_state" if env_of(env) == "prod" else "state"


class Records:
    def __init__(self, store: Store, clock: Clock):
        self.store = store
        self.clock = clock

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return self.store.query(sql, params)

    def queued(self, model: str) -> list[dict[str, Any]]:
        """The registry versions waiting behind the model's train (train_queue), oldest first."""
        return self.rows("SELECT * FROM train_queue WHERE model = ? AND state = 'queued' ORDER BY created_at, version", model)

    def get(self, release_id: int) -> Release:
        rows = self.rows("SELECT * FROM releases WHERE id = ?", release_id)
        if not rows:
            raise ReleaseError(f"release {release_id} does not exist")
        return release_of(rows[0])

    def environment(self, model: str, env: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM environments WHERE model = ? AND env = ?", model, env)
        return rows[0] if rows else None

    def serving(self, model: str, env: str) -> Release | None:
        """The release the bot records `env` serves."""
        current = self.environment(model, env)
        return self.get(current["release_id"]) if current and current["release_id"] else None

    def report(self, release: Release) -> dict | None:
        """The last verify report of `release`, as stored and shown."""
        row = self.store.conn.execute("SELECT verify_report FROM releases WHERE id = ?", (release.id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def cas(self, release: Release, event: Event, env: str, **fields: Any) -> Release:
        """Move `release`'s standing in `env` by `event` if it still stands where the event may start."""
        column = _column(env)
        new = next_state(env_of(env), release.standing(env), event)
        allowed = sources(env_of(env), event)
        where = " OR ".join([f"{column} IS NULL"] * (None in allowed) + [f"{column} = ?"] * len([s for s in allowed if s]))
        sets = ", ".join(f"{k} = ?" for k in (column, "updated_at", *fields))
        cursor = self.store.conn.execute(
            f"UPDATE releases SET {sets} WHERE id = ? AND ({where})",
            (new.value, iso(self.clock()), *fields.values(), release.id, *(s.value for s in allowed if s)),
        )
        if cursor.rowcount != 1:
            raise ReleaseError(self.why_not(release.id, event, env))
        return self.get(release.id)

    def why_not(self, release_id: int, event: Event, env: str) -> str:
        """Why `event` cannot happen to the release now, as the person who pressed for it reads it."""
        current = self.get(release_id)
        standing = current.standing(env)
        if standing in BUSY:
            return f"{current.model} {current.version} is already {standing.words}: started by <@{self._last_actor(current)}>"
        if current.prod_state is State.LIVE and event is Event.PROMOTE:
            return f"{current.model} {current.version} is already live in prod, unblocked by <@{current.approved_by}>"
        if standing is State.SUPERSEDED:
            newer = self.rows("SELECT version FROM releases WHERE model = ? AND id > ? ORDER BY id DESC LIMIT 1",
                              current.model, current.id)
            return (f"this card is out of date: {current.model} {current.version} was superseded by "
                    f"{newer[0]['version'] if newer else 'a newer version'}")
        where = f"{standing.words} on {env}" if standing else f"not in {env}"
        return f"cannot {event.value.replace('_', ' ')} {current.model} {current.version}: it is {where}"

    def _last_actor(self, release: Release) -> str:
        rows = self.rows("SELECT actor FROM actions WHERE model = ? AND version = ? AND status = 'started' "
                         "ORDER BY id DESC LIMIT 1", release.model, release.version)
        return rows[0]["actor"] if rows else "someone"

    def set_env(self, release: Release, env: str, *, actor: str, approved_by: str | None = None) -> None:
        """Record that `env` serves `release` now, keeping what it served before."""
        current = self.environment(release.model, env)
        self.store.conn.execute(
            "INSERT OR REPLACE INTO environments (model, env, version, triton_version, release_id, previous_version, "
            "previous_triton_version, deployed_by, approved_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (release.model, env, release.version, release.triton_version, release.id,
             current["version"] if current else None, current["triton_version"] if current else None,
             actor, approved_by, iso(self.clock())),
        )
