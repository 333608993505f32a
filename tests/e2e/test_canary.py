"""Canaries end to end: one staging and three prod tritonservers with their metrics ports, a load generator
spreading requests evenly over prod as a load balancer would, presses and commands through the Slack emulator,
the real SQLite store.

The tests share one release train and run in order, each starting from where the one before left prod (a
train of its own per test would spend most of the time budget deploying the baseline again):
v1 live → a healthy v2 canary promoted by the button → a v5 that fails a share of requests, aborted by the bot
→ v5 again without traffic, inconclusive, aborted by two presses → v5 again across two restarts.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from bot.config import load_config
from bot.releases.model import State
from bot.sandbox.local import BOT_TOKEN, SIGNING_SECRET, LocalBot, local_bot, workspace
from bot.sandbox.slack_emulator import SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient
from bot.sandbox.tritonserver import TritonServer
from bot.serving.triton import Fleet
from tests.conftest import EXAMPLE_CONFIG, ROOT, write_config
from tests.e2e.test_crash_restart import SECRET as CRASH_SECRET
from tests.e2e.test_crash_restart import TOKEN as CRASH_TOKEN
from tests.e2e.test_crash_restart import serve
from tests.e2e.test_release_failures import start_bot
from tests.e2e.test_release_train import MONDAY_10_LA, Clock, audit, card, card_in_state, deploy_verified, serving

TEAM = "C0MLOPS"
FAILING_ROWS = 6  # v5 raises on requests of this many rows or more: about a third of the generator's


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """The example registry plus v5: v1 whose model raises on large requests. Its golden requests (3 rows and 1)
    pass, so it verifies on staging; in prod about a third of the traffic fails."""
    path = tmp_path_factory.mktemp("canary") / "registry"
    shutil.copytree(ROOT / "examples" / "registry", path, ignore=shutil.ignore_patterns("__pycache__"))
    flaky = path / "ranker" / "v5"
    shutil.copytree(path / "ranker" / "v1", flaky)
    source = (flaky / "model.py").read_text()
    hook = "    def _score(self, request):\n"
    assert hook in source
    check = (f"        if pb_utils.get_input_tensor_by_name(request, 'user').as_numpy().shape[0] >= {FAILING_ROWS}:\n"
             "            raise RuntimeError('the feature cache times out on large requests')\n")
    (flaky / "model.py").write_text(source.replace(hook, hook + check))
    return path


@pytest.fixture(scope="module")
def fleet(triton_here, tmp_path_factory) -> Iterator[tuple[dict[str, Path], dict[str, list[TritonServer]]]]:
    root = tmp_path_factory.mktemp("canary-repos")
    repos = {env: root / env for env in ("staging", "prod")}
    for path in repos.values():
        path.mkdir()
    servers = {"staging": [TritonServer(str(repos["staging"])).start()],
               "prod": [TritonServer(str(repos["prod"])).start() for _ in range(3)]}
    yield repos, servers
    for group in servers.values():
        for server in group:
            server.stop()


def canary_config(directory: Path, registry: Path, repos: dict[str, Path], servers: dict[str, list[TritonServer]],
                  prod: list[TritonServer] | None = None, canary: dict | None = None, **top: object):
    model = yaml.safe_load(EXAMPLE_CONFIG.read_text())["models"]["ranker"]
    model.pop("retrain")
    model["registry"] = str(registry)
    prod = servers["prod"] if prod is None else prod
    model["environments"] = {
        "staging": {"repository": str(repos["staging"]), "endpoints": [s.url for s in servers["staging"]]},
        "prod": {"repository": str(repos["prod"]), "endpoints": [s.url for s in prod],
                 "metrics": {s.url: s.metrics_url for s in prod}},
    }
    # Short windows for the test; 5 ms of latency slack because two CI cores are shared with other jobs.
    model["canary"] = {"interval": "1s", "duration": "5s", "min_requests": 10, "latency_slack_ms": 5, **(canary or {})}
    rotation = {"name": "recsys", "members": ["U0ALICE", "U0BOB", "U0CAROL"], "shift": "weekly",
                "handoff_weekday": "friday", "handoff_time": "10:00", "tz": "America/Los_Angeles",
                "start": "2026-01-09", "channel": TEAM, "usergroup": "S0ONCALL"}
    return load_config(write_config(directory, models={"ranker": model}, datagen={"jobs": {}},
                                    oncall={"rotations": [rotation]}, **top))


class Train:
    """The bot over the module's servers and one store, which a test may stop and start again."""

    def __init__(self, config, slack: SlackEmulator):
        self.config = config
        self.slack = slack  # one workspace for every start, as Slack keeps its messages across a restart of the bot
        self.clock = Clock(MONDAY_10_LA)  # and one clock: time goes on while the bot is down
        self.bot: LocalBot | None = None
        self._running: contextlib.AbstractAsyncContextManager | None = None

    async def start(self) -> LocalBot:
        self._running = local_bot(self.config, clock=self.clock, slack=self.slack, post_rate=20, post_burst=20)
        self.bot = await self._running.__aenter__()
        return self.bot

    async def stop(self) -> None:
        assert self._running is not None
        await self._running.__aexit__(None, None, None)
        self._running = self.bot = None


