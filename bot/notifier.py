"""The domains' one door to Slack.

Domain services hand `Message`s built by their own messages.py to `Notifier`; nothing outside this module
and handlers/ talks to slack_sdk, so the domains stay testable and the Slack API surface stays in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    """A Slack message: `text` is the notification/fallback text, `blocks` the Block Kit layout."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
