"""`mlops-bot check-config` as an operator runs it: one line per problem, with the key path, exit 2."""
import subprocess
import sys

import yaml

from tests.conftest import EXAMPLE_CONFIG


def check(path):
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_example_config_is_valid():
    result = check(EXAMPLE_CONFIG)
    assert result.returncode == 0, result.stderr
    assert "ok (1 models" in result.stdout


def test_every_problem_is_named_with_its_key_path(tmp_path):
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["channels"]["main"] = "general"
    raw["roles"]["approvers"]["users"] = ["bob"]
    raw["models"]["ranker"]["environments"]["staging"]["endpoints"] = []
    raw["models"]["Bad Name"] = raw["models"]["ranker"]
    raw["deploy"]["windows"][0]["tz"] = "Mars/Olympus"
    raw["oncall"]["rotations"][0]["shift"] = "fortnightly"
    raw["datagen"]["jobs"]["recsys"]["source"] = "s3://bucket/monitoring/latest.json"
    raw["modles"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = check(path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    expected = [
        "channels.main: expected a Slack channel id",
        "roles.approvers.users.0: expected a Slack user id",
        "models.ranker.environments.staging.endpoints: List should have at least 1 item",
        "models.Bad Name: expected a lower-case model name",
        "deploy.windows.0.tz: expected an IANA time zone",
        "oncall.rotations.0.shift: 'fortnightly' is not a shift length",
        "datagen.jobs.recsys.source: expected a template containing {date}",
        "modles: Extra inputs are not permitted",
    ]
    for fragment in expected:
        assert any(line.startswith(f"{path}: ") and fragment in line for line in lines), (fragment, lines)
    assert "Traceback" not in result.stderr


def test_unquoted_time_is_explained(tmp_path):
    text = EXAMPLE_CONFIG.read_text().replace('end: "16:00"', "end: 16:00")
    path = tmp_path / "times.yaml"
    path.write_text(text)
    result = check(path)
    assert result.returncode == 2
    assert 'deploy.windows.0.end: expected a quoted local time "HH:MM"' in result.stderr


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("channels:\n  main: C0MLOPS\nmodels: [unclosed\n")
    result = check(path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: line ") and "not valid YAML" in result.stderr


def test_missing_file_says_how_to_point_at_one(tmp_path):
    result = check(tmp_path / "nope.yaml")
    assert result.returncode == 2 and "--config" in result.stderr


def test_a_reference_to_an_unknown_model_is_named_with_its_key_path(tmp_path):
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["datagen"]["jobs"]["recsys"]["models"] = ["ranker", "rnaker"]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = check(path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}: datagen.jobs.recsys.models: `rnaker` is not one of `models`"


def test_a_rule_setting_that_overrides_the_jobs_is_warned_about(tmp_path):
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    job = raw["datagen"]["jobs"]["recsys"]
    job["grace_hours"] = 1
    job["rules"] = [{"id": "raw_data_missing", "kind": "freshness", "grace": "3h"}]
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (f"{path}: warning: datagen.jobs.recsys.rules.raw_data_missing.grace: 3h overrides "
                                     "the job's grace_hours (1h); the alert waits 3h")
    assert "warning" not in check(EXAMPLE_CONFIG).stderr


def _with_monitors(tmp_path, monitors):
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["store"] = str(tmp_path / "mlops-bot.db")
    raw["models"]["ranker"]["registry"] = str(EXAMPLE_CONFIG.parent / raw["models"]["ranker"]["registry"])
    raw["monitors"] = monitors
    path = tmp_path / "monitors.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_monitor_takes_one_origin_and_a_name_of_its_own(tmp_path):
    daily = {"cron": "0 7 * * *"}
    path = _with_monitors(tmp_path, {"both": {"command": ["skew.py"], "notebook": "skew.ipynb", "schedule": daily},
                                     "undated": {"source": "monitoring/latest.json", "schedule": daily}})
    result = check(path)
    assert result.returncode == 2
    assert f"{path}: monitors.both: give exactly one of source, command or notebook, got command, notebook" in result.stderr
    assert f"{path}: monitors.undated.source: expected a template containing {{date}}" in result.stderr
    path = _with_monitors(tmp_path, {"recsys": {"source": "monitoring/{date}.json", "schedule": daily}})
    result = check(path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}: monitors.recsys: the name is also a datagen job's; give it another"


def test_online_a_monitor_command_that_cannot_run_is_one_line_and_exit_1(tmp_path):
    daily = {"cron": "0 7 * * *"}
    path = _with_monitors(tmp_path, {
        "feature_skew": {"command": [str(EXAMPLE_CONFIG.parent / "monitors" / "feature_skew.py")], "schedule": daily},
        "gone": {"command": ["monitors/gone.py"], "schedule": daily},
        "lost": {"notebook": "monitors/lost.ipynb", "schedule": daily}})
    assert check(path).returncode == 0  # offline, nothing outside the file is looked at
    result = subprocess.run([sys.executable, "-m", "bot.cli", "check-config", "--online", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert f"{path}: monitors.gone.command: {tmp_path / 'monitors' / 'gone.py'} is not found or not executable" in lines[0]
    assert any(f"monitors.lost.notebook: no such file {tmp_path / 'monitors' / 'lost.ipynb'}" in line for line in lines)
    assert not any("feature_skew" in line for line in lines)
    assert "online: " in result.stdout and "problems" in result.stdout
