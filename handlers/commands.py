"""The `/mlops` slash command: grammar, help, role middleware, and the verb table.

`/mlops <verb> [args] [key=value]`. A verb parses its arguments before the ack (pure, from config), so bad
input is answered in the ack itself; the work then runs in a tracked background task. Each verb names the
options it understands and anything else is refused before it runs: an ignored `dry_run=true` once deployed
for real. The verbs that change something take `dry_run=true`, which answers with their plan instead.
"""
from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.config import Role
from bot.notifier import Message, SlackError, excerpt
from bot.oncall import grammar as oncall_grammar

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
    dry_run: bool = False  # read and taken out of `options` by the router, so no parser passes it on

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)


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


def split_words(text: str) -> list[str]:
    """Shell-like words: quotes keep an argument with spaces whole."""
    if not any(c in text for c in "\"'\\"):
        return text.split()  # nothing quoted: the words shlex would give, at a fraction of its cost
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"could not read the command: {exc} (check your quotes)") from None


def tokenize(text: str) -> tuple[str, list[str], dict[str, str]]:
    """`deploy ranker v2 urgent=yes` → ("deploy", ["ranker", "v2"], {"urgent": "yes"})."""
    args, options = [], {}
    for word in split_words(text):
        key, sep, value = word.partition("=")
        if sep and key.isidentifier():
            options[key.lower()] = value
        else:
            args.append(word)
    verb = args.pop(0).lower() if args else "help"
    return verb, args, options


VERBS: dict[str, Verb] = {}
DRY_RUN = "dry_run"
FLAG_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def verb(v: Verb) -> Verb:
    assert (DRY_RUN in v.options) == (v.plan is not None), f"{v.name}: dry_run needs a plan and a plan needs dry_run"
    VERBS[v.name] = v
    return v


def read(runtime: Runtime, v: Verb, args: list[str], options: dict[str, str], user: str, channel: str,
         response_url: str = "", trigger_id: str = "") -> tuple[Command, Any]:
    """The grammar's whole verdict before the ack: the command and its parse, or UsageError saying what is wrong."""
    dry_run = False
    if options:  # most commands have none: nothing to check on the hot path
        if not v.any_option and (unknown := options.keys() - v.options):
            raise UsageError(unknown_options(v, unknown))
        if DRY_RUN in options:  # declared, or the check above refused it
            options = dict(options)
            dry_run = flag(DRY_RUN, options.pop(DRY_RUN))
    cmd = Command(user, channel, v.name, args, options, response_url, trigger_id, dry_run)
    return cmd, v.parse(runtime, cmd)


def flag(name: str, word: str) -> bool:
    """true/false, yes/no, 1/0; anything else is a usage error, never quietly false."""
    value = FLAG_WORDS.get(word.lower())
    if value is None:
        raise UsageError(f"`{name}` is true or false (yes/no, 1/0), not `{quoted(word)}`")
    return value


def unknown_options(v: Verb, unknown: set[str]) -> str:
    listed = sorted(unknown)
    names = ", ".join(f"`{quoted(name)}=`" for name in listed[:ECHO_OPTIONS])
    if len(listed) > ECHO_OPTIONS:
        names += f" and {len(listed) - ECHO_OPTIONS:,} more"
    takes = f"it takes {options_text(v)}" if v.options else "it takes no key=value options"
    return f"`/mlops {v.name}` does not understand {names}; {takes}"


def options_text(v: Verb) -> str:
    return ", ".join(f"`{name}=`" for name in sorted(v.options))


def no_more_words(cmd: Command, count: int) -> None:
    """Refuse words after the first `count`: a word the parser would drop is one the person meant something by."""
    if len(cmd.args) > count:
        raise UsageError(f"unexpected words: {quoted(' '.join(cmd.args[count:]))}")


def escape(text: str) -> str:
    """Slack's mrkdwn escapes: without them <model> reads as a link and echoed input could @-mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# A reply quotes at most this much of what was typed: a 700 KB command was once echoed back whole.
ECHO = 80
ECHO_OPTIONS = 5  # unknown option names listed by name; the others are counted
# Longest error text an ack carries; the grammars of other modules quote input too.
MAX_ERROR = 2000


def quoted(text: str) -> str:
    """Someone's input as a reply quotes it: its start when long, escaped."""
    return escape(excerpt(text, ECHO))


def usage_line(v: Verb) -> str:
    return f"`/mlops {escape(v.usage)}`"