@pytest.fixture(scope="module")
async def train(fleet, registry, tmp_path_factory) -> AsyncIterator[Train]:
    repos, servers = fleet
    config = canary_config(tmp_path_factory.mktemp("canary-bot"), registry, repos, servers)
    users, groups = workspace(config)
    # Slack's one-post-a-second limit is tested elsewhere; relaxed so a step a second is not held back by it.
    async with SlackEmulator(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, post_rate=20, post_burst=20, users=users,
                             usergroups=groups) as slack:
        running = Train(config, slack)
        await running.start()
        yield running
        if running.bot is not None:
            await running.stop()
    async with Fleet([s.url for group in servers.values() for s in group]) as everywhere:
        await everywhere.unload("ranker")


class Load:
    """Requests spread evenly over the prod endpoints, one after another round-robin as a load balancer would,
    unversioned (each endpoint answers with the version it serves), from 1 to 8 rows each."""

    def __init__(self, endpoints: list[str]):
        self.endpoints = endpoints
        self.answered: dict[int, int] = {}  # HTTP status → count
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            for endpoint, rows in zip(itertools.cycle(self.endpoints), itertools.cycle(range(1, 9))):
                body = {"inputs": [{"name": name, "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * (rows * 4)}
                                   for name in ("user", "item")]}
                async with http.post(f"{endpoint}/v2/models/ranker/infer", json=body) as response:
                    await response.read()
                    self.answered[response.status] = self.answered.get(response.status, 0) + 1
                await asyncio.sleep(0.01)


def thread(bot: LocalBot, version: str) -> list[str]:
    found = card(bot, version)
    return [m["text"] for m in bot.slack.replies(TEAM, found["ts"])] if found else []


def steps(bot: LocalBot, version: str) -> list[str]:
    return [line for line in thread(bot, version) if " step " in line and "/5 *" in line]


async def said_in_thread(bot: LocalBot, version: str, words: str, timeout: float = 60) -> str:
    return await bot.slack.wait_for(lambda: next((t for t in thread(bot, version) if words in t), None), timeout=timeout)


async def told(bot: LocalBot, words: str) -> str:
    """What the bot answered one person (ephemeral) containing `words`."""
    return await bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals if words in e["text"]), None))


def buttons(message: dict) -> list[str]:
    return [e["text"]["text"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


async def test_one_prod_endpoint_refuses_a_canary_with_the_reason(fleet, registry, tmp_path):
    repos, servers = fleet
    config = canary_config(tmp_path, registry, repos, servers, prod=servers["prod"][:1])
    async with start_bot(config, Clock(MONDAY_10_LA)) as bot:
        await bot.client.command("U0CAROL", "canary ranker")
        told = await bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals if "canary" in e["text"]), None))
    assert "a canary needs two prod endpoints" in told and "prod has 1" in told


