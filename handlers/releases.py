"""The release train in Slack: the deploy, verify, promote, canary, reject and rollback verbs, the buttons of a
release card, and the urgent-unblock and rollback modals."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bot.config import Role, parse_duration
from bot.notifier import Message
from bot.releases import messages
from bot.releases.messages import ReleaseRef, RollbackRef
from bot.releases.service import ReleaseError
from handlers.buttons import Mismatch, Press, answer_press, button, on_its_card
from handlers.grammar import (
    DRY_RUN,
    ENVS,
    Command,
    UsageError,
    env_named,
    escape,
    model_named,
    no_more_words,
    only_model,
    quoted,
    refused,
)
from handlers.modals import Refused, Submission, modal
from handlers.router import tell, verb

if TYPE_CHECKING:
    from bot.releases.model import Release
    from bot.runtime import Runtime


async def answer_release(runtime: Runtime, cmd: Command, work: Awaitable[Any]) -> Any:
    """Run a release operation; a refusal or failure goes back to the person as an ephemeral message."""
    try:
        return await work
    except ReleaseError as exc:
        await tell(runtime, cmd, Message(f":warning: {exc}"))
        return None


async def answer_release_press(runtime: Runtime, press: Press, work: Callable[[], Awaitable[Any]]) -> None:
    """The same for a press: a refusal or failure is told to the presser."""
    try:
        await work()
    except ReleaseError as exc:
        await answer_press(runtime, press, f":warning: {exc}")


async def release_plan(plan: Callable[[], Awaitable[str] | str], more: str = "") -> str:
    """The release service's plan (sync or async), or the reason the real command would be refused."""
    try:
        said = plan()
        text = said if isinstance(said, str) else await said
    except ReleaseError as exc:
        return refused(exc)
    return text + more


def _staged(runtime: Runtime, model: str) -> Release:
    current = runtime.releases.environment(model, "staging")
    if current is None or current["release_id"] is None:
        raise ReleaseError(f"nothing is on {model} staging; `/mlops deploy {model}` first")
    return runtime.releases.get(current["release_id"])


def _release_named(runtime: Runtime, release_id: int, model: str | None, refusal: type[Exception]) -> Release:
    """Release `release_id`, which must be `model`'s when a model is given; else `refusal` saying why."""
    try:
        release = runtime.releases.get(release_id)
    except ReleaseError as exc:
        raise refusal(str(exc)) from None
    if model is not None and release.model != model:
        raise refusal(f"release {release_id} is {release.model}'s, not {model}'s")
    return release


def _card_of(runtime: Runtime, press: Press, release_id: int, model: str | None = None) -> None:
    """Mismatch unless release `release_id` exists, is `model`'s, and its card is where it was pressed."""
    release = _release_named(runtime, release_id, model, Mismatch)
    on_its_card(press, f"release {release_id} ({release.model} {release.version})", release.channel, release.card_ts)


Operation = Callable[["Runtime", Press, "Release"], Awaitable[Any]]  # what a release card's button does to it


def _release_button(action_id: str, role: Role | tuple[Role, ...], *, once: bool = True) -> Callable[[Operation], Operation]:
    """Declare the decorated operation as a release card's button: it is given the release the card is about."""

    def declare(operation: Operation) -> Operation:
        @button(action_id, ReleaseRef, role, once=once, check=lambda rt, press, ref: _card_of(rt, press, ref.release))
        async def run(runtime: Runtime, press: Press, ref: ReleaseRef) -> None:
            await answer_release_press(runtime, press, lambda: operation(runtime, press, runtime.releases.get(ref.release)))

        return operation

    return declare


def _named_release(runtime: Runtime, release_id: int, model: str | None = None) -> Release:
    """The release a submission names, looked up before the ack; Refused if there is none or it is another model's."""
    return _release_named(runtime, release_id, model, Refused)


def _reason(sub: Submission) -> str | None:
    return (sub.values.get("reason") or "").strip() or None


async def _notify_failure(runtime: Runtime, user: str, work: Awaitable[Any]) -> None:
    try:
        await work
    except ReleaseError as exc:
        await runtime.notifier.dm(user, Message(f":warning: {exc}"))


# -- deploy ------------------------------------------------------------------------------------------------

