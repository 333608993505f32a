"""The sandbox's terminal chat: what a typed line does, and what the bot did in Slack shown as text.

Type `/mlops ...` as the current user, press a button by its number, switch user with `/as U0BOB`. A press
or a command that opens a modal asks for its fields in turn. session.py starts everything and feeds lines.
"""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from bot.sandbox import clock as sandbox_clock
from bot.sandbox import traffic
from bot.sandbox.forms import Ask, fill
from bot.sandbox.local import LocalBot
from bot.sandbox.render import render_message
from bot.sandbox.screen import Screen

HELP = """Type /mlops <verb> ... as the current user. A number presses that button (a button keeps its number
while it is on screen); /press LABEL presses the newest button so labelled; /buttons lists what can be
pressed. A form that opens asks for each field in turn (/cancel closes it). /as USER switches user.
/clock shows the bot's time; /clock +3d or /clock 2026-12-07 10:05 America/Los_Angeles moves it forward
and runs the scheduled work due on the way, in order: handoffs, reminders, digests, datagen polls (those
due every few minutes run at most once per hour skipped). /wait SECONDS lets real time pass; /traffic [N] sends
N requests (200) to each model's prod endpoints in turn, as a load balancer would, for a canary to judge. /hooks prints
curl lines for the bot's webhooks; /home shows your App Home; /digest posts the daily digest now;
/help shows this; /quit leaves."""

def _when(at: datetime) -> str:
    return f"{at:%a %Y-%m-%d %H:%M} UTC"


class Shell:
    def __init__(self, bot: LocalBot, user: str, clock: sandbox_clock.SandboxClock, ask: Ask,
                 hooks: Callable[[], list[str]], *, echo: bool, out=sys.stdout):
        self.bot = bot
        self.user = user
        self.clock = clock
        self.ask = ask  # the next line of input, for forms
        self.hooks = hooks
        self.echo = echo  # a script's lines are shown after the prompt; a terminal shows what was typed itself
        self.out = out
        self.screen = Screen(bot.slack, self.say)
        self.errors = 0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        self.errors += 1
        self.say(f"!! {text}")

    async def settle(self, timeout: float = 120) -> None:
        """Wait until the bot's background work is done, show what changed in Slack, then fill any form opened."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.sleep(0.05)
        while (self._busy() or self.bot.runtime.hooks.pending()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.screen.show()
        for opened in self.screen.new_forms():
            self.say(f"── a form opened for {opened['user']} ──")
            self.say(f"({await fill(self.bot.client, opened['user'], opened['view'], self.ask, self.say)})")
            await self.settle(timeout)

    def _busy(self) -> bool:
        # A canary's analysis runs for its whole window: the screen shows its steps as they come, instead of waiting.
        analyses = self.bot.runtime.releases.canaries.analyses
        return any(task not in analyses for task in self.bot.runtime.tasks.running)

    async def handle(self, line: str) -> bool:
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        if self.echo:
            self.say(f"{self.user}> {line}")
        if line in ("/quit", "/exit"):
            return False
        command, _, rest = line.partition(" ")
        if line == "/help":
            self.say(HELP)
        elif command == "/as" and rest:
            self.user = rest.strip().lstrip("@")
            self.say(f"(you are now {self.user})")
        elif command == "/wait":
            try:
                seconds = float(rest) if rest else 1.0
            except ValueError:
                self.error(f"not a number of seconds: {rest!r}")
                return True
            await asyncio.sleep(seconds)
            await self.bot.runtime.scheduler.run_due()
            await self.settle()
        elif command == "/traffic":
            if rest.strip() and not (rest.strip().isdecimal() and 0 < int(rest) <= 10_000):
                self.error(f"/traffic takes a number of requests from 1 to 10000, not {rest.strip()!r}")
                return True
            self.say(await traffic.send(self.bot.runtime.config, int(rest) if rest.strip() else 200))
            await self.settle()
        elif command == "/clock":
            await self.move_clock(rest)
        elif line == "/buttons":
            self.say(self.screen.listing())
        elif line == "/hooks":
            self.say("\n".join(self.hooks()))
        elif line == "/home":
            await self.bot.client.home_opened(self.user)
            await self.settle()
            view = await self.bot.slack.wait_for(lambda: self.bot.slack.home.get(self.user))
            self.screen.show_home(self.user, view)
        elif line == "/digest":
            await self.bot.runtime.digests.post_daily(self.bot.runtime.clock())
            await self.settle()
        elif command == "/mlops":
            delivery = await self.bot.client.command(self.user, rest.strip())
            if delivery.status != 200:
                self.error(f"Slack got HTTP {delivery.status} from the bot")
            elif delivery.body:
                self.say(f"── only visible to {self.user} ──\n{render_message(delivery.json())}")
            await self.settle()
        elif line.isdigit():
            await self.press(int(line))
        elif command == "/press" and rest:
            await self.press(self.screen.newest(rest.strip()))
        else:
            self.error(f"not understood: {line!r}. {HELP}")
        return True

    async def move_clock(self, text: str) -> None:
        now = self.clock()
        if not text.strip():
            zone = ZoneInfo(self.bot.runtime.config.deploy.windows[0].tz) if self.bot.runtime.config.deploy.windows else None
            local = f" ({now.astimezone(zone):%a %H:%M %Z})" if zone else ""
            self.say(f"(the bot's clock: {_when(now)}{local})")
            return
        try:
            target, ran = await sandbox_clock.move(self.bot.runtime, self.clock, text)
        except ValueError as exc:
            self.error(str(exc))
            return
        done = "ran " + ", ".join(f"{job} ×{n}" for job, n in sorted(ran.items())) if ran else "nothing was due"
        self.say(f"(the bot's clock: {_when(target)}; {done})")
        await self.settle()

    async def press(self, number: int | str) -> None:
        pressable = self.screen.pressable.get(number) if isinstance(number, int) else None
        if pressable is None:
            self.error(f"no button [{number}] on screen (/buttons lists them)")
            return
        b = pressable.button
        await self.bot.client.press(self.user, b.action_id, b.value, channel=pressable.channel,
                                    message_ts=pressable.ts, block_id=b.block_id, text=b.label)
        await self.settle()