async def test_a_healthy_version_passes_its_steps_and_is_promoted_by_the_button(train, fleet):
    _, servers = fleet
    bot = train.bot
    first = await deploy_verified(bot, "v1")
    await bot.client.command("U0CAROL", "canary ranker")
    assert "prod serves nothing yet" in await told(bot, "serves nothing yet")  # no baseline to judge it against
    await bot.client.press_button("U0CAROL", TEAM, first["ts"], "Unblock prod")
    await card_in_state(bot, "v1", "live")
    n1 = bot.runtime.releases.serving("ranker", "prod").triton_version

    second = await deploy_verified(bot, "v2")
    n2 = bot.runtime.releases.serving("ranker", "staging").triton_version
    assert "Start canary" in buttons(second)
    # The policy of an unblock: an approver other than the deployer, and the plan said before anything changes.
    await bot.client.command("U0ALICE", "canary ranker")
    assert "only approvers" in await told(bot, "a canary follows the policy of an unblock")
    await bot.client.command("U0CAROL", "canary ranker dry_run=true")
    plan = await told(bot, "*Dry run*: the policy allows <@U0CAROL> to start a canary")
    assert f"1 of 3 prod endpoints ({servers['prod'][0].url})" in plan and "keep v1" in plan
    async with Load([s.url for s in servers["prod"]]) as load:
        await bot.client.press_button("U0CAROL", TEAM, second["ts"], "Start canary")
        during = await card_in_state(bot, "v2", "canary")
        assert buttons(during) == ["Promote to all", "Abort"]
        # k = ceil(20% of 3) = 1: the first endpoint serves v2, the other two keep v1.
        assert list((await serving(servers["prod"])).values()) == [[n2], [n1], [n1]]
        asked = await said_in_thread(bot, "v2", "press *Promote to all* or *Abort*")
    assert "ended healthy" in asked and "<@U0CAROL>" in asked
    lines = steps(bot, "v2")
    assert len(lines) == 5 and not [line for line in lines if "*fail*" in line], lines
    assert any("*pass*" in line for line in lines) and "canary: " in lines[-1] and "baseline: " in lines[-1]
    assert load.answered.get(200, 0) > 100
    assert "step 5 of 5" in str(card(bot, "v2")["blocks"])  # the card's progress

    await bot.client.press_button("U0CAROL", TEAM, card(bot, "v2")["ts"], "Promote to all")
    await card_in_state(bot, "v2", "live")
    assert list((await serving(servers["prod"])).values()) == [[n2], [n2], [n2]]
    assert bot.runtime.releases.environment("ranker", "prod")["version"] == "v2"
    assert bot.runtime.releases.lock_of("ranker", "prod") is None
    assert [r["actor"] for r in audit(bot, "canary.promote", "accepted")] == ["U0CAROL"]


async def test_a_version_failing_a_share_of_requests_is_aborted_by_the_bot(train, fleet):
    _, servers = fleet
    bot = train.bot
    n2 = bot.runtime.releases.serving("ranker", "prod").triton_version
    flaky = await deploy_verified(bot, "v5")
    async with Load([s.url for s in servers["prod"]]) as load:
        await bot.client.press_button("U0BOB", TEAM, flaky["ts"], "Start canary")
        aborted = await card_in_state(bot, "v5", "canary_aborted")
    assert sum(n for status, n in load.answered.items() if status != 200) > 0  # the generator saw the canary fail
    lines = steps(bot, "v5")
    assert len(lines) == 2 and all("*fail*" in line and "error rate" in line for line in lines), lines
    loud = await bot.slack.wait_for(lambda: next((m["text"] for m in bot.slack.messages(TEAM)
                                                  if "<!here>" in m["text"] and "aborted by the bot" in m["text"]), None))
    assert "2 of 2 steps failed" in loud and "<@U0BOB>" in loud and "<!subteam^S0ONCALL>" in loud
    assert "serve v2 again, verified" in str(aborted["blocks"])
    assert list((await serving(servers["prod"])).values()) == [[n2], [n2], [n2]]
    assert bot.runtime.releases.environment("ranker", "prod")["version"] == "v2"
    assert bot.runtime.releases.lock_of("ranker", "prod") is None
    assert [r["actor"] for r in audit(bot, "canary", "aborted")] == ["mlops-bot"]


