"""`mlops-bot sandbox --script`: the whole bot, the Slack stand-in and (with the triton extra) tritonserver."""
import subprocess
import sys

import pytest

from bot.sandbox.tritonserver import triton_missing
from tests.conftest import EXAMPLE_CONFIG


def sandbox(tmp_path, lines: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "script.txt"
    script.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(EXAMPLE_CONFIG), "--log-level", "WARNING", "sandbox",
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
    result = sandbox(tmp_path, ["7"])
    assert result.returncode == 1 and "no button [7] on screen" in result.stdout


@pytest.mark.skipif(triton_missing() is not None, reason=triton_missing() or "")
def test_deploy_verify_unblock_as_a_second_user_and_roll_back(tmp_path):
    result = sandbox(tmp_path, [
        "/mlops deploy ranker v1",
        "/as U0CAROL",
        '/mlops promote ranker urgent="sandbox demo outside deploy hours"',
        "/as U0ALICE",
        "/mlops deploy ranker v2",
        "/as U0BOB",
        '/mlops promote ranker urgent="second release"',
        "/as U0ALICE",
        '/mlops rollback ranker prod reason="demo rollback"',
        "/mlops status",
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "*ranker v1* · staging · *verified*" in out
    assert "golden requests: 2 answered as expected" in out
    assert "Urgent unblock outside deploy hours by @U0CAROL" in out or "*ranker v1* · prod · *live*" in out
    assert "*ranker v2* · prod · *live*" in out
    assert "ranker prod is serving v1 again (was v2). Reason: demo rollback" in out
    assert "*ranker* · prod: `v1` (live)" in out


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
    # The sandbox keeps its state but starts a fresh Slack stand-in: the App Home's button is the only one, [1].
    result = sandbox(tmp_path, ["/as U0BOB", "/home", "1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1] Unblock prod (primary)" in result.stdout
    pressed = result.stdout.split("U0BOB> 1")[1]
    # Inside deploy hours it goes live; outside them the urgent form asks for a reason.
    assert "*ranker v1* · prod · *live*" in pressed or "a form opened for U0BOB" in pressed
