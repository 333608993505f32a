"""Fuzz (issue 18): whatever arrives, the bot answers with a clear error: no 5xx, no traceback, nothing Slack
would refuse, never "failed unexpectedly".

Commands, button presses, view submissions and raw signed bodies go to a real bot on loopback through the
emulator's signing client; the datagen record, the Alertmanager payload and the config file go straight to
their parsers. Sized for CI (a few hundred examples in all, well under a minute); MLOPS_FUZZ_SCALE=10 runs ten
times as many of each.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.alertmanager import AlertmanagerError, Group, group, message, parse
from bot.config import ConfigError, load_config
from bot.monitors.datagen import Report, ReportError, parse_report
from bot.sandbox.block_kit import MAX_MESSAGE_BLOCKS, MAX_MESSAGE_TEXT, block_problems
from bot.sandbox.local import LocalBot, local_bot
from handlers.buttons import BUTTONS
from handlers.modals import MODALS
from handlers.router import VERBS
from tests.conftest import EXAMPLE_CONFIG, ROOT, Clock, write_config

SCALE = float(os.environ.get("MLOPS_FUZZ_SCALE", "1"))
T = TypeVar("T")


def fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


MAIN = "C0MLOPS"
USERS = ["U0ALICE", "U0BOB", "U0CAROL"]  # a deployer, a deployer and approver, an admin
# What the bot says only when it has no better answer: each is a bug for the fuzz.
UNCLEAR = ("failed unexpectedly", "Traceback", "Error:")
# Slack's answers to a message it would not show: the bot sent something past its limits.
REFUSED = {"msg_too_long", "invalid_blocks", "invalid_blocks_format", "invalid_arguments", "no_text", "too_long"}


# --- a real bot on loopback, run in a thread of its own so hypothesis drives it from plain test functions ---------


class Recorded(logging.Handler):
    """ERROR records, so a traceback that reached the log fails the example that caused it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class FuzzBot:
    bot: LocalBot
    loop: asyncio.AbstractEventLoop
    errors: Recorded
    card: str  # a message of the bot's own in MAIN, for presses to come from

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)


def fuzz_config(tmp: Path) -> Path:
    """The example config with its own registry copy and a retrain command that ends at once: fuzzed retrains and
    deploys run for real, so nothing may write into the repository or run for long."""
    registry = tmp / "registry"
    shutil.copytree(ROOT / "examples" / "registry", registry, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load(write_config(tmp).read_text())
    raw["models"]["ranker"]["registry"] = str(registry)
    raw["models"]["ranker"]["retrain"] = {"backend": "command", "command": ["/bin/sh", "-c", "exit 0"]}
    path = tmp / "mlops-bot.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fuzz_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzBot]:
    config = load_config(fuzz_config(tmp_path_factory.mktemp("fuzz")))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-bot", daemon=True)
    thread.start()
    started: asyncio.Future[LocalBot] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with local_bot(config, clock=Clock(), post_rate=1000, post_burst=1000) as bot:
            started.set_result(bot)
            await stop.wait()

    served = asyncio.run_coroutine_threadsafe(serve(), loop)
    bot = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(started), 60), loop).result(70)
    errors = Recorded()
    logging.getLogger().addHandler(errors)
    from bot.notifier import Message

    card = asyncio.run_coroutine_threadsafe(bot.runtime.notifier.post(MAIN, Message("a card to press")), loop).result(10)
    try:
        yield FuzzBot(bot, loop, errors, card)
    finally:
        logging.getLogger().removeHandler(errors)
        loop.call_soon_threadsafe(stop.set)
        served.result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Mark:
    """Where the recorded state stood before an example, so only what that example caused is checked."""

    ephemerals: int
    responses: int
    calls: int
    errors: int
    messages: int


def mark(f: FuzzBot) -> Mark:
    slack = f.bot.slack
    return Mark(len(slack.ephemerals), len(slack.responses), len(slack.calls), len(f.errors.records),
                len(slack.all_messages()))


async def settled(f: FuzzBot) -> None:
    """Wait for the work an example started: its background tasks and the hook queue."""
    await f.bot.slack.wait_for(lambda: not f.bot.runtime.tasks.names, timeout=30)


