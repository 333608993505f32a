"""The Security suite of issue 18: forged, stale, future and replayed requests; a user without the role on every
button, form and verb; the deployer unblocking their own release (four-eyes); a button value edited to name
another release or model; the bot's secrets, set in its environment, never in its log, audit export or /metrics.

The whole bot runs on loopback against the Slack emulator with real HTTP and Slack's signing; the release tests
deploy to real tritonservers. Under CI=true a missing tritonserver fails the run instead of skipping.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
import yaml

from bot.config import Secrets, load_config
from bot.programs import SECRET_ENV
from bot.releases.messages import ReleaseRef, RollbackRef, reason_modal
from bot.releases.model import State
from bot.sandbox.local import BOT_TOKEN, SIGNING_SECRET, LocalBot, local_bot
from bot.sandbox.tritonserver import TritonServer, triton_missing
from bot.serving.triton import Fleet
from handlers.buttons import BUTTONS
from handlers.modals import MODALS
from handlers.router import VERBS
from tests.conftest import EXAMPLE_CONFIG, ROOT, Clock, write_config

MAIN = "C0MLOPS"
OUTSIDER = "U0DAVE"  # in no role and no group
# Whom a refusal names, by the example config's roles.
WHO_TO_ASK = {"deployers": "<@U0ALICE>, <@U0BOB>, <!subteam^S0MLENG> (deployers) or an admin (<@U0CAROL>)",
              "approvers": "<@U0BOB> (approvers) or an admin (<@U0CAROL>)", "admins": "an admin (<@U0CAROL>)"}
MONDAY_10_LA = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # inside deploy hours


def rows(bot: LocalBot, verb: str | None = None, status: str | None = None, actor: str | None = None) -> list[dict]:
    return [r for r in bot.runtime.store.actions() if (verb is None or r["verb"] == verb)
            and (status is None or r["status"] == status) and (actor is None or r["actor"] == actor)]


def said_to(bot: LocalBot, user: str) -> list[str]:
    """Everything the bot told `user` alone: ephemerals, response_url answers, DMs."""
    dms = [m["text"] for m in bot.slack.messages(user)]
    answers = [r["body"].get("text", "") for r in bot.slack.responses if r["user"] == user]
    return [e["text"] for e in bot.slack.ephemerals if e["user"] == user] + answers + dms


def command_body(user: str, text: str, trigger: str) -> bytes:
    return urlencode({"command": "/mlops", "text": text, "user_id": user, "channel_id": MAIN, "team_id": "T0SANDBOX",
                      "trigger_id": trigger, "response_url": ""}).encode()


@pytest.fixture
async def bot(tmp_path: Path):
    async with local_bot(load_config(write_config(tmp_path)), clock=Clock(), post_rate=100, post_burst=100) as running:
        yield running


# --- forged, stale, future and replayed ---------------------------------------------------------------------


async def test_forged_stale_future_and_replayed_requests_run_nothing(bot: LocalBot) -> None:
    client = bot.client
    lock = command_body("U0ALICE", 'lock ranker prod reason="freeze"', "trigger.lock")
    forged = {**client.sign(lock), "X-Slack-Signature": "v0=" + "0" * 64}
    assert (await client.send_raw(lock, forged)).status == 401
    other_secret = type(client)(client.app_url, "a-guessed-secret", bot.slack)
    assert (await client.send_raw(lock, other_secret.sign(lock))).status == 401
    await other_secret.close()
    assert (await client.send_raw(lock, client.sign(lock, int(time.time()) - 6 * 60))).status == 401
    assert (await client.send_raw(lock, client.sign(lock, int(time.time()) + 6 * 60))).status == 401
    assert not rows(bot, "lock")

    # A genuine delivery, captured: sent again as it is, it is answered and not run twice; its signature on
    # another body does not verify.
    captured = client.sign(lock)
    assert (await client.send_raw(lock, captured)).status == 200
    assert (await client.send_raw(lock, captured)).status == 200
    unlock = command_body("U0ALICE", "unlock ranker prod", "trigger.lock")
    assert (await client.send_raw(unlock, captured)).status == 401
    await bot.slack.wait_for(lambda: rows(bot, "lock", "succeeded"))
    await asyncio.sleep(0.3)
    assert [r["status"] for r in rows(bot, "lock")] == ["accepted", "succeeded"]
    assert not rows(bot, "unlock")

    # Refused requests are audited in summary: one row per source and reason, with its count.
    bot.runtime.rejections.flush()
    summary = {r["detail"]["reason"]: r["detail"]["count"] for r in rows(bot, "slack.request", "rejected")}
    assert summary == {"bad signature": 3, "stale timestamp": 1, "timestamp in the future": 1}
    assert {r["detail"]["source"] for r in rows(bot, "slack.request", "rejected")} == {"127.0.0.1"}
    assert bot.runtime.store.verify_chain() is None


# --- a user without the role --------------------------------------------------------------------------------

# A value of each button model, well formed, so the refusal is about the role and nothing else.
SAMPLES = {
    "ReleaseRef": {"release": 1, "rev": "r"},
    "RollbackRef": {"model": "ranker", "env": "prod", "release": 1},
    "RunRef": {"run": 1},
    "ModelRef": {"model": "ranker"},
    "RetrainRef": {"job": "recsys", "run_date": "2026-11-24", "model": "ranker"},
    "PipelineRef": {"alert": 1, "failure": 1},
    "TaskRef": {"alert": 1, "failure": 1, "task": "train"},
}
# The buttons anyone in the channel may press; a new button without a role must be added here on purpose.
ANYONE = {"datagen.ack", "datagen.expected", "alerts.silence", "oncall.ack_handoff", "oncall.take", "pipelines.ack",
          "pipelines.silence", "home.page"} | {  # home.page: anyone sees their own App Home
    a for a in BUTTONS if a.startswith("datagen.silence.")}


async def test_a_user_without_the_role_is_refused_on_every_button_form_and_verb(bot: LocalBot) -> None:
    assert {a for a, b in BUTTONS.items() if b.role is None} == ANYONE
    guarded = {a: b for a, b in BUTTONS.items() if b.role}
    assert {b.value.__name__ for b in guarded.values()} <= SAMPLES.keys(), "add a sample value for a new button"
    for action_id, spec in guarded.items():
        delivery = await bot.client.press(OUTSIDER, action_id, json.dumps(SAMPLES[spec.value.__name__]),
                                          channel=MAIN, message_ts="1700000000.000100")
        assert delivery.status == 200, action_id
    for callback_id, spec in MODALS.items():
        assert getattr(spec, "role", None), f"form {callback_id} names no role: anyone may submit it"
        sample = spec.metadata.model_validate(SAMPLES[spec.metadata.__name__])
        view = reason_modal(callback_id, "t", "p", "s", sample)
        delivery = await bot.client.submit_view(OUTSIDER, view, {"reason": {"reason": "because it has to be now"}})
        assert delivery.status == 200, (callback_id, delivery.body)
        assert f"You need the {spec.role} role" in json.dumps(delivery.json()["errors"]), callback_id
    for name, v in VERBS.items():
        if v.role:
            delivery = await bot.client.command(OUTSIDER, f"{name} ranker")
            assert f"You need the *{v.role}* role" in delivery.json()["text"], name
            assert f"ask {WHO_TO_ASK[v.role]}." in delivery.json()["text"], name  # the holders first, then the admins

    await bot.slack.wait_for(lambda: len([t for t in said_to(bot, OUTSIDER) if "You need the" in t]) >= len(guarded))
    await asyncio.sleep(0.3)
    by_outsider = rows(bot, actor=OUTSIDER)
    expected = ({(a, "denied") for a in guarded} | {(f"view.{c}", "denied") for c in MODALS}
                | {(n, "denied") for n, v in VERBS.items() if v.role})
    assert {(r["verb"], r["status"]) for r in by_outsider} == expected
    assert len(by_outsider) == len(expected)
    # Nothing ran: no modal opened, no press claimed, no lock, no run, no release.
    assert not bot.slack.views and bot.runtime.store.query("SELECT * FROM presses") == []
    for table in ("locks", "retrain_runs", "releases", "operations"):
        assert bot.runtime.store.query(f"SELECT * FROM {table}") == [], table


# --- the release train on real tritonservers --------------------------------------------------------------


class ShiftedClock:
    """Real time moved to a chosen instant, so deploy-hour rules see the day the test wants."""

    def __init__(self, at: datetime):
        self.offset = at - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture(scope="module")
def tritons(tmp_path_factory):
    missing = triton_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"tritonserver is required on CI: {missing}")
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("security")
    repos = {env: root / "repos" / env for env in ("staging", "prod")}
    for path in repos.values():
        path.mkdir(parents=True)
    servers = {env: TritonServer(str(repos[env])).start() for env in repos}
    yield repos, servers
    for server in servers.values():
        server.stop()


@pytest.fixture
async def train(tritons, tmp_path: Path):
    """Two models on the same fleets (ranker, and scorer: the same files under another name)."""
    repos, servers = tritons
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "examples" / "registry" / "ranker", registry / "ranker", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(registry / "ranker", registry / "scorer")
    template = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    template.pop("retrain")
    models = {}
    for name in ("ranker", "scorer"):
        models[name] = {**template, "registry": str(registry), "verify_requests": 5, "environments": {
            env: {"repository": str(repos[env]), "endpoints": [servers[env].url]} for env in repos}}
    path = write_config(tmp_path, models=models, datagen={"jobs": {}}, oncall={"rotations": []})
    async with local_bot(load_config(path), clock=ShiftedClock(MONDAY_10_LA), post_rate=100, post_burst=100) as running:
        yield running
    async with Fleet([s.url for s in servers.values()]) as fleet:
        for name in models:
            await fleet.unload(name)


def card(bot: LocalBot, model: str, version: str) -> dict | None:
    return next((m for m in bot.slack.messages(MAIN) if m["text"].startswith(f"{model} {version} ")), None)


async def deployed(bot: LocalBot, model: str, version: str, user: str) -> tuple[dict, int]:
    """Deploy through /mlops as `user`; the verified card and the release's id."""
    assert (await bot.client.command(user, f"deploy {model} {version}")).status == 200
    words = State("verified").words
    shown = await bot.slack.wait_for(lambda: (c := card(bot, model, version)) and c["text"].endswith(f": {words}") and c,
                                     timeout=90)
    [release] = bot.runtime.store.query("SELECT id FROM releases WHERE model = ? AND version = ?", (model, version))
    return shown, release["id"]


