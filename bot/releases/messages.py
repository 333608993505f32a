"""Block Kit for the release train: the card a release lives on, its thread notes, status tables, modals."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from bot.notifier import Message, RowId, escape
from bot.releases.model import Release, State
from bot.releases.queue import waiting_text

ICONS = {
    State.DEPLOYING: ":hourglass_flowing_sand:",
    State.DEPLOY_FAILED: ":x:",
    State.STAGED: ":package:",
    State.VERIFYING: ":mag:",
    State.VERIFIED: ":white_check_mark:",
    State.VERIFY_FAILED: ":x:",
    State.PROMOTING: ":rocket:",
    State.LIVE: ":large_green_circle:",
    State.PROMOTE_FAILED: ":rotating_light:",
    State.REJECTED: ":no_entry_sign:",
    State.ROLLED_BACK: ":rewind:",
    State.SUPERSEDED: ":zzz:",
    State.INTERRUPTED: ":warning:",
    State.CANARY: ":hatching_chick:",
    State.CANARY_ABORTED: ":leftwards_arrow_with_hook:",
}


class ReleaseRef(BaseModel):
    """The value of every release button: an id, never state (state is read fresh on each press). `rev` names
    the card's rendering, so a press is claimed once per rendering: a double click or a second person runs
    nothing twice, and the same button on a later rendering of the card is a new press."""

    release: RowId
    rev: str = ""


class RollbackRef(BaseModel):
    model: str
    env: str
    release: RowId | None = None  # the card it was pressed on, to refuse a stale card
    to: str | None = None
    rev: str = ""


def when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    try:
        unix = int(moment.timestamp())
    except (ValueError, OverflowError, OSError):  # a date no clock reaches (year 1 from a webhook): shown as written
        return moment.isoformat(timespec="minutes")
    return f"<!date^{unix}^{{date_short_pretty}} {{time}}|{moment.isoformat(timespec='minutes')}>"


def size(n: int) -> str:
    """A byte count as people read it: 812 B, 3.4 MiB."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def btn(text: str, action_id: str, value: BaseModel, style: str | None = None) -> dict[str, Any]:
    b = {"type": "button", "text": {"type": "plain_text", "text": text}, "action_id": action_id,
         "value": value.model_dump_json(exclude_defaults=True)}
    if style:
        b["style"] = style
    return b


def rev(release: Release) -> str:
    return release.updated_at.isoformat() if release.updated_at else ""


def buttons(release: Release, env: str, *, blocker: str | None) -> list[dict[str, Any]]:
    ref = ReleaseRef(release=release.id, rev=rev(release))

    def back(where: str) -> dict[str, Any]:
        return btn(f"Roll back {where}", "release.rollback",
                   RollbackRef(model=release.model, env=where, release=release.id, rev=rev(release)), "danger")

    if env == "prod" and release.prod_state is State.LIVE:
        return [back("prod")]
    if release.prod_state is State.CANARY:
        return [btn("Promote to all", "release.canary_promote", ref, "primary"),
                btn("Abort", "release.canary_abort", ref, "danger")]
    match release.state:
        case State.VERIFIED if blocker is None:
            return [btn("Unblock prod", "release.promote", ref, "primary"), btn("Start canary", "release.canary", ref),
                    btn("Reject", "release.reject", ref), back("staging")]
        case State.VERIFIED:
            return [btn("Reject", "release.reject", ref), back("staging")]
        case State.STAGED | State.VERIFY_FAILED | State.INTERRUPTED:
            return [btn("Verify", "release.verify", ref), back("staging")]
    return [back("prod")] if release.prod_state is State.LIVE else []


