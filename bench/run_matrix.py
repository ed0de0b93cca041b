"""Run bench/ingest_fanout.py over brokers, subscriber counts and batch sizes, three times each.

Before every run it records `uptime`, because other work on the machine shifts the figures.
Every run's command, load and JSON result go to a JSON Lines file under bench/results/, and
the medians are printed as a Markdown table.

    .venv/bin/python bench/run_matrix.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "ingest_fanout.py"

# Events a run posts, by (batch, subscribers): sized so one run takes well under 60 s on a
# shared 2-core machine.
EVENTS = {
    (1, 1): 3000,
    (1, 10): 3000,
    (1, 100): 2000,
    (100, 1): 20000,
    (100, 10): 20000,
    (100, 100): 5000,
}
FIGURES = [
    "ingest_events_per_s",
    "delivered_events_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "relay_cpu_percent",
    "redis_cpu_percent",
    "client_cpu_percent",
    "relay_cpu_us_per_event",
]


def run_once(command: list[str]) -> tuple[str, dict | None, str]:
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return load, None, result.stderr[-2000:]
    return load, json.loads(lines[-1]), ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brokers", nargs="+", default=["memory", "redis"])
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more bench flags")
    args = parser.parse_args()

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out_file = out_dir / f"matrix-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    configs = [
        (broker, subscribers, batch)
        for broker in args.brokers
        for batch in (1, 100)
        for subscribers in (1, 10, 100)
    ]
    results: dict[tuple[str, int, int], list[dict]] = {config: [] for config in configs}
    failures = 0
    with out_file.open("w") as output:
        for repeat in range(args.repeats):
            for broker, subscribers, batch in configs:
                command = [
                    ".venv/bin/python",
                    "bench/ingest_fanout.py",
                    "--broker",
                    broker,
                    "--subscribers",
                    str(subscribers),
                    "--events",
                    str(EVENTS[batch, subscribers]),
                    "--batch",
                    str(batch),
                    *args.extra,
                ]
                started = time.monotonic()
                load, result, error = run_once(command)
                seconds = round(time.monotonic() - started, 1)
                record = {
                    "repeat": repeat + 1,
                    "command": " ".join(command),
                    "uptime": load,
                    "wall_seconds": seconds,
                    "result": result,
                    "error": error,
                }
                output.write(json.dumps(record) + "\n")
                output.flush()
                if result is None:
                    failures += 1
                    print(f"FAILED: {record['command']}\n{error}", file=sys.stderr)
                else:
                    results[broker, subscribers, batch].append(result)
                print(f"{seconds:6.1f}s  {load}  {' '.join(command[2:])}", file=sys.stderr)

    print(f"results: {out_file.relative_to(ROOT)}")
    header = ["broker", "subs", "batch", "events", "runs", *FIGURES]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (broker, subscribers, batch), runs in results.items():
        if not runs:
            continue
        medians = [statistics.median(run[name] for run in runs) for name in FIGURES]
        cells = [broker, subscribers, batch, EVENTS[batch, subscribers], len(runs), *medians]
        text = [f"{cell:,}" if isinstance(cell, float) else str(cell) for cell in cells]
        print("| " + " | ".join(text) + " |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
