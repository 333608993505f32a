"""`mlops-bot sandbox`: the whole bot on its embedded default, a Slack stand-in, and a terminal chat.

Type `/mlops ...` as the current user, press a button by its number, switch user with `/as U0BOB`.
With the `triton` extra installed, a local tritonserver serves staging and prod from the sandbox's own
model repositories; without it everything else still runs and deploys say what is missing.
"""
from __future__ import annotations

import asyncio
import sys
from contextlib import ExitStack
from datetime import date
from pathlib import Path

from bot.config import Config, ConfigError, EnvironmentConfig, load_config
from bot.datagen.rules import evaluate
from bot.datagen.service import save_record
from bot.runtime import Runtime
from bot.sandbox.local import LocalBot, local_bot
from bot.sandbox.preflight import preflight
from bot.sandbox.render import Button, render_message, render_view
from bot.sandbox.slack_api import dm_id
from bot.sandbox.tritonserver import TritonServer, triton_missing

HELP = """Type /mlops <verb> ... as the current user; a number presses that button; /as USER switches user;
/wait SECONDS lets scheduled work run; /home shows your App Home; /digest posts the daily digest now;
/help shows this; /quit leaves."""


def sandbox_config(config: Config, state: Path, servers: dict[str, str] | None) -> Config:
    """The config with its state, repositories and (when tritonserver runs) endpoints under the sandbox."""
    models = {}
    for name, model in config.models.items():
        envs = {
            env: EnvironmentConfig(repository=str(state / "repos" / env),
                                   endpoints=[servers[env]] if servers else list(cfg.endpoints))
            for env, cfg in model.environments.items()
        }
        models[name] = model.model_copy(update={"environments": envs})
    return config.model_copy(update={"store": str(state / "mlops-bot.db"), "models": models})


async def seed_datagen(runtime: Runtime) -> None:
    """Store the local example datagen records, announcing the newest day that raised an alert (or else the
    newest day), so the sandbox opens with a summary and an alert as the team would have seen them."""
    for name, job in runtime.config.datagen.jobs.items():
        template = Path(job.source)
        if "://" in job.source or not template.parent.is_dir():
            continue
        records = {}
        for path in template.parent.glob(template.name.replace("{date}", "*")):
            try:
                records[date.fromisoformat(path.stem)] = path.read_text()
            except ValueError:  # not a dated record
                continue
        if not records:
            continue
        for day, text in sorted(records.items()):
            save_record(runtime.store, name, day, text, str(template.parent / f"{day}.json"), actor="sandbox", at=runtime.clock())
        history, expected = runtime.datagen.history(name)
        alerting = [day for day in sorted(history) if evaluate(job.rules, history, day, expected=expected)]
        await runtime.datagen.announce(name, (alerting or sorted(history))[-1], actor="sandbox")