def check_ack(status: int, body: str, what: str) -> None:
    assert status < 500, f"{what}: HTTP {status}: {body[:300]}"
    assert "Traceback" not in body, f"{what}: {body[:300]}"
    if body.startswith("{"):
        answer = json.loads(body)
        if isinstance(answer, dict) and ("text" in answer or "blocks" in answer):
            assert len(answer.get("text") or "") <= MAX_MESSAGE_TEXT, f"{what}: ack of {len(answer['text']):,} characters"
            assert block_problems(answer.get("blocks") or [], max_blocks=MAX_MESSAGE_BLOCKS) == [], what


def check_after(f: FuzzBot, before: Mark, what: str) -> None:
    slack = f.bot.slack
    errors = f.errors.records[before.errors:]
    assert not errors, f"{what}: logged {errors[0].getMessage()!r}" + (
        f" ({errors[0].exc_info[0].__name__}: {errors[0].exc_info[1]})" if errors[0].exc_info else "")
    refused = [f"{c.method}: {c.error}" for c in slack.calls[before.calls:] if c.error in REFUSED]
    assert not refused, f"{what}: Slack refused what the bot sent: {refused}"
    said = [e["text"] or "" for e in slack.ephemerals[before.ephemerals:]]
    said += [m["text"] or "" for m in slack.all_messages()[before.messages:]]
    unclear = [s for s in said if any(u in s for u in UNCLEAR)]
    assert not unclear, f"{what}: {unclear[0][:300]}"


# --- /mlops command text ------------------------------------------------------------------------------------------

WORDS = [
    "ranker", "nosuch", "staging", "prod", "to", "latest", "v1", "v2", "v999", "compare", "2026-11-12", "2026-11-24",
    "9999-12-31", "0001-01-01", "2026-02-30", "end", "#1", "schedule", "override", "cover", "undo", "cancel",
    "datagen", "recsys", "@U0BOB", "<@U0BOB>", "<@U0NOBODY>", "<!channel>", "30m", "4h", "7d", "8d", "0m",
    str(10**20) + "d", "12", "0", "-1", "²", "١٢", str(2**63), "9" * 5000, "'", '"', "\\", "=", "x=y",
]
OPTION_NAMES = ["dry_run", "reason", "urgent", "job", "rotation", "force", "epochs", "to", "x", "DRY_RUN"]
word = st.sampled_from(WORDS) | st.text(max_size=12) | st.integers().map(str)
option = st.tuples(st.sampled_from(OPTION_NAMES) | st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                   st.sampled_from(["true", "false", "maybe", "", "yes", "0"]) | word).map(lambda kv: f"{kv[0]}={kv[1]}")
verb = st.sampled_from([*sorted(VERBS), "nosuch", "DEPLOY", "Help"])
structured = st.builds(lambda v, rest: " ".join([v, *rest]), verb, st.lists(word | option, max_size=6))
# A long tail of something typed (or pasted) into a command: the issue saw 700 KB echoed back.
padded = st.builds(lambda cmd, n, pad: f"{cmd} {pad * (n // len(pad))}", structured,
                   st.integers(1_000, 120_000), st.sampled_from(["x", "w ", "<!here> ", "é", "a=b "]))
command_text = st.one_of(structured, structured, st.text(max_size=120), padded)


@fuzz(150)
@given(user=st.sampled_from(USERS), text=command_text)
@example(user="U0CAROL", text="datagen " + "x" * 50_000)  # found: echoed back whole, past Slack's 40,000
@example(user="U0CAROL", text=f"silence end {2**64}")  # found: OverflowError
def test_any_command_text_is_answered_clearly(fuzz_bot: FuzzBot, user: str, text: str) -> None:
    before = mark(fuzz_bot)

    async def send() -> tuple[int, str]:
        delivery = await fuzz_bot.bot.client.command(user, text)
        await settled(fuzz_bot)
        return delivery.status, delivery.body

    status, body = fuzz_bot.run(send)
    what = f"/mlops {text[:200]!r}"
    check_ack(status, body, what)
    check_after(fuzz_bot, before, what)


# --- button values -------------------------------------------------------------------------------------------------

