"""Slack messages and views as plain terminal text, for `mlops-bot sandbox`.

Pure functions: they read the message or view dicts the emulator recorded and return text. Buttons are
numbered across everything rendered into one `buttons` list, so the shell can press one by its number; a
`number` function given instead decides each button's number (the shell keeps one per button for its life).
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
Numbering = Callable[[str, str], int]  # (action_id, label) -> the number shown for that button
RULE = "─" * 40
_TOKEN = re.compile(r"<([^<>]+)>")


@dataclass(frozen=True)
class Button:
    """A button as the shell offers it: its number on screen and what pressing it sends."""

    number: int
    label: str
    action_id: str
    value: str
    block_id: str
    style: str | None
    confirm: Json | None  # Slack's confirm dialog, shown before the press is sent


def mrkdwn_to_text(text: str, users: Mapping[str, str] | None = None) -> str:
    """Replace Slack's angle-bracket tokens with what a person sees, then unescape &amp; &lt; &gt;."""
    users = users or {}

    def readable(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):
            user = target[1:]
            return "@" + users.get(user, label or user)
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!subteam^"):
            return label if label.startswith("@") else "@" + (label or target.removeprefix("!subteam^"))
        if target.startswith("!date^"):
            return label  # the fallback Slack shows where it cannot format the date
        if target.startswith("!"):
            return "@" + target[1:]
        return f"{label} ({target})" if label else target

    return html.unescape(_TOKEN.sub(readable, text))


def _text(obj: Any, users: Mapping[str, str] | None) -> str:
    if not isinstance(obj, dict):
        return ""
    text = str(obj.get("text", ""))
    return mrkdwn_to_text(text, users) if obj.get("type") == "mrkdwn" else text


def _rich_text(element: Any) -> str:
    """The words of a rich_text element tree, with list items on their own lines."""
    if not isinstance(element, dict):
        return ""
    kind = element.get("type")
    if kind == "text":
        return element.get("text", "")
    if kind == "link":
        return element.get("text") or element.get("url", "")
    if kind == "user":
        return "@" + element.get("user_id", "")
    if kind == "channel":
        return "#" + element.get("channel_id", "")
    if kind == "emoji":
        return f":{element.get('name', '')}:"
    parts = [_rich_text(e) for e in element.get("elements", [])]
    if kind == "rich_text_list":
        return "\n".join(f"• {p}" for p in parts)
    return ("\n" if kind == "rich_text" else "").join(parts)


@dataclass(frozen=True)
class _Out:
    buttons: list[Button]
    users: Mapping[str, str] | None
    number: Numbering | None


def _element(element: Json, block_id: str, out: _Out) -> str:
    buttons, users = out.buttons, out.users
    kind = element.get("type")
    if kind == "button":
        action_id, label = element.get("action_id", ""), _text(element.get("text"), users)
        button = Button(
            number=out.number(action_id, label) if out.number else len(buttons) + 1,
            label=label, action_id=action_id, value=element.get("value", ""), block_id=block_id,
            style=element.get("style"), confirm=element.get("confirm"),
        )
        buttons.append(button)
        notes = [n for n in (button.style, "asks to confirm" if button.confirm else None) if n]
        return f"[{button.number}] {button.label}" + (f" ({', '.join(notes)})" if notes else "")
    if kind == "image":
        return f"[image: {element.get('alt_text', '')}]"
    if kind == "plain_text_input":
        shown = element.get("initial_value") or _text(element.get("placeholder"), users)
        return f"[{shown}____]"
    shown = _text(element.get("placeholder"), users) or _text(
        (element.get("initial_option") or {}).get("text"), users
    )
    return f"<{kind}: {shown}>" if shown else f"<{kind}>"


def _columns(cells: list[str], width: int = 28) -> str:
    """Section fields two to a row, as Slack lays them out; a cell's own lines stay stacked."""
    split = [c.splitlines() or [""] for c in cells]
    height = max(len(lines) for lines in split)
    rows = zip(*(lines + [""] * (height - len(lines)) for lines in split), strict=True)  # padded to one height
    return "\n".join("   ".join(f"{cell:<{width}}" for cell in row).rstrip() for row in rows)


def _block(block: Json, index: int, out: _Out) -> str:
    users = out.users
    kind = block.get("type")
    block_id = block.get("block_id", f"block-{index}")
    if kind == "header":
        return f"== {_text(block.get('text'), users)} =="
    if kind == "divider":
        return RULE
    if kind == "section":
        lines = [_text(block["text"], users)] if "text" in block else []
        fields = [_text(f, users) for f in block.get("fields", [])]
        lines += [_columns(fields[i:i + 2]) for i in range(0, len(fields), 2)]
        if "accessory" in block:
            lines.append("  " + _element(block["accessory"], block_id, out))
        return "\n".join(lines)
    if kind == "context":
        return "  " + " · ".join(
            _element(e, block_id, out) if e.get("type") == "image" else _text(e, users)
            for e in block.get("elements", [])
        )
    if kind == "actions":
        return "  ".join(_element(e, block_id, out) for e in block.get("elements", []))
    if kind == "image":
        title = _text(block.get("title"), users)
        return f"[image: {block.get('alt_text', '')}] {block.get('image_url', '')}" + (f"\n{title}" if title else "")
    if kind == "input":
        optional = " (optional)" if block.get("optional") else ""
        hint = _text(block.get("hint"), users)
        element = _element(block.get("element", {}), block_id, out)
        line = f"{_text(block.get('label'), users)}{optional}: {element}"
        return line + (f"\n  {hint}" if hint else "")
    if kind == "rich_text":
        return _rich_text(block)
    if kind == "markdown":
        return block.get("text", "")
    return f"[{kind} block]"


def _blocks(blocks: list[Json], out: _Out) -> list[str]:
    return [_block(b, i, out) for i, b in enumerate(blocks)]


def render_message(
    msg: Json, *, buttons: list[Button] | None = None, users: Mapping[str, str] | None = None,
    number: Numbering | None = None,
) -> str:
    """A message as terminal text; its buttons are appended to `buttons`, numbered after those already there
    (or by `number`). `users` maps user ids to names for mentions.
    """
    out = _Out([] if buttons is None else buttons, users, number)
    blocks = msg.get("blocks")
    lines = _blocks(blocks, out) if blocks else [mrkdwn_to_text(msg.get("text", ""), users)]
    lines += [f"[file: {f.get('title') or f.get('name', '')}]" for f in msg.get("files", [])]
    notes = [n for n in (
        "edited" if msg.get("edited") else None,
        f"{msg['reply_count']} {'reply' if msg['reply_count'] == 1 else 'replies'}" if msg.get("reply_count") else None,
    ) if n]
    if notes:
        lines.append(f"({', '.join(notes)})")
    return "\n".join(line for line in lines if line)


def render_view(
    view: Json, *, buttons: list[Button] | None = None, users: Mapping[str, str] | None = None,
    number: Numbering | None = None,
) -> str:
    """A modal or App Home view as terminal text, with its title and its submit and close buttons."""
    out = _Out([] if buttons is None else buttons, users, number)
    title = _text(view.get("title"), users) or ("App Home" if view.get("type") == "home" else "")
    lines = [f"┌ {title} ┐", *_blocks(view.get("blocks", []), out)]
    footer = [f"<{_text(view[key], users)}>" for key in ("close", "submit") if key in view]
    if footer:
        lines.append("  ".join(footer))
    return "\n".join(line for line in lines if line)