def _parse_deploy(runtime: Runtime, cmd: Command) -> tuple[str, str | None]:
    model = model_named(runtime.config, cmd)
    rest = cmd.args[1:]
    if rest[-2:] == ["to", "prod"]:
        raise UsageError("deploys go to staging; after verification, unblock prod with `/mlops promote <model>`")
    if rest[-2:] == ["to", "staging"]:
        rest = rest[:-2]
    if len(rest) > 1:
        raise UsageError(f"unexpected words: {quoted(' '.join(rest[1:]))}")
    return model, rest[0] if rest else None


async def _plan_deploy(runtime: Runtime, cmd: Command, parsed: tuple[str, str | None]) -> str:
    return await release_plan(lambda: runtime.releases.plan_deploy(parsed[0], parsed[1], cmd.user))


@verb("deploy", "deploy <model> [<version>|latest] [to staging]", "deploy a version to staging and verify it",
      parse=_parse_deploy, role="deployers", options=frozenset({DRY_RUN}), plan=_plan_deploy,
      audit_fields=lambda p: {"model": p[0], "env": "staging", "version": p[1]})
async def _deploy(runtime: Runtime, cmd: Command, parsed: tuple[str, str | None]) -> None:
    model, version = parsed
    await answer_release(runtime, cmd, runtime.releases.deploy(model, version, cmd.user, cmd.channel))


# -- verify ------------------------------------------------------------------------------------------------

def _parse_model_env(runtime: Runtime, cmd: Command) -> tuple[str, str]:
    model = model_named(runtime.config, cmd)
    no_more_words(cmd, 2)
    return model, env_named(runtime.config, model, cmd.args[1] if len(cmd.args) > 1 else None)


@verb("verify", "verify <model> [staging|prod]", "check the served version: health, golden requests, latency, drift",
      parse=_parse_model_env, role="deployers", audit_fields=lambda p: {"model": p[0], "env": p[1]})
async def _verify(runtime: Runtime, cmd: Command, parsed: tuple[str, str]) -> None:
    await answer_release(runtime, cmd, runtime.releases.verify_env(parsed[0], parsed[1], cmd.user))


@_release_button("release.verify", "deployers")
async def _verify_press(runtime: Runtime, press: Press, release: Release) -> None:
    await runtime.releases.verify_release(release, press.user)


# -- promote (unblock prod), urgent when outside deploy hours -------------------------------------------------

async def _open_urgent_modal(runtime: Runtime, trigger_id: str, release: Release, why: str) -> None:
    await runtime.notifier.open_view(trigger_id, messages.reason_modal(
        "release.urgent", "Urgent unblock", f"*{release.model} {release.version}*: {why}. "
        "An urgent unblock is audited and pages on-call. Why can it not wait?", "Unblock now",
        ReleaseRef(release=release.id)))


async def _plan_promote(runtime: Runtime, cmd: Command, model: str) -> str:
    return await release_plan(lambda: runtime.releases.plan_promote(model, cmd.user, urgent=bool(cmd.option("urgent"))))


@verb("promote", "promote <model> [urgent=\"reason\"]", "unblock the verified staging version for prod",
      parse=lambda rt, cmd: only_model(rt.config, cmd), role="approvers", audit_fields=lambda m: {"model": m, "env": "prod"},
      options=frozenset({"urgent", DRY_RUN}), plan=_plan_promote,
      details="Outside deploy hours an urgent reason is asked for, audited, and on-call is paged.")
async def _promote(runtime: Runtime, cmd: Command, model: str) -> None:
    async def work() -> None:
        release = _staged(runtime, model)
        urgent = cmd.option("urgent")
        decision = await runtime.releases.check_promote(release, cmd.user, urgent=bool(urgent))
        if decision.needs_urgent and cmd.trigger_id:
            await _open_urgent_modal(runtime, cmd.trigger_id, release, decision.reason)
            return
        await runtime.releases.promote(release, cmd.user, urgent_reason=urgent)

    await answer_release(runtime, cmd, work())


# Unblock may open the urgent modal, which a person may cancel and reopen: its compare-and-set (verified →
# promoting) is what makes it run once, and a late press is told who unblocked it.
@_release_button("release.promote", "approvers", once=False)
async def _promote_press(runtime: Runtime, press: Press, release: Release) -> None:
    decision = await runtime.releases.check_promote(release, press.user)
    if decision.needs_urgent:
        await _open_urgent_modal(runtime, press.trigger_id, release, decision.reason)
        return
    await runtime.releases.promote(release, press.user)


