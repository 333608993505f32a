"""The Slack emulator answers like Slack: real HTTP on loopback, driven by slack_sdk and raw aiohttp."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox.slack_emulator import NOT_JSON, UPSTREAM_ERROR, SlackEmulator
from bot.sandbox.slack_events import SlackEventsClient

TOKEN = "xoxb-sandbox"
SECRET = "sandbox-signing-secret"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


RELEASE_CARD = [
    section("*ranker v42* is verified on staging"),
    {
        "type": "actions",
        "block_id": "release",
        "elements": [
            {"type": "button", "action_id": "releases.promote", "value": '{"id":7}', "style": "primary",
             "text": {"type": "plain_text", "text": "Unblock prod"},
             "confirm": {"title": {"type": "plain_text", "text": "Sure?"},
                         "text": {"type": "mrkdwn", "text": "Ship to prod"},
                         "confirm": {"type": "plain_text", "text": "Ship"},
                         "deny": {"type": "plain_text", "text": "Wait"}}},
            {"type": "button", "action_id": "releases.reject", "value": '{"id":7}', "style": "danger",
             "text": {"type": "plain_text", "text": "Reject"}},
        ],
    },
]


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(post_rate=4, post_burst=4, users={"U1": {"name": "alice"}, "U2": {"name": "bob"}}) as e:
        yield e


@pytest.fixture
async def client(emu: SlackEmulator) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=emu.api_url)


class RecordingApp:
    """A tiny stand-in for the bot's HTTP endpoint: verifies signatures like Bolt and keeps what it got."""

    def __init__(self) -> None:
        self.received: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.verifier = SignatureVerifier(SECRET)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.verifier.is_valid_request(body, dict(request.headers)):
            return web.Response(status=401, text="invalid signature")
        self.received.append(request)
        self.bodies.append(body)
        return web.json_response({"response_action": "errors", "errors": {"reason": "too short"}})


@pytest.fixture
async def app() -> AsyncIterator[tuple[RecordingApp, str]]:
    recorder = RecordingApp()
    application = web.Application()
    application.router.add_post("/slack/events", recorder.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield recorder, f"http://{host}:{port}/slack/events"
    await runner.cleanup()


def payload(body: bytes) -> dict:
    return json.loads(parse_qs(body.decode())["payload"][0])


async def test_message_with_51_blocks_is_rejected_like_slack(client: AsyncWebClient, emu: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as rejected:
        await client.chat_postMessage(channel="C1", text="t", blocks=[section(f"{i}") for i in range(51)])
    assert rejected.value.response["error"] == "invalid_blocks"
    assert rejected.value.response["response_metadata"]["messages"] == [
        "[ERROR] no more than 50 items allowed [json-pointer:/blocks]"
    ]
    assert emu.messages("C1") == []

    await client.chat_postMessage(channel="C1", text="t", blocks=[section(f"{i}") for i in range(50)])
    assert len(emu.messages("C1")[0]["blocks"]) == 50


async def test_overlong_section_text_and_button_label_are_rejected(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as rejected:
        await client.chat_postMessage(channel="C1", text="t", blocks=[section("x"), section("y" * 3001)])
    assert rejected.value.response["error"] == "invalid_blocks"
    assert rejected.value.response["response_metadata"]["messages"] == [
        "[ERROR] must be less than 3001 characters [json-pointer:/blocks/1/text/text]"
    ]
    button = {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "b" * 76}}
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        await client.chat_postMessage(channel="C1", text="t", blocks=[{"type": "actions", "elements": [button]}])
    await client.chat_postMessage(channel="C1", text="t", blocks=[section("y" * 3000)])


async def test_text_limits_and_empty_messages(client: AsyncWebClient) -> None:
    for args, error in [({"text": "x" * 40_001}, "msg_too_long"), ({"text": ""}, "no_text")]:
        with pytest.raises(SlackApiError) as rejected:
            await client.api_call("chat.postMessage", json={"channel": "C1", **args})
        assert rejected.value.response["error"] == error
    with pytest.raises(SlackApiError, match="too_long"):
        await client.conversations_setTopic(channel="C1", topic="t" * 251)


async def test_burst_past_the_bucket_gets_429_with_retry_after(emu: SlackEmulator) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        answers = []
        for i in range(8):
            async with http.post(f"{emu.api_url}chat.postMessage", json={"channel": "C1", "text": f"{i}"}) as r:
                answers.append((r.status, r.headers.get("Retry-After"), await r.json()))
    assert [status for status, _, _ in answers[:4]] == [200] * 4
    limited = [a for a in answers if a[0] == 429]
    assert limited, "posting 8 messages at once should be rate limited"
    assert all(int(retry) >= 1 and body == {"ok": False, "error": "ratelimited"} for _, retry, body in limited)
    # Another channel has its own bucket.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.post(f"{emu.api_url}chat.postMessage", json={"channel": "C2", "text": "hi"}) as r:
            assert r.status == 200


async def test_slack_sdk_retry_handler_delivers_every_message_in_order(emu: SlackEmulator) -> None:
    client = AsyncWebClient(
        token=TOKEN, base_url=emu.api_url, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=10)]
    )
    for i in range(6):
        await client.chat_postMessage(channel="C1", text=f"step {i}")
    assert [m["text"] for m in emu.messages("C1")] == [f"step {i}" for i in range(6)]
    assert any(c.status == 429 for c in emu.calls_to("chat.postMessage"))
    timestamps = [m["ts"] for m in emu.messages("C1")]
    assert timestamps == sorted(timestamps, key=float) and len(set(timestamps)) == 6