async def test_no_traffic_gives_inconclusive_steps_and_abort_pressed_twice_aborts_once(train, fleet):
    _, servers = fleet
    bot = train.bot
    n2 = bot.runtime.releases.serving("ranker", "prod").triton_version
    before = len(audit(bot, "canary", "aborted"))
    await bot.client.press_button("U0BOB", TEAM, card(bot, "v5")["ts"], "Start canary")
    asked = await said_in_thread(bot, "v5", "without enough traffic to judge by")
    assert "press *Promote to all* or *Abort*" in asked
    fresh = steps(bot, "v5")[2:]
    assert len(fresh) == 5 and all("*inconclusive*" in line and "a person decides" in line for line in fresh), fresh
    assert bot.runtime.releases.get(bot.runtime.releases.serving("ranker", "staging").id).prod_state is State.CANARY

    ts = card(bot, "v5")["ts"]
    await asyncio.gather(*(bot.client.press_button(user, TEAM, ts, "Abort") for user in ("U0ALICE", "U0CAROL")))
    await card_in_state(bot, "v5", "canary_aborted")
    await bot.slack.wait_for(lambda: any("Already done" in e["text"] for e in bot.slack.ephemerals))
    assert len(audit(bot, "canary", "aborted")) == before + 1
    assert len(audit(bot, "canary.abort", "accepted")) == 1
    assert list((await serving(servers["prod"])).values()) == [[n2], [n2], [n2]]


async def test_a_restart_mid_canary_resumes_it_and_one_whose_endpoints_changed_is_aborted(train, fleet):
    _, servers = fleet
    bot = train.bot
    n2 = bot.runtime.releases.serving("ranker", "prod").triton_version
    n5 = bot.runtime.releases.serving("ranker", "staging").triton_version
    await bot.client.command("U0BOB", "canary ranker for=8s")
    await bot.slack.wait_for(lambda: len(steps_of(bot)) >= 1, timeout=60)
    await train.stop()  # mid-window: the canary stays running in the store

    bot = await train.start()
    await said_in_thread(bot, "v5", "the canary's analysis resumes after step")
    await bot.slack.wait_for(lambda: len(steps_of(bot)) >= 3, timeout=60)
    assert list((await serving(servers["prod"])).values()) == [[n5], [n2], [n2]]
    await train.stop()

    async with Fleet([servers["prod"][0].url]) as canary_endpoint:  # someone unloads the canary meanwhile
        await canary_endpoint.unload("ranker")
    bot = await train.start()
    aborted = await said_in_thread(bot, "v5", "the endpoints no longer match the canary")
    assert "the bot restarted" in aborted and f"{servers['prod'][0].url} serves nothing" in aborted
    await card_in_state(bot, "v5", "canary_aborted")
    assert list((await serving(servers["prod"])).values()) == [[n2], [n2], [n2]]

    await bot.client.command("U0ALICE", "canary ranker report")
    report = await bot.slack.wait_for(lambda: next((e["text"] for e in bot.slack.ephemerals
                                                    if "*Canary of ranker v5*" in e["text"]), None))
    assert "*aborted*" in report and "step 1/8" in report and "inconclusive" in report


def steps_of(bot: LocalBot) -> list[str]:
    return [line for line in thread(bot, "v5") if "/8 *" in line]


