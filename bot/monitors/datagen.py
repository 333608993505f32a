"""The datagen job's daily monitoring record, parsed into a typed model.

The job writes one flat JSON object per run. Filter stages are not listed anywhere: each stage shows up as
a triple of keys named after it (`num_events_post_filter_<stage>`, `num_items_post_filter_<stage>`,
`item_loss_percentage_<stage>`), so stages are discovered from the key names in file order and a stage the
job adds tomorrow needs no change here. Keys this module does not know are kept in `Report.model_extra`.
A run counts as failed when SUCCESS is false or any error field (`error`, `*_error_message`, `exception`)
is non-empty; a failed record need not carry any numbers.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from functools import cache, cached_property
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class ReportError(ValueError):
    """A monitoring record that cannot be read; `reason` says what is wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the job's text formats -------------------------------------------------------------------------------

_COUNT_PCT = re.compile(r"\s*([+-]?\d{1,3}(?:,\d{3})+|[+-]?\d+)\s*\(\s*([+-]?\d+(?:\.\d+)?)\s*%\s*\)\s*")
_DURATION = re.compile(
    r"\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h(?:ours?|rs?)?)?\s*:?\s*"
    r"(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in(?:ute)?s?)?)?\s*"
    r"(?:(?P<s>\d+(?:\.\d+)?)\s*s(?:ecs?|econds?)?)?\s*"
)


def parse_count_pct(text: str) -> tuple[int, float]:
    """'7,539 (1.03%)' -> (7539, 1.03); '-5,856 (-6.43%)' -> (-5856, -6.43)."""
    match = _COUNT_PCT.fullmatch(text)
    if match is None:
        raise ValueError(f"not COUNT (PCT%): {text!r}")
    return int(match[1].replace(",", "")), float(match[2])


def format_count_pct(count: int, pct: float, *, signed: bool = False) -> str:
    """The job's rendering: '7,539 (1.03%)', or with `signed` (changes) '477 (+6.75%)' / '-5,856 (-6.43%)'."""
    pct = round(pct, 2)
    return f"{count:,} ({pct:+}%)" if signed else f"{count:,} ({pct}%)"


def parse_duration(text: str) -> timedelta:
    """Liberal run-time text: '3.0h:21mins', '45mins', '2h', '1.0h:5mins', '3h 21m', '90s'."""
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"not a duration: {text!r}")
    parts = {unit: float(value) for unit, value in match.groupdict().items() if value}
    try:
        return timedelta(hours=parts.get("h", 0), minutes=parts.get("m", 0), seconds=parts.get("s", 0))
    except OverflowError:  # past timedelta's 999,999,999 days
        raise ValueError(f"duration out of range: {text[:40]!r}") from None


