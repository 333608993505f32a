"""On-call in Slack: the oncall verb (its grammar is the on-call domain's) and the handoff and cover buttons."""
from __future__ import annotations

from typing import TYPE_CHECKING

from bot.oncall import grammar as oncall_grammar
from bot.oncall.messages import ACK_HANDOFF, TAKE_COVER, CoverRef, HandoffRef
from handlers.buttons import Press, button, row_card
from handlers.grammar import Command, UsageError
from handlers.router import verb

if TYPE_CHECKING:
    from bot.runtime import Runtime


def _parse_oncall(runtime: Runtime, cmd: Command) -> oncall_grammar.OnCallRequest:
    try:
        return oncall_grammar.parse(cmd.args, cmd.options, cmd.channel, runtime.config.oncall.rotations)
    except oncall_grammar.OnCallInputError as exc:
        raise UsageError(str(exc)) from None


@verb("oncall", oncall_grammar.USAGE, oncall_grammar.SUMMARY, parse=_parse_oncall, details=oncall_grammar.DETAILS,
      options=frozenset({"rotation"}))
async def _oncall(runtime: Runtime, cmd: Command, request: oncall_grammar.OnCallRequest) -> None:
    await runtime.oncall.handle(request, cmd.user, cmd.channel, cmd.response_url)


@button(ACK_HANDOFF, HandoffRef, check=row_card("oncall_handoffs", "handoff", "handoff"))
async def _ack_handoff(runtime: Runtime, press: Press, ref: HandoffRef) -> None:
    await runtime.oncall.acknowledge(ref.handoff, press.user, press.channel)


@button(TAKE_COVER, CoverRef, check=row_card("oncall_cover_requests", "cover request", "request"))
async def _take_cover(runtime: Runtime, press: Press, ref: CoverRef) -> None:
    await runtime.oncall.take(ref.request, press.user, press.channel)
