"""The buttons of a pipeline alert: Retry failed tasks (deployers; once per failure of the run), Ack, Silence."""
from __future__ import annotations

from typing import TYPE_CHECKING

from bot.pipelines.messages import ACK, RETRY, SILENCE, PipelineRef
from handlers.buttons import Press, answer_press, button, row_card

if TYPE_CHECKING:
    from bot.runtime import Runtime

on_its_message = row_card("alerts", "alert", "alert")


@button(RETRY, PipelineRef, "deployers", once=True, check=on_its_message)
async def _retry(runtime: Runtime, press: Press, ref: PipelineRef) -> None:
    await answer_press(runtime, press, await runtime.pipelines.retry(ref.alert, ref.failure, press.user))


@button(ACK, PipelineRef, check=on_its_message)
async def _ack(runtime: Runtime, press: Press, ref: PipelineRef) -> None:
    await answer_press(runtime, press, await runtime.pipelines.ack(ref.alert, ref.failure, press.user))


@button(SILENCE, PipelineRef, check=on_its_message)
async def _silence(runtime: Runtime, press: Press, ref: PipelineRef) -> None:
    await answer_press(runtime, press, await runtime.pipelines.silence(ref.alert, ref.failure, press.user))
