"""What the rules judge: a record of one run as metrics by dotted name, whatever monitor it comes from.

The datagen job's record has its own parser (bot/monitors/datagen.py: stages, buckets, text counts); any other
monitor's record is one JSON object whose numbers are its metrics by their dotted path (`skew.user_age`,
`ndcg.at_10`, `slices.0.auc`). Either way the rules see the same thing: `metrics()`, `failed` and `errors`.
A generic record has failed when `success` (or `SUCCESS`, `ok`) is false or an error field is non-empty.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from bot.monitors.datagen import ERROR_KEY, MetricNames, ReportError, json_object, layout

_SUCCESS_KEYS = ("success", "SUCCESS", "ok")


class Record(Protocol):
    """One run's record as the rules read it."""

    label: ClassVar[str]

    @property
    def run_date(self) -> date: ...

    @property
    def errors(self) -> tuple[str, ...]: ...

    @property
    def failed(self) -> bool: ...

    @property
    def metric_names(self) -> MetricNames: ...

    def metrics(self) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True)
class MonitorRecord:
    """A monitor's record: its numbers by dotted path, and whether the run says it failed."""

    label: ClassVar[str] = "monitor"

    run_date: date
    values: Mapping[str, float]
    errors: tuple[str, ...] = ()
    success: bool = True
    names: MetricNames = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", layout(tuple(self.values)))

    @property
    def failed(self) -> bool:
        return not self.success or bool(self.errors)

    @property
    def metric_names(self) -> MetricNames:
        return self.names

    def metrics(self) -> Mapping[str, float]:
        return self.values


def parse_record(raw: bytes | str | Mapping[str, Any], *, run_date: date) -> MonitorRecord:
    """A monitor's record from its JSON object; ReportError with a short reason when it is none."""
    data = json_object(raw)
    errors: list[str] = []
    success = True
    numbers: dict[str, float] = {}
    for key, value in data.items():
        if key in _SUCCESS_KEYS and isinstance(value, bool):
            success = success and value
        elif ERROR_KEY.search(key):
            if value:
                errors.extend(map(str, value) if isinstance(value, list) else [str(value)])
        else:
            try:
                numbers.update(_numbers(str(key), value))
            except RecursionError:
                raise ReportError("unreadable JSON: nested too deeply") from None
    return MonitorRecord(run_date, MappingProxyType(numbers), tuple(errors), success)


def _numbers(path: str, value: Any) -> Iterator[tuple[str, float]]:
    """Every finite number under `path`, by its dotted path; text, booleans and nulls are no metrics."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _numbers(f"{path}.{key}", inner)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _numbers(f"{path}.{index}", inner)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past a float's range is no measurement
            raise ReportError(f"{path}: number out of range") from None
        if math.isfinite(number):
            yield path, number
