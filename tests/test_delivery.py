"""Delivery edge cases on the embedded defaults: shutdown, trimmed history, slow clients,
cancellation."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.job_checks import assert_complete
from tests.raw_websocket import RawWebSocket
from tests.relay_process import (
    TEST_SCRIPTS,
    RelayProcess,
    Stream,
    collect,
    read_to_close,
    submit_frame,
)


def start_relay(tmp_path: Path, config: str = "", *extra: str) -> RelayProcess:
    args = ["--scripts", str(TEST_SCRIPTS), *extra]
    if config:
        path = tmp_path / "relay.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    server = RelayProcess(tmp_path, *args)
    server.start()
    return server


@pytest.fixture
def relay(tmp_path: Path) -> Any:
    server = start_relay(tmp_path)
    yield server
    server.stop()


async def read_until(websocket: Any, stream: Stream, count: int) -> None:
    """Read frames into `stream` until it contains `count` events."""
    while len(stream.events) < count:
        stream.events.append(json.loads(await websocket.recv()))


def wait_for_log(server: RelayProcess, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not logged within {seconds}s"
        time.sleep(0.2)


def delete(url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_shutdown_closes_sockets_1001(tmp_path: Path) -> None:
    server = start_relay(tmp_path)

    async def scenario() -> Stream:
        stream = Stream()
        async with connect(f"{server.ws_url}/ws/jobs") as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=30)))
            await read_until(websocket, stream, 5)
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await read_to_close(websocket, stream)
        return stream

    try:
        stream = asyncio.run(scenario())
    finally:
        server.stop()
    assert stream.close_code == 1001
    assert stream.close_reason == f"relay shutting down; resume with after={stream.seqs[-1]}"
    assert stream.seqs == list(range(len(stream.events)))


def test_trimmed_history_is_announced(tmp_path: Path) -> None:
    server = start_relay(tmp_path, "[server]\nhistory_length = 5\n")
    try:
        first = asyncio.run(collect(f"{server.ws_url}/ws/jobs", submit_frame("flood", count=20)))
        replay = asyncio.run(collect(f"{server.ws_url}/ws/jobs/{first.job_id}?after=3"))
    finally:
        server.stop()
    assert_complete(first)
    notice = replay.events[0]
    assert notice["type"] == "trimmed"
    assert "seq" not in notice
    last = first.seqs[-1]
    assert notice["data"] == {"after": 3, "first_seq": last - 4}
    assert replay.events[1:] == first.events[-5:]
    assert replay.close_code == 1000


def test_slow_client_closed_4408_then_resumes(tmp_path: Path) -> None:
    server = start_relay(tmp_path, "[server]\nsubscriber_queue = 8\n")
    try:
        client = RawWebSocket(server.port, "/ws/jobs")
        client.send_json(submit_frame("flood", count=300, size=60000))
        # The client reads nothing until the relay gives up on it.
        wait_for_log(server, "subscriber queue full", 60)
        slow = client.read_stream()
        client.close()
        after = slow.seqs[-1]
        rest = asyncio.run(collect(f"{server.ws_url}/ws/jobs/{slow.job_id}?after={after}"))
    finally:
        server.stop()
    assert slow.close_code == 4408
    assert slow.close_reason == f"too slow; resume with after={slow.seqs[-1]}"
    assert slow.types[-1] != "complete"
    combined = slow.events + rest.events
    assert [event["seq"] for event in combined] == list(range(len(combined)))
    assert combined[-1]["type"] == "complete"
    assert len([event for event in combined if event["type"] == "log"]) == 300
    assert rest.close_code == 1000


def test_delete_cancels_running_job(relay: RelayProcess) -> None:
    async def scenario() -> Stream:
        stream = Stream()
        async with connect(f"{relay.ws_url}/ws/jobs") as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=30)))
            await read_until(websocket, stream, 4)
            status, body = await asyncio.to_thread(delete, f"{relay.http_url}/jobs/{stream.job_id}")
            assert status == 202, body
            await read_to_close(websocket, stream)
        return stream

    stream = asyncio.run(scenario())
    assert stream.types[-1] == "cancelled"
    assert stream.events[-1]["data"] == {"by": "api"}
    assert stream.close_code == 4001
    assert stream.seqs == list(range(len(stream.events)))
    status, record = relay.get_json(f"/jobs/{stream.job_id}")
    assert record["state"] == "cancelled"
    assert delete(f"{relay.http_url}/jobs/{stream.job_id}")[0] == 409
    assert delete(f"{relay.http_url}/jobs/{'0' * 32}")[0] == 404


def test_cancel_frame_cancels_job(relay: RelayProcess) -> None:
    async def scenario() -> Stream:
        stream = Stream()
        async with connect(f"{relay.ws_url}/ws/jobs") as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=30)))
            await read_until(websocket, stream, 4)
            await websocket.send(json.dumps({"type": "cancel"}))
            await read_to_close(websocket, stream)
        return stream

    stream = asyncio.run(scenario())
    assert stream.types[-1] == "cancelled"
    assert stream.events[-1]["data"] == {"by": "client"}
    assert stream.close_code == 4001
    assert "fatal" not in stream.types


def test_killed_job_reported_fatal(relay: RelayProcess) -> None:
    """A job killed outright sends nothing; the scheduler's exit report ends the stream."""

    async def scenario() -> Stream:
        stream = Stream()
        async with connect(f"{relay.ws_url}/ws/jobs") as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=30)))
            await read_until(websocket, stream, 4)
            queued = next(e for e in stream.events if e["type"] == "queued")
            pid = int(queued["data"]["scheduler_id"].split(".")[1])
            import os

            os.killpg(pid, signal.SIGKILL)
            await read_to_close(websocket, stream)
        return stream

    stream = asyncio.run(scenario())
    assert stream.types[-1] == "fatal"
    assert stream.events[-1]["data"]["exit_status"] == 137
    assert stream.close_code == 4000


