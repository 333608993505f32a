"""`mlops-bot sandbox --script`: the whole bot, the Slack stand-in and (with the triton extra) tritonserver."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from zoneinfo import ZoneInfo

import pytest

from bot.sandbox.tritonserver import triton_missing
from tests.conftest import EXAMPLE_CONFIG


def sandbox(tmp_path, lines: list[str], log_level: str | None = "WARNING") -> subprocess.CompletedProcess:
    script = tmp_path / "script.txt"
    script.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(EXAMPLE_CONFIG),
         *(["--log-level", log_level] if log_level else []), "sandbox",
         "--script", str(script), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=300,
    )


def test_help_unknown_verb_and_switching_user(tmp_path):
    result = sandbox(tmp_path, ["/mlops help", "/mlops frobnicate", "/as U0BOB", "/mlops help lock"])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "`/mlops deploy <model> [<version>|latest] [to staging]`" in out
    assert "Unknown verb `frobnicate`" in out
    assert "(you are now U0BOB)" in out and "U0BOB> /mlops help lock" in out
    assert "Needs the *deployers* role." in out


def test_a_script_error_exits_non_zero(tmp_path):
    result = sandbox(tmp_path, ["999"])
    assert result.returncode == 1 and "no button [999] on screen" in result.stdout


@pytest.mark.skipif(triton_missing() is not None, reason=triton_missing() or "")
def test_starts_with_the_datagen_summary_and_alert_and_shows_home_and_digest(tmp_path):
    result = sandbox(tmp_path, ["/home", "/digest"])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # The example records were ingested at start: the newest alerting day's summary and its alert, led by the
    # cause (the day after it is back to normal, and quiet).
    assert ":white_check_mark: datagen *recsys* 2026-11-18 succeeded" in out
    assert ":rotating_light: datagen *recsys* 2026-11-18: *feed source* events -15.0%; 7 downstream stages follow" in out
    home = out.split("U0ALICE> /home")[1].split("U0ALICE> /digest")[0]
    assert "┌ App Home ┐" in home and "*ranker* · prod: not deployed" in home
    assert "*recsys*: now @" in home and "*Waiting for you to unblock*\n_nothing_" in home
    digest = out.split("U0ALICE> /digest")[1]
    # The newest example record; on the real clock a later day's record may be due already ("no record … yet").
    assert "== Daily digest" in digest and "*recsys* 2026-11-21: ran" in digest
    assert "datagen · stage.feed_source.events fell 15.0%" in digest


@pytest.mark.skipif(triton_missing() is not None, reason=triton_missing() or "")
def test_an_approver_unblocks_from_the_app_home(tmp_path):
    first = sandbox(tmp_path, ["/mlops deploy ranker v1", "/as U0BOB", "/home"])
    assert first.returncode == 0, first.stdout + first.stderr
    home = first.stdout.split("U0BOB> /home")[1]
    assert "*Waiting for you to unblock*\n*ranker v1* verified" in home
    # The sandbox keeps its state but starts a fresh Slack stand-in: the App Home's button is pressed by its label.
    result = sandbox(tmp_path, ["/as U0BOB", "/home", "/press Unblock prod"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\[\d+\] Unblock prod \(primary\)", result.stdout)
    pressed = result.stdout.split("U0BOB> /press Unblock prod")[1]
    # Inside deploy hours it goes live; outside them the urgent form asks for a reason.
    assert "*ranker v1* · prod · *live*" in pressed or "a form opened for U0BOB" in pressed


# -- the first hour in the sandbox (issue 16) ----------------------------------------------------------------

LA = ZoneInfo("America/Los_Angeles")


def need_tritonserver() -> None:
    if (missing := triton_missing()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a real tritonserver: {missing}")
        pytest.skip(missing)


def outside_deploy_hours(now: datetime) -> datetime | None:
    """None when `now` (LA) is outside the example's deploy hours for the next minutes, else 16:30 that day."""
    inside = now.weekday() < 5 and time(8, 50) <= now.time() < time(16, 30)
    return now.replace(hour=16, minute=30, second=0, microsecond=0) if inside else None