def help_text(topic: str | None = None) -> str:
    if topic and topic in VERBS:
        v = VERBS[topic]
        role = f"\nNeeds the *{v.role}* role." if v.role else ""
        dry = "\n`dry_run=true` answers with what it would do and changes nothing." if v.plan else ""
        return f"{usage_line(v)}\n{v.summary}{role}" + (f"\n{v.details}" if v.details else "") + dry
    lines = [f"{usage_line(v)}: {v.summary}" for v in sorted(VERBS.values(), key=lambda v: v.name)]
    head = f"Unknown verb `{quoted(topic)}`. " if topic else ""
    return (head + "*/mlops* runs the team's ML production loop. Verbs:\n" + "\n".join(lines)
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


async def _help(runtime: Runtime, cmd: Command, topic: str | None) -> None:
    raise AssertionError("help is answered in the ack")  # pragma: no cover


def _parse_help(runtime: Runtime, cmd: Command) -> str | None:
    no_more_words(cmd, 1)
    return cmd.args[0] if cmd.args else None


verb(Verb("help", "help [verb]", "show the verbs, or how to use one", _help, parse=_parse_help))


class SlashCommand(BaseModel):
    """The fields of a slash command the bot reads, checked at the edge (handlers.refuse_shape): after it, the
    listeners may read them from the body as the strings they are."""

    model_config = ConfigDict(strict=True)

    command: str
    text: str = ""
    user_id: str = Field(min_length=1)
    channel_id: str = Field(min_length=1)
    trigger_id: str = ""
    response_url: str = ""


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
        who = ", ".join(self.runtime.roles.who_to_ask(v.role)) or "an admin"
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
                Message(f":x: `/mlops {quoted(text)}` failed unexpectedly ({type(exc).__name__}). It is in the bot's log; nothing was retried."),
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


def refused(exc: Exception) -> str:
    return f":warning: would be refused: {exc}"


# -- release train ------------------------------------------------------------------------------------

ENVS = ("staging", "prod")


def _model(runtime: Runtime, cmd: Command, index: int = 0) -> str:
    if len(cmd.args) <= index:
        raise UsageError("name a model")
    name = cmd.args[index]
    if name not in runtime.config.models:
        raise UsageError(f"unknown model `{quoted(name)}`; known models: {', '.join(sorted(runtime.config.models)) or 'none'}")
    return name


def _env(runtime: Runtime, model: str, word: str | None, default: str = "staging") -> str:
    env = word or default
    if env not in runtime.config.models[model].environments:
        raise UsageError(f"unknown environment `{quoted(env)}` for {model}; environments: {', '.join(runtime.config.models[model].environments)}")
    return env


async def _answer(runtime: Runtime, cmd: Command, work: Awaitable[Any]) -> Any:
    """Run a release operation; a refusal or failure goes back to the person as an ephemeral message."""
    from bot.releases.service import ReleaseError

    try:
        return await work
    except ReleaseError as exc:
        await tell(runtime, cmd, Message(f":warning: {exc}"))
        return None


def _parse_deploy(runtime: Runtime, cmd: Command) -> tuple[str, str | None]:
    model = _model(runtime, cmd)
    rest = cmd.args[1:]
    if rest[-2:] == ["to", "prod"]:
        raise UsageError("deploys go to staging; after verification, unblock prod with `/mlops promote <model>`")
    if rest[-2:] == ["to", "staging"]:
        rest = rest[:-2]
    if len(rest) > 1:
        raise UsageError(f"unexpected words: {quoted(' '.join(rest[1:]))}")
    return model, rest[0] if rest else None


async def _deploy(runtime: Runtime, cmd: Command, parsed: tuple[str, str | None]) -> None:
    model, version = parsed
    await _answer(runtime, cmd, runtime.releases.deploy(model, version, cmd.user, cmd.channel))


async def _release_plan(plan: Callable[[], Awaitable[str] | str], more: str = "") -> str:
    """The release service's plan (sync or async), or the reason the real command would be refused."""
    from bot.releases.service import ReleaseError

    try:
        said = plan()
        text = said if isinstance(said, str) else await said
    except ReleaseError as exc:
        return refused(exc)
    return text + more


async def _plan_deploy(runtime: Runtime, cmd: Command, parsed: tuple[str, str | None]) -> str:
    return await _release_plan(lambda: runtime.releases.plan_deploy(parsed[0], parsed[1], cmd.user))


verb(Verb("deploy", "deploy <model> [<version>|latest] [to staging]", "deploy a version to staging and verify it",
          _deploy, parse=_parse_deploy, role="deployers", options=frozenset({DRY_RUN}), plan=_plan_deploy,
          audit_fields=lambda p: {"model": p[0], "env": "staging", "version": p[1]}))


def _parse_model_env(runtime: Runtime, cmd: Command) -> tuple[str, str]:
    model = _model(runtime, cmd)
    no_more_words(cmd, 2)
    return model, _env(runtime, model, cmd.args[1] if len(cmd.args) > 1 else None)


async def _verify(runtime: Runtime, cmd: Command, parsed: tuple[str, str]) -> None:
    await _answer(runtime, cmd, runtime.releases.verify_env(parsed[0], parsed[1], cmd.user))


verb(Verb("verify", "verify <model> [staging|prod]", "check the served version: health, golden requests, latency, drift",
          _verify, parse=_parse_model_env, role="deployers", audit_fields=lambda p: {"model": p[0], "env": p[1]}))


def _staged(runtime: Runtime, model: str):
    from bot.releases.service import ReleaseError

    current = runtime.releases.environment(model, "staging")
    if current is None or current["release_id"] is None:
        raise ReleaseError(f"nothing is on {model} staging; `/mlops deploy {model}` first")
    return runtime.releases.get(current["release_id"])


async def _promote(runtime: Runtime, cmd: Command, model: str) -> None:
    async def work() -> None:
        release = _staged(runtime, model)
        urgent = cmd.option("urgent")
        decision = await runtime.releases.check_promote(release, cmd.user, urgent=bool(urgent))
        if decision.needs_urgent and cmd.trigger_id:
            await open_urgent_modal(runtime, cmd.trigger_id, release, decision.reason)
            return
        await runtime.releases.promote(release, cmd.user, urgent_reason=urgent)

    await _answer(runtime, cmd, work())


async def open_urgent_modal(runtime: Runtime, trigger_id: str, release: Any, why: str) -> None:
    from bot.releases import messages

    await runtime.notifier.open_view(trigger_id, messages.reason_modal(
        "release.urgent", "Urgent unblock", f"*{release.model} {release.version}*: {why}. "
        "An urgent unblock is audited and pages on-call. Why can it not wait?", "Unblock now",
        messages.ReleaseRef(release=release.id)))


def _model_alone(runtime: Runtime, cmd: Command) -> str:
    model = _model(runtime, cmd)
    no_more_words(cmd, 1)
    return model


async def _plan_promote(runtime: Runtime, cmd: Command, model: str) -> str:
    return await _release_plan(lambda: runtime.releases.plan_promote(model, cmd.user, urgent=bool(cmd.option("urgent"))))


verb(Verb("promote", "promote <model> [urgent=\"reason\"]", "unblock the verified staging version for prod",
          _promote, parse=_model_alone, role="approvers", audit_fields=lambda m: {"model": m, "env": "prod"},
          options=frozenset({"urgent", DRY_RUN}), plan=_plan_promote,
          details="Outside deploy hours an urgent reason is asked for, audited, and on-call is paged."))


async def _reject(runtime: Runtime, cmd: Command, model: str) -> None:
    async def work() -> None:
        await runtime.releases.reject(_staged(runtime, model), cmd.user)

    await _answer(runtime, cmd, work())


verb(Verb("reject", "reject <model>", "refuse the version on staging so it cannot be unblocked", _reject,
          parse=_model_alone, role="approvers", audit_fields=lambda m: {"model": m, "env": "staging"}))


def _parse_rollback(runtime: Runtime, cmd: Command) -> tuple[str, str, str | None]:
    model = _model(runtime, cmd)
    rest = cmd.args[1:]
    env = _env(runtime, model, rest.pop(0) if rest and rest[0] in ENVS else None, default="prod" if "prod" in runtime.config.models[model].environments else "staging")
    to = None
    if rest[:1] == ["to"] and len(rest) == 2:
        to = rest[1]
    elif rest:
        raise UsageError(f"unexpected words: {quoted(' '.join(rest))}")
    return model, env, to


async def _rollback(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str | None]) -> None:
    from bot.releases import messages

    model, env, to = parsed
    reason = cmd.option("reason")
    if reason is None and cmd.trigger_id:
        await runtime.notifier.open_view(cmd.trigger_id, messages.reason_modal(
            "release.rollback", "Roll back", f"Roll *{model} {env}* back to {to or 'the previous version'}?",
            "Roll back", messages.RollbackRef(model=model, env=env, to=to)))
        return
    text = await _answer(runtime, cmd, runtime.releases.rollback(model, env, cmd.user, to_version=to, reason=reason or "none given"))
    if text:
        await runtime.notifier.post(cmd.channel, Message(text))