async def test_bad_or_missing_token_is_refused(emu: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as rejected:
        await AsyncWebClient(token="xoxb-wrong", base_url=emu.api_url).chat_postMessage(channel="C1", text="hi")
    assert rejected.value.response["error"] == "invalid_auth"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{emu.api_url}auth.test") as r:
            assert (r.status, await r.json()) == (200, {"ok": False, "error": "not_authed"})
        async with http.post(f"{emu.api_url}chat.nonsense", data={"token": TOKEN}) as r:
            assert (await r.json())["error"] == "unknown_method"
    assert emu.messages("C1") == []


async def test_threads_updates_deletes_and_dms(client: AsyncWebClient, emu: SlackEmulator) -> None:
    parent = await client.chat_postMessage(channel="C1", text="Deploying ranker v42")
    await client.chat_postMessage(channel="C1", text="copying artifacts", thread_ts=parent["ts"])
    await client.chat_update(channel="C1", ts=parent["ts"], text="Deployed ranker v42")
    [message] = emu.messages("C1")
    assert (message["text"], message["edited"], message["reply_count"]) == ("Deployed ranker v42", True, 1)
    assert [r["text"] for r in emu.replies("C1", parent["ts"])] == ["copying artifacts"]

    with pytest.raises(SlackApiError, match="message_not_found"):
        await client.chat_update(channel="C1", ts="1.000001", text="x")
    await client.chat_delete(channel="C1", ts=parent["ts"])
    assert emu.messages("C1") == []

    dm = await client.conversations_open(users="U1")
    await client.chat_postMessage(channel="U1", text="you are on call")
    assert [m["text"] for m in emu.messages(dm["channel"]["id"])] == ["you are on call"]
    with pytest.raises(SlackApiError, match="channel_not_found"):
        await client.chat_postMessage(channel="U999", text="nobody")


async def test_known_channels_reject_unknown_ones() -> None:
    async with SlackEmulator(channels={"C0MLOPS": {"name": "mlops"}}) as emu:
        client = AsyncWebClient(token=TOKEN, base_url=emu.api_url)
        with pytest.raises(SlackApiError, match="channel_not_found"):
            await client.chat_postMessage(channel="C0OTHER", text="hi")
        info = await client.conversations_info(channel="C0MLOPS")
        assert info["channel"]["name"] == "mlops"


async def test_usergroups(client: AsyncWebClient, emu: SlackEmulator) -> None:
    await client.usergroups_users_update(usergroup="S0ONCALL", users=["U1"])
    assert emu.usergroup_members["S0ONCALL"] == ["U1"]
    listed = await client.usergroups_users_list(usergroup="S0ONCALL")
    assert listed["users"] == ["U1"]
    with pytest.raises(SlackApiError, match="invalid_users"):
        await client.usergroups_users_update(usergroup="S0ONCALL", users=["U404"])
    assert emu.usergroup_members["S0ONCALL"] == ["U1"]


async def test_signed_deliveries_verify_with_slack_sdk(emu: SlackEmulator, app: tuple[RecordingApp, str]) -> None:
    recorder, url = app
    async with SlackEventsClient(url, SECRET, emu) as slack:
        delivery = await slack.command("U1", "deploy ranker 42")
        assert delivery.status == 200
        form = parse_qs(recorder.bodies[0].decode())
        assert form["text"] == ["deploy ranker 42"] and form["user_name"] == ["alice"]
        assert form["trigger_id"] == [delivery.trigger_id]

        retry = await slack.redeliver(delivery, retry_num=1)
        assert retry.status == 200 and recorder.bodies[1] == recorder.bodies[0]
        assert recorder.received[1].headers["X-Slack-Retry-Num"] == "1"

        tampered = {**slack.sign(delivery.request_body), "X-Slack-Signature": "v0=" + "0" * 64}
        forged = await slack.send_raw(delivery.request_body, tampered)
        stale = await slack.send_raw(delivery.request_body, slack.sign(delivery.request_body, int(time.time()) - 600))
        assert (forged.status, stale.status) == (401, 401)

        home = await slack.home_opened("U2")
        event = json.loads(recorder.bodies[-1])
        assert home.status == 200 and event["event"]["type"] == "app_home_opened" and event["event"]["tab"] == "home"


async def test_press_button_and_replace_original(
    client: AsyncWebClient, emu: SlackEmulator, app: tuple[RecordingApp, str]
) -> None:
    recorder, url = app
    posted = await client.chat_postMessage(channel="C1", text="ranker v42 verified", blocks=RELEASE_CARD)
    async with SlackEventsClient(url, SECRET, emu) as slack:
        with pytest.raises(LookupError, match="'Unblock prod' \\(releases.promote\\)"):
            await slack.press_button("U1", "C1", posted["ts"], "Deploy")
        await slack.press_button("U1", "C1", posted["ts"], "Unblock prod")
    sent = payload(recorder.bodies[0])
    assert sent["actions"][0]["action_id"] == "releases.promote" and sent["actions"][0]["value"] == '{"id":7}'
    assert sent["actions"][0]["block_id"] == "release" and sent["message"]["ts"] == posted["ts"]

    async with aiohttp.ClientSession() as http:
        async with http.post(sent["response_url"], json={"replace_original": True, "text": "Promoted by @alice"}) as r:
            assert r.status == 200
        async with http.post(sent["response_url"], json={"text": "only you see this"}) as r:
            assert r.status == 200
        async with http.post(sent["response_url"], json={"blocks": [section("z" * 3001)]}) as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_blocks"
    [message] = emu.messages("C1")
    assert message["text"] == "Promoted by @alice" and message["edited"]
    assert [(e["user"], e["text"]) for e in emu.ephemerals] == [("U1", "only you see this")]


async def test_views_need_a_fresh_trigger(app: tuple[RecordingApp, str]) -> None:
    recorder, url = app
    modal = {
        "type": "modal", "callback_id": "releases.reject", "private_metadata": '{"id":7}',
        "title": {"type": "plain_text", "text": "Reject release"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "blocks": [{"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Why?"},
                    "element": {"type": "plain_text_input", "action_id": "text"}}],
    }
    async with SlackEmulator(trigger_ttl=0.05) as emu, SlackEventsClient(url, SECRET, emu) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=emu.api_url)
        with pytest.raises(SlackApiError, match="invalid_trigger_id"):
            await client.views_open(trigger_id="made-up", view=modal)
        stale = emu.issue_trigger("U1")
        await asyncio.sleep(0.06)
        with pytest.raises(SlackApiError, match="expired_trigger_id"):
            await client.views_open(trigger_id=stale, view=modal)
        with pytest.raises(SlackApiError) as rejected:
            long_title = {**modal, "title": {"type": "plain_text", "text": "t" * 25}}
            await client.views_open(trigger_id=emu.issue_trigger("U1"), view=long_title)
        assert rejected.value.response["error"] == "invalid_arguments"

        opened = await client.views_open(trigger_id=emu.issue_trigger("U1"), view=modal)
        assert emu.views[-1]["view_id"] == opened["view"]["id"]
        answer = await slack.submit_view("U1", opened["view"], {"reason": {"text": "flaky eval"}})
    submitted = payload(recorder.bodies[-1])
    assert submitted["view"]["callback_id"] == "releases.reject"
    assert submitted["view"]["private_metadata"] == '{"id":7}'
    assert submitted["view"]["state"]["values"] == {
        "reason": {"text": {"type": "plain_text_input", "value": "flaky eval"}}
    }
    assert answer.json()["response_action"] == "errors"