def next_handoff_after(moment: datetime) -> datetime:
    """5 minutes past the example rotation's next handoff (Mondays 10:00 LA) after `moment`."""
    day = moment.date()
    while day.weekday() != 0 or datetime.combine(day, time(10, 5), LA) <= moment + timedelta(minutes=10):
        day += timedelta(days=1)
    return datetime.combine(day, time(10, 5), LA)


def test_forms_stable_buttons_a_refusal_the_audit_and_a_handoff_after_moving_the_clock(tmp_path):
    need_tritonserver()
    now = datetime.now(LA)
    after_hours = outside_deploy_hours(now)
    handoff = next_handoff_after(after_hours or now)
    result = sandbox(tmp_path, [
        *([f"/clock {after_hours:%Y-%m-%d %H:%M} America/Los_Angeles"] if after_hours else []),
        "/mlops deploy ranker v1",
        "/buttons",
        "/press Ack",  # an edit of an alert above the release card
        "/buttons",
        "/as U0BOB",
        "/press Unblock prod",  # outside deploy hours: the urgent form
        "no",
        "hotfix for the ranking bug",
        "/as U0ALICE",
        "/mlops promote ranker",
        "/mlops deploy ranker v2",
        "/press Roll back staging",
        "v2 mislabelled",
        "/mlops audit",
        f"/clock {handoff:%Y-%m-%d %H:%M} America/Los_Angeles",
        "/clock +1h30m",
    ], log_level=None)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # What the bot posted at start is on screen before the first command.
    assert out.index(":rotating_light: datagen *recsys* 2026-11-18") < out.index("U0ALICE> /mlops deploy ranker v1")

    # Buttons keep their numbers: acking the alert edits it, and the release card's buttons stay as they were.
    card = re.search(r"\[(\d+)\] Unblock prod \(primary\)  \[\d+\] Start canary  \[\d+\] Reject", out)
    assert card, out
    unblock = card.group(1)
    listings = [part.split("\nU0")[0] for part in out.split("U0ALICE> /buttons\n")[1:]]
    assert f"[{unblock}] Unblock prod (primary) · #C0MLOPS: :white_check_mark: *ranker v1*" in listings[0]
    acked = out.split("U0ALICE> /press Ack")[1].split("U0ALICE> /buttons")[0]
    assert "Acked by @U0ALICE" in acked
    assert listings[1].count("Unblock prod") == 1 and f"[{unblock}] Unblock prod" in listings[1]
    assert [line.split(" · ")[0] for line in listings[0].splitlines()] == \
           [line.split(" · ")[0] for line in listings[1].splitlines()]

    # The urgent unblock through its form: a reason too short is refused in the form and asked again.
    urgent = out.split("U0BOB> /press Unblock prod")[1].split("U0BOB> /as U0ALICE")[0]
    assert "── a form opened for U0BOB ──\n┌ Urgent unblock ┐" in urgent
    assert "Reason: no\n!! Reason: Say why this cannot wait for deploy hours" in urgent
    assert "Reason: hotfix for the ranking bug\n(submitted)" in urgent
    assert "Urgent unblock outside deploy hours by @U0BOB: hotfix for the ranking bug" in urgent
    assert "*ranker v1* · prod · *live*" in urgent

    # A deployer who is no approver is sent to the approvers by name, then the admins.
    refusal = out.split("U0ALICE> /mlops promote ranker")[1].split("U0ALICE> /mlops deploy ranker v2")[0]
    assert "You need the *approvers* role to run `/mlops promote`; ask @U0BOB (approvers) or an admin (@U0CAROL)." \
        in refusal

    # The rollback through its form, with the reason given there.
    rollback = out.split("U0ALICE> /press Roll back staging")[1].split("U0ALICE> /mlops audit")[0]
    assert "┌ Roll back ┐" in rollback and "Reason: v2 mislabelled\n(submitted)" in rollback
    assert "ranker staging is serving v1 again (was v2). Reason: v2 mislabelled" in rollback

    audit = out.split("U0ALICE> /mlops audit")[1].split("U0ALICE> /clock")[0]
    assert "*Audit log* · all models: the newest 20 of" in audit and "Hash chain verified over all" in audit
    assert "@U0BOB · `promote.urgent` ok · ranker prod v1 · reason: hotfix for the ranking bug" in audit
    assert "@U0ALICE · `rollback` succeeded · ranker staging v1 · reason: v2 mislabelled" in audit

    # Moving the clock to the next handoff runs what fell due on the way, in order, ending with the handoff.
    moved = out.split(f"U0ALICE> /clock {handoff:%Y-%m-%d %H:%M}")[1]
    assert f"(the bot's clock: {handoff.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC; ran " in moved
    assert "oncall.recsys.handoff ×1" in moved and "digest.daily ×" in moved
    reminder = moved.index("you are on call for recsys from")
    assert reminder < moved.index("*On-call handoff (recsys): @") and "@S0ONCALL now reaches @" in moved
    later = handoff.astimezone(UTC) + timedelta(hours=1, minutes=30)
    ran = "datagen.poll.recsys ×2, fleet.reconcile ×2, oncall.recsys.tick ×2"
    assert f"(the bot's clock: {later:%a %Y-%m-%d %H:%M} UTC; ran {ran})" in moved

    # The terminal had warnings only; the log file in the state directory has the rest.
    assert "INFO" not in result.stderr and "not there yet" not in out + result.stderr
    log = (tmp_path / "state" / "mlops-bot.log").read_text()
    assert "apscheduler.scheduler: Scheduler started" in log

    # The CLI beside the sandbox reads the sandbox's store.
    tail = cli(tmp_path, "audit", "tail", "-n", "50", "--state-dir", str(tmp_path / "state"))
    assert tail.returncode == 0 and "promote.urgent" in tail.stdout, tail.stdout + tail.stderr
    backtest = cli(tmp_path, "datagen", "backtest", "--state-dir", str(tmp_path / "state"))
    assert backtest.returncode == 0 and "recsys: 10 reports" in backtest.stdout, backtest.stdout + backtest.stderr


