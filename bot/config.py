"""pydantic models of mlops-bot.yaml and `load_config()` with one precise line per problem.

Secrets never live in this file: tokens and passwords come from the environment (see `Secrets`).
Domain sections whose rules are pure logic (datagen rules, on-call rotations) are defined next to that
logic and composed here, so the YAML shape and the code that interprets it cannot drift apart.
"""
from __future__ import annotations

import os
import re
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.monitors.rules import FailedRule, FreshnessRule, RuleSet, default_rules, format_grace
from bot.oncall.schedule import WEEKDAYS, Rotation, Weekday

# A datagen alert has one Retrain button per model of its job, each with its own action id (ids must be unique
# within a message), so a job lists at most this many models.
RETRAIN_BUTTONS = 5


def _pattern(regex: str, what: str):
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return AfterValidator(check)


UserId = Annotated[str, _pattern(r"[UW][A-Z0-9]{2,}", "a Slack user id like U012ABCDEF")]
GroupId = Annotated[str, _pattern(r"S[A-Z0-9]{2,}", "a Slack user-group id like S012ABCDEF")]
ChannelId = Annotated[str, _pattern(r"[CGD][A-Z0-9]{2,}", "a Slack channel id like C012ABCDEF")]
ModelName = Annotated[str, _pattern(r"[a-z][a-z0-9_-]{0,62}", "a lower-case model name (a-z, 0-9, _ and -)")]
EnvName = Literal["staging", "prod"]


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"expected an IANA time zone like America/Los_Angeles, got {name!r}") from None
    return name


TimeZone = Annotated[str, AfterValidator(_zone)]


def _wall_clock(value: object) -> object:
    # YAML 1.1 reads an unquoted 09:00 as the sexagesimal integer 540, which pydantic would take as seconds.
    if isinstance(value, int):
        raise ValueError(f'expected a quoted local time "HH:MM" (e.g. "09:00"), got {value!r}')
    return value


def _no_offset(value: time) -> time:
    # "16:00Z" parses as a time with an offset, which cannot be compared with "09:00" (TypeError).
    if value.tzinfo is not None:
        raise ValueError(f'expected a local time "HH:MM" without an offset (the zone is `tz`), got {value.isoformat()!r}')
    return value


LocalTime = Annotated[time, BeforeValidator(_wall_clock), AfterValidator(_no_offset)]


def _relative_to_config(value: str, info: ValidationInfo) -> str:
    """Local paths are relative to the config file, so the bot runs the same from any directory."""
    base = (info.context or {}).get("base")
    if base is None or "://" in value or Path(value).is_absolute():
        return value
    return str(Path(base) / value)


Location = Annotated[str, AfterValidator(_relative_to_config)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channels(Strict):
    main: ChannelId
    alerts_info: ChannelId | None = None
    alerts_error: ChannelId | None = None
    releases_failed: ChannelId | None = Field(default=None, description="failed staging deploys are also said here "
                                                                        "(else in `main`)")

    @property
    def failed_releases(self) -> str:
        return self.releases_failed or self.main

    @property
    def info(self) -> str:
        return self.alerts_info or self.main

    @property
    def error(self) -> str:
        return self.alerts_error or self.info


class Members(Strict):
    users: list[UserId] = []
    groups: list[GroupId] = []


Role = Literal["deployers", "approvers", "admins"]


class Roles(Strict):
    """Who may do what. Admins hold every role."""

    deployers: Members = Members()
    approvers: Members = Members()
    admins: Members = Members()


class EnvironmentConfig(Strict):
    repository: Location = Field(description="Triton model repository: s3://bucket/prefix or a local directory")
    endpoints: list[Annotated[str, _pattern(r"https?://[^\s/]+(:\d+)?/?|dns\+https?://[A-Za-z0-9_.-]+:\d+/?",
                                            "an http(s)://host:port URL, or dns+http(s)://name:port for every address "
                                            "the name has")]] = Field(min_length=1)
    heal: bool = Field(default=False, description="the fleet reconcile loop also loads the recorded version on an "
                                                  "endpoint serving another one (drift), instead of only reporting it")
    metrics: dict[str, Annotated[str, _pattern(r"https?://\S+", "an http(s):// URL")]] = Field(
        default={}, description="endpoint → its Triton metrics URL; by default the endpoint's host on port 8002")

    @model_validator(mode="after")
    def _metrics_of_endpoints(self) -> EnvironmentConfig:
        if unknown := [e for e in self.metrics if e not in self.endpoints]:
            raise ValueError(f"`metrics` names {', '.join(unknown)}, which is not one of `endpoints`")
        return self


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h)?")
_SECONDS = {"s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from 90, "90", "90s", "30m" or "2h"; ValueError saying what was expected otherwise."""
    match = _DURATION.fullmatch(str(value).strip().lower())
    if isinstance(value, bool) or match is None or float(match.group(1)) <= 0:
        raise ValueError(f"expected a duration like 90s, 30m or 2h, got {value!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]


class CanaryConfig(Strict):
    """A canary on part of the prod fleet (`/mlops canary`): how long, how often, and when it fails."""

    percent: float = Field(default=20, gt=0, lt=100, description="share of prod endpoints, rounded up to whole ones")
    duration: Duration = Field(default=1800, description="how long the analysis runs: 30m, 2h, 90s")
    interval: Duration = Field(default=60, description="time between analysis steps")
    min_requests: int = Field(default=20, ge=1, description="fewer on either side: the step is inconclusive")
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1, description="0.01: baseline + 1 point")
    max_latency_ratio: float = Field(default=1.2, gt=0, description="mean (and p99) at most this times the baseline's")
    latency_slack_ms: float = Field(default=1.0, ge=0, description="slower by less than this never fails a step")
    failure_limit: int = Field(default=2, ge=1, description="failed steps after which the bot aborts by itself")
    auto_promote: bool = False


# The bot's own credentials: a pipeline never needs them, so naming one in retrain.env is a mistake.
BOT_ONLY_ENV = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "MLOPS_DATAGEN_HOOK_SECRET",
                "MLOPS_ALERTMANAGER_TOKEN")


