"""The `/mlops` slash command: the verb table the domain modules fill with `@verb`, help, the role middleware, and
the listener that reads a command before its ack and runs it in a tracked background task."""
from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.config import Role
from bot.notifier import Message, excerpt
from handlers.grammar import DRY_RUN, ECHO_OPTIONS, MAX_ERROR, Command, UsageError, escape, flag, no_more_words, quoted, tokenize

if TYPE_CHECKING:
    from bot.runtime import Runtime

Parse = Callable[["Runtime", Command], Any]
Run = Callable[["Runtime", Command, Any], Awaitable[None]]
Plan = Callable[["Runtime", Command, Any], Awaitable[str]]  # what `run` would do, as text; changes nothing


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
    options: frozenset[str] = frozenset()  # the key=value names it understands; any other is refused
    any_option: bool = False  # retrain: its key=value are the pipeline's conf, so every name is understood
    plan: Plan | None = None  # the dry run; a verb declares `dry_run` exactly when it has one


VERBS: dict[str, Verb] = {}


def verb(name: str, usage: str, summary: str, **fields: Any) -> Callable[[Run], Run]:
    """Declare the decorated function as what `/mlops <name>` runs; `fields` are the Verb's others (parse, role, ...)."""

    def declare(run: Run) -> Run:
        v = Verb(name, usage, summary, run, **fields)
        assert (DRY_RUN in v.options) == (v.plan is not None), f"{name}: dry_run needs a plan and a plan needs dry_run"
        VERBS[name] = v
        return run

    return declare


def read(runtime: Runtime, v: Verb, args: list[str], options: dict[str, str], user: str, channel: str,
         response_url: str = "", trigger_id: str = "") -> tuple[Command, Any]:
    """The grammar's whole verdict before the ack: the command and its parse, or UsageError saying what is wrong.

    An option the verb does not take is refused, never ignored: an ignored `dry_run=true` once deployed for real.
    """
    dry_run = False
    if options:  # most commands have none: nothing to check on the hot path
        if not v.any_option and (unknown := options.keys() - v.options):
            raise UsageError(unknown_options(v, unknown))
        if DRY_RUN in options:  # declared, or the check above refused it
            options = dict(options)
            dry_run = flag(DRY_RUN, options.pop(DRY_RUN))
    cmd = Command(user, channel, v.name, args, options, response_url, trigger_id, dry_run)
    return cmd, v.parse(runtime, cmd)


def unknown_options(v: Verb, unknown: set[str]) -> str:
    listed = sorted(unknown)
    names = ", ".join(f"`{quoted(name)}=`" for name in listed[:ECHO_OPTIONS])
    if len(listed) > ECHO_OPTIONS:
        names += f" and {len(listed) - ECHO_OPTIONS:,} more"
    takes = f"it takes {options_text(v)}" if v.options else "it takes no key=value options"
    return f"`/mlops {v.name}` does not understand {names}; {takes}"


def options_text(v: Verb) -> str:
    return ", ".join(f"`{name}=`" for name in sorted(v.options))


# -- help ----------------------------------------------------------------------------------------------------

def usage_line(v: Verb) -> str:
    return f"`/mlops {escape(v.usage)}`"


def unknown_verb(word: str) -> str:
    """One line for a word that is no verb: the verbs it is closest to, and where the list is."""
    # A word past twice the longest verb's length is close to none; skipping it keeps a huge word cheap.
    longest = max(map(len, VERBS), default=0)
    close = difflib.get_close_matches(word.lower(), VERBS, n=3, cutoff=0.6) if len(word) <= 2 * longest else []
    guess = f" Did you mean {' or '.join(f'`{name}`' for name in close)}?" if close else ""
    return f"Unknown verb `{quoted(word)}`.{guess} `/mlops help` lists the verbs."


def help_text(topic: str | None = None) -> str:
    if topic and topic not in VERBS:
        return unknown_verb(topic)
    if topic:
        v = VERBS[topic]
        role = f"\nNeeds the *{v.role}* role." if v.role else ""
        dry = "\n`dry_run=true` answers with what it would do and changes nothing." if v.plan else ""
        return f"{usage_line(v)}\n{v.summary}{role}" + (f"\n{v.details}" if v.details else "") + dry
    lines = [f"{usage_line(v)}: {v.summary}" for v in sorted(VERBS.values(), key=lambda v: v.name)]
    return ("*/mlops* runs the team's ML production loop. Verbs:\n" + "\n".join(lines)
            + "\nVerbs that change something take `dry_run=true` to show what they would do; an option a verb does not "
            "take is refused.\n`/mlops help &lt;verb&gt;` explains one.")


def help_reply(topic: str | None = None) -> str:
    """Help as the ack's ephemeral JSON body. Plain mrkdwn text: a block would repeat it."""
    if topic is not None and topic not in VERBS:  # a typo: not worth a cache slot, and the word may be huge
        return json.dumps({"text": help_text(topic), "response_type": "ephemeral"})
    return _known_help(topic)