def test_a_canary_on_one_of_three_prod_endpoints_judged_on_traffic_promoted_then_rolled_back(tmp_path):
    need_tritonserver()
    result = sandbox(tmp_path, [
        "/mlops deploy ranker v1",
        "/as U0CAROL",
        '/mlops promote ranker urgent="the baseline for a canary"',
        "/as U0ALICE",
        "/mlops deploy ranker v2",
        "/as U0BOB",
        '/mlops canary ranker for=10s urgent="trying a canary"',  # the sandbox steps every 5 s
        "/traffic 150",
        "/wait 6",
        "/traffic 150",
        "/wait 6",
        "/press Promote to all",
        "/wait 6",  # the promotion runs in the canary's own task, which the prompt does not wait for
        "/mlops status",
        "/as U0ALICE",
        '/mlops rollback ranker prod reason="demo rollback"',
        "/mlops status",
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "*ranker v1* · staging · *verified*" in out and "golden requests: 2 answered as expected" in out
    assert "Urgent unblock outside deploy hours by @U0CAROL" in out or "*ranker v1* · prod · *live*" in out
    # The sandbox's prod is a fleet of three: the canary takes one (20 % rounded up), the baseline two.
    assert "ranker: 150 requests over 3 prod endpoints: 150 × 200" in out
    steps = re.findall(r"step \d+/2 \*(\w+)\* · canary: (\d+) req", out)
    assert steps and all(verdict == "pass" and int(n) >= 20 for verdict, n in steps), out
    promoted = out.split("U0BOB> /press Promote to all")[1].split("U0ALICE> /mlops rollback")[0]
    assert "*ranker* · prod: `v2` (live)" in promoted, promoted
    rolled_back = out.split("U0ALICE> /mlops rollback")[1]
    assert "ranker prod is serving v1 again (was v2). Reason: demo rollback" in rolled_back
    assert "*ranker* · prod: `v1` (live)" in rolled_back


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(EXAMPLE_CONFIG), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_audit_tail_of_a_store_that_does_not_exist_says_so_and_exits_2(tmp_path):
    result = cli(tmp_path, "audit", "tail", "--state-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert f"mlops-bot: no store at {tmp_path / 'nowhere' / 'mlops-bot.db'}" in result.stderr
    assert not (tmp_path / "nowhere").exists()


class Terminal:
    """`mlops-bot sandbox` on a pipe, as a person types into it: lines in, what it prints read as it comes."""

    def __init__(self, state):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(EXAMPLE_CONFIG), "sandbox", "--state-dir", str(state)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read(1):
            self.out += chunk

    def until(self, text: str, timeout: float = 90) -> str:
        deadline = monotonic() + timeout
        while text not in self.out:
            assert monotonic() < deadline and self.process.poll() is None, f"no {text!r} in:\n{self.out}"
            sleep(0.05)
        return self.out

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


def tritonservers(state) -> list[int]:
    """The live tritonservers serving `state`'s repositories, found by their command lines in /proc."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            continue
        if alive and f"--model-repository={state}/repos/".encode() in b"".join(c[:len(str(state)) + 27] for c in cmdline):
            found.append(int(proc.name))
    return sorted(found)


def shm_regions(prefixes: list[str]) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(tuple(prefixes)))


def test_a_killed_sandbox_is_cleaned_up_at_the_next_start_and_sighup_stops_every_tritonserver(tmp_path):
    need_tritonserver()
    state = (tmp_path / "state").resolve()
    first = Terminal(state)
    try:
        first.until("U0ALICE> ")
        first.type("/mlops deploy ranker v1")
        first.until("Verified: ready to unblock for prod.")
        servers = tritonservers(state)
        prefixes = [s["shm_prefix"] for s in json.loads((state / "processes.json").read_text())["servers"]]
        assert len(servers) == 4 and shm_regions(prefixes), "a loaded python model holds shared memory"  # 1 staging, 3 prod
    finally:
        first.process.kill()  # a crash: nothing of the sandbox runs its cleanup
        first.process.wait()
    assert tritonservers(state) == servers, "a crashed sandbox's servers outlive it, in sessions of their own"

    second = Terminal(state)
    try:
        out = second.until("U0ALICE> ")
        for pid in servers:
            assert f"mlops-bot sandbox: stopped tritonserver {pid} left by a sandbox that did not stop" in out
        assert not shm_regions(prefixes) and "removed" in out
        assert not set(tritonservers(state)) & set(servers)

        # The printed curl lines work as printed: the bot takes both hooks and shows what they brought.
        hooks = [line for line in out.splitlines() if line.startswith(("curl -sS http://", "body="))]
        assert len(hooks) == 2, out
        for line in hooks:
            answer = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30)
            assert answer.returncode == 0 and '"queued"' in answer.stdout, answer.stdout + answer.stderr
        # Shown as they come, while the prompt waits: the alert, and the record as today's summary.
        second.until("TritonHighLatency")
        day = re.search(r"date=(\d{4}-\d{2}-\d{2})", hooks[1]).group(1)
        second.until(f":white_check_mark: datagen *recsys* {day} succeeded")

        running = tritonservers(state)
        assert len(running) == 4  # 1 staging, 3 prod
        second.process.send_signal(signal.SIGHUP)  # the terminal closed
        assert second.process.wait(timeout=60) == 128 + signal.SIGHUP
    finally:
        if second.process.poll() is None:
            second.process.kill()
    assert not set(tritonservers(state)) & set(running)
    assert not (state / "processes.json").exists()
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith("mlopssbx_") and
                int(p.name.split("_")[1]) == second.process.pid]