class Shell:
    def __init__(self, bot: LocalBot, user: str, out=sys.stdout):
        self.bot = bot
        self.user = user
        self.out = out
        self.buttons: list[Button] = []
        self.seen: dict[tuple[str, str], str] = {}
        self.ephemerals_seen = 0
        self.errors = 0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def settle(self, timeout: float = 120) -> None:
        """Wait until the bot's background work is done, then show what changed in Slack."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.sleep(0.05)
        while self.bot.runtime.tasks.names and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.show()

    def show(self) -> None:
        self.buttons = []
        for msg in self.bot.slack.all_messages():
            channel = msg.get("channel", "?")
            key = (channel, msg["ts"])
            text = render_message(msg, buttons=self.buttons)
            if self.seen.get(key) != text:
                label = "edited" if key in self.seen else ("thread" if msg.get("thread_ts") not in (None, msg["ts"]) else "new")
                self.say(f"── #{channel} ({label}) ──\n{text}")
                self.seen[key] = text
        for eph in self.bot.slack.ephemerals[self.ephemerals_seen:]:
            self.say(f"── only visible to {eph['user']} ──\n{render_message(eph, buttons=self.buttons)}")
        self.ephemerals_seen = len(self.bot.slack.ephemerals)

    async def handle(self, line: str) -> bool:
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        self.say(f"{self.user}> {line}")
        if line in ("/quit", "/exit"):
            return False
        if line == "/help":
            self.say(HELP)
        elif line.startswith("/as "):
            self.user = line.split(maxsplit=1)[1].lstrip("@")
            self.say(f"(you are now {self.user})")
        elif line.startswith("/wait"):
            await asyncio.sleep(float(line.split()[1]) if len(line.split()) > 1 else 1)
            await self.bot.runtime.scheduler.run_due()
            await self.settle()
        elif line == "/home":
            await self.bot.client.home_opened(self.user)
            await self.settle()
            view = await self.bot.slack.wait_for(lambda: self.bot.slack.home.get(self.user))
            self.say(render_view(view, buttons=self.buttons))
        elif line == "/digest":
            await self.bot.runtime.digests.post_daily(self.bot.runtime.clock())
            await self.settle()
        elif line.startswith("/mlops"):
            delivery = await self.bot.client.command(self.user, line.removeprefix("/mlops").strip())
            if delivery.status != 200:
                self.error(f"Slack got HTTP {delivery.status} from the bot")
            elif delivery.body:
                reply = delivery.json()
                self.say(f"── only visible to {self.user} ──\n{render_message(reply, buttons=[])}")
            await self.settle()
        elif line.isdigit():
            await self.press(int(line))
        else:
            self.error(f"not understood: {line!r}. {HELP}")
        return True

    async def press(self, number: int) -> None:
        button = next((b for b in self.buttons if b.number == number), None)
        if button is None:
            self.error(f"no button [{number}] on screen")
            return
        msg = next((m for m in self.bot.slack.all_messages() if any(
            e.get("action_id") == button.action_id and e.get("value") == button.value
            for b in m.get("blocks", []) if b.get("type") == "actions" for e in b.get("elements", []))),
            {"channel": dm_id(self.user), "ts": ""})  # not on a message: a button of the App Home
        await self.bot.client.press(self.user, button.action_id, button.value, channel=msg["channel"], message_ts=msg["ts"])
        await self.settle()
        for view in self.bot.slack.views[self.views_seen:]:
            if view["method"] == "views.publish":  # the App Home, shown by /home
                continue
            self.say(f"── a form opened for {view['user']}: {view['view'].get('title', {}).get('text')} ──")
        self.views_seen = len(self.bot.slack.views)

    views_seen = 0

    def error(self, text: str) -> None:
        self.errors += 1
        self.say(f"!! {text}")


async def run_sandbox(config_path: str, *, script: Path | None = None, state_dir: Path | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    state = (state_dir or Path(".mlops-sandbox")).resolve()
    with ExitStack() as stack:
        servers = None
        if triton_missing():
            print(f"(no tritonserver: {triton_missing()}; install it with `pip install -e '.[triton]'`."
                  " Everything else runs; deploys will say the endpoints are unreachable.)")
        else:
            started = {env: stack.enter_context(TritonServer(str(state / "repos" / env))) for env in ("staging", "prod")
                       if (state / "repos" / env).mkdir(parents=True, exist_ok=True) is None}
            servers = {env: server.url for env, server in started.items()}
            # One golden inference before the first prompt: a server whose outputs are wrong would fail
            # every verify for a reason that is no release's.
            if (problem := await preflight(config, started["staging"])) is not None:
                print(f"mlops-bot sandbox: {problem}", file=sys.stderr, flush=True)
                return 1
        async with local_bot(sandbox_config(config, state, servers)) as bot:
            await seed_datagen(bot.runtime)
            first = sorted({u for m in (config.roles.deployers, config.roles.admins) for u in m.users}) or ["U0SANDBOX"]
            shell = Shell(bot, first[0])
            print(f"mlops-bot sandbox: state in {state}; you are {shell.user}. {HELP}", flush=True)
            lines = script.read_text().splitlines() if script else None
            while True:
                if lines is not None:
                    if not lines:
                        break
                    line = lines.pop(0)
                else:
                    try:
                        line = await asyncio.to_thread(input, f"{shell.user}> ")
                    except EOFError:
                        break
                if not await shell.handle(line):
                    break
            return 1 if script and shell.errors else 0
