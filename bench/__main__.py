"""Run every benchmark in bench/, one after another, and print one table: benchmark, figure, target, met.

    python -m bench [--quick] [--only NAME ...] [--soak-minutes M] [--markdown]

Each benchmark runs as its own `python -m bench.NAME` process (never two at once, so they do not slow each
other down), its output is shown as it comes, and the figures are read from what it printed. --quick passes
each benchmark its own --quick (datagen_rules takes about a second and has none): a few minutes in all,
to try the harness; the figures worth quoting come from the default run, about 20 minutes of which the soak
takes 10. The machine's other load moves every figure: see BENCHMARKS.md for how much.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Row = tuple[str, str, str]  # figure, target, met ("met", "NOT MET" or "" for a figure without a target)


def _num(pattern: str, text: str, group: int = 1) -> float | None:
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(group).replace(",", "")) if found else None


def _judge(value: float | None, ok: Callable[[float], bool]) -> str:
    return "" if value is None else "met" if ok(value) else "NOT MET"


def ack_latency(out: str) -> list[Row]:
    # Lines: "bot 1 p50 p99 req/s cpu", "bare ...", "ratio 200 p50x p99x req/s-ratio (...)".
    p50 = _num(r"^bot\s+1\s+([\d.]+)", out)
    p99 = _num(r"^bot\s+200\s+[\d.]+\s+([\d.]+)", out)
    bot_rate, bare_rate = _num(r"^bot\s+200(?:\s+[\d.]+){2}\s+(\d+)", out), _num(r"^bare\s+200(?:\s+[\d.]+){2}\s+(\d+)", out)
    ratio = _num(r"^ratio\s+200(?:\s+[\d.]+){2}\s+([\d.]+)", out)
    spread = re.search(r"^ratio\s+200.*range ([\d.]+-[\d.]+)", out, re.MULTILINE)
    return [
        (f"ack p50 at concurrency 1: {p50} ms", "<= 1 ms", _judge(p50, lambda v: v <= 1)),
        (f"ack p99 at concurrency 200: {p99} ms", "<= 100 ms", _judge(p99, lambda v: v <= 100)),
        (f"req/s at concurrency 200, bot / bare Bolt: {bot_rate:.0f} / {bare_rate:.0f}, paired ratio {ratio}"
         + (f" (rounds {spread.group(1)})" if spread else "") if bot_rate and bare_rate else "req/s at concurrency 200: ?",
         ">= 0.8x", _judge(ratio, lambda v: v >= 0.8)),
    ]


def datagen(out: str) -> list[Row]:
    arrivals = _num(r"^([\d,]+) breach arrivals", out)
    on_arrival = _num(r"\(([\d,]+) already stored when the last breach arrived\)", out)
    caught_up = _num(r"Slack caught up at ([\d.]+) s", out)
    line = re.search(r"^busiest second.*$", out, re.MULTILINE)
    busiest = [int(n) for n in re.findall(r"'[^']+': (\d+)", line.group(0))] if line else []
    failed = _num(r"^calls failed for good: (\d+)", out)
    answered_429 = _num(r"answered 429: (\d+)", out)
    return [
        # Stored counts every alert's breaches, so a lateness alert the bot raises itself for a storm job (its
        # record is due by the real clock) comes on top of the arrivals.
        (f"breaches stored when the last arrived: {on_arrival:,.0f}, of {arrivals:,.0f} sent" if arrivals
         else "breaches stored: ?", "all sent", _judge(on_arrival, lambda v: v >= arrivals)),
        (f"busiest second per channel: {max(busiest) if busiest else '?'} posts", "<= 4 (Slack's burst, then 1/s)",
         _judge(max(busiest) if busiest else None, lambda v: v <= 4)),
        (f"Slack calls failed for good: {failed:.0f} ({answered_429:.0f} answered 429 and waited out)"
         if failed is not None and answered_429 is not None else "Slack calls failed for good: ?",
         "0", _judge(failed, lambda v: v == 0)),
        (f"Slack caught up {caught_up} s after the storm began", "", ""),
    ]


def datagen_rules(out: str) -> list[Row]:
    first = _num(r"^first pass.*?: ([\d.]+) ms total", out)
    second = _num(r"^second pass.*?: ([\d.]+) ms total", out)
    return [(f"40 rules x 365 days, first pass: {first} ms", "<= 50 ms", _judge(first, lambda v: v <= 50)),
            (f"the same, second pass: {second} ms", "", "")]


def fleet_deploy(out: str) -> list[Row]:
    if missing := re.search(r"^cannot run: (.*)$", out, re.MULTILINE):
        return [(f"not run: {missing.group(1)}", "ratio <= 1.5", "")]
    one, four = _num(r"1 endpoint\s*: ([\d.]+) s", out), _num(r"4 endpoints: ([\d.]+) s", out)
    ratio = _num(r"ratio\s*: ([\d.]+)", out)
    return [(f"deploy + verify, 1 endpoint {one} s, 4 endpoints {four} s: ratio {ratio}", "ratio <= 1.5",
             _judge(ratio, lambda v: v <= 1.5))]


def canary(out: str) -> list[Row]:
    at = {n: _num(rf"^\s*{n} endpoints: ([\d.]+) ms", out) for n in (2, 8, 16)}
    growth = _num(r"^growth 2 → 16 endpoints: ([\d.]+)x", out)
    return [(f"one analysis step, 2 / 8 / 16 endpoints: {at[2]} / {at[8]} / {at[16]} ms", "<= 250 ms at 16",
             _judge(at[16], lambda v: v <= 250)),
            (f"growth 2 → 16 endpoints: {growth}x", "close to flat", "")]


def soak(out: str) -> list[Row]:
    # soak.py prints its targets under "targets:" as "  met|NOT MET|figure  what: value (target T)".
    block = out.split("\ntargets:", 1)[1] if "\ntargets:" in out else ""
    rows = []
    for line in block.splitlines():
        if found := re.match(r"^  (met|NOT MET|figure)\s+(.+?): (.+?)(?: \(target (.+)\))?$", line):
            verdict, name, value, target = found.groups()
            rows.append((f"{name}: {value}", target or "", "" if verdict == "figure" else verdict))
    return rows or [("no targets printed", "", "")]


def replication(out: str) -> list[Row]:
    rows = [(f"restore of {m.group(1)} audit rows ({m.group(2)} MB): {m.group(3)} s", "", "")
            for m in re.finditer(r"^\s*([\d,]+)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+[\d,]+$", out, re.MULTILINE)]
    ratio = _num(r"^ratio\s+50 req/s replicated / plain: ([\d.]+)", out)
    return rows + [(f"req/s at concurrency 50, replicated / plain, paired: {ratio}", ">= 0.9x",
                    _judge(ratio, lambda v: v >= 0.9))]


def train(out: str) -> list[Row]:
    hook, poll = _num(r"^hook over deploy\+verify: ([\d.-]+) s", out), _num(r"^poll upload to verified: max ([\d.]+) s", out)
    # The first block is the models in one registry, the second each in its own.
    shared, own = (out.split("a registry per model", 1) + [""])[:2]

    def worst(block: str) -> tuple[float | None, float | None]:
        return max(((float(m.group(1)), float(m.group(2))) for m in re.finditer(
            r"^steady pass over \d+ models: ([\d.]+) s, \d+ S3 list calls \(([\d.]+) per model\)", block, re.MULTILINE)),
            default=(None, None))

    one, apart = worst(shared), worst(own)
    return [(f"upload to verified by hook, over deploy+verify by hand: {hook} s", "<= 10 s", _judge(hook, lambda v: v <= 10)),
            (f"upload to verified by poll (default interval), worst: {poll} s", "<= 30 s", _judge(poll, lambda v: v <= 30)),
            (f"a poll pass over 200 models in one registry, worst: {one[0]} s ({one[1]} S3 lists per model)", "<= 1 s",
             _judge(one[0], lambda v: v <= 1)),
            (f"the same, each model in a registry of its own: {apart[0]} s ({apart[1]} S3 lists per model)", "<= 1 s",
             _judge(apart[0], lambda v: v <= 1))]


def scale(out: str) -> list[Row]:
    if missing := re.search(r"^cannot run: (.*)$", out, re.MULTILINE):
        return [(f"not run: {missing.group(1)}", "", "")]
    sizes = re.findall(r"^(\d+) models x 2 environments, (\d+) endpoints", out, re.MULTILINE)
    models, endpoints = max(sizes, key=lambda s: (int(s[0]), int(s[1]))) if sizes else ("?", "?")
    block = out.split(f"{models} models x 2 environments, {endpoints} endpoints", 1)[-1]
    at = {what: _num(rf"^  {what}\s+([\d.]+) s", block) for what in ("status", "digest", "home", "reconcile pass")}
    blocks, view = _num(r"largest message: (\d+) blocks", out), _num(r"largest App Home view: (\d+) blocks", out)
    chars = _num(r"largest section: (\d+) characters", out)
    return [(f"{models} models x 2 envs, {endpoints} endpoints: status {at['status']} s, digest {at['digest']} s, "
             f"App Home {at['home']} s, reconcile pass {at['reconcile pass']} s", "", ""),
            (f"largest message {blocks:.0f} blocks, App Home view {view:.0f}, section {chars:.0f} characters"
             if None not in (blocks, view, chars) else "largest message: ?", "<= 50 / 100 / 3,000",
             _judge(None if None in (blocks, view, chars) else max(blocks / 50, view / 100, chars / 3000), lambda v: v <= 1))]


@dataclass(frozen=True)
class Bench:
    name: str
    read: Callable[[str], list[Row]]
    quick: bool = True  # takes --quick
    timeout: float = 900  # seconds; a benchmark that hangs is stopped and reported


BENCHES = [Bench("ack_latency", ack_latency), Bench("datagen_rules", datagen_rules, quick=False),
           Bench("datagen", datagen), Bench("fleet_deploy", fleet_deploy), Bench("canary", canary),
           Bench("replication", replication), Bench("train", train), Bench("scale", scale, timeout=1800),
           Bench("soak", soak)]


def run(bench: Bench, quick: bool, soak_minutes: float | None) -> tuple[list[str], list[Row], float, int]:
    args = [sys.executable, "-m", f"bench.{bench.name}"]
    if quick and bench.quick:
        args.append("--quick")
    timeout = bench.timeout
    if bench.name == "soak" and not quick:
        minutes = soak_minutes or 10
        args += ["--minutes", f"{minutes:g}"]
        timeout = minutes * 60 + 600  # the soak, then its drain, audit check and shutdown
    print(f"\n=== {' '.join(['python', '-m', *args[2:]])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout, proc.kill)  # a benchmark that hangs, even silently, is stopped
    watchdog.start()
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # shown as it comes: a long benchmark is not silent for minutes
            print(line, end="", flush=True)
            lines.append(line)
        code = proc.wait()
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - started
    out = "".join(lines)
    try:
        rows = bench.read(out)
    except (AttributeError, TypeError, ValueError) as exc:  # printed something this reader does not know
        rows = [(f"could not read its output ({type(exc).__name__}: {exc})", "", "")]
    if code != 0 and not any(r[0].startswith("not run") for r in rows):
        rows.append((f"exited with {code}" + (" (killed after its time limit)" if code < 0 else ""), "", "NOT MET"))
    return args[2:], rows, elapsed, code


def table(results: list[tuple[str, list[Row]]], markdown: bool) -> str:
    flat = [(name if i == 0 else "", *row) for name, rows in results for i, row in enumerate(rows)]
    head = ("benchmark", "figure", "target", "met")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in flat]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *flat]) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [head, *flat])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick mode (a few minutes in all)")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run these alone")
    parser.add_argument("--soak-minutes", type=float, help="length of the soak when not --quick (10; 30 for the long one)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    args = parser.parse_args()
    results, failed = [], 0
    for bench in BENCHES:
        if args.only and bench.name not in args.only:
            continue
        command, rows, elapsed, code = run(bench, args.quick, args.soak_minutes)
        shown = f"`python -m {' '.join(command)}` ({elapsed:.0f} s)" if args.markdown else f"{bench.name} ({elapsed:.0f} s)"
        results.append((shown, rows))
        failed += code not in (0, 1) or code < 0  # fleet_deploy exits 1 when tritonserver is missing
    print("\n" + table(results, args.markdown))
    # A target not met is a figure to read, not a failure of the run; a benchmark that crashed is.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