def button_on(shown: dict, label: str) -> dict:
    return next(e for b in shown["blocks"] if b["type"] == "actions" for e in b["elements"] if e["text"]["text"] == label)


async def prod_versions(bot: LocalBot, model: str) -> list[int]:
    async with Fleet([e for e in bot.runtime.config.models[model].environments["prod"].endpoints]) as fleet:
        return sorted({v for versions in (await fleet.ready_versions(model)).values() for v in versions})


async def test_the_deployer_cannot_unblock_their_own_release(train: LocalBot) -> None:
    bot = train
    shown, release = await deployed(bot, "ranker", "v1", "U0BOB")  # Bob deploys and approves
    await bot.client.press_button("U0BOB", MAIN, shown["ts"], "Unblock prod")
    await bot.client.command("U0BOB", "promote ranker")
    await bot.client.command("U0BOB", 'promote ranker urgent="it cannot wait, really"')
    view = reason_modal("release.urgent", "Urgent unblock", "why", "Unblock now", ReleaseRef(release=release))
    await bot.client.submit_view("U0BOB", view, {"reason": {"reason": "it cannot wait, really"}})
    await bot.slack.wait_for(lambda: len([t for t in said_to(bot, "U0BOB") if "four-eyes" in t]) >= 4, timeout=30)
    denied = rows(bot, "promote", "denied", "U0BOB")
    assert len(denied) == 4 and all("four-eyes" in r["detail"]["reason"] for r in denied)
    assert not rows(bot, "promote", "started") and not rows(bot, "promote", "succeeded")
    assert await prod_versions(bot, "ranker") == []

    # Another approver may: it was four-eyes that refused, nothing else.
    await bot.client.press_button("U0CAROL", MAIN, shown["ts"], "Unblock prod")
    await bot.slack.wait_for(lambda: rows(bot, "promote", "succeeded"), timeout=90)
    assert [r["actor"] for r in rows(bot, "promote", "succeeded")] == ["U0CAROL"]
    assert bot.runtime.store.verify_chain() is None


