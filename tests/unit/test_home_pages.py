"""The App Home past one view: its model table is paged within Slack's 100 blocks and 3,000 characters a section,
every row on exactly one page, with Previous / Next buttons between them; a table that fits is one page."""
from __future__ import annotations

import json
from datetime import UTC, datetime

from bot.digest.facts import ModelRow
from bot.digest.messages import HomePage, home_view


def rows(models: int, drifting_endpoints: int) -> list[ModelRow]:
    at = datetime(2026, 11, 19, 17, tzinfo=UTC)
    drift = tuple(f"recorded v3, http://10.0.{i // 250}.{i % 250}:8000 serves v2" for i in range(drifting_endpoints))
    return [ModelRow(f"model{m:04d}", env, "v3", "live", "U0ALICE", "U0BOB", at, at, None, drift)
            for m in range(models) for env in ("staging", "prod")]


def view(models: list[ModelRow], page: int = 0) -> dict:
    return home_view(user="U0BOB", now=datetime(2026, 11, 19, 17, tzinfo=UTC), models=models, oncall=[], alerts=[],
                     approvals=[], operations=[], page=page)


def texts(v: dict) -> str:
    return "\n".join(b["text"]["text"] for b in v["blocks"] if b["type"] == "section")


def nav(v: dict) -> dict[str, int]:
    return {e["text"]["text"]: HomePage.model_validate_json(e["value"]).page
            for b in v["blocks"] if b["type"] == "actions" for e in b["elements"] if e["action_id"] == "home.page"}


def test_two_hundred_models_in_two_environments_fit_one_view_without_paging():
    v = view(rows(200, 0))
    assert len(v["blocks"]) <= 100 and nav(v) == {}
    assert all(f"*model{m:04d}* · prod" in texts(v) for m in range(200))


def test_a_table_past_one_view_is_paged_with_every_row_on_exactly_one_page():
    table = rows(200, 16)  # every endpoint of a 16-pod fleet drifting: about 1,000 characters a row
    first = view(table)
    total = int(texts(first).split(" of ")[1].split(" ")[0])
    assert total > 1 and nav(first) == {"Next models": 1}
    seen: list[str] = []
    for page in range(total):
        v = view(table, page)
        assert len(v["blocks"]) <= 100
        assert all(len(b["text"]["text"]) <= 3000 for b in v["blocks"] if b["type"] == "section")
        assert f"page {page + 1} of {total}" in texts(v)
        seen += [line.split(" · ")[0] + " " + line.split(" · ")[1].split(":")[0]
                 for line in texts(v).splitlines() if line.startswith("*model")]
        expected = {"Previous models": page - 1} if page else {}
        if page < total - 1:
            expected["Next models"] = page + 1
        assert nav(v) == expected
        assert len(json.dumps(v)) < 250_000
    assert seen == [f"*{r.model}* {r.env}" for r in table]
    assert texts(view(table, 10_000)) == texts(view(table, total - 1))  # a page past the end shows the last one