async def test_files_upload_v2_end_to_end(client: AsyncWebClient, emu: SlackEmulator) -> None:
    parent = await client.chat_postMessage(channel="C1", text="datagen report")
    await client.files_upload_v2(
        channel="C1", thread_ts=parent["ts"], content=PNG, filename="rows.png", initial_comment="rows per day"
    )
    [uploaded] = emu.files
    assert uploaded["content"].startswith(b"\x89PNG\r\n\x1a\n") and uploaded["name"] == "rows.png"
    [reply] = emu.replies("C1", parent["ts"])
    assert reply["text"] == "rows per day" and reply["files"][0]["id"] == uploaded["id"]


async def test_injected_faults_are_answered_then_cleared(client: AsyncWebClient, emu: SlackEmulator) -> None:
    emu.inject_fault("chat.postMessage", "server_error")
    emu.inject_fault("chat.update", "ratelimited", retry_after=7)
    emu.inject_fault("conversations.setTopic", "channel_not_found", times=2)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.post(f"{emu.api_url}chat.postMessage", json={"channel": "C1", "text": "a"}) as r:
            assert r.status == 500
        async with http.post(f"{emu.api_url}chat.update", json={"channel": "C1", "ts": "1.0", "text": "a"}) as r:
            assert (r.status, r.headers["Retry-After"]) == (429, "7")
    for _ in range(2):
        with pytest.raises(SlackApiError, match="channel_not_found"):
            await client.conversations_setTopic(channel="C1", topic="on call: alice")
    await client.conversations_setTopic(channel="C1", topic="on call: alice")
    await client.chat_postMessage(channel="C1", text="a")
    assert emu.topics["C1"] == "on call: alice" and [m["text"] for m in emu.messages("C1")] == ["a"]