def _env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"expected an environment variable name like FEATURE_STORE_URL, got {name!r}")
    if name in BOT_ONLY_ENV:
        raise ValueError(f"{name} is the bot's own secret; a command the bot runs is never given it")
    return name


EnvVarName = Annotated[str, AfterValidator(_env_name)]


def _crontab(expression: str) -> str:
    try:
        CronTrigger.from_crontab(expression)
    except ValueError as exc:
        raise ValueError(f"expected a cron expression of five fields like '0 3 */3 * *', got {expression!r}: {exc}") from None
    return expression


class CronSchedule(Strict):
    cron: Annotated[str, AfterValidator(_crontab)] = Field(description="minute hour day month weekday, as crontab")
    tz: TimeZone = "UTC"

    def trigger(self) -> CronTrigger:
        return CronTrigger.from_crontab(self.cron, timezone=self.tz)


def _program_relative(argv: list[str], info: ValidationInfo) -> list[str]:
    """A command's program given as a path is relative to the config file, as other local paths are."""
    if argv and "/" in argv[0]:
        return [_relative_to_config(argv[0], info), *argv[1:]]
    return argv


Argv = Annotated[list[str], AfterValidator(_program_relative)]


class RetrainConfig(Strict):
    backend: Literal["command", "airflow"] = "command"
    schedule: CronSchedule | None = Field(default=None, description="retrain by itself at these times, as its owner")
    command: Argv = Field(default=[], description="argv; a relative program path is relative to the config file")
    dag_id: str | None = None
    conf: dict[str, str | int | float | bool] = {}
    timeout_minutes: int = Field(default=720, gt=0)
    env: list[EnvVarName] = Field(
        default=[], description="names of the bot's environment variables the command may see, beyond the allowlist")

    @model_validator(mode="after")
    def _backend_fields(self) -> RetrainConfig:
        if self.backend == "command" and not self.command:
            raise ValueError("backend 'command' needs `command`: the program and its arguments as a list")
        if self.backend == "airflow" and not self.dag_id:
            raise ValueError("backend 'airflow' needs `dag_id`")
        if self.backend == "airflow" and self.env:
            raise ValueError("`env` is for backend 'command'; an Airflow task gets its environment from Airflow")
        return self


class ModelConfig(Strict):
    registry: Location = Field(description="where versions live: s3://bucket/prefix or a local directory")
    owner: UserId | None = None
    staging_only: bool = False
    slo_p99_ms: float = Field(default=100.0, gt=0)
    verify_requests: int = Field(default=20, ge=1, le=10_000)
    environments: dict[EnvName, EnvironmentConfig]
    retrain: RetrainConfig | None = None
    canary: CanaryConfig = CanaryConfig()
    auto_deploy: Literal["staging"] | None = Field(
        default=None, description="`staging`: each new registry version deploys to staging by itself, as its author")

    @model_validator(mode="after")
    def _has_staging(self) -> ModelConfig:
        if "staging" not in self.environments:
            raise ValueError("every model needs a `staging` environment")
        if "prod" not in self.environments and not self.staging_only:
            raise ValueError("a model without a `prod` environment must set staging_only: true")
        return self