@modal("release.urgent", ReleaseRef, "approvers")
async def _urgent_submitted(runtime: Runtime, sub: Submission, ref: ReleaseRef) -> dict[str, str] | None:
    release = _named_release(runtime, ref.release)
    reason = _reason(sub)
    if reason is None or len(reason) < 5:
        return {"reason": "Say why this cannot wait for deploy hours (a few words at least)."}
    runtime.spawn(_notify_failure(runtime, sub.user, runtime.releases.promote(release, sub.user, urgent_reason=reason)),
                  name="release.urgent")
    return None


# -- canary (part of prod first) ---------------------------------------------------------------------------

CanaryArgs = tuple[str, bool, float | None, float | None]  # model, report, percent, duration


def _parse_canary(runtime: Runtime, cmd: Command) -> CanaryArgs:
    model = model_named(runtime.config, cmd)
    if cmd.args[1:] not in ([], ["report"]):
        raise UsageError(f"unexpected words: {quoted(' '.join(cmd.args[1:]))}; the only one is `report`")
    percent = duration = None
    if (word := cmd.option("percent")) is not None:
        try:
            percent = float(word.rstrip("%"))
        except ValueError:
            percent = -1
        if not 0 < percent < 100:
            raise UsageError(f"`percent` is a share of the prod endpoints between 0 and 100, not `{quoted(word)}`")
    if (word := cmd.option("for")) is not None:
        try:
            duration = parse_duration(word)
        except ValueError as exc:
            raise UsageError(f"`for`: {quoted(str(exc))}") from None
    return model, cmd.args[1:] == ["report"], percent, duration


async def _plan_canary(runtime: Runtime, cmd: Command, parsed: CanaryArgs) -> str:
    model, _, percent, duration = parsed
    return await release_plan(lambda: runtime.releases.canaries.plan(model, cmd.user, percent=percent, duration=duration,
                                                                      urgent=bool(cmd.option("urgent"))))


@verb("canary", "canary <model> [report] [percent=20] [for=30m] [urgent=\"reason\"]",
      "load the verified staging version on part of prod, judge it by Triton's metrics, then promote or abort",
      parse=_parse_canary, options=frozenset({"percent", "for", "urgent", DRY_RUN}), plan=_plan_canary,
      audit_fields=lambda p: {"model": p[0], "env": "prod"},
      details="Starting one follows the policy of an unblock (approvers, four-eyes, deploy hours). `report` shows "
              "every step of the model's latest canary.")
async def _canary(runtime: Runtime, cmd: Command, parsed: CanaryArgs) -> None:
    model, report, percent, duration = parsed
    if report:
        await tell(runtime, cmd, Message(runtime.releases.canaries.report(model)))
        return
    await answer_release(runtime, cmd, runtime.releases.canaries.start(model, cmd.user, percent=percent, duration=duration,
                                                                       urgent_reason=cmd.option("urgent")))


@_release_button("release.canary", "approvers", once=False)  # a refused start may be pressed again
async def _canary_press(runtime: Runtime, press: Press, release: Release) -> None:
    await runtime.releases.canaries.start(release.model, press.user, release_id=release.id)


@_release_button("release.canary_promote", "approvers")
async def _canary_promote_press(runtime: Runtime, press: Press, release: Release) -> None:
    await answer_press(runtime, press, runtime.releases.canaries.decide(release.id, press.user, "promote"))


@_release_button("release.canary_abort", ("deployers", "approvers"))
async def _canary_abort_press(runtime: Runtime, press: Press, release: Release) -> None:
    await answer_press(runtime, press, runtime.releases.canaries.decide(release.id, press.user, "abort"))


# -- reject ------------------------------------------------------------------------------------------------

@verb("reject", "reject <model>", "refuse the version on staging so it cannot be unblocked",
      parse=lambda rt, cmd: only_model(rt.config, cmd), role="approvers", audit_fields=lambda m: {"model": m, "env": "staging"})