async def _plan_rollback(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str | None]) -> str:
    model, env, to = parsed
    reason = cmd.option("reason")
    # The real command asks for a missing reason in a modal first; the dry run says so rather than opening it.
    more = f"\nReason: {escape(reason)}" if reason is not None else "\nA reason would be asked for first."
    return await _release_plan(lambda: runtime.releases.plan_rollback(model, env, cmd.user, to_version=to), more)


verb(Verb("rollback", "rollback <model> [staging|prod] [to <version>] [reason=\"...\"]",
          "serve the previous known-good version again (asks for a reason)", _rollback, parse=_parse_rollback,
          role="deployers", options=frozenset({"reason", DRY_RUN}), plan=_plan_rollback,
          audit_fields=lambda p: {"model": p[0], "env": p[1], "version": p[2]}))


async def _status(runtime: Runtime, cmd: Command, model: str | None) -> None:
    from bot.releases import messages

    table = messages.status_table(await runtime.releases.status_rows(model))
    if model and runtime.config.models[model].retrain:
        from bot.retrain.messages import with_retrain_button

        table = with_retrain_button(table, model)
    await tell(runtime, cmd, table)


def _parse_models(runtime: Runtime, cmd: Command) -> None:
    no_more_words(cmd, 0)


verb(Verb("status", "status [model]", "which version each environment serves, who shipped it, last verify", _status,
          parse=lambda rt, cmd: _model_alone(rt, cmd) if cmd.args else None))
