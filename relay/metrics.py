"""Counters of one relay instance, served as Prometheus text at /metrics."""

from __future__ import annotations

from collections import Counter

HELP = {
    "relay_jobs_submitted_total": "Jobs handed to a scheduler.",
    "relay_submit_failures_total": "Submissions that ended in fatal before the job was queued.",
    "relay_events_ingested_total": "Job events stored and published by ingest.",
    "relay_events_duplicate_total": "Job events dropped as retries of events already stored.",
    "relay_ingest_refused_total": "Ingest requests answered with a 4xx or 503 status.",
    "relay_watchdog_fatals_total": "Jobs the watchdog reported ended without a terminal event.",
    "relay_slow_clients_total": "Sockets closed with 4408 because the client fell behind.",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter({name: 0 for name in HELP})

    def add(self, name: str, amount: int = 1) -> None:
        if name not in HELP:
            raise KeyError(f"unknown metric {name}")
        self.counters[name] += amount

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """Return the Prometheus text exposition of the counters and the given gauges."""
        lines = []
        for name, text in HELP.items():
            lines += [
                f"# HELP {name} {text}",
                f"# TYPE {name} counter",
                f"{name} {self.counters[name]}",
            ]
        for name, (text, value) in gauges.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