async def test_injected_proxy_answers_are_not_slack_json(emu: SlackEmulator) -> None:
    emu.inject_fault("chat.postMessage", "server_error_text")
    emu.inject_fault("chat.update", "not_json")
    emu.inject_fault("response_url", "server_error_text")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.post(f"{emu.api_url}chat.postMessage", json={"channel": "C1", "text": "a"}) as r:
            assert (r.status, r.content_type, await r.text()) == (503, "text/plain", UPSTREAM_ERROR)
        async with http.post(f"{emu.api_url}chat.update", json={"channel": "C1", "ts": "1.0", "text": "a"}) as r:
            assert (r.status, r.content_type, await r.text()) == (200, "application/json", NOT_JSON)
        async with http.post(emu.issue_response_url("C1", "U1"), json={"text": "a"}) as r:
            assert (r.status, r.content_type, await r.text()) == (503, "text/plain", UPSTREAM_ERROR)
        async with http.post(f"{emu.api_url}chat.postMessage", json={"channel": "C1", "text": "a"}) as r:
            assert r.status == 200 and (await r.json())["ok"]
    assert [(c.status, c.error) for c in emu.calls_to("chat.postMessage")] == [
        (503, "upstream_unavailable"), (200, None)
    ]


async def test_wait_for_returns_the_value_or_explains_the_timeout(client: AsyncWebClient, emu: SlackEmulator) -> None:
    await client.chat_postMessage(channel="C1", text="hello")
    assert (await emu.wait_for(lambda: emu.messages("C1")))[0]["text"] == "hello"
    with pytest.raises(TimeoutError, match="chat.postMessage=ok"):
        await emu.wait_for(lambda: emu.messages("C2"), timeout=0.1)


async def test_injected_timeout_holds_the_request_until_the_client_gives_up() -> None:
    emu = SlackEmulator()
    await emu.start()
    emu.inject_fault("chat.postMessage", "timeout")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(f"{emu.api_url}chat.postMessage", data={"token": TOKEN, "channel": "C1", "text": "a"})
        await emu.stop()  # also releases the held request
    assert emu.messages("C1") == []