async def test_a_button_value_edited_to_name_another_release_or_model_is_refused(train: LocalBot) -> None:
    bot = train
    ranker_card, ranker = await deployed(bot, "ranker", "v1", "U0ALICE")
    scorer_card, scorer = await deployed(bot, "scorer", "v1", "U0ALICE")
    before = bot.runtime.store.query("SELECT id, state, prod_state FROM releases ORDER BY id")
    reject, unblock = button_on(ranker_card, "Reject"), button_on(ranker_card, "Unblock prod")
    back = button_on(ranker_card, "Roll back staging")
    edits = [
        # On ranker's card: the release of another model, a release that does not exist, another model's rollback.
        (reject["action_id"], ReleaseRef(release=scorer, rev=json.loads(reject["value"])["rev"]).model_dump_json()),
        (unblock["action_id"], ReleaseRef(release=scorer).model_dump_json()),
        (unblock["action_id"], ReleaseRef(release=ranker + 1000).model_dump_json()),
        (back["action_id"], RollbackRef(model="scorer", env="staging", release=ranker).model_dump_json()),
        (back["action_id"], RollbackRef(model="scorer", env="staging").model_dump_json()),
    ]
    for action_id, value in edits:
        delivery = await bot.client.press("U0CAROL", action_id, value, channel=MAIN, message_ts=ranker_card["ts"])
        assert delivery.status == 200
    await bot.slack.wait_for(lambda: len([t for t in said_to(bot, "U0CAROL") if "does not match its message" in t])
                             == len(edits), timeout=15)
    await asyncio.sleep(0.5)
    refused = [r for r in rows(bot, actor="U0CAROL") if r["status"] == "refused"]
    assert len(refused) == len(edits) and not rows(bot, actor="U0CAROL", status="accepted")
    assert "has another card" in refused[0]["detail"]["reason"]
    assert "does not exist" in refused[2]["detail"]["reason"]
    assert "ranker's, not scorer's" in refused[3]["detail"]["reason"]
    # Nothing ran: no release changed standing, no modal opened, no press claimed, prod serves nothing.
    assert bot.runtime.store.query("SELECT id, state, prod_state FROM releases ORDER BY id") == before
    assert not bot.slack.views and bot.runtime.store.query("SELECT * FROM presses") == []
    assert await prod_versions(bot, "scorer") == [] and not rows(bot, "reject")

    # The same buttons with the values the bot put on the card still work.
    await bot.client.press_button("U0CAROL", MAIN, scorer_card["ts"], "Reject")
    await bot.slack.wait_for(lambda: rows(bot, "release.reject", "accepted", "U0CAROL"), timeout=30)
    await bot.slack.wait_for(lambda: bot.runtime.releases.get(scorer).state is State.REJECTED, timeout=30)
    assert bot.runtime.store.verify_chain() is None


