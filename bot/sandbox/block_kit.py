"""Slack's documented limits on messages and views, and the Block Kit checks: what Slack would say is wrong
with a message's blocks or a view, as "[ERROR] ... [json-pointer:...]" lines, empty when Slack accepts them."""
from __future__ import annotations

from typing import Any

# From the Block Kit reference and chat.postMessage's page.
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_MESSAGE_TEXT = 40_000
KNOWN_BLOCKS = {
    "section", "header", "context", "divider", "actions", "image", "input",
    "rich_text", "markdown", "file", "video",
}


def _too_long(value: Any, limit: int, pointer: str) -> list[str]:
    if isinstance(value, str) and len(value) > limit:
        return [f"[ERROR] must be less than {limit + 1} characters [json-pointer:{pointer}]"]
    return []


def _text_object(obj: Any, limit: int, pointer: str, *, plain_only: bool = False) -> list[str]:
    types = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in types or not isinstance(obj.get("text"), str):
        return [f"[ERROR] failed to match all allowed schemas [json-pointer:{pointer}]"]
    return _too_long(obj["text"], limit, f"{pointer}/text")


def _optional_text(obj: dict[str, Any], key: str, limit: int, pointer: str, *, plain_only: bool = True) -> list[str]:
    if key not in obj:
        return []
    return _text_object(obj[key], limit, f"{pointer}/{key}", plain_only=plain_only)


def _confirm_problems(confirm: Any, pointer: str) -> list[str]:
    if not isinstance(confirm, dict):
        return [f"[ERROR] failed to match all allowed schemas [json-pointer:{pointer}]"]
    return [
        *_text_object(confirm.get("title"), 100, f"{pointer}/title", plain_only=True),
        *_text_object(confirm.get("text"), 300, f"{pointer}/text"),
        *_text_object(confirm.get("confirm"), 30, f"{pointer}/confirm", plain_only=True),
        *_text_object(confirm.get("deny"), 30, f"{pointer}/deny", plain_only=True),
    ]


def _element_problems(element: Any, pointer: str) -> list[str]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [f"[ERROR] missing required field: type [json-pointer:{pointer}]"]
    problems = _too_long(element.get("action_id"), 255, f"{pointer}/action_id")
    problems += _optional_text(element, "placeholder", 150, pointer)
    if "confirm" in element:
        problems += _confirm_problems(element["confirm"], f"{pointer}/confirm")
    if element["type"] == "button":
        problems += _text_object(element.get("text"), 75, f"{pointer}/text", plain_only=True)
        problems += _too_long(element.get("value"), 2000, f"{pointer}/value")
        problems += _too_long(element.get("url"), 3000, f"{pointer}/url")
        if element.get("style") not in (None, "primary", "danger"):
            problems.append(f"[ERROR] must be one of primary, danger [json-pointer:{pointer}/style]")
    for i, option in enumerate(element.get("options") or []):
        at = f"{pointer}/options/{i}"
        problems += _text_object(option.get("text") if isinstance(option, dict) else None, 75, f"{at}/text")
        problems += _too_long(option.get("value") if isinstance(option, dict) else None, 150, f"{at}/value")
    if len(element.get("options") or []) > 100:
        problems.append(f"[ERROR] no more than 100 items allowed [json-pointer:{pointer}/options]")
    return problems


def _elements_problems(block: dict[str, Any], key: str, limit: int, pointer: str) -> list[str]:
    elements = block.get(key)
    if not isinstance(elements, list) or not elements:
        return [f"[ERROR] missing required field: {key} [json-pointer:{pointer}]"]
    if len(elements) > limit:
        return [f"[ERROR] no more than {limit} items allowed [json-pointer:{pointer}/{key}]"]
    return []


