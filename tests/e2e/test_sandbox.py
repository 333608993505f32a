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