def test_metrics_count_jobs_and_events(relay: RelayProcess) -> None:
    stream = asyncio.run(collect(f"{relay.ws_url}/ws/jobs", submit_frame("hello", steps=2)))
    assert_complete(stream)
    with urllib.request.urlopen(f"{relay.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = dict(
        line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert values["relay_jobs_submitted_total"] == "1"
    # started, two progress, two log and complete came from the job.
    assert values["relay_events_ingested_total"] == "6"
    assert values["relay_open_sockets"] == "0"


def test_templates_route_lists_schemas(relay: RelayProcess) -> None:
    status, body = relay.get_json("/templates")
    assert status == 200
    names = [template["name"] for template in body["templates"]]
    assert {"hello", "fetch_and_count", "token_stream", "echo"} <= set(names)
    hello = next(t for t in body["templates"] if t["name"] == "hello")
    assert hello["schema"]["properties"]["steps"]["maximum"] == 20
    assert body["clusters"] == ["local"]


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_unwatched_job_cancelled_after_grace(
    tmp_path: Path, request: pytest.FixtureRequest, broker: str
) -> None:
    extra = ["--redis", request.getfixturevalue("redis_server").url] if broker == "redis" else []
    server = start_relay(tmp_path, "[server]\ncancel_unwatched_after = 1\n", *extra)

    async def leave_early() -> str:
        stream = Stream()
        async with connect(f"{server.ws_url}/ws/jobs") as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=30)))
            await read_until(websocket, stream, 4)
        return stream.job_id

    try:
        job_id = asyncio.run(leave_early())
        deadline = time.monotonic() + 15
        while server.get_json(f"/jobs/{job_id}")[1]["state"] != "cancelled":
            assert time.monotonic() < deadline, "job not cancelled within 15 s"
            time.sleep(0.2)
        replay = asyncio.run(collect(f"{server.ws_url}/ws/jobs/{job_id}"))
    finally:
        server.stop()
    assert replay.events[-1]["type"] == "cancelled"
    assert replay.events[-1]["data"] == {"by": "unwatched"}
    assert replay.close_code == 4001


def test_rewatched_job_not_cancelled(tmp_path: Path) -> None:
    """A client that comes back within the grace period keeps its job."""
    server = start_relay(tmp_path, "[server]\ncancel_unwatched_after = 2\n")

    async def leave_and_return() -> tuple[Stream, Stream]:
        first = Stream()
        async with connect(f"{server.ws_url}/ws/jobs") as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=3)))
            await read_until(websocket, first, 4)
        await asyncio.sleep(0.5)
        rest = await collect(f"{server.ws_url}/ws/jobs/{first.job_id}?after={first.seqs[-1]}")
        return first, rest

    try:
        first, rest = asyncio.run(leave_and_return())
    finally:
        server.stop()
    combined = first.events + rest.events
    assert [event["seq"] for event in combined] == list(range(len(combined)))
    assert combined[-1]["type"] == "complete"
    assert rest.close_code == 1000
