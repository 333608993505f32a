"""Every way a Slack call fails reaches the caller as SlackError(method, readable error), against real HTTP."""
from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.notifier import Message, Notifier, SlackError, web_client
from bot.sandbox.slack_emulator import NOT_JSON, UPSTREAM_ERROR, SlackEmulator

TOKEN = "xoxb-sandbox"
MSG = Message(text="ranker v42 is on staging")
# web_client retries a 503 twice, so a fault answered three times is what the caller finally gets.
ATTEMPTS = 3


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(users={"U1": {"name": "alice"}}) as e:
        yield e


@pytest.fixture
def notifier(emu: SlackEmulator) -> Notifier:
    return Notifier(web_client(TOKEN, base_url=emu.api_url))


Call = Callable[[Notifier, SlackEmulator], Awaitable[object]]
CALLS: dict[str, tuple[str, Call]] = {
    "post": ("chat.postMessage", lambda n, e: n.post("C1", MSG)),
    "update": ("chat.update", lambda n, e: n.update("C1", "1700000000.000100", MSG)),
    "ephemeral": ("chat.postEphemeral", lambda n, e: n.ephemeral("C1", "U1", MSG)),
    "respond": ("response_url", lambda n, e: n.respond(e.issue_response_url("C1", "U1"), MSG)),
}


@pytest.mark.parametrize("name", CALLS)
async def test_a_text_plain_503_from_a_load_balancer_is_a_slack_error(
    name: str, emu: SlackEmulator, notifier: Notifier
) -> None:
    method, call = CALLS[name]
    emu.inject_fault(method, "server_error_text", times=ATTEMPTS)

    with pytest.raises(SlackError) as failed:
        await call(notifier, emu)

    assert (failed.value.method, failed.value.error) == (method, f"HTTP 503: {UPSTREAM_ERROR}")
    if method != "response_url":  # the emulator records Web API calls only
        assert [c.status for c in emu.calls_to(method)] == [503] * ATTEMPTS


async def test_an_upload_behind_a_failing_load_balancer_is_a_slack_error(emu: SlackEmulator, notifier: Notifier) -> None:
    emu.inject_fault("files.getUploadURLExternal", "server_error_text", times=ATTEMPTS)

    with pytest.raises(SlackError) as failed:
        await notifier.upload("C1", "rows.png", b"\x89PNG", title="rows per day")

    assert (failed.value.method, failed.value.error) == ("files.upload", f"HTTP 503: {UPSTREAM_ERROR}")
    assert emu.files == []


async def test_an_html_page_labelled_json_is_a_slack_error_quoting_it(emu: SlackEmulator, notifier: Notifier) -> None:
    emu.inject_fault("chat.postMessage", "not_json")

    with pytest.raises(SlackError) as failed:
        await notifier.post("C1", MSG)

    assert failed.value.method == "chat.postMessage"
    assert failed.value.error == f"HTTP 200: Received a response in a non-JSON format: {NOT_JSON}"


async def test_slack_error_codes_still_come_through_as_the_code(emu: SlackEmulator, notifier: Notifier) -> None:
    emu.inject_fault("chat.postMessage", "not_in_channel")

    with pytest.raises(SlackError) as failed:
        await notifier.post("C1", MSG)

    assert (failed.value.method, failed.value.error) == ("chat.postMessage", "not_in_channel")
    assert str(failed.value) == "Slack chat.postMessage failed: not_in_channel"


@pytest.fixture
async def proxy() -> AsyncIterator[str]:
    """A proxy that answers every request 200 with a text/plain page: the SDK reads it as a str and trips."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="Service is in maintenance.\n\nBack soon.", content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/api/"
    await runner.cleanup()


async def test_a_200_text_plain_page_is_a_slack_error_not_an_attribute_error(proxy: str) -> None:
    notifier = Notifier(web_client(TOKEN, base_url=proxy))

    with pytest.raises(SlackError) as failed:
        await notifier.set_topic("C1", "on call: alice")

    assert failed.value.method == "conversations.setTopic"
    assert failed.value.error == (
        "slack_sdk could not read the answer (AttributeError: 'str' object has no attribute 'get')"
    )


async def test_a_response_url_that_cannot_be_reached_is_a_slack_error() -> None:
    notifier = Notifier(AsyncWebClient(token=TOKEN, retry_handlers=[]))  # no retries: refused at once
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    with pytest.raises(SlackError) as failed:
        await notifier.respond(f"http://127.0.0.1:{closed_port}/response/gone", MSG)

    assert failed.value.method == "response_url"
    assert failed.value.error.startswith("ClientConnectorError: Cannot connect to host 127.0.0.1:")


async def test_our_own_bugs_are_not_disguised_as_slack_errors(emu: SlackEmulator, notifier: Notifier) -> None:
    with pytest.raises(AttributeError):
        await notifier._call("chat.noSuchMethod", channel="C1")
    with pytest.raises(TypeError, match="not JSON serializable"):
        await notifier.update("C1", "1700000000.000100", Message(text="t", blocks=[{"type": "section", "x": {1}}]))
    assert emu.calls_to("chat.update") == []
