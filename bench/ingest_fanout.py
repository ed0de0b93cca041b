"""Measure the relay's hot path: ingest over HTTP and fan-out to websocket subscribers.

The script starts its own `relay serve` (and, with `--broker redis`, its own redis-server)
on free 127.0.0.1 ports, submits one job of the `hold` test template to get a real ingest
token, attaches N subscribers to the job, then POSTs E `token` events, one per request or
in arrays of K, from one or more keep-alive HTTP clients. It reports ingest throughput,
end-to-end latency from POST to receipt at every subscriber, delivered frames a second,
and the CPU time of each process. It checks that every subscriber got every seq exactly
once and in order, and exits 1 when one did not. It stops what it started, by pid.

    .venv/bin/python bench/ingest_fanout.py --broker memory --subscribers 10 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import resource
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if importlib.util.find_spec("sniffio") is None:
    # NOTE: httpcore 1.0.9 runs `import sniffio` on every lock use and falls back to asyncio
    # when it fails. anyio 4.16 no longer installs sniffio, and Python does not cache a
    # failed import, so each try searches sys.path again (about 1 ms of client CPU per
    # request under cProfile). A None entry makes the import fail at once, with the same
    # asyncio fallback.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

from tests.harness.process import read_pid_file  # noqa: E402
from tests.harness.redis_server import RedisServer  # noqa: E402
from tests.relay_process import RelayProcess  # noqa: E402

# The job helper numbers its own events (started, complete) from 1; bench ids start far
# above, so the relay never drops one of them as a duplicate.
ID_OFFSET = 1_000_000_000
WARMUP_INDEX = -2
OTHER_INDEX = -1
MAX_EVENTS = 1_000_000
MAX_SUBSCRIBERS = 1_000
MAX_BATCH = 1_000  # the relay's MAX_EVENTS_PER_REQUEST
MAX_CLIENTS = 64
START_TIMEOUT = 30.0
# Websocket handshakes in flight at once while subscribers attach. The relay's Redis broker
# fails an attach with "Too many connections" (close 1011) when about 100 run at once,
# because redis-py's asyncio pool keeps at most 100 connections and raises instead of
# waiting. The benchmark measures steady streaming, so it attaches in smaller waves.
ATTACH_CONCURRENCY = 16
HOLD_SECONDS = 120  # the `hold` template's maximum wait; the job completes after it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Subscriber:
    """Frames one websocket subscriber received, in flat arrays to keep memory small."""

    seqs: array = field(default_factory=lambda: array("q"))
    indexes: array = field(default_factory=lambda: array("q"))
    """Bench event index of each frame; WARMUP_INDEX or OTHER_INDEX for the rest."""
    received_at: array = field(default_factory=lambda: array("d"))
    """time.perf_counter() when the frame came out of the websocket client."""
    types: list[str] = field(default_factory=list)
    bench_count: int = 0
    close_code: int | None = None
    close_reason: str = ""
    warm: asyncio.Event = field(default_factory=asyncio.Event)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every bench event has arrived."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["memory", "redis"], default="memory")
    parser.add_argument(
        "--subscribers", type=int, default=1, help="websockets attached to the job (default 1)"
    )
    parser.add_argument("--events", type=int, default=10_000, help="events to post (default 10000)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="events per request; 1 posts single JSON objects, more post arrays (default 1)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="concurrent HTTP clients, each with one keep-alive connection (default 1)",
    )
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="websocket compression the subscribers offer; browsers offer deflate (default)",
    )
    parser.add_argument(
        "--subscriber-queue",
        type=int,
        default=None,
        help="relay's per-socket queue length ([server] subscriber_queue); default: "
        "events + 64, so a socket that lags behind a full-speed run is not closed with 4408",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="relay log level; info (the default of `relay serve`) logs every request",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds allowed from the first POST until every subscriber has every event",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="folder for logs and config (default: temp)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the relay with py-spy during the measured phase into this file: a "
        "flame graph for .svg, else collapsed stacks (bench/top_frames.py summarizes them)",
    )
    args = parser.parse_args(argv)
    checks = [
        (1 <= args.subscribers <= MAX_SUBSCRIBERS, f"--subscribers must be 1-{MAX_SUBSCRIBERS}"),
        (1 <= args.events <= MAX_EVENTS, f"--events must be 1-{MAX_EVENTS}"),
        (1 <= args.batch <= MAX_BATCH, f"--batch must be 1-{MAX_BATCH}"),
        (1 <= args.clients <= MAX_CLIENTS, f"--clients must be 1-{MAX_CLIENTS}"),
        (0 < args.timeout <= 300, "--timeout must be above 0 and at most 300 seconds"),
    ]
    for valid, message in checks:
        if not valid:
            parser.error(message)
    if args.subscriber_queue is None:
        args.subscriber_queue = max(1024, args.events + 64)
    return args


def write_config(path: Path, args: argparse.Namespace) -> None:
    """Write a relay config whose limits stay out of the way of the measurement."""
    # About 60 bytes an event; 512 leaves room for longer data without a 413.
    max_body = max(1_048_576, 512 * args.batch)
    path.write_text(
        "[server]\n"
        f"subscriber_queue = {args.subscriber_queue}\n"
        # The relay accepts the subscribers' deflate offer only when this is on.
        f"websocket_compression = {'true' if args.compression == 'deflate' else 'false'}\n"
        "\n[limits]\n"
        "events_per_second = 1e9\n"
        f"max_body_bytes = {max_body}\n"
        f"sockets_per_key = {args.subscribers + 8}\n",
        encoding="utf-8",
    )


def cpu_seconds(pid: int | None) -> float:
    """Return user plus system CPU seconds of a process, from /proc/PID/stat."""
    if pid is None:
        return 0.0
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class Bench:
    def __init__(self, args: argparse.Namespace, relay: RelayProcess, folder: Path) -> None:
        self.args = args
        self.relay = relay
        self.folder = folder
        self.job_id = ""
        self.token = ""
        self.after = -1
        self.release_file = folder / "release"
        self.subscribers = [Subscriber() for _ in range(args.subscribers)]
        self.sent_at = array("d", bytes(8 * args.events))
        self.accepted = 0
        self.requests = 0

    def compression(self) -> str | None:
        return None if self.args.compression == "none" else "deflate"

    async def submit_job(self) -> None:
        """Submit a `hold` job, read its token from the file the job writes, then let go."""
        token_file = self.folder / "token"
        frame = {
            "type": "submit",
            "script": "hold",
            "args": {
                "token_file": str(token_file),
                "release_file": str(self.release_file),
                "seconds": HOLD_SECONDS,
            },
        }
        url = f"{self.relay.ws_url}/ws/jobs"
        async with connect(url, proxy=None, max_size=None) as websocket:
            await websocket.send(json.dumps(frame))
            first = json.loads(await asyncio.wait_for(websocket.recv(), START_TIMEOUT))
            self.job_id = first["job"]
            deadline = time.monotonic() + START_TIMEOUT
            while not token_file.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {self.job_id} wrote no token file in {START_TIMEOUT}s")
                await asyncio.sleep(0.05)
        # Closing the submitting socket does not cancel the job.
        self.token = token_file.read_text()

    async def read_after(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"{self.relay.http_url}/jobs/{self.job_id}")
            response.raise_for_status()
            self.after = int(response.json()["last_seq"])

    async def run_subscriber(
        self, subscriber: Subscriber, opened: asyncio.Event, attaching: asyncio.Semaphore
    ) -> None:
        url = f"{self.relay.ws_url}/ws/jobs/{self.job_id}?after={self.after}"
        websocket: ClientConnection
        async with attaching:
            websocket = await connect(
                url, proxy=None, max_size=None, compression=self.compression(), open_timeout=30
            )
        async with websocket:
            opened.set()
            await self.read_frames(websocket, subscriber)
        subscriber.close_code = websocket.close_code
        subscriber.close_reason = websocket.close_reason or ""

    async def read_frames(self, websocket: ClientConnection, subscriber: Subscriber) -> None:
        events = self.args.events
        try:
            async for message in websocket:
                now = time.perf_counter()
                envelope = json.loads(message)
                index = OTHER_INDEX
                data = envelope.get("data")
                if envelope.get("type") == "token" and isinstance(data, str):
                    index = int(data[1:]) if data[0] == "b" else WARMUP_INDEX
                subscriber.seqs.append(envelope.get("seq", -1))
                subscriber.indexes.append(index)
                subscriber.received_at.append(now)
                subscriber.types.append(envelope.get("type", ""))
                if index == WARMUP_INDEX:
                    subscriber.warm.set()
                elif index >= 0:
                    subscriber.bench_count += 1
                    if subscriber.bench_count == events:
                        subscriber.complete.set()
        except ConnectionClosed:
            pass

    def request_bodies(self, client_number: int) -> list[tuple[int, bytes]]:
        """Return (first index, body) of every request this client sends, round robin."""
        bodies = []
        batch = self.args.batch
        starts = range(client_number * batch, self.args.events, batch * self.args.clients)
        for start in starts:
            items = [
                {"id": ID_OFFSET + index, "type": "token", "data": f"b{index}"}
                for index in range(start, min(start + batch, self.args.events))
            ]
            payload: Any = items[0] if batch == 1 else items
            bodies.append((start, json.dumps(payload).encode()))
        return bodies

    def http_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.relay.http_url,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
            },
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=30.0,
            trust_env=False,
        )

    async def post_all(self, client_number: int) -> None:
        bodies = self.request_bodies(client_number)
        path = f"/jobs/{self.job_id}/events"
        async with self.http_client() as client:
            for start, body in bodies:
                count = min(self.args.batch, self.args.events - start)
                now = time.perf_counter()
                for index in range(start, start + count):
                    self.sent_at[index] = now
                response = await client.post(path, content=body)
                if response.status_code != 202:
                    raise RuntimeError(
                        f"POST of events {start}-{start + count - 1} got "
                        f"{response.status_code}: {response.text}"
                    )
                accepted = response.json()["accepted"]
                if accepted != count:
                    raise RuntimeError(f"relay accepted {accepted} of {count} events at {start}")
                self.accepted += accepted
                self.requests += 1

    async def warm_up(self) -> None:
        """Post one event and wait until every subscriber has it, so all are live."""
        async with self.http_client() as client:
            warmup = {"id": ID_OFFSET - 1, "type": "token", "data": "warm-up"}
            response = await client.post(f"/jobs/{self.job_id}/events", json=warmup)
            response.raise_for_status()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for subscriber in self.subscribers:
                    await subscriber.warm.wait()
        except TimeoutError:
            closed = [
                f"{number}: {subscriber.close_code} {subscriber.close_reason!r}"
                for number, subscriber in enumerate(self.subscribers)
                if not subscriber.warm.is_set()
            ]
            raise RuntimeError(
                f"{len(closed)} subscribers did not receive the warm-up event within "
                f"{START_TIMEOUT}s; subscriber: close code, reason: {', '.join(closed[:10])}"
            ) from None

    async def run(self, relay_pid: int | None, redis_pid: int | None) -> dict[str, Any]:
        await self.submit_job()
        await self.read_after()
        opened = [asyncio.Event() for _ in self.subscribers]
        attaching = asyncio.Semaphore(ATTACH_CONCURRENCY)
        readers = [
            asyncio.create_task(self.run_subscriber(subscriber, event, attaching))
            for subscriber, event in zip(self.subscribers, opened, strict=True)
        ]
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for event in opened:
                    await event.wait()
        except TimeoutError:
            count = sum(1 for event in opened if event.is_set())
            raise RuntimeError(
                f"only {count} of {len(opened)} subscribers attached within {START_TIMEOUT}s"
            ) from None
        await self.warm_up()

        profiler = await self.start_profiler(relay_pid)
        cpu_before = (cpu_seconds(relay_pid), cpu_seconds(redis_pid), own_cpu_seconds())
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.args.timeout):
                await asyncio.gather(*(self.post_all(n) for n in range(self.args.clients)))
                posted = time.perf_counter()
                for subscriber in self.subscribers:
                    await subscriber.complete.wait()
        except TimeoutError:
            counts = sorted(subscriber.bench_count for subscriber in self.subscribers)
            raise RuntimeError(
                f"not every subscriber got all {self.args.events} events within "
                f"{self.args.timeout}s; received counts from {counts[0]} to {counts[-1]}"
            ) from None
        delivered = max(subscriber.received_at[-1] for subscriber in self.subscribers)
        cpu_after = (cpu_seconds(relay_pid), cpu_seconds(redis_pid), own_cpu_seconds())
        await self.stop_profiler(profiler)

        # Releasing the job makes it send `complete`, which closes every socket with 1000.
        self.release_file.touch()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.gather(*readers)
        except TimeoutError:
            raise RuntimeError(
                f"sockets still open {START_TIMEOUT}s after the job was released"
            ) from None
        return self.summarize(started, posted, delivered, cpu_before, cpu_after)

    async def start_profiler(self, relay_pid: int | None) -> asyncio.subprocess.Process | None:
        if self.args.profile is None or relay_pid is None:
            return None
        py_spy = Path(sys.executable).parent / "py-spy"
        return await asyncio.create_subprocess_exec(
            str(py_spy),
            "record",
            "--pid",
            str(relay_pid),
            "--rate",
            "250",
            "--output",
            str(self.args.profile),
            "--format",
            "flamegraph" if self.args.profile.suffix == ".svg" else "raw",
            "--nonblocking",
            "--nolineno",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def stop_profiler(self, profiler: asyncio.subprocess.Process | None) -> None:
        if profiler is None:
            return
        # py-spy writes its output on SIGINT.
        profiler.send_signal(2)
        await asyncio.wait_for(profiler.wait(), 30)

    def verify(self) -> list[str]:
        """Return one line per subscriber that missed, repeated or reordered an event."""
        problems = []
        events = self.args.events
        for number, subscriber in enumerate(self.subscribers):
            seqs = subscriber.seqs.tolist()
            expected = list(range(self.after + 1, self.after + 1 + len(seqs)))
            if seqs != expected:
                first_bad = next(
                    i for i, (a, b) in enumerate(zip(seqs, expected, strict=False)) if a != b
                )
                problems.append(
                    f"subscriber {number}: seq {seqs[first_bad]} at position {first_bad}, "
                    f"expected {expected[first_bad]}"
                )
            bench = [index for index in subscriber.indexes if index >= 0]
            if sorted(bench) != list(range(events)):
                problems.append(
                    f"subscriber {number}: {len(bench)} bench events, {len(set(bench))} "
                    f"distinct, expected each of 0-{events - 1} once"
                )
            if self.args.clients == 1 and bench != sorted(bench):
                problems.append(f"subscriber {number}: bench events out of posting order")
            warmups = sum(1 for index in subscriber.indexes if index == WARMUP_INDEX)
            if warmups != 1:
                problems.append(f"subscriber {number}: warm-up event received {warmups} times")
            if not subscriber.types or subscriber.types[-1] != "complete":
                last = subscriber.types[-1] if subscriber.types else None
                problems.append(f"subscriber {number}: last event {last!r}, expected 'complete'")
            if subscriber.close_code != 1000:
                problems.append(
                    f"subscriber {number}: closed with {subscriber.close_code} "
                    f"{subscriber.close_reason!r}, expected 1000"
                )
        return problems

    def latencies(self) -> list[float]:
        """Return every POST-to-receipt latency in seconds, ascending."""
        values: list[float] = []
        sent_at = self.sent_at
        for subscriber in self.subscribers:
            for index, received in zip(subscriber.indexes, subscriber.received_at, strict=True):
                if index >= 0:
                    values.append(received - sent_at[index])
        values.sort()
        return values

    def summarize(
        self,
        started: float,
        posted: float,
        delivered: float,
        cpu_before: tuple[float, float, float],
        cpu_after: tuple[float, float, float],
    ) -> dict[str, Any]:
        problems = self.verify()
        if problems:
            shown = "\n  ".join(problems[:20])
            raise SystemExit(f"delivery check failed ({len(problems)} problems):\n  {shown}")
        args = self.args
        latencies = self.latencies()
        post_seconds = posted - started
        deliver_seconds = delivered - started
        relay_cpu, redis_cpu, client_cpu = (
            after - before for before, after in zip(cpu_before, cpu_after, strict=True)
        )
        milliseconds = {
            f"latency_{name}_ms": round(1000 * percentile(latencies, fraction), 2)
            for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        }
        return {
            "broker": args.broker,
            "subscribers": args.subscribers,
            "events": args.events,
            "batch": args.batch,
            "clients": args.clients,
            "compression": args.compression,
            "requests": self.requests,
            "ingest_events_per_s": round(self.accepted / post_seconds, 1),
            "delivered_events_per_s": round(args.subscribers * args.events / deliver_seconds, 1),
            "post_seconds": round(post_seconds, 3),
            "deliver_seconds": round(deliver_seconds, 3),
            **milliseconds,
            "relay_cpu_percent": round(100 * relay_cpu / deliver_seconds, 1),
            "relay_cpu_us_per_event": round(1e6 * relay_cpu / args.events, 1),
            "redis_cpu_percent": round(100 * redis_cpu / deliver_seconds, 1),
            "client_cpu_percent": round(100 * client_cpu / deliver_seconds, 1),
            "verified_subscribers": args.subscribers,
            "load_average_1m": os.getloadavg()[0],
        }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("broker", result["broker"]),
        ("subscribers", result["subscribers"]),
        ("events, batch, clients", f"{result['events']}, {result['batch']}, {result['clients']}"),
        ("ingest (events/s)", f"{result['ingest_events_per_s']:,.0f}"),
        ("delivered (events/s)", f"{result['delivered_events_per_s']:,.0f}"),
        (
            "latency p50/p95/p99/max (ms)",
            "{latency_p50_ms} / {latency_p95_ms} / {latency_p99_ms} / {latency_max_ms}".format(
                **result
            ),
        ),
        (
            "CPU relay/redis/bench (%)",
            "{relay_cpu_percent} / {redis_cpu_percent} / {client_cpu_percent}".format(**result),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as temporary:
        folder = Path(temporary)
        workdir = args.workdir.resolve() if args.workdir else folder
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "relay.toml"
        write_config(config, args)
        relay_args = [
            "--config",
            str(config),
            "--scripts",
            str(ROOT / "tests" / "scripts"),
            "--log-level",
            args.log_level,
        ]
        redis: RedisServer | None = None
        relay: RelayProcess | None = None
        try:
            redis_pid = None
            if args.broker == "redis":
                redis = RedisServer(workdir / "redis")
                redis.start()
                redis_pid = read_pid_file(redis.pid_file)
                relay_args += ["--redis", redis.url]
            relay = RelayProcess(workdir, *relay_args)
            relay.start()
            relay_pid = relay.process.pid if relay.process else None
            bench = Bench(args, relay, folder)
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                result = runner.run(bench.run(relay_pid, redis_pid))
        except (RuntimeError, TimeoutError) as error:
            print(f"benchmark failed: {error}", file=sys.stderr)
            if relay is not None:
                print(relay.log()[-2000:], file=sys.stderr)
            return 1
        finally:
            if relay is not None:
                relay.stop()
            if redis is not None:
                redis.stop()
    print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
