"""The bot's Prometheus metrics, served on /metrics."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlops_slack_requests", "Slack requests by kind", ["kind", "status"], registry=self.registry)
        self.ack_latency = Histogram(
            "mlops_ack_latency_seconds",
            "Time from receiving a Slack request to answering it",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
            registry=self.registry,
        )
        self.actions = Counter("mlops_actions", "Audited actions by verb and status", ["verb", "status"], registry=self.registry)
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self._replication: tuple[Gauge, Gauge, Gauge] | None = None
        self._sets: dict[Counter, int] = {}

    # A backstop, far above what the bot's own verbs, kinds and statuses make: label values that still come from
    # outside (a payload's type, say) must not grow /metrics without end, so past this many series of one counter
    # new ones count as "other". The handlers already fold unknown verbs and action ids into one label each.
    max_series = 1000

    def replication(self, up: bool, lag_s: float | None, restarts: int) -> None:
        """Set at each scrape; registered at the first, so a bot without store_replica exports none of them."""
        if self._replication is None:
            self._replication = (
                Gauge("mlops_replication_up", "1 while litestream replicate runs", registry=self.registry),
                Gauge("mlops_replication_lag_seconds", "Seconds of commits the store's replica may lack (NaN until "
                      "measured)", registry=self.registry),
                Gauge("mlops_replication_restarts", "Times litestream was restarted after dying", registry=self.registry))
        running, lag, restarted = self._replication
        running.set(1 if up else 0)
        lag.set(float("nan") if lag_s is None else lag_s)
        restarted.set(restarts)

    def count(self, counter: Counter, *labels: str) -> None:
        """Increment one labelled child, kept once found: `labels()` costs more than the increment (ack path)."""
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            if self._sets.get(counter, 0) >= self.max_series:
                key = (counter, ("other",) * len(labels))
                child = self._children.get(key)
            if child is None:
                child = self._children[key] = counter.labels(*key[1])
                self._sets[counter] = self._sets.get(counter, 0) + 1
        child.inc()


def request_kind(body: Any) -> str:
    """The metrics label of a Slack payload: its type, or `command`."""
    body = body if isinstance(body, dict) else {}
    return str(body.get("type") or ("command" if "command" in body else "other"))