verb(Verb("models", "models", "the model table: every model in every environment", _status, parse=_parse_models))


def _parse_provenance(runtime: Runtime, cmd: Command) -> tuple[str, str]:
    model = _model(runtime, cmd)
    if len(cmd.args) != 2:
        raise UsageError("name the version too")
    return model, cmd.args[1]


async def _provenance(runtime: Runtime, cmd: Command, parsed: tuple[str, str]) -> None:
    from bot.releases import messages
    from bot.releases.service import ReleaseError
    from bot.serving.artifacts import ArtifactError
    from bot.serving.registry import RegistryError

    model, version = parsed

    async def work() -> None:
        registry = runtime.releases.registry(model)
        try:
            await registry.get(model, version)
            meta = await registry.metadata(model, version)
            digest = await registry.digest(model, version)
        except (RegistryError, ArtifactError) as exc:
            raise ReleaseError(str(exc)) from None
        await tell(runtime, cmd, messages.provenance(model, version, meta.model_dump(mode="json"), digest))

    await _answer(runtime, cmd, work())


verb(Verb("provenance", "provenance <model> <version>", "where a version came from: data, code, run, metrics",
          _provenance, parse=_parse_provenance))


def _parse_lock(runtime: Runtime, cmd: Command) -> tuple[str, str, str]:
    model = _model(runtime, cmd)
    if len(cmd.args) < 2:
        raise UsageError("name the environment: staging or prod")
    env = _env(runtime, model, cmd.args[1])
    return model, env, " ".join(cmd.args[2:]) or cmd.option("reason") or "no reason given"


async def _announce(runtime: Runtime, cmd: Command, text: str) -> None:
    """Post what a lock or unlock did in the channel. It is done by then: a post Slack refuses (the bot not in
    the channel, Slack down) is told to the person and audited, not reported as the command failing."""
    try:
        await runtime.notifier.post(cmd.channel, Message(text))
    except SlackError as exc:
        runtime.audit(actor=cmd.user, verb=f"{cmd.verb}.announce", status="unshown", channel=cmd.channel,
                      detail={"error": exc.error})
        await tell(runtime, cmd, Message(f"{text}\n:warning: Done, but Slack refused the post in this channel "
                                         f"({exc.error}); invite the bot with `/invite` so others see it."))


async def _lock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> None:
    async def work() -> None:
        await _announce(runtime, cmd, runtime.releases.lock(*parsed[:2], cmd.user, parsed[2]))

    await _answer(runtime, cmd, work())


def _parse_unlock(runtime: Runtime, cmd: Command) -> tuple[str, str, str]:
    no_more_words(cmd, 2)  # unlock takes no reason: words after the environment would be dropped
    return _parse_lock(runtime, cmd)


