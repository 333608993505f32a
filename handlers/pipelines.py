"""The buttons of a pipeline alert: Retry failed tasks (deployers; once per failure of the run), Ack, Silence, and
Mark <task> success (approvers; a modal asks for the reason)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from bot.notifier import Message
from bot.pipelines.messages import ACK, MARK_BUTTONS, MARK_SUCCESS, RETRY, SILENCE, PipelineRef, TaskRef, mark_success_modal
from handlers.buttons import Press, answer_press, button, row_card
from handlers.modals import Submission, modal

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


async def _ask_why(runtime: Runtime, press: Press, ref: TaskRef) -> None:
    await runtime.notifier.open_view(press.trigger_id, mark_success_modal(ref))


for _i in range(MARK_BUTTONS):  # one per failed task of the run
    button(f"{MARK_SUCCESS}.{_i}", TaskRef, "approvers", check=on_its_message)(_ask_why)


@modal(MARK_SUCCESS, TaskRef, "approvers")
async def _mark_success(runtime: Runtime, sub: Submission, ref: TaskRef) -> dict[str, str] | None:
    reason = (sub.values.get("reason") or "").strip()
    if not reason:
        return {"reason": "Marking a task success needs a reason for the audit log."}

    async def work() -> None:
        said = await runtime.pipelines.mark_success(ref.alert, ref.failure, ref.task, sub.user, reason)
        await runtime.notifier.dm(sub.user, Message(said))

    runtime.spawn(work(), name=MARK_SUCCESS)
    return None