class DeployWindow(Strict):
    days: list[Weekday] = list(WEEKDAYS[:5])
    start: LocalTime = time(9, 0)
    end: LocalTime = time(16, 0)
    tz: TimeZone = "America/Los_Angeles"

    @model_validator(mode="after")
    def _ordered(self) -> DeployWindow:
        if self.end <= self.start:
            raise ValueError("`end` must be after `start` (windows do not cross midnight; use two windows)")
        return self


class DeployPolicy(Strict):
    windows: list[DeployWindow] = [DeployWindow()]
    four_eyes: bool = True
    approval_ttl_hours: float = Field(default=24, gt=0)
    lock_ttl_hours: float = Field(default=4, gt=0)
    endpoint_concurrency: int = Field(default=8, ge=1, le=256)
    load_timeout_s: float = Field(default=120, gt=0)


class Train(Strict):
    """The release train running itself: how often the registries of `auto_deploy` models are looked at."""

    poll_seconds: float = Field(default=15, gt=0, description="seconds between looks at each auto_deploy registry")


class StagingHygiene(Strict):
    """Nothing broken or unverified stays on staging overnight."""

    revert_at: LocalTime | None = Field(default=None, description="each day at this local time, a staging that failed "
                                                                  "or was never verified goes back to what prod serves")
    tz: TimeZone = "UTC"


class S3Config(Strict):
    endpoint_url: str | None = None
    region: str | None = None


class AirflowConfig(Strict):
    base_url: str
    api_version: Literal[1, 2] = 2
    auth: Literal["token", "bearer", "basic", "none"] = "token"
    ui_url: str | None = None
    unpause: bool = False
    poll_seconds: float = Field(default=5, gt=0)
    timeout_seconds: float = Field(default=30, gt=0, description="the budget of one call, its retries included")


class Watched(Strict):
    """What every monitor shares, a datagen job included: how its records are judged and where its alerts go."""

    grace_hours: float = Field(default=3, ge=0, description="how late a record may be before it is missing; a "
                               "freshness rule's own `grace` wins")
    baseline_lookback_days: int = Field(default=7, ge=1, le=60, description="how far back a baseline looks for a "
                                        "healthy day when its usual day breached a rule or has no record")
    fold_tolerance_pct: float = Field(default=5, ge=0, description="a downstream breach that moved by at most this "
                                      "% on its own, after its cause's move, folds under the cause in the alert")
    channel: ChannelId | None = Field(default=None, description="alerts of this job go here, whatever the severity")
    models: list[ModelName] = Field(default=[], max_length=RETRAIN_BUTTONS,
                                    description="models trained on this data: its alerts offer to retrain them")

    @property
    def grace(self) -> timedelta:
        return timedelta(hours=self.grace_hours)


class DatagenJob(Watched):
    source: Location = Field(description="URI template of the monitoring record, with {date} (YYYY-MM-DD)")
    expected_at: LocalTime = time(8, 30)
    tz: TimeZone = "Asia/Kolkata"
    typical_runtime_minutes: int = Field(default=200, ge=0)
    poll_minutes: float = Field(default=10, gt=0)
    rules: RuleSet = Field(default_factory=default_rules)

    @field_validator("source")
    @classmethod
    def _has_date(cls, value: str) -> str:
        return _date_template(value)

    def overrides(self, name: str) -> list[str]:
        """Where a rule's own setting wins over one the job sets, so nobody reads the job's value as the one used."""
        if "grace_hours" not in self.model_fields_set:
            return []
        return [f"datagen.jobs.{name}.rules.{rule.id}.grace: {format_grace(rule.grace)} overrides the job's grace_hours "
                f"({format_grace(self.grace)}); the alert waits {format_grace(rule.grace)}"
                for rule in self.rules if isinstance(rule, FreshnessRule) and rule.grace not in (None, self.grace)]


def _date_template(value: str) -> str:
    if "{date}" not in value:
        raise ValueError("expected a template containing {date}, e.g. s3://bucket/monitoring/{date}.json")
    return value


DateTemplate = Annotated[Location, AfterValidator(_date_template)]