async def _plan_lock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> str:
    return await _release_plan(lambda: runtime.releases.plan_lock(*parsed[:2], cmd.user, parsed[2]))


async def _plan_unlock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> str:
    return await _release_plan(lambda: runtime.releases.plan_unlock(parsed[0], parsed[1], cmd.user))


async def _unlock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> None:
    async def work() -> None:
        await _announce(runtime, cmd, runtime.releases.unlock(parsed[0], parsed[1], cmd.user))

    await _answer(runtime, cmd, work())


verb(Verb("lock", "lock <model> <env> [reason]", "stop deploys to an environment until unlocked", _lock,
          parse=_parse_lock, role="deployers", audit_fields=lambda p: {"model": p[0], "env": p[1]},
          options=frozenset({"reason", DRY_RUN}), plan=_plan_lock))
verb(Verb("unlock", "unlock <model> <env>", "release a lock taken with /mlops lock", _unlock,
          parse=_parse_unlock, role="deployers", audit_fields=lambda p: {"model": p[0], "env": p[1]},
          options=frozenset({DRY_RUN}), plan=_plan_unlock))


# -- datagen ------------------------------------------------------------------------------------------


def _parse_datagen(runtime: Runtime, cmd: Command) -> tuple[str, Any, Any]:
    from datetime import date

    from bot.datagen.service import DatagenError

    def day(word: str) -> date:
        try:
            return date.fromisoformat(word)
        except ValueError:
            raise UsageError(f"`{quoted(word)}` is not a date (YYYY-MM-DD)") from None

    try:
        job = runtime.datagen.job_name(cmd.option("job"))
    except DatagenError as exc:
        raise UsageError(str(exc)) from None
    args = list(cmd.args)
    compare = day(args.pop()) if len(args) >= 2 and args[-2] == "compare" else None
    if compare is not None:
        args.pop()
    if len(args) > 1:
        raise UsageError(f"unexpected words: {quoted(' '.join(args[1:]))}")
    first = args[0] if args else "latest"
    return job, None if first == "latest" else day(first), compare


async def _datagen(runtime: Runtime, cmd: Command, parsed: tuple[str, Any, Any]) -> None:
    from bot.datagen.service import DatagenError

    try:
        shown = runtime.datagen.view(*parsed)
    except DatagenError as exc:
        shown = [Message(f":warning: {exc}")]
    for msg in shown:
        await tell(runtime, cmd, msg)


verb(Verb("datagen", "datagen [latest|DATE] [compare DATE] [job=J]",
          "a datagen run: status, funnel with loss and deltas, item-age buckets; or two runs side by side",
          _datagen, parse=_parse_datagen, audit_fields=lambda p: {"model": p[0], "version": str(p[1] or "latest")},
          options=frozenset({"job"})))


# -- on-call ------------------------------------------------------------------------------------------

def _parse_oncall(runtime: Runtime, cmd: Command) -> oncall_grammar.OnCallRequest:
    try:
        return oncall_grammar.parse(cmd.args, cmd.options, cmd.channel, runtime.config.oncall.rotations)
    except oncall_grammar.OnCallInputError as exc:
        raise UsageError(str(exc)) from None


async def _oncall(runtime: Runtime, cmd: Command, request: oncall_grammar.OnCallRequest) -> None:
    await runtime.oncall.handle(request, cmd.user, cmd.channel, cmd.response_url)


verb(Verb("oncall", oncall_grammar.USAGE, oncall_grammar.SUMMARY, _oncall, parse=_parse_oncall,
          details=oncall_grammar.DETAILS, options=frozenset({"rotation"})))


# -- retrain ------------------------------------------------------------------------------------------

def _parse_retrain(runtime: Runtime, cmd: Command) -> Any:
    from bot.retrain.service import parse_request

    retrainable = {name: m.retrain is not None for name, m in runtime.config.models.items()}
    if "force" in cmd.options and cmd.options["force"].lower() not in ("on", "off"):
        flag("force", cmd.options["force"])  # parse_request would read `force=maybe` as false
    try:
        return parse_request(cmd.args, cmd.options, retrainable)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


