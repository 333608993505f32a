"""PNG charts (the `charts` extra): the funnel and final rows over 14 days in the datagen summary's thread, and a
monitor's breached metrics over 14 days in its alert's thread.

Figures are made with matplotlib's object API, not pyplot: pyplot keeps global state, and the bot renders off
the event loop in a worker thread (`render` takes ~100 ms of CPU, which would hold up every ack and hook).
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import date, timedelta

from matplotlib.figure import Figure

from bot.monitors.datagen import Report
from bot.monitors.record import Record

DAYS = 14


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)  # Agg, the default canvas of a bare Figure: no display needed
    return buffer.getvalue()


def funnel(report: Report) -> bytes:
    steps = report.funnel()
    labels = [s.label for s in steps]
    counts = [s.items if s.items is not None else s.events for s in steps]
    figure = Figure(figsize=(8, 0.45 * len(steps) + 1.2))
    axes = figure.subplots()
    axes.barh(labels[::-1], counts[::-1], color="#4a7bd0")
    for y, (count, step) in enumerate(zip(counts[::-1], steps[::-1], strict=True)):
        loss = f"  {count:,}" + (f" (-{step.item_loss_pct:.1f}%)" if step.item_loss_pct else "")
        axes.text(count, y, loss, va="center", fontsize=8)
    axes.set_title(f"datagen funnel {report.run_date} (items; final rows in rows)")
    axes.set_xlim(0, max(counts) * 1.35)
    return _png(figure)


def metric_history(title: str, metrics: Sequence[str], history: Mapping[date, Record], run_date: date) -> bytes:
    """Each metric's value on each of the DAYS days to `run_date`, one line each."""
    days = [run_date - timedelta(days=n) for n in range(DAYS - 1, -1, -1)]
    figure = Figure(figsize=(8, 3))
    axes = figure.subplots()
    for metric in metrics:
        values = [history[d].metrics().get(metric) if d in history else None for d in days]
        axes.plot([d for d, v in zip(days, values, strict=True) if v is not None], [v for v in values if v is not None],
                  marker="o", label=metric)
    for day in days:
        if day not in history or history[day].failed:  # a missing or failed run is a gap, marked so nobody reads it as zero
            axes.axvline(day, color="#d04a4a", alpha=0.3)
    if len(metrics) > 1:
        axes.legend(fontsize=7)
    axes.set_title(title)
    axes.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _png(figure)


def final_rows(history: Mapping[date, Record], run_date: date) -> bytes:
    return metric_history(f"final rows, {DAYS} days to {run_date}", ["final_rows"], history, run_date)


def render(job: str, run_date: date, history: dict[date, Report]) -> list[tuple[str, str, bytes]]:
    """(filename, title, PNG) of each chart of the day's summary."""
    return [
        (f"{job}-{run_date}-funnel.png", f"{job} funnel {run_date}", funnel(history[run_date])),
        (f"{job}-{run_date}-final-rows.png", f"{job} final rows, last {DAYS} days", final_rows(history, run_date)),
    ]
