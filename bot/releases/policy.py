"""Who may unblock production and when: pure rules over plain values and the current time."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bot.config import WEEKDAYS, DeployPolicy, DeployWindow
from bot.releases.model import Release, State


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    needs_urgent: bool = False  # allowed only with an urgent override and its reason


def in_window(now: datetime, windows: list[DeployWindow]) -> bool:
    for window in windows:
        local = now.astimezone(ZoneInfo(window.tz))
        if WEEKDAYS[local.weekday()] in window.days and window.start <= local.time() < window.end:
            return True
    return False


def describe_windows(windows: list[DeployWindow]) -> str:
    return "; ".join(
        f"{'–'.join((w.days[0][:3], w.days[-1][:3])) if len(w.days) > 1 else w.days[0][:3]} "
        f"{w.start:%H:%M}–{w.end:%H:%M} {w.tz}".capitalize()
        for w in windows
    )


def unblock_blocker(release: Release, *, staging_only: bool, registry_digest: str | None) -> str | None:
    """Why a verified release's card must not offer Unblock (None: it may), from what is known at verify time.

    `registry_digest` is the digest of the version's files in the registry now; None when it could not be read.
    """
    if staging_only:
        return f"{release.model} is staging_only: it cannot go to production until that flag is removed"
    if release.prod_state is State.LIVE:
        return f"{release.model} {release.version} is already live in prod"
    if registry_digest is not None and registry_digest != release.digest:
        return (f"the registry's files of {release.version} changed since it was deployed (digest "
                f"`{short(release.digest)}` → `{short(registry_digest)}`); deploy it again to unblock it")
    return None


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def may_promote(
    release: Release,
    *,
    actor: str,
    is_approver: bool,
    staging_only: bool,
    current_digest: str,
    policy: DeployPolicy,
    now: datetime,
    urgent: bool = False,
) -> Decision:
    if not is_approver:
        return Decision(False, "only approvers can unblock production")
    if release.state is not State.VERIFIED:
        return Decision(False, f"{release.model} {release.version} is not verified on staging ({release.state.words})")
    blocker = unblock_blocker(release, staging_only=staging_only, registry_digest=current_digest)
    if blocker:
        return Decision(False, blocker)
    if policy.four_eyes and actor == release.deployed_by:
        return Decision(False, "you deployed this version to staging; another approver has to unblock it (four-eyes)")
    if release.verified_at is None or now - release.verified_at > timedelta(hours=policy.approval_ttl_hours):
        return Decision(False, f"the verification is older than {policy.approval_ttl_hours:g} h; "
                               f"run `/mlops verify {release.model}` again")
    if not in_window(now, policy.windows) and not urgent:
        return Decision(False, f"outside deploy hours ({describe_windows(policy.windows)})", needs_urgent=True)
    return Decision(True)
