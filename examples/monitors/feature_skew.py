#!/usr/bin/env python3
"""Offline vs online feature skew, as the `feature_skew` monitor of the example config runs it.

Prints one JSON object: the population stability index (PSI) of each feature between its offline (training)
values and its online (serving) values of the run date, over ten bins cut at the offline deciles. A PSI over
0.2 is the usual sign that a feature is served differently from how it was trained.

The values here are made up but deterministic: drawn from a seed and the run date (MLOPS_RUN_DATE, which the
bot sets, or --date), so the same day always gives the same numbers. `--drift FEATURE:DATE` shifts a
feature's online values on that day, to see the monitor fire (and resolve the next day).
A real job reads the feature store's offline snapshot and the logged online features instead.
"""
import argparse
import json
import math
import os
import random
from datetime import date

FEATURES = {  # name: (mean, standard deviation) of its offline distribution
    "user_age_days": (420.0, 160.0),
    "item_ctr_7d": (0.031, 0.012),
    "item_age_hours": (96.0, 40.0),
    "session_length": (7.5, 3.0),
    "query_item_cosine": (0.42, 0.15),
}
BINS = 10


def psi(offline: list[float], online: list[float]) -> float:
    edges = sorted(offline)
    cuts = [edges[len(edges) * k // BINS] for k in range(1, BINS)]

    def shares(values: list[float]) -> list[float]:
        counts = [0] * BINS
        for value in values:
            counts[sum(value > cut for cut in cuts)] += 1
        return [max(c / len(values), 1e-4) for c in counts]  # an empty bin would be log(0)

    return sum((b - a) * math.log(b / a) for a, b in zip(shares(offline), shares(online), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--date", type=date.fromisoformat,
                        default=date.fromisoformat(os.environ.get("MLOPS_RUN_DATE") or date.today().isoformat()))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--drift", action="append", default=[], metavar="FEATURE:DATE",
                        help="shift FEATURE's online values by one standard deviation on DATE")
    args = parser.parse_args()
    drifted = {tuple(item.split(":", 1)) for item in args.drift}
    skew = {}
    for name, (mean, sd) in FEATURES.items():
        offline_rng = random.Random(f"{args.seed}/{name}/offline")
        online_rng = random.Random(f"{args.seed}/{name}/{args.date}")
        shift = sd if (name, args.date.isoformat()) in drifted else 0.0
        offline = [offline_rng.gauss(mean, sd) for _ in range(args.samples)]
        online = [online_rng.gauss(mean + shift, sd) for _ in range(args.samples)]
        skew[name] = round(psi(offline, online), 4)
    print(json.dumps({"run_date": args.date.isoformat(), "samples": args.samples, "psi": skew,
                      "max_psi": max(skew.values())}))


if __name__ == "__main__":
    main()
