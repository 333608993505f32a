"""What the sandbox's terminal has shown of Slack, and the buttons on it under numbers kept for their life.

A button gets its number the first time it is shown and keeps it while it stays on its message (the same
action and label there; an edit may change the value it sends, and a press sends the current one), so an
edit of another message or of its own never renumbers what is already on screen. A number is never given
to another button.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from bot.sandbox.render import Button, Json, render_message, render_view
from bot.sandbox.slack_api import dm_id
from bot.sandbox.slack_emulator import SlackEmulator


@dataclass(frozen=True)
class Pressable:
    """A button on screen and where it is: the message it sits on (ts "" for the App Home)."""

    button: Button
    channel: str
    ts: str
    where: str  # how /buttons names its place: "#C0MLOPS: <the message's first line>", "App Home"


class Screen:
    def __init__(self, slack: SlackEmulator, say: Callable[[str], None]):
        self.slack = slack
        self.say = say
        self.pressable: dict[int, Pressable] = {}
        self._numbers: dict[tuple[str, str, str, str], int] = {}  # (channel, ts, action_id, label) -> number
        self._next = itertools.count(1)
        self._seen: dict[tuple[str, str], str] = {}
        self._ephemerals_seen = 0
        self._views_seen = 0

    def _numbering(self, channel: str, ts: str) -> Callable[[str, str], int]:
        def number(action_id: str, label: str) -> int:
            key = (channel, ts, action_id, label)
            if key not in self._numbers:
                self._numbers[key] = next(self._next)
            return self._numbers[key]
        return number

    def _render(self, msg: Json, channel: str, where: str) -> str:
        buttons: list[Button] = []
        text = render_message(msg, buttons=buttons, number=self._numbering(channel, msg["ts"]))
        first = text.splitlines()[0] if text else ""
        where += f": {first[:60]}…" if len(first) > 60 else f": {first}"
        self.pressable.update({b.number: Pressable(b, channel, msg["ts"], where) for b in buttons})
        return text

    def show(self) -> bool:
        """Print what is new or changed in Slack since the last call (whether anything was); what can be pressed
        is what Slack holds now."""
        shown = False
        home = {n: p for n, p in self.pressable.items() if p.ts == ""}  # the App Home's, until it is shown again
        self.pressable = home
        for msg in self.slack.all_messages():
            channel = msg.get("channel", "?")
            text = self._render(msg, channel, f"#{channel}")
            key = (channel, msg["ts"])
            if self._seen.get(key) != text:
                label = "edited" if key in self._seen else (
                    "thread" if msg.get("thread_ts") not in (None, msg["ts"]) else "new")
                self.say(f"── #{channel} ({label}) ──\n{text}")
                self._seen[key] = text
                shown = True
        for i, eph in enumerate(self.slack.ephemerals):  # an ephemeral's buttons stay until Slack is reloaded
            text = self._render(eph, eph["channel"], f"only visible to {eph['user']}")
            if i >= self._ephemerals_seen:
                self.say(f"── only visible to {eph['user']} ──\n{text}")
                shown = True
        self._ephemerals_seen = len(self.slack.ephemerals)
        return shown

    def show_home(self, user: str, view: Json) -> None:
        buttons: list[Button] = []
        channel = dm_id(user)
        text = render_view(view, buttons=buttons, number=self._numbering(channel, f"home:{user}"))
        self.pressable = {n: p for n, p in self.pressable.items() if not (p.ts == "" and p.channel == channel)}
        self.pressable.update({b.number: Pressable(b, channel, "", "App Home") for b in buttons})
        self.say(text)

    def new_forms(self) -> list[Json]:
        """Modals opened (or pushed) since the last call, as the emulator recorded them; App Home views are not."""
        opened = [v for v in self.slack.views[self._views_seen:] if v["method"] in ("views.open", "views.push")]
        self._views_seen = len(self.slack.views)
        return opened

    def newest(self, label: str) -> int | str:
        """The number of the newest button whose label starts with `label` (any case), else `label` itself."""
        found = [n for n, p in self.pressable.items() if p.button.label.lower().startswith(label.lower())]
        return max(found, default=label)

    def listing(self) -> str:
        if not self.pressable:
            return "(no buttons on screen)"
        lines = []
        for number, p in sorted(self.pressable.items()):
            notes = [n for n in (p.button.style, "asks to confirm" if p.button.confirm else None) if n]
            lines.append(f"[{number}] {p.button.label}" + (f" ({', '.join(notes)})" if notes else "") + f" · {p.where}")
        return "\n".join(lines)