@functools.lru_cache(maxsize=64)  # the verb table is fixed once handlers are imported; help is the hottest reply
def _known_help(topic: str | None) -> str:
    return json.dumps({"text": help_text(topic), "response_type": "ephemeral"})


def _parse_help(runtime: Runtime, cmd: Command) -> str | None:
    no_more_words(cmd, 1)
    return cmd.args[0] if cmd.args else None


@verb("help", "help [verb]", "show the verbs, or how to use one", parse=_parse_help)
async def _help(runtime: Runtime, cmd: Command, topic: str | None) -> None:
    raise AssertionError("help is answered in the ack")  # pragma: no cover


# -- the listener --------------------------------------------------------------------------------------------

class RequireRole(AsyncMiddleware):
    """Refuse a verb to a user without its role: an ephemeral "you need role X; ask @..." and a `denied` row.

    It tokenizes the command once and leaves the result in the context for the listener.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse | None:
        body = req.body
        try:
            req.context["mlops_tokens"] = tokens = tokenize(body.get("text", ""))
        except UsageError as exc:
            req.context["mlops_tokens"] = exc
            return await next()
        name, args, _ = tokens
        v = VERBS.get(name)
        if v is None or v.role is None or await self.runtime.roles.has(body["user_id"], v.role):
            return await next()
        who = self.runtime.roles.who_to_ask(v.role)
        ack = req.context.ack
        await ack(text=f"You need the *{v.role}* role to run `/mlops {v.name}`; ask {who}.", response_type="ephemeral")
        self.runtime.audit(actor=body["user_id"], channel=body["channel_id"], verb=v.name, status="denied",
                           detail={"args": args, "role": v.role}, key=body.get("trigger_id"))
        return ack.response


def register(app: AsyncApp, runtime: Runtime) -> None:
    @app.command("/mlops", middleware=[RequireRole(runtime)])
    async def mlops(body: dict[str, Any], ack: AsyncAck, context: dict[str, Any]) -> BoltResponse | None:
        text = body.get("text", "")
        base = {"actor": body["user_id"], "channel": body["channel_id"], "key": body.get("trigger_id")}
        tokens = context["mlops_tokens"]
        if isinstance(tokens, UsageError):
            exc = tokens
            await ack(text=f"{excerpt(str(exc), MAX_ERROR)}. Try `/mlops help`.", response_type="ephemeral")
            runtime.audit(**base, verb="invalid", status="invalid", detail={"text": text, "error": str(exc)})
            return
        name, args, options = tokens
        v = VERBS.get(name)
        if v is None:
            # One verb for all unknown ones: what people mistype must not become a new metrics label each time.
            runtime.audit(**base, verb="unknown", status="invalid", detail={"text": text, "error": "unknown verb"})
            return BoltResponse(status=200, body=help_reply(name))  # a listener's returned response is its ack
        try:
            cmd, parsed = read(runtime, v, args, options, base["actor"], base["channel"], body.get("response_url", ""),
                               body.get("trigger_id", ""))
        except UsageError as exc:
            await ack(text=f"{excerpt(str(exc), MAX_ERROR)}\nUsage: {usage_line(v)}", response_type="ephemeral")
            runtime.audit(**base, verb=name, status="invalid", detail={"text": text, "error": str(exc)})
            return
        if v.name == "help":
            runtime.audit(**base, verb="help", status="ok", detail={"topic": parsed})
            return BoltResponse(status=200, body=help_reply(parsed))
        await ack()

        async def report_failure(exc: Exception) -> None:
            await runtime.notifier.respond(
                cmd.response_url,
                Message(f":x: `/mlops {quoted(text)}` failed unexpectedly ({type(exc).__name__}). "
                        "It is in the bot's log; nothing was retried."),
            )
            runtime.audit(**base, verb=name, status="error", detail={"error": f"{type(exc).__name__}: {exc}"})

        if cmd.dry_run:  # read() lets dry_run through only for verbs with a plan
            runtime.spawn(_dry_run(runtime, v, cmd, parsed, base), name=f"/mlops {name} dry_run", on_error=report_failure)
            return
        runtime.audit(**base, verb=name, status="accepted", detail={"args": args, "options": options}, **v.audit_fields(parsed))
        runtime.spawn(v.run(runtime, cmd, parsed), name=f"/mlops {name}", on_error=report_failure)


async def _dry_run(runtime: Runtime, v: Verb, cmd: Command, parsed: Any, base: dict[str, Any]) -> None:
    """Answer with the plan; its one audit row is written before the answer, as every action's row is."""
    assert v.plan is not None  # verb() pairs dry_run with a plan
    plan = await v.plan(runtime, cmd, parsed)
    runtime.audit(**base, verb=v.name, status="dry_run", detail={"args": cmd.args, "options": cmd.options, "plan": plan},
                  **v.audit_fields(parsed))
    await tell(runtime, cmd, Message(plan))


async def tell(runtime: Runtime, cmd: Command, msg: Message) -> None:
    """Answer the person who typed the command; an answer too long for Slack goes to their DM as a file."""
    await runtime.notifier.respond(cmd.response_url, msg, user=cmd.user)