# Ids at and past the ends of SQLite's int64, which a value names rows by.
edge_ints = st.sampled_from([0, 1, 2, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30])
json_scalar = st.one_of(edge_ints, st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**80),
                        st.floats(allow_nan=False), st.text(max_size=20),
                        st.sampled_from(["ranker", "staging", "prod", "2026-11-12", "9999-12-31", "next_run", "24h"]))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def value_for(model: type) -> st.SearchStrategy[str]:
    """A button value or modal metadata: mostly the model's own fields with any values (so it often gets past the
    first check and reaches the lookups), else any JSON or text."""
    names = sorted(model.model_fields)
    fields = st.fixed_dictionaries({}, optional={name: json_scalar for name in names})
    shaped = st.dictionaries(st.sampled_from([*names, "extra"]), json_value, max_size=len(names) + 1)
    return st.one_of(fields.map(json.dumps), fields.map(json.dumps), shaped.map(json.dumps),
                     json_value.map(json.dumps), st.text(max_size=40))


button = st.sampled_from(sorted(BUTTONS)).flatmap(lambda a: st.tuples(st.just(a), value_for(BUTTONS[a].value)))
unknown_button = st.tuples(st.text(max_size=30) | st.just("release.nosuch"), st.text(max_size=40))


@fuzz(100)
@given(user=st.sampled_from(USERS), pressed=st.one_of(button, button, unknown_button))
@example(user="U0CAROL", pressed=("alerts.silence", json.dumps({"alert": 2**63})))  # found: OverflowError
@example(user="U0CAROL", pressed=("release.promote", json.dumps({"release": 2**63})))
def test_any_button_value_is_answered_clearly(fuzz_bot: FuzzBot, user: str, pressed: tuple[str, str]) -> None:
    action_id, value = pressed
    before = mark(fuzz_bot)

    async def press() -> tuple[int, str]:
        delivery = await fuzz_bot.bot.client.press(user, action_id, value, channel=MAIN, message_ts=fuzz_bot.card)
        await settled(fuzz_bot)
        return delivery.status, delivery.body

    status, body = fuzz_bot.run(press)
    what = f"press {action_id!r} value {value[:200]!r}"
    check_ack(status, body, what)
    check_after(fuzz_bot, before, what)


# --- view submissions ------------------------------------------------------------------------------------------

def modal_view(callback_id: str, metadata: str) -> dict[str, Any]:
    return {
        "type": "modal", "callback_id": callback_id, "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Fuzz"}, "submit": {"type": "plain_text", "text": "Go"},
        "blocks": [{"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
                    "element": {"type": "plain_text_input", "action_id": "reason"}}],
    }


modal = st.sampled_from(sorted(MODALS)).flatmap(lambda c: st.tuples(st.just(c), value_for(MODALS[c].metadata)))
reason = st.one_of(st.text(max_size=60), st.sampled_from(["", "   ", "hotfix for the ranking incident"]),
                   st.integers(1, 50_000).map(lambda n: "r" * n))


@fuzz(50)
@given(user=st.sampled_from(USERS), submitted=st.one_of(modal, modal, unknown_button), typed=reason)
@example(user="U0CAROL", submitted=("release.urgent", json.dumps({"release": 2**63})), typed="hotfix now")  # found: 500
def test_any_view_submission_is_answered_clearly(
    fuzz_bot: FuzzBot, user: str, submitted: tuple[str, str], typed: str,
) -> None:
    callback_id, metadata = submitted
    before = mark(fuzz_bot)

    async def submit() -> tuple[int, str]:
        view = modal_view(callback_id, metadata)
        delivery = await fuzz_bot.bot.client.submit_view(user, view, {"reason": {"reason": typed}})
        await settled(fuzz_bot)
        return delivery.status, delivery.body

    status, body = fuzz_bot.run(submit)
    what = f"view {callback_id!r} metadata {metadata[:200]!r} reason {typed[:60]!r}"
    check_ack(status, body, what)
    check_after(fuzz_bot, before, what)


# --- raw signed bodies ----------------------------------------------------------------------------------------------

form = st.dictionaries(st.sampled_from(["command", "text", "user_id", "channel_id", "trigger_id", "response_url",
                                        "payload", "team_id", "type"]) | st.text(max_size=8),
                       st.text(max_size=40) | json_value.map(json.dumps), max_size=6)
raw_body = st.one_of(
    form.map(lambda f: (urlencode(f).encode(), "application/x-www-form-urlencoded")),
    json_value.map(lambda v: (json.dumps(v).encode(), "application/json")),
    st.binary(max_size=200).map(lambda b: (b, "application/x-www-form-urlencoded")),
    st.binary(max_size=200).map(lambda b: (b, "application/json")),
)


