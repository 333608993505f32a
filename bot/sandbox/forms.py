"""Modals filled in the terminal: each input field is asked for in turn, and the view is submitted as Slack
submits it (a signed view_submission through the emulator's events client). Errors the bot answers with
(`response_action: errors`) are shown and their fields asked again, as Slack keeps the modal open."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.sandbox.render import Json, mrkdwn_to_text, render_view
from bot.sandbox.slack_events import SlackEventsClient

CANCEL = "/cancel"
MAX_ROUNDS = 3  # a script that keeps answering a field wrongly gives up instead of looping

Ask = Callable[[str], Awaitable[str | None]]  # one line typed at a prompt; None when the input has ended


def _inputs(view: Json) -> list[Json]:
    return [b for b in view.get("blocks", []) if b.get("type") == "input" and b.get("block_id")]


def _label(block: Json) -> str:
    return (block.get("label") or {}).get("text", block["block_id"])


def _options(element: Json) -> list[tuple[str, str]]:
    return [((o.get("text") or {}).get("text", ""), o.get("value", "")) for o in element.get("options", [])]


async def _ask_field(block: Json, ask: Ask, say: Callable[[str], None]) -> str | None:
    element = block.get("element", {})
    options = _options(element)
    if options:
        say("\n".join(f"  {i}. {text}" for i, (text, _) in enumerate(options, 1)))
    answer = await ask(f"{_label(block)}{' (optional)' if block.get('optional') else ''}: ")
    if answer is None or answer.strip() == CANCEL:
        return None
    if options and answer.strip().isdigit() and 1 <= int(answer) <= len(options):
        return options[int(answer) - 1][1]
    return answer


async def fill(client: SlackEventsClient, user: str, view: Json, ask: Ask, say: Callable[[str], None]) -> str:
    """Fill and submit `view` (as views.open stored it) for `user`; what happened, in a few words."""
    say(render_view(view))
    say(f"(fill in the form; {CANCEL} closes it without submitting)")
    values: dict[str, dict[str, str]] = {}
    asking = _inputs(view)
    for _ in range(MAX_ROUNDS):
        for block in asking:
            answer = await _ask_field(block, ask, say)
            if answer is None:
                return "form closed without submitting"
            values[block["block_id"]] = {block["element"].get("action_id", block["block_id"]): answer}
        delivery = await client.submit_view(user, view, values)
        if delivery.status != 200:
            return f"the bot answered the submission with HTTP {delivery.status}: {delivery.body[:200]}"
        answer = delivery.json() or {}
        if answer.get("response_action") != "errors":
            return "submitted"
        errors = answer.get("errors", {})
        say("\n".join(f"!! {_label(b)}: {mrkdwn_to_text(errors[b['block_id']])}"
                      for b in _inputs(view) if b["block_id"] in errors))
        asking = [b for b in _inputs(view) if b["block_id"] in errors]
    return "form closed: its fields were refused too often"