def format_run_time(duration: timedelta) -> str:
    """The job's rendering of its run time: 3 h 21 min -> '3.0h:21mins'."""
    minutes = int(duration.total_seconds() // 60)
    return f"{float(minutes // 60)}h:{minutes % 60}mins"


def _text_validator(parse: Any, kind: str, example: str) -> BeforeValidator:
    def validate(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ValueError:
            raise PydanticCustomError(kind, "expected text like {example}", {"example": example}) from None

    return BeforeValidator(validate)


def _job_datetime(value: Any) -> Any:
    # The job writes '2023-09-14::10:08:51'; anything ISO 8601 is accepted too.
    return value.replace("::", "T", 1) if isinstance(value, str) else value


# The job's counters are 64-bit. A bigger number is no count, and the rules, which read every number as a
# float, could not even convert it (OverflowError past ~1.8e308).
MAX_COUNT = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class Share(NamedTuple):
    """A count and its share of the total, from text like '7,539 (1.03%)'."""

    count: Count
    pct: float


class Change(NamedTuple):
    """A signed change and its percentage, from text like '-5,856 (-6.43%)'."""

    count: Annotated[int, Field(ge=-MAX_COUNT, le=MAX_COUNT)]
    pct: float


ShareText = Annotated[Share, _text_validator(parse_count_pct, "share", "'7,539 (1.03%)'")]
ChangeText = Annotated[Change, _text_validator(parse_count_pct, "change", "'-5,856 (-6.43%)'")]
Duration = Annotated[timedelta, _text_validator(parse_duration, "duration", "'3.0h:21mins'")]
JobDatetime = Annotated[datetime, BeforeValidator(_job_datetime)]


# --- the model ------------------------------------------------------------------------------------------------

# Key prefix of a stage's numbers -> Stage field. The stage name is the rest of the key.
_STAGE_PREFIXES = {
    "num_events_post_filter_": "events",
    "num_items_post_filter_": "items",
    "item_loss_percentage_": "item_loss_pct",
}
# `error`, `ERROR`, `upload_error_message`, `exception`...; not counters such as `num_error_events`.
ERROR_KEY = re.compile(r"(?:^|_)(?:errors?|error_message|exception)$", re.IGNORECASE)
# What a successful run must report; a failed run may stop writing numbers anywhere.
_REQUIRED_WHEN_OK = (
    "embedding_join_events", "embedding_join_items", "embedding_join_item_loss_pct", "final_rows",
    "buckets", "new_items_1d", "items_diff_1d", "items_diff_7d", "run_time",
)


class Stage(BaseModel):
    """What was left after one filter stage. The job gives item loss as a % of the raw items."""

    model_config = ConfigDict(frozen=True)

    name: str
    events: Count
    items: Count
    item_loss_pct: float

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


class FunnelStep(NamedTuple):
    label: str
    events: int
    items: int | None
    item_loss_pct: float | None


class MetricNames:
    """The metric names of one record layout.

    Records with the same keys share one instance (see `layout`), so a rule's glob is matched once per
    layout instead of once per report: this keeps a year-long backtest fast.
    """

    __slots__ = ("names", "_matches")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._matches: dict[str, tuple[str, ...]] = {}

    def matching(self, pattern: str) -> tuple[str, ...]:
        """Names equal to `pattern` or matching it as a glob (`*` also crosses dots), in report order."""
        found = self._matches.get(pattern)
        if found is None:
            found = self._matches[pattern] = tuple(fnmatch.filter(self.names, pattern))
        return found


_LAYOUTS: dict[tuple[str, ...], MetricNames] = {}


def layout(names: tuple[str, ...]) -> MetricNames:
    return _LAYOUTS.setdefault(names, MetricNames(names))


class Report(BaseModel):
    """One run of the datagen job. Field aliases are the record's own keys."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)
    label: ClassVar[str] = "datagen"  # how breaches name the run

    run_date: date
    success: bool = Field(alias="SUCCESS")
    errors: tuple[str, ...] = ()
    start_time: JobDatetime | None = Field(None, alias="datagen_start_time")
    end_time: JobDatetime | None = Field(None, alias="datagen_end_time")
    run_time: Duration | None = Field(None, alias="datagen_run_time")
    raw_events: Count | None = Field(None, alias="num_raw_events")
    raw_items: Count | None = Field(None, alias="num_raw_items")
    stages: dict[str, Stage] = {}
    filtered_events: Count | None = Field(None, alias="num_events_post_filters")
    filtered_items: Count | None = Field(None, alias="num_unique_items_post_filters")
    embedding_join_events: Count | None = Field(None, alias="num_events_post_embedding_join")
    embedding_join_items: Count | None = Field(None, alias="num_items_post_embed_join")
    embedding_join_item_loss_pct: float | None = Field(None, alias="item_loss_post_embedding_join")
    final_rows: Count | None = Field(None, alias="num_final_rows")
    buckets: dict[str, ShareText] = Field({}, alias="item_age_bucket_formated")
    buckets_delta_7d: dict[str, ChangeText] = Field({}, alias="item_age_buckets_delta_7d")
    new_items_1d: ShareText | None = Field(None, alias="new_items_in_index_1d_delta")
    common_items_1d: ShareText | None = Field(None, alias="common_items_in_index_1d_delta")
    items_diff_1d: ChangeText | None = Field(None, alias="item_diff_1d_delta")
    items_diff_7d: ChangeText | None = Field(None, alias="item_diff_7d_delta")

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any) -> Any:
        """Group the stage keys into `stages` (file order) and every non-empty error-like key into `errors`."""
        if not isinstance(data, Mapping):
            return data
        rest: dict[str, Any] = {}
        stages: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for key, value in data.items():
            prefix = next((p for p in _STAGE_PREFIXES if key.startswith(p)), None)
            if prefix is not None:
                name = key.removeprefix(prefix)
                stages.setdefault(name, {"name": name})[_STAGE_PREFIXES[prefix]] = value
            elif ERROR_KEY.search(key):
                if value:
                    errors.extend(map(str, value) if isinstance(value, list) else [str(value)])
            else:
                rest[key] = value
        if "run_date" not in rest and isinstance(rest.get("datagen_start_time"), str):
            with contextlib.suppress(ValueError):  # the field's own validation names the bad value
                rest["run_date"] = datetime.fromisoformat(_job_datetime(rest["datagen_start_time"])).date()
        return {**rest, "stages": stages, "errors": errors}

    @model_validator(mode="after")
    def _complete_when_ok(self) -> Report:
        if self.failed:
            return self
        fields = type(self).model_fields
        missing = [fields[name].alias or name for name in _REQUIRED_WHEN_OK if getattr(self, name) in (None, {})]
        if not self.stages:
            missing.insert(0, "num_events_post_filter_<stage> (no filter stage)")
        if missing:
            raise PydanticCustomError("missing_keys", "missing keys {keys}", {"keys": ", ".join(missing)})
        return self

    @property
    def failed(self) -> bool:
        """The run did not succeed: SUCCESS is false or the record carries an error."""
        return not self.success or bool(self.errors)

    @property
    def metric_names(self) -> MetricNames:
        """The names of `metrics()`, shared with every report of the same layout."""
        return self._metrics[1]

    def metrics(self) -> Mapping[str, float]:
        """Every number of the record under a stable dotted name, e.g. `stage.feed_source.items`,
        `bucket.0_1d.count`, `new_items_1d_pct`. A read-only view, built once per report."""
        return self._metrics[0]

    def funnel(self) -> list[FunnelStep]:
        """raw -> each filter stage -> embedding join -> final rows, with what each step left."""
        steps = []
        if self.raw_events is not None and self.raw_items is not None:
            steps.append(FunnelStep("raw", self.raw_events, self.raw_items, None))
        steps += [FunnelStep(s.label, s.events, s.items, s.item_loss_pct) for s in self.stages.values()]
        if self.embedding_join_events is not None:
            steps.append(FunnelStep("embedding join", self.embedding_join_events, self.embedding_join_items,
                                    self.embedding_join_item_loss_pct))
        if self.final_rows is not None:
            steps.append(FunnelStep("final rows", self.final_rows, None, None))
        return steps

    @cached_property
    def _metrics(self) -> tuple[Mapping[str, float], MetricNames]:
        found: dict[str, float | None] = {
            "raw.events": self.raw_events,
            "raw.items": self.raw_items,
        }
        for stage in self.stages.values():
            found[f"stage.{stage.name}.events"] = stage.events
            found[f"stage.{stage.name}.items"] = stage.items
            found[f"stage.{stage.name}.item_loss_pct"] = stage.item_loss_pct
        found |= {
            "post_filters.events": self.filtered_events,
            "post_filters.items": self.filtered_items,
            "embedding_join.events": self.embedding_join_events,
            "embedding_join.items": self.embedding_join_items,
            "embedding_join.item_loss_pct": self.embedding_join_item_loss_pct,
            "final_rows": self.final_rows,
        }
        for label, share in self.buckets.items():
            slug = bucket_slug(label)
            found[f"bucket.{slug}.count"], found[f"bucket.{slug}.share_pct"] = share
            if (change := self.buckets_delta_7d.get(label)) is not None:
                found[f"bucket.{slug}.delta_7d"], found[f"bucket.{slug}.delta_7d_pct"] = change
        for name, pair in (("new_items_1d", self.new_items_1d), ("common_items_1d", self.common_items_1d),
                           ("items_diff_1d", self.items_diff_1d), ("items_diff_7d", self.items_diff_7d)):
            if pair is not None:
                found[name], found[f"{name}_pct"] = pair
        if self.run_time is not None:
            found["runtime_minutes"] = self.run_time.total_seconds() / 60
        values = {name: float(value) for name, value in found.items() if value is not None}
        return MappingProxyType(values), layout(tuple(values))


_INTERVAL = re.compile(r"\(\s*(-?inf|-?\d+(?:\.\d+)?)\s*,\s*(-?inf|-?\d+(?:\.\d+)?)\s*\]")


@cache  # the same ten labels come back every day
def bucket_slug(label: str) -> str:
    """Metric-name part for an item-age bucket: '(0.0, 1.0]' -> '0_1d', '(-inf, 0.0]' -> 'le_0d',
    '(90.0, inf]' -> 'gt_90d'; any other label is lower-cased with non-alphanumerics as '_'."""
    match = _INTERVAL.fullmatch(label.strip())
    if match is None:
        return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")
    low, high = (bound if "inf" in bound else f"{float(bound):g}".replace(".", "p") for bound in match.groups())
    if low == "-inf":
        return f"le_{high}d"
    if high == "inf":
        return f"gt_{low}d"
    return f"{low}_{high}d"


def json_object(raw: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    """A record's JSON object; ReportError with a short reason for anything else."""
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"unreadable JSON: {exc}") from None
        except ValueError:  # an integer of more digits than Python converts (4,300): no count is that long
            raise ReportError("unreadable JSON: a number with more digits than any count has") from None
        except RecursionError:  # json.loads recurses once per level: a body nested thousands deep is no record
            raise ReportError("unreadable JSON: nested too deeply") from None
    if not isinstance(raw, Mapping):
        raise ReportError(f"unreadable JSON: expected an object, got {type(raw).__name__}")
    return raw


def parse_report(raw: bytes | str | Mapping[str, Any], *, run_date: date | None = None) -> Report:
    """Read one monitoring record. `run_date` (from the file name or URI) wins over the start time's date.

    Raises ReportError with one short reason for unreadable JSON, missing keys, negative counts and text
    fields that do not parse.
    """
    raw = json_object(raw)
    data = {**raw, "run_date": run_date} if run_date is not None else raw
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        raise ReportError("; ".join(_reason(error) for error in exc.errors())) from None
    except RecursionError:  # an already-parsed mapping nested deeper than validation can walk
        raise ReportError("unreadable JSON: nested too deeply") from None


def _reason(error: Any) -> str:
    key = _key_name(error["loc"])
    match error["type"]:
        case "missing" if key == "run_date":
            return "no run date: give one or include datagen_start_time"
        case "missing":
            return f"missing key {key}"
        case "greater_than_equal" if error.get("ctx", {}).get("ge") == 0:
            return f"negative count in {key}: {_quoted(error['input'])}"
        case "greater_than_equal" | "less_than_equal":
            return f"count out of range in {key}"
        case "missing_keys":
            return error["msg"]
        case _:
            return f"{key}: {error['msg']}, got {_quoted(error['input'])}"


def _quoted(value: Any, limit: int = 80) -> str:
    """A bad value as a reason quotes it: its start only, since the reason is posted in the alert."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300 digits for str()
        return "a number too long to show"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key_name(loc: tuple[Any, ...]) -> str:
    """The record's key for a validation error location, e.g. num_items_post_filter_feed_source."""
    match loc:
        case ("stages", name, field, *_):
            prefix = next(p for p, f in _STAGE_PREFIXES.items() if f == field)
            return f"{prefix}{name}"
        case (str(key), str(label), *_) if key in ("item_age_bucket_formated", "item_age_buckets_delta_7d"):
            return f"{key}[{label!r}]"
        case (key, *_):
            return str(key)
        case _:
            return "record"