@fuzz(60)
@given(sent=raw_body)
def test_any_signed_body_gets_no_server_error(fuzz_bot: FuzzBot, sent: tuple[bytes, str]) -> None:
    body, content_type = sent
    before = mark(fuzz_bot)

    async def deliver() -> tuple[int, str]:
        client = fuzz_bot.bot.client
        delivery = await client.send_raw(body, client.sign(body), content_type)
        await settled(fuzz_bot)
        return delivery.status, delivery.body

    status, answer = fuzz_bot.run(deliver)
    what = f"signed {content_type} body {body[:200]!r}"
    check_ack(status, answer, what)
    check_after(fuzz_bot, before, what)


# --- the datagen record -----------------------------------------------------------------------------------------

RECORD = json.loads((ROOT / "examples" / "datagen" / "2026-11-12.json").read_text())
record_scalar = st.one_of(
    json_scalar, st.integers(min_value=2**63 - 2, max_value=10**400), st.sampled_from([10**308, 10**400, -(10**400)]),
    st.integers(max_value=-1), st.floats(), st.sampled_from(["9" * 30 + "h:1mins", "1e5h", f"{10**30} (1.0%)"]),
    st.from_regex(r"\d{1,40}(\.\d{1,5})?h:\d{1,40}mins", fullmatch=True),
    st.from_regex(r"-?\d{1,30}(,\d{3}){0,3} \(-?\d{1,30}(\.\d+)?%\)", fullmatch=True),
    st.from_regex(r"\d{4,6}-\d\d-\d\d(::|T)\d\d:\d\d:\d\d", fullmatch=True),
)
record_value = st.recursive(record_scalar, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=6)
record_keys = st.sampled_from([*sorted(RECORD), "run_date", "error", "exception", "upload_error_message",
                               "num_events_post_filter_", "num_items_post_filter_new_stage", "x"])
changed_record = st.builds(
    lambda changes, drop: {k: v for k, v in RECORD.items() if k not in drop} | changes,
    st.dictionaries(record_keys, record_value, min_size=1, max_size=4), st.sets(st.sampled_from(sorted(RECORD)), max_size=4))


@fuzz(200)
@given(record=st.one_of(changed_record, changed_record, st.dictionaries(st.text(max_size=10), record_value, max_size=5)),
       as_json=st.booleans(), run_date=st.none() | st.dates())
@example(record={**RECORD, "num_raw_events": 10**400}, as_json=True, run_date=None)  # found: OverflowError in the rules
def test_any_datagen_record_is_read_or_refused_with_a_reason(record: dict, as_json: bool, run_date: Any) -> None:
    raw = json.dumps(record).encode() if as_json else record
    try:
        report = parse_report(raw, run_date=run_date)
    except ReportError as exc:
        assert exc.reason.strip()
        return
    assert isinstance(report, Report)
    report.metrics(), report.funnel(), report.failed  # what the rules and the summary read next


@fuzz(60)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_datagen_body_is_read_or_refused_with_a_reason(raw: bytes) -> None:
    try:
        parse_report(raw, run_date=datetime(2026, 11, 12, tzinfo=UTC).date())
    except ReportError as exc:
        assert exc.reason.strip()


# --- the Alertmanager payload ---------------------------------------------------------------------------------------

labels = st.dictionaries(st.sampled_from(["alertname", "severity", "model", "env", "instance"]) | st.text(max_size=8),
                         st.text(max_size=60) | st.sampled_from(["ranker", "staging", "prod", "critical"]), max_size=5)
moment = st.one_of(st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat), st.text(max_size=30),
                   st.sampled_from(["2026-11-25T04:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]))
alert = st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "resolved"]) | json_value, "labels": labels | json_value, "startsAt": moment},
    optional={"annotations": labels, "endsAt": moment, "generatorURL": st.text(max_size=20),
              "fingerprint": st.text(max_size=10), "valueString": st.text(max_size=40) | json_value,
              "panelURL": st.text(max_size=20) | st.just("http://grafana:3000/d/x?viewPanel=2"),
              "silenceURL": st.text(max_size=20) | json_value, "values": json_value})