def _block_problems(block: Any, pointer: str) -> list[str]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return [f"[ERROR] missing required field: type [json-pointer:{pointer}]"]
    kind = block["type"]
    if kind not in KNOWN_BLOCKS:
        return [f"[ERROR] failed to match all allowed schemas [json-pointer:{pointer}]"]
    problems = _too_long(block.get("block_id"), 255, f"{pointer}/block_id")
    if kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"[ERROR] must provide either text or fields [json-pointer:{pointer}]")
        problems += _optional_text(block, "text", 3000, pointer, plain_only=False)
        fields = block.get("fields", [])
        if len(fields) > 10:
            problems.append(f"[ERROR] no more than 10 items allowed [json-pointer:{pointer}/fields]")
        for i, item in enumerate(fields):
            problems += _text_object(item, 2000, f"{pointer}/fields/{i}")
        if "accessory" in block:
            problems += _element_problems(block["accessory"], f"{pointer}/accessory")
    elif kind == "header":
        problems += _text_object(block.get("text"), 150, f"{pointer}/text", plain_only=True)
    elif kind == "context":
        problems += _elements_problems(block, "elements", 10, pointer)
        for i, element in enumerate(block.get("elements") or []):
            at = f"{pointer}/elements/{i}"
            if isinstance(element, dict) and element.get("type") == "image":
                problems += _too_long(element.get("alt_text"), 2000, f"{at}/alt_text")
            else:
                problems += _text_object(element, 3000, at)
    elif kind == "actions":
        problems += _elements_problems(block, "elements", 25, pointer)
        action_ids = [e.get("action_id") for e in block.get("elements") or [] if isinstance(e, dict)]
        for i, element in enumerate(block.get("elements") or []):
            problems += _element_problems(element, f"{pointer}/elements/{i}")
        if len([a for a in action_ids if a]) != len({a for a in action_ids if a}):
            problems.append(f"[ERROR] action_id must be unique within a block [json-pointer:{pointer}/elements]")
    elif kind == "image":
        for key, limit in (("image_url", 3000), ("alt_text", 2000)):
            if not block.get(key):
                problems.append(f"[ERROR] missing required field: {key} [json-pointer:{pointer}]")
            problems += _too_long(block.get(key), limit, f"{pointer}/{key}")
        problems += _optional_text(block, "title", 2000, pointer)
    elif kind == "input":
        problems += _text_object(block.get("label"), 2000, f"{pointer}/label", plain_only=True)
        problems += _optional_text(block, "hint", 2000, pointer)
        problems += _element_problems(block.get("element"), f"{pointer}/element")
    return problems


def block_problems(blocks: list[Any], *, max_blocks: int, pointer: str = "/blocks") -> list[str]:
    """What Slack would say is wrong with `blocks`, one line per problem; empty when Slack would accept them."""
    if len(blocks) > max_blocks:
        return [f"[ERROR] no more than {max_blocks} items allowed [json-pointer:{pointer}]"]
    problems: list[str] = []
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        problems += _block_problems(block, f"{pointer}/{i}")
        block_id = block.get("block_id") if isinstance(block, dict) else None
        if block_id in block_ids:
            problems.append(f"[ERROR] block_id must be unique [json-pointer:{pointer}/{i}/block_id]")
        if block_id:
            block_ids.add(block_id)
    return problems


def view_problems(view: dict[str, Any]) -> list[str]:
    """What Slack would say is wrong with a modal or App Home view."""
    if view.get("type") not in ("modal", "home"):
        return ["[ERROR] failed to match all allowed schemas [json-pointer:/view/type]"]
    problems: list[str] = []
    if view["type"] == "modal":
        problems += _text_object(view.get("title"), 24, "/view/title", plain_only=True)
        problems += _optional_text(view, "submit", 24, "/view")
        problems += _optional_text(view, "close", 24, "/view")
        has_input = any(isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or [])
        if has_input and "submit" not in view:
            problems.append("[ERROR] submit is required when the view has input blocks [json-pointer:/view]")
    problems += _too_long(view.get("callback_id"), 255, "/view/callback_id")
    problems += _too_long(view.get("private_metadata"), 3000, "/view/private_metadata")
    problems += _too_long(view.get("external_id"), 255, "/view/external_id")
    blocks = view.get("blocks")
    if not isinstance(blocks, list):
        return problems + ["[ERROR] missing required field: blocks [json-pointer:/view]"]
    return problems + block_problems(blocks, max_blocks=MAX_VIEW_BLOCKS, pointer="/view/blocks")