def verify_lines(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    lines = [f"{':white_check_mark:' if c['passed'] else ':x:'} {c['name']}: {c['detail']}" for c in report.get("checks", [])]
    return "\n".join(lines)


def card(release: Release, *, env: str, verify_report: dict[str, Any] | None = None, note: str = "",
         blocker: str | None = None, train: str = "") -> Message:
    """The release as `env` sees it, with its standing in the other environment beside it."""
    standing = release.standing(env) or release.state
    other = f" · prod: *{release.prod_state.words}*" if env != "prod" and release.prod_state else (
        f" · staging: *{release.state.words}*" if env == "prod" else "")
    head = f"{ICONS[standing]} *{release.model} {release.version}* · {env} · *{standing.words}*{other}"
    facts = [
        f"deployed by <@{release.deployed_by}> {when(release.deployed_at)}" if release.deployed_by else "",
        f"unblocked by <@{release.approved_by}> {when(release.approved_at)}" if release.approved_by else "",
        f"digest `{release.digest.removeprefix('sha256:')[:12]}` · triton version {release.triton_version}",
    ]
    blocks = [section(head), context(" · ".join(f for f in facts if f))]
    if train:
        blocks.append(context(train))
    if note:
        blocks.append(section(note))
    if blocker and release.state is State.VERIFIED:
        blocks.append(section(f":no_entry: Cannot be unblocked: {blocker}."))
    if verify_report:
        blocks.append(section("*Verification*\n" + verify_lines(verify_report)))
    actions = buttons(release, env, blocker=blocker)
    if actions:
        blocks.append({"type": "actions", "block_id": f"release-{release.id}", "elements": actions})
    return Message(text=f"{release.model} {release.version} {env}: {standing.words}", blocks=blocks)


def note(text: str) -> Message:
    return Message(text=text, blocks=[section(text)])


def lock_line(lock: Any) -> str:
    """A lock as status and App Home show it: an operation in progress, or a person's lock until its expiry."""
    what = "in progress" if lock.kind == "operation" else "locked"
    until = f", until {when(lock.expires_at)}" if lock.kind == "manual" else ""
    return f":lock: {what}: <@{lock.holder}> {lock.reason}{until}"


def status_table(rows: list[dict[str, Any]]) -> Message:
    """rows: model, env, version, state (words), deployed_by, approved_by, updated_at, verify, lock, drift, waiting."""
    if not rows:
        return note("No model is deployed anywhere yet. Start with `/mlops deploy <model>`.")
    blocks = [section("*Models in service*")]
    for r in rows:
        who = f"deployed by <@{r['deployed_by']}>" if r.get("deployed_by") else ""
        if r.get("approved_by"):
            who += f", unblocked by <@{r['approved_by']}>"
        lock = r.get("lock")
        lines = [f"*{r['model']}* · {r['env']}: `{r['version'] or '—'}` ({r['state'] or 'not deployed'}) {who} "
                 f"{when(r.get('updated_at'))}"]
        if r.get("verify"):
            lines.append(f"last verify: {r['verify']}")
        if lock:
            lines.append(lock_line(lock))
        if r.get("waiting"):
            lines.append(f":railway_car: {waiting_text(r['waiting'])} (one train at a time)")
        lines += [f":warning: {d}" for d in r.get("drift") or []]
        blocks.append(section("\n".join(lines)))
    return Message(text="Models in service", blocks=blocks)


def reason_modal(callback_id: str, title: str, prompt: str, submit: str, metadata: BaseModel) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": {"type": "plain_text", "text": title[:24]},
        "submit": {"type": "plain_text", "text": submit[:24]},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": metadata.model_dump_json(),
        "blocks": [
            section(prompt),
            {"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": "reason", "multiline": True}},
        ],
    }


def _stamp(value: Any) -> str:
    """A time written in metadata.json as a date token when it is one (with its zone), else as written."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo:
        return when(moment)
    return "—" if value is None else f"`{escape(str(value))}`"


def provenance(model: str, version: str, metadata: dict[str, Any] | None, digest: str) -> Message:
    if metadata is None:
        return note(f"*{model} {version}* has no readable metadata.json (digest `{digest.removeprefix('sha256:')[:12]}`).")
    metrics = ", ".join(f"{k} {v}" for k, v in (metadata.get("metrics") or {}).items()) or "none recorded"
    text = (
        f"*{model} {version}*\ncreated {_stamp(metadata.get('created_at'))} · dataset `{metadata.get('dataset_version', '—')}`"
        f" · git `{metadata.get('git_sha', '—')}` · pipeline run `{metadata.get('pipeline_run_id', '—')}`"
        f"\noffline metrics: {metrics}\ndigest `{digest}`"
    )
    return note(text)