# --- secrets ------------------------------------------------------------------------------------------------


@pytest.fixture
def bot_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every secret the bot reads, set in its environment as `mlops-bot serve` would have them."""
    values = {name: f"{name.lower()}-{secrets.token_hex(12)}" for name in SECRET_ENV}
    values |= {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}  # the emulator's own
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


async def test_secrets_in_the_environment_never_reach_the_log_audit_export_or_metrics(
    tmp_path: Path, bot_secrets: dict[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_config(tmp_path)
    leaked = " ".join(bot_secrets.values())
    async with local_bot(load_config(path), clock=Clock(), secrets=Secrets.from_env(), post_rate=100, post_burst=100) as bot:
        client = bot.client
        # What an attacker replays or probes with carries whatever they hold: a stale genuine delivery with its
        # response_url, forged requests with the secrets in their bodies, signed payloads of the wrong shape.
        probe = urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": "U0ALICE"},
                                                  "response_url": "https://hooks.slack.com/actions/T0/1/stale",
                                                  "actions": [{"action_id": "release.verify", "value": leaked}]})}).encode()
        # (Their answers are test_edge's subject; here only what they leave behind counts.)
        await client.send_raw(probe, client.sign(probe, int(time.time()) - 3600))
        await client.send_raw(probe, {**client.sign(probe), "X-Slack-Signature": "v0=" + "0" * 64})
        await client.send_raw(leaked.encode(), client.sign(leaked.encode()), "text/plain")
        shaped = urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": 5}, "token": leaked,
                                                   "actions": [{"action_id": leaked}]})}).encode()
        await client.send_raw(shaped, client.sign(shaped))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{bot.url}/hooks/datagen?job=recsys&date=2026-11-24", data=leaked.encode(),
                                 headers={"X-Datagen-Timestamp": "1", "X-Datagen-Signature": leaked}) as resp:
                assert resp.status == 401
        # And ordinary work, refused and done: a denied press, an unknown button, a command, the App Home.
        await client.press(OUTSIDER, "release.verify", '{"release": 1}', channel=MAIN, message_ts="1.000001")
        await client.press("U0ALICE", "no.such.button", "{}", channel=MAIN, message_ts="1.000001")
        await client.command("U0ALICE", "status")
        await client.home_opened("U0ALICE")
        await bot.slack.wait_for(lambda: len(said_to(bot, OUTSIDER)) and "U0ALICE" in bot.slack.home)
        if summary := getattr(bot.runtime, "rejections", None):  # its rows are part of what is exported
            summary.flush()
        async with aiohttp.ClientSession() as http, http.get(f"{bot.url}/metrics") as resp:
            metrics = await resp.text()

    exported = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(path), "audit", "export",
                               "--since", "2000-01-01", "--format", "json"],
                              capture_output=True, text=True, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    csv = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(path), "audit", "export",
                          "--since", "2000-01-01", "--format", "csv"],
                         capture_output=True, text=True, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert "datagen.hook" in exported.stdout and "release.verify" in exported.stdout
    seen = {"log": caplog.text, "audit export (json)": exported.stdout, "audit export (csv)": csv.stdout,
            "/metrics": metrics}
    leaks = [f"{name} in {where}" for name, value in bot_secrets.items() for where, text in seen.items() if value in text]
    assert not leaks, leaks
    stale_url_logged = "hooks.slack.com/actions/T0/1/stale" in caplog.text
    assert not stale_url_logged