notification = st.fixed_dictionaries(
    {"version": st.sampled_from(["4", "1"]) | json_value, "groupKey": st.text(max_size=40),
     "status": st.sampled_from(["firing", "resolved"]),
     "alerts": st.lists(alert, max_size=12)},
    optional={"groupLabels": labels, "commonLabels": labels, "commonAnnotations": labels, "receiver": st.text(max_size=5),
              "externalURL": st.text(max_size=30) | st.just("http://alertmanager:9093"),
              "truncatedAlerts": st.integers() | st.integers(min_value=2**63),
              "orgId": st.integers() | json_value, "title": st.text(max_size=20), "state": st.text(max_size=8)})


@fuzz(150)
@given(body=st.one_of(notification.map(lambda n: json.dumps(n).encode()), notification.map(lambda n: json.dumps(n).encode()),
                      json_value.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_any_alertmanager_payload_is_queued_or_refused_with_a_reason(body: bytes) -> None:
    try:
        taken = parse(body)
    except AlertmanagerError as exc:
        assert str(exc).startswith("not an Alertmanager (version 4) or Grafana (version 1) notification: ")
        return
    # What the hook does before it answers: keep the group, and store it in the queue as JSON.
    kept = group(taken)
    again = Group.model_validate(json.loads(json.dumps(kept.model_dump(mode="json"))))
    assert again.alerts == len(taken.alerts) and again.notification.key == taken.key
    assert message(again, row_id=1, target=None, silenced=None).text  # whatever came in, a message can be shown


# --- the config loader ----------------------------------------------------------------------------------------------

EXAMPLE = yaml.safe_load(EXAMPLE_CONFIG.read_text())


def _paths(node: Any, at: tuple = ()) -> Iterator[tuple]:
    if at:
        yield at
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*at, key))


CONFIG_PATHS = list(_paths(EXAMPLE))
config_scalar = st.one_of(
    json_scalar, st.dates(), st.datetimes(), st.floats(),
    st.sampled_from(["09:00", "16:00Z", "25:99", "UTC", "America", "posixrules", "zone.tab", "s3://b/{date}", "{date}",
                     "U0X", "C0X", "S0X", "staging", "prod", "command", "airflow", "~", "", "\x00"]))
config_value = st.recursive(config_scalar, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=5)


def _changed(changes: list[tuple[tuple, Any]]) -> bytes:
    raw = copy.deepcopy(EXAMPLE)
    for at, value in changes:
        node = raw
        try:
            for key in at[:-1]:
                node = node[key]
            node[at[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change replaced what this one would have reached into
    return yaml.safe_dump(raw).encode()


changed_config = st.lists(st.tuples(st.sampled_from(CONFIG_PATHS), config_value), min_size=1, max_size=4).map(_changed)
yaml_text = st.text(alphabet="[]{}:-,&*!|>'\"#%@` \n\tabc019.", max_size=120).map(str.encode)


@fuzz(150)
@given(text=st.one_of(changed_config, changed_config, yaml_text, st.binary(max_size=120)))
def test_any_config_file_loads_or_is_refused_line_by_line(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed-mlops-bot.yaml"
    path.write_bytes(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems
        assert all(line.startswith(f"{path}: ") and "\n" not in line for line in exc.problems), exc.problems


# --- what the fuzz found, pinned --------------------------------------------------------------------------------------

def test_a_config_that_is_not_utf8_or_nested_too_deep_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mlops-bot.yaml"
    for text, said in [(b"\xd0", "not UTF-8"), (b"channels: " + b"[" * 50_000, "nested too deeply"),
                       (b"channels: {main: C0X}\ndeploy: {windows: [{start: '09:00', end: '16:00Z'}]}\n", "without an offset")]:
        path.write_bytes(text)
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert said in str(refused.value)


def test_a_datagen_number_too_big_for_the_rules_is_refused() -> None:
    for key, value in [("num_raw_events", 10**400), ("item_diff_1d_delta", f"{10**30} (+1.0%)"),
                       ("datagen_run_time", "9" * 30 + "h:1mins")]:
        with pytest.raises(ReportError) as refused:
            parse_report({**RECORD, key: value})
        assert key in refused.value.reason


def test_a_datagen_body_with_a_number_past_pythons_digit_limit_is_refused() -> None:
    body = json.dumps(RECORD).replace('"num_raw_events": ', '"num_raw_events": ' + "9" * 5000 + ", \"was\": ", 1)
    with pytest.raises(ReportError) as refused:
        parse_report(body.encode())
    assert refused.value.reason == "unreadable JSON: a number with more digits than any count has"