class Monitor(Watched):
    """`monitors.<name>`: a team check whose record, one JSON object, comes on a schedule from one of `source`,
    `command` or `notebook`; its numbers are metrics by dotted path (`skew.user_age`), judged by `rules`."""

    schedule: CronSchedule = Field(description="when to fetch or run it; the run date is the slot's day in `tz`")
    source: DateTemplate | None = Field(default=None, description="URI template of the record, with {date}, as datagen's")
    command: Argv = Field(default=[], description="argv printing the record on stdout; a relative program path is "
                          "relative to the config file; run with the run date as MLOPS_RUN_DATE")
    notebook: Location | None = Field(default=None, description="a Jupyter notebook run with papermill (the "
                                      "`notebooks` extra), given the parameter run_date")
    output_tag: str = Field(default="record", min_length=1, description="the notebook cell whose output is the record")
    output_file: DateTemplate | None = Field(default=None, description="instead: the file the notebook writes the "
                                             "record to, with {date} (it also gets it as the parameter output_file)")
    timeout_seconds: float = Field(default=600, gt=0, description="a command or notebook running longer is stopped")
    env: list[EnvVarName] = Field(default=[], description="environment variables the command may see, beyond the "
                                  "allowlist")
    rules: RuleSet = Field(default_factory=lambda: [FailedRule(id="run_failed")], description="unset: a failed "
                           "rule, and for a `source` a freshness rule too (a file that does not come is a problem)")

    @model_validator(mode="before")
    @classmethod
    def _source_freshness(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("source") and "rules" not in data:
            return {**data, "rules": [FreshnessRule(id="record_missing"), FailedRule(id="run_failed")]}
        return data

    @model_validator(mode="after")
    def _one_origin(self) -> Monitor:
        given = [name for name in ("source", "command", "notebook") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of source, command or notebook, got {', '.join(given) or 'none'}")
        if self.output_file and not self.notebook:
            raise ValueError("`output_file` is for a `notebook` monitor")
        return self

    @property
    def tz(self) -> str:
        return self.schedule.tz


class Datagen(Strict):
    jobs: dict[str, DatagenJob] = {}


class OnCall(Strict):
    rotations: list[Rotation] = []

    @model_validator(mode="after")
    def _unique(self) -> OnCall:
        names = [r.name for r in self.rotations]
        if len(names) != len(set(names)):
            raise ValueError("rotation names must be unique")
        return self


class DigestSchedule(Strict):
    at: LocalTime = time(9, 0)
    tz: TimeZone = "America/Los_Angeles"
    weekday: Weekday | None = Field(default=None, description="set for a weekly digest")
    channel: ChannelId | None = None


class Digests(Strict):
    daily: DigestSchedule | None = DigestSchedule()
    weekly: DigestSchedule | None = DigestSchedule(weekday="monday")
    unverified_staging_hours: float = Field(default=12, gt=0)


class Alertmanager(Strict):
    channel: ChannelId | None = None
    model_label: str = "model"
    env_label: str = "env"


class WatchedDag(Strict):
    dag_id: str = Field(min_length=1, max_length=250)
    expected_by: LocalTime | None = Field(default=None, description="a successful run is due each day by this time")
    tz: TimeZone = "UTC"
    channel: ChannelId | None = Field(default=None, description="this DAG's alerts go here (else channels.alerts_error)")


class AirflowPipelines(Strict):
    poll_seconds: float = Field(default=60, ge=5)
    dags: list[WatchedDag] = []

    @field_validator("dags")
    @classmethod
    def _once_each(cls, dags: list[WatchedDag]) -> list[WatchedDag]:
        seen = [d.dag_id for d in dags]
        if twice := sorted({d for d in seen if seen.count(d) > 1}):
            raise ValueError(f"each DAG is watched once; listed more than once: {', '.join(twice)}")
        return dags


class Pipelines(Strict):
    airflow: AirflowPipelines = AirflowPipelines()


def _nameserver(value: str) -> str:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:(\d{1,5}))?", value)
    if match is None or (match.group(3) and not 0 < int(match.group(3)) < 65536):
        raise ValueError(f"expected a DNS server as host or host:port, got {value!r}")
    return value


class FleetConfig(Strict):
    """How fleets are found (dns+http:// endpoints) and kept on what the bot records (the reconcile loop)."""

    reconcile_seconds: float = Field(default=60, ge=0, description="how often each endpoint is compared with the "
                                                                   "record and healed; 0 turns the loop off")
    nameservers: list[Annotated[str, AfterValidator(_nameserver)]] = Field(
        default=[], description="DNS servers (host or host:port) for dns+ endpoints; the system's resolv.conf unless set")
    dns_timeout_s: float = Field(default=5, gt=0, le=60, description="how long one lookup of a name may take")


class Config(Strict):
    channels: Channels
    roles: Roles = Roles()
    store: Location = Field(default="mlops-bot.db", validate_default=True, description="the SQLite file")
    # Litestream replicates the store here (with the `s3` settings); one instance acts, under a lease (bot/replication).
    store_replica: Annotated[str, _pattern(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?",
                                           "s3://bucket/prefix")] | None = None
    store_lease_s: float = Field(default=30, gt=0, le=3600, description="how long the active instance's lease lasts unrenewed")
    models: dict[ModelName, ModelConfig] = {}
    deploy: DeployPolicy = DeployPolicy()
    train: Train = Train()
    staging: StagingHygiene = StagingHygiene()
    s3: S3Config = S3Config()
    airflow: AirflowConfig | None = None
    datagen: Datagen = Datagen()
    oncall: OnCall = OnCall()
    digests: Digests = Digests()
    alertmanager: Alertmanager = Alertmanager()
    pipelines: Pipelines = Pipelines()
    monitors: dict[Annotated[str, _pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "a monitor name (letters, digits, "
                                            "_ . -)")], Monitor] = Field(
        default={}, description="team checks judged by the datagen rule kinds: a file, a command or a notebook")
    fleet: FleetConfig = FleetConfig()

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        if self.pipelines.airflow.dags and self.airflow is None:
            raise ValueError("pipelines.airflow.dags are watched through the `airflow` section, which is missing")
        for name, model in self.models.items():
            if model.retrain and model.retrain.backend == "airflow" and self.airflow is None:
                raise ValueError(f"models.{name}.retrain uses airflow but there is no `airflow` section")
        if both := sorted(set(self.datagen.jobs) & set(self.monitors)):
            # One namespace: alerts, silences and buttons name a monitor by its name alone.
            raise ValueError(f"monitors.{both[0]}: the name is also a datagen job's; give it another")
        watched = [("datagen.jobs", self.datagen.jobs), ("monitors", self.monitors)]
        for section, monitors in watched:
            for name, job in monitors.items():
                for model in job.models:
                    if model not in self.models:
                        raise ValueError(f"{section}.{name}.models: `{model}` is not one of `models`")
        return self