async def _reject(runtime: Runtime, cmd: Command, model: str) -> None:
    async def work() -> None:
        await runtime.releases.reject(_staged(runtime, model), cmd.user)

    await answer_release(runtime, cmd, work())


@_release_button("release.reject", "approvers")
async def _reject_press(runtime: Runtime, press: Press, release: Release) -> None:
    await runtime.releases.reject(release, press.user)


# -- rollback ----------------------------------------------------------------------------------------------

def _parse_rollback(runtime: Runtime, cmd: Command) -> tuple[str, str, str | None]:
    model = model_named(runtime.config, cmd)
    rest = cmd.args[1:]
    default = "prod" if "prod" in runtime.config.models[model].environments else "staging"
    env = env_named(runtime.config, model, rest.pop(0) if rest and rest[0] in ENVS else None, default=default)
    to = None
    if rest[:1] == ["to"] and len(rest) == 2:
        to = rest[1]
    elif rest:
        raise UsageError(f"unexpected words: {quoted(' '.join(rest))}")
    return model, env, to


async def _plan_rollback(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str | None]) -> str:
    model, env, to = parsed
    reason = cmd.option("reason")
    # The real command asks for a missing reason in a modal first; the dry run says so rather than opening it.
    more = f"\nReason: {escape(reason)}" if reason is not None else "\nA reason would be asked for first."
    return await release_plan(lambda: runtime.releases.plan_rollback(model, env, cmd.user, to_version=to), more)


@verb("rollback", "rollback <model> [staging|prod] [to <version>] [reason=\"...\"]",
      "serve the previous known-good version again (asks for a reason)", parse=_parse_rollback,
      role="deployers", options=frozenset({"reason", DRY_RUN}), plan=_plan_rollback,
      audit_fields=lambda p: {"model": p[0], "env": p[1], "version": p[2]})
async def _rollback(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str | None]) -> None:
    model, env, to = parsed
    reason = cmd.option("reason")
    if reason is None and cmd.trigger_id:
        await runtime.notifier.open_view(cmd.trigger_id, messages.reason_modal(
            "release.rollback", "Roll back", f"Roll *{model} {env}* back to {to or 'the previous version'}?",
            "Roll back", RollbackRef(model=model, env=env, to=to)))
        return
    text = await answer_release(runtime, cmd, runtime.releases.rollback(model, env, cmd.user, to_version=to,
                                                                        reason=reason or "none given"))
    if text:
        await runtime.notifier.post(cmd.channel, Message(text))


def rollback_check(runtime: Runtime, press: Press, ref: RollbackRef) -> None:
    """The check of a Roll back button (a release card's, or an alert's naming no release)."""
    model = runtime.config.models.get(ref.model)
    if model is None or ref.env not in model.environments:
        raise Mismatch(f"no environment {ref.env} of a model {ref.model}")
    if press.action_id == "release.rollback" and ref.release is None:
        raise Mismatch("a release card's Roll back names its release")
    if ref.release is not None:
        _card_of(runtime, press, ref.release, ref.model)


@button("release.rollback", RollbackRef, "deployers", check=rollback_check)
async def open_rollback_modal(runtime: Runtime, press: Press, ref: RollbackRef) -> None:
    await runtime.notifier.open_view(press.trigger_id, messages.reason_modal(
        "release.rollback", "Roll back", f"Roll *{ref.model} {ref.env}* back to the previous version?", "Roll back", ref))


@modal("release.rollback", RollbackRef, "deployers")
async def _rollback_submitted(runtime: Runtime, sub: Submission, ref: RollbackRef) -> dict[str, str] | None:
    if ref.model not in runtime.config.models or ref.env not in runtime.config.models[ref.model].environments:
        raise Refused(f"no environment {ref.env} of a model {ref.model}")
    if ref.release is not None:
        _named_release(runtime, ref.release, ref.model)
    reason = _reason(sub)
    if reason is None:
        return {"reason": "A rollback needs a reason for the audit log."}

    async def work() -> None:
        text = await runtime.releases.rollback(ref.model, ref.env, sub.user, to_version=ref.to, reason=reason,
                                               card_release=ref.release)
        await runtime.notifier.post(runtime.config.channels.main, Message(text))

    runtime.spawn(_notify_failure(runtime, sub.user, work()), name="release.rollback")
    return None
