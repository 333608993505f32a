"""What each model's environments serve and whether they take deploys: the status, models, provenance, lock and
unlock verbs."""
from __future__ import annotations

from typing import TYPE_CHECKING

from bot.notifier import Message, SlackError
from bot.releases import messages
from bot.releases.service import ReleaseError
from bot.retrain.messages import with_retrain_button
from bot.serving.artifacts import ArtifactError
from bot.serving.registry import RegistryError
from handlers.grammar import DRY_RUN, Command, UsageError, env_named, model_named, no_more_words, only_model
from handlers.releases import answer_release, release_plan
from handlers.router import tell, verb

if TYPE_CHECKING:
    from bot.runtime import Runtime


def _parse_models(runtime: Runtime, cmd: Command) -> None:
    no_more_words(cmd, 0)


@verb("status", "status [model]", "which version each environment serves, who shipped it, last verify",
      parse=lambda rt, cmd: only_model(rt.config, cmd) if cmd.args else None)
@verb("models", "models", "the model table: every model in every environment", parse=_parse_models)
async def _status(runtime: Runtime, cmd: Command, model: str | None) -> None:
    table = messages.status_table(await runtime.releases.status_rows(model))
    if model and runtime.config.models[model].retrain:
        table = with_retrain_button(table, model)
    await tell(runtime, cmd, table)


def _parse_provenance(runtime: Runtime, cmd: Command) -> tuple[str, str]:
    model = model_named(runtime.config, cmd)
    if len(cmd.args) != 2:
        raise UsageError("name the version too")
    return model, cmd.args[1]


@verb("provenance", "provenance <model> <version>", "where a version came from: data, code, run, metrics",
      parse=_parse_provenance)
async def _provenance(runtime: Runtime, cmd: Command, parsed: tuple[str, str]) -> None:
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

    await answer_release(runtime, cmd, work())


# -- locks -------------------------------------------------------------------------------------------------

def _parse_lock(runtime: Runtime, cmd: Command) -> tuple[str, str, str]:
    model = model_named(runtime.config, cmd)
    if len(cmd.args) < 2:
        raise UsageError("name the environment: staging or prod")
    env = env_named(runtime.config, model, cmd.args[1])
    return model, env, " ".join(cmd.args[2:]) or cmd.option("reason") or "no reason given"


def _parse_unlock(runtime: Runtime, cmd: Command) -> tuple[str, str, str]:
    no_more_words(cmd, 2)  # unlock takes no reason: words after the environment would be dropped
    return _parse_lock(runtime, cmd)


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


async def _plan_lock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> str:
    return await release_plan(lambda: runtime.releases.plan_lock(*parsed[:2], cmd.user, parsed[2]))


async def _plan_unlock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> str:
    return await release_plan(lambda: runtime.releases.plan_unlock(parsed[0], parsed[1], cmd.user))


@verb("lock", "lock <model> <env> [reason]", "stop deploys to an environment until unlocked",
      parse=_parse_lock, role="deployers", audit_fields=lambda p: {"model": p[0], "env": p[1]},
      options=frozenset({"reason", DRY_RUN}), plan=_plan_lock)
async def _lock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> None:
    async def work() -> None:
        await _announce(runtime, cmd, runtime.releases.lock(*parsed[:2], cmd.user, parsed[2]))

    await answer_release(runtime, cmd, work())


@verb("unlock", "unlock <model> <env>", "release a lock taken with /mlops lock",
      parse=_parse_unlock, role="deployers", audit_fields=lambda p: {"model": p[0], "env": p[1]},
      options=frozenset({DRY_RUN}), plan=_plan_unlock)
async def _unlock(runtime: Runtime, cmd: Command, parsed: tuple[str, str, str]) -> None:
    async def work() -> None:
        await _announce(runtime, cmd, runtime.releases.unlock(parsed[0], parsed[1], cmd.user))

    await answer_release(runtime, cmd, work())