class Secrets(BaseModel):
    """What comes only from the environment, never from the YAML file."""

    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str | None = None  # the sandbox and tests point this at the Slack emulator
    airflow_username: str | None = None
    airflow_password: str | None = None
    airflow_token: str | None = None
    datagen_hook_secret: str | None = None
    alertmanager_token: str | None = None
    registry_hook_secret: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ if env is None else env)
        return cls(
            slack_bot_token=env.get("SLACK_BOT_TOKEN"),
            slack_signing_secret=env.get("SLACK_SIGNING_SECRET"),
            slack_app_token=env.get("SLACK_APP_TOKEN"),
            slack_api_url=env.get("SLACK_API_URL"),
            airflow_username=env.get("AIRFLOW_USERNAME"),
            airflow_password=env.get("AIRFLOW_PASSWORD"),
            airflow_token=env.get("AIRFLOW_TOKEN"),
            datagen_hook_secret=env.get("MLOPS_DATAGEN_HOOK_SECRET"),
            alertmanager_token=env.get("MLOPS_ALERTMANAGER_TOKEN"),
            registry_hook_secret=env.get("MLOPS_REGISTRY_HOOK_SECRET"),
        )


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one `file: key.path: expected` line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _key_part(part: Any) -> str:
    """A key as a problem line names it: quoted when it is empty or holds a line break or other odd characters."""
    text = str(part)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def _problem(path: Path, err: Any) -> str:
    # pydantic puts validator names (e.g. "function-after[...]") in loc for Annotated types; drop them.
    key = ".".join(_key_part(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    message = err["msg"].removeprefix("Value error, ").replace("\n", "\\n")  # one line per problem
    # With no key, the error is one of Config's cross-references, whose message starts with its own key path.
    return f"{path}: {key}: {message}" if key else f"{path}: {message}"


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found (pass --config FILE or set MLOPS_BOT_CONFIG)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: byte {exc.start + 1}: not UTF-8 text ({exc.reason})"]) from None
    except yaml.reader.ReaderError as exc:  # its str() is two lines; a problem is one
        raise ConfigError([f"{path}: character {exc.position + 1}: not valid YAML: character #x{exc.character:04x}: "
                           f"{exc.reason}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        raise ConfigError([f"{path}: {where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:  # PyYAML recurses once per level; no config is nested hundreds deep
        raise ConfigError([f"{path}: (yaml): not valid YAML: nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: (top level): expected a mapping of sections, got {type(raw).__name__}"])
    try:
        config = Config.model_validate(raw, context={"base": path.parent.resolve()})
    except ValidationError as exc:
        raise ConfigError([_problem(path, err) for err in exc.errors()]) from None
    return config
