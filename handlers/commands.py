"""The `/mlops` slash command: grammar, help, role middleware, and the verb table.

`/mlops <verb> [args] [key=value]`. A verb parses its arguments before the ack (pure, from config), so bad
input is answered in the ack itself; the work then runs in a tracked background task.
"""
from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse

from bot.config import Role
from bot.notifier import Message

if TYPE_CHECKING:
    from bot.runtime import Runtime


class UsageError(Exception):
    """Bad arguments; the message says what was wrong and the verb's usage is shown with it."""


@dataclass(frozen=True)
class Command:
    user: str
    channel: str
    verb: str
    args: list[str]
    options: dict[str, str]
    response_url: str = ""
    trigger_id: str = ""

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)


Parse = Callable[["Runtime", Command], Any]
Run = Callable[["Runtime", Command, Any], Awaitable[None]]


@dataclass(frozen=True)
class Verb:
    name: str
    usage: str
    summary: str
    run: Run
    parse: Parse = lambda runtime, cmd: None
    role: Role | None = None
    details: str = ""
    audit_fields: Callable[[Any], dict[str, Any]] = field(default=lambda parsed: {})


def tokenize(text: str) -> tuple[str, list[str], dict[str, str]]:
    """`deploy ranker v2 urgent=yes` → ("deploy", ["ranker", "v2"], {"urgent": "yes"})."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"could not read the command: {exc} (check your quotes)") from None
    args, options = [], {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.isidentifier():
            options[key.lower()] = value
        else:
            args.append(word)
    verb = args.pop(0).lower() if args else "help"
    return verb, args, options


VERBS: dict[str, Verb] = {}


def verb(v: Verb) -> Verb:
    VERBS[v.name] = v
    return v


def usage_line(v: Verb) -> str:
    return f"`/mlops {v.usage}`"


def help_message(topic: str | None = None) -> Message:
    if topic and topic in VERBS:
        v = VERBS[topic]
        role = f"\nNeeds the *{v.role}* role." if v.role else ""
        text = f"{usage_line(v)}\n{v.summary}{role}" + (f"\n{v.details}" if v.details else "")
        return Message(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])
    lines = [f"{usage_line(v)}: {v.summary}" for v in sorted(VERBS.values(), key=lambda v: v.name)]
    head = f"Unknown verb `{topic}`. " if topic else ""
    text = head + "*/mlops* runs the team's ML production loop. Verbs:\n" + "\n".join(lines)
    text += "\n`/mlops help <verb>` explains one."
    return Message(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}])


async def _help(runtime: Runtime, cmd: Command, topic: str | None) -> None:
    raise AssertionError("help is answered in the ack")  # pragma: no cover


verb(Verb("help", "help [verb]", "show the verbs, or how to use one", _help, parse=lambda rt, cmd: cmd.args[0] if cmd.args else None))


def _command(body: dict[str, Any]) -> Command | None:
    try:
        name, args, options = tokenize(body.get("text", ""))
    except UsageError:
        return None
    return Command(
        user=body["user_id"],
        channel=body["channel_id"],
        verb=name,
        args=args,
        options=options,
        response_url=body.get("response_url", ""),
        trigger_id=body.get("trigger_id", ""),
    )


def register(app: AsyncApp, runtime: Runtime) -> None:
    async def require_role(body: dict[str, Any], ack: AsyncAck, next: Callable[[], Awaitable[BoltResponse]]):
        cmd = _command(body)
        v = VERBS.get(cmd.verb) if cmd else None
        if v is None or v.role is None or await runtime.roles.has(cmd.user, v.role):
            return await next()
        who = ", ".join(runtime.roles.who_to_ask(v.role)) or "an admin"
        await ack(text=f"You need the *{v.role}* role to run `/mlops {v.name}`; ask {who}.", response_type="ephemeral")
        runtime.audit(actor=cmd.user, channel=cmd.channel, verb=v.name, status="denied", detail={"args": cmd.args, "role": v.role}, key=cmd.trigger_id)
        return BoltResponse(status=200, body="")

    @app.command("/mlops", middleware=[require_role])
    async def mlops(body: dict[str, Any], ack: AsyncAck) -> None:
        text = body.get("text", "")
        base = {"actor": body["user_id"], "channel": body["channel_id"], "key": body.get("trigger_id")}
        try:
            name, args, options = tokenize(text)
        except UsageError as exc:
            await ack(text=f"{exc}. Try `/mlops help`.", response_type="ephemeral")
            runtime.audit(**base, verb="invalid", status="invalid", detail={"text": text, "error": str(exc)})
            return
        v = VERBS.get(name)
        if v is None:
            msg = help_message(name)
            await ack(text=msg.text, blocks=msg.blocks, response_type="ephemeral")
            runtime.audit(**base, verb=name[:40], status="invalid", detail={"text": text, "error": "unknown verb"})
            return
        cmd = Command(base["actor"], base["channel"], name, args, options, body.get("response_url", ""), body.get("trigger_id", ""))
        try:
            parsed = v.parse(runtime, cmd)
        except UsageError as exc:
            await ack(text=f"{exc}\nUsage: {usage_line(v)}", response_type="ephemeral")
            runtime.audit(**base, verb=name, status="invalid", detail={"text": text, "error": str(exc)})
            return
        if v.name == "help":
            msg = help_message(parsed)
            await ack(text=msg.text, blocks=msg.blocks, response_type="ephemeral")
            runtime.audit(**base, verb="help", status="ok", detail={"topic": parsed})
            return
        await ack()
        runtime.audit(**base, verb=name, status="accepted", detail={"args": args, "options": options}, **v.audit_fields(parsed))

        async def report_failure(exc: Exception) -> None:
            await runtime.notifier.respond(
                cmd.response_url,
                Message(f":x: `/mlops {text}` failed unexpectedly ({type(exc).__name__}). It is in the bot's log; nothing was retried."),
            )
            runtime.audit(**base, verb=name, status="error", detail={"error": f"{type(exc).__name__}: {exc}"})

        runtime.spawn(v.run(runtime, cmd, parsed), name=f"/mlops {name}", on_error=report_failure)