async def test_kill_9_mid_canary_then_a_restart_resumes_it(fleet, registry, tmp_path):
    """`mlops-bot serve` killed with SIGKILL in the middle of a canary's window, then started again on the same
    store: the canary resumes (its lock, left by the dead process, taken over) and is aborted by a press."""
    repos, servers = fleet
    # `serve` runs on the real clock, so deploy hours are always open here.
    always = {"days": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
              "start": "00:00", "end": "23:59:59", "tz": "UTC"}
    config = canary_config(tmp_path, registry, repos, servers, deploy={"windows": [always]})
    path = tmp_path / "mlops-bot.yaml"
    users, groups = workspace(config)
    async with SlackEmulator(bot_token=CRASH_TOKEN, signing_secret=CRASH_SECRET, users=users, usergroups=groups,
                             post_rate=20, post_burst=20) as slack:
        first, url = await serve(path, slack)
        try:
            async with SlackEventsClient(f"{url}/slack/events", CRASH_SECRET, slack) as client:
                await client.command("U0ALICE", "deploy ranker v1")
                v1 = await slack.wait_for(lambda: message(slack, "ranker v1 staging: verified"), timeout=60)
                await client.press_button("U0CAROL", TEAM, v1["ts"], "Unblock prod")
                await slack.wait_for(lambda: message(slack, "ranker v1 prod: live"), timeout=60)
                await client.command("U0ALICE", "deploy ranker v2")
                await slack.wait_for(lambda: message(slack, "ranker v2 staging: verified"), timeout=60)
                await client.command("U0CAROL", "canary ranker for=60s")
                canary = await slack.wait_for(lambda: message(slack, "ranker v2 prod: in canary"), timeout=60)
                await slack.wait_for(lambda: any("/60 *" in m["text"] for m in slack.replies(TEAM, canary["ts"])), timeout=30)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        with sqlite3.connect(config.store) as db:  # what the dead process left: the canary running, its lock
            assert db.execute("SELECT state FROM canaries").fetchall() == [("running",)]
            assert db.execute("SELECT reason FROM locks").fetchall() == [("running a canary of v2",)]

        second, url = await serve(path, slack)
        try:
            await slack.wait_for(lambda: any("the canary's analysis resumes" in m["text"]
                                             for m in slack.replies(TEAM, canary["ts"])), timeout=60)
            async with SlackEventsClient(f"{url}/slack/events", CRASH_SECRET, slack) as client:
                await client.press_button("U0BOB", TEAM, canary["ts"], "Abort")
                await slack.wait_for(lambda: message(slack, "ranker v2 prod: canary aborted"), timeout=60)
            served = set(map(tuple, (await serving(servers["prod"])).values()))  # every endpoint on the baseline again
            with sqlite3.connect(config.store) as db:
                assert db.execute("SELECT state, decided_by FROM canaries").fetchall() == [("aborted", "U0BOB")]
                assert db.execute("SELECT * FROM locks").fetchall() == []
                recorded = db.execute("SELECT triton_version FROM environments WHERE env = 'prod'").fetchone()[0]
            assert served == {(recorded,)}
        finally:
            second.terminate()
            second.wait(timeout=30)


async def test_with_auto_promote_a_healthy_canary_goes_to_the_whole_fleet_without_a_press(fleet, registry, tmp_path):
    repos, servers = fleet
    config = canary_config(tmp_path, registry, repos, servers, canary={"auto_promote": True})
    async with start_bot(config, Clock(MONDAY_10_LA)) as bot:
        first = await deploy_verified(bot, "v1")
        await bot.client.press_button("U0CAROL", TEAM, first["ts"], "Unblock prod")
        await card_in_state(bot, "v1", "live")
        await deploy_verified(bot, "v2")
        n2 = bot.runtime.releases.serving("ranker", "staging").triton_version
        async with Load([s.url for s in servers["prod"]]):
            await bot.client.command("U0CAROL", "canary ranker")
            await card_in_state(bot, "v2", "canary")
            await card_in_state(bot, "v2", "live", timeout=90)
        said = " ".join(thread(bot, "v2"))
        assert "promotes by itself" in said and "press *Promote to all*" not in said
        assert list((await serving(servers["prod"])).values()) == [[n2], [n2], [n2]]
        assert bot.runtime.releases.lock_of("ranker", "prod") is None
        assert not audit(bot, "canary.promote", "accepted")  # nobody pressed: the bot promoted


def message(slack: SlackEmulator, text: str) -> dict | None:
    return next((m for m in slack.messages(TEAM) if m["text"] == text), None)