async def _retrain(runtime: Runtime, cmd: Command, request: Any) -> None:
    from bot.retrain.service import RetrainError

    try:
        if request.cancel:
            await tell(runtime, cmd, Message(await runtime.retrain.cancel(request.model, cmd.user)))
        else:
            await runtime.retrain.start(request.model, cmd.user, cmd.channel, args=request.args, force=request.force)
    except RetrainError as exc:
        await tell(runtime, cmd, Message(f":warning: {exc}"))


async def _plan_retrain(runtime: Runtime, cmd: Command, request: Any) -> str:
    from bot.retrain.service import RetrainError

    try:
        return runtime.retrain.plan(request.model, cmd.user, cmd.channel, args=request.args, force=request.force,
                                    cancel=request.cancel)
    except RetrainError as exc:
        return refused(exc)


verb(Verb("retrain", "retrain <model> [key=value ...] [force=true] | retrain <model> cancel",
          "run the model's training pipeline and follow it to a new version", _retrain, parse=_parse_retrain,
          role="deployers", audit_fields=lambda r: {"model": r.model},
          # Every key=value is the pipeline's conf by design; force and dry_run are the bot's own.
          options=frozenset({"force", DRY_RUN}), any_option=True, plan=_plan_retrain,
          details="key=value arguments go to the pipeline (Airflow: in the run's conf). One run per model at a time; "
                  "`force=true` starts another anyway. The card's *Deploy to staging* button ships the new version."))


# -- silences -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SilenceRequest:
    """No source: list the silences in force. `end`: end one early. Otherwise: silence these alerts."""

    source: str | None = None
    matcher: str = ""
    span: timedelta = timedelta(hours=24)
    end: int | None = None


def _parse_silence(runtime: Runtime, cmd: Command) -> SilenceRequest:
    from bot.silences import SilenceError, parse_duration

    args = cmd.args
    if not args:
        return SilenceRequest()
    if args[0] == "end":
        # isdecimal, not isdigit: int() cannot read digits such as "²", which isdigit accepts. A number past
        # int64 names no row, and SQLite cannot even look it up (OverflowError).
        number = args[1].lstrip("#") if len(args) == 2 else ""
        if not number.isdecimal() or len(number) > 19 or int(number) > 2**63 - 1:
            raise UsageError("name the silence to end by its number, as `/mlops silence` lists them")
        return SilenceRequest(end=int(number))
    if args[0] == "datagen":
        jobs = runtime.config.datagen.jobs
        if len(args) < 2 or args[1] not in jobs:
            raise UsageError(f"name a datagen job; jobs: {', '.join(sorted(jobs)) or 'none'}")
        source, matcher, rest = "datagen", args[1], args[2:]
    else:
        model = _model(runtime, cmd)
        if len(args) < 2:
            raise UsageError(f"name the environment: {', '.join(runtime.config.models[model].environments)}")
        source, matcher, rest = "alertmanager", f"{model}/{_env(runtime, model, args[1])}", args[2:]
    if len(rest) > 1:
        raise UsageError(f"unexpected words: {quoted(' '.join(rest[1:]))}")
    try:
        return SilenceRequest(source, matcher, parse_duration(rest[0])) if rest else SilenceRequest(source, matcher)
    except SilenceError as exc:
        raise UsageError(str(exc)) from None


async def _silence(runtime: Runtime, cmd: Command, req: SilenceRequest) -> None:
    from bot.silences import SilenceError

    silences = runtime.silences
    if req.source is None and req.end is None:
        await tell(runtime, cmd, Message(silences.listing()))
        return
    try:
        said = (silences.end(req.end, cmd.user, cmd.channel) if req.end is not None
                else silences.silence(req.source, req.matcher, req.span, cmd.user, cmd.channel))
    except SilenceError as exc:
        await tell(runtime, cmd, Message(f":warning: {exc}"))
        return
    await runtime.notifier.post(cmd.channel, Message(said))


async def _plan_silence(runtime: Runtime, cmd: Command, req: SilenceRequest) -> str:
    from bot.silences import SilenceError

    try:
        return runtime.silences.plan(req.source, req.matcher, req.span, end=req.end)
    except SilenceError as exc:
        return refused(exc)


verb(Verb("silence", "silence [<model> <env> | datagen <job>] [30m|4h|2d] | silence end <id>",
          "hold back alerts for a model's environment or a datagen job for a while (24h unless told); alone, list silences",
          _silence, parse=_parse_silence, options=frozenset({DRY_RUN}), plan=_plan_silence,
          details="Alerts that arrive while silenced are stored (and counted in the weekly digest) but not posted. "
                  "A silence lasts at most 7d."))
