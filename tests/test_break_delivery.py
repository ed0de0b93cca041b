"""Delivery promises of docs/delivery.md and docs/protocol.md under races and odd inputs.

Every test runs the real relay process, with the memory broker or with the session's private
redis-server. Jobs are `hold` jobs of the local scheduler, whose ingest token the test reads
from a file, so a test can POST crafted events and then let the job complete.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.break_.clients import attach, event, json_body, running_job, stream_or_timeout
from tests.harness.redis_server import RedisServer
from tests.relay_process import TEST_SCRIPTS, RelayProcess, Stream, read_to_close, submit_frame
from tests.security.client import Response, post_events

# The hold template's helper numbers its own events from 1; crafted events use ids from here.
FIRST_ID = 10_000
# Seconds a client waits for a close that should come at once.
CLOSE_WAIT = 10.0


def start_relay(folder: Path, *extra: str) -> RelayProcess:
    server = RelayProcess(folder, "--scripts", str(TEST_SCRIPTS), *extra)
    server.start()
    return server


@pytest.fixture(scope="module")
def memory_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = start_relay(tmp_path_factory.mktemp("memory"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_relay(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[RelayProcess]:
    server = start_relay(tmp_path_factory.mktemp("redis"), "--redis", redis_server.url)
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def relay(request: pytest.FixtureRequest) -> RelayProcess:
    """The relay with each broker in turn."""
    server: RelayProcess = request.getfixturevalue(f"{request.param}_relay")
    return server


def http_status(server: RelayProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(f"{server.http_url}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def assert_stream_ends(stream: Stream, last_type: str, code: int) -> None:
    assert stream.close_code == code, (stream.close_code, stream.close_reason, stream.types)
    assert stream.types[-1] == last_type, stream.types
    assert stream.seqs == list(range(stream.seqs[0], stream.seqs[0] + len(stream.events)))


# Sockets that never close


def test_attach_after_past_end_closes(memory_relay: RelayProcess, tmp_path: Path) -> None:
    """A socket attached with `after` beyond the job's last event still closes when it ends.

    The relay drops every live event with seq <= after, the terminal one included, so the
    socket stays open after the job completed.
    """
    with running_job(memory_relay, tmp_path) as job:
        holder: dict[str, Stream] = {}
        watcher = threading.Thread(
            target=lambda: holder.update(stream=attach(memory_relay, job.job_id, 50, 8))
        )
        watcher.start()
        time.sleep(1.0)
        owner = job.release()
        watcher.join(20)
    assert owner.close_code == 1000
    stream = holder["stream"]
    assert stream.close_code is not None, "socket with after=50 still open after the job ended"
    assert stream.close_code in (1000, 4400), (stream.close_code, stream.close_reason)


def test_nested_client_frame_keeps_stream(memory_relay: RelayProcess) -> None:
    """A frame nested too deeply to parse is ignored like any frame that is not `cancel`."""

    async def scenario() -> Stream:
        stream = Stream()
        async with asyncio.timeout(30):
            async with connect(f"{memory_relay.ws_url}/ws/jobs", max_size=None) as websocket:
                await websocket.send(json.dumps(submit_frame("sleepy", seconds=2)))
                while len(stream.events) < 4:
                    stream.events.append(json.loads(await websocket.recv()))
                await websocket.send("[" * 100_000)
                await read_to_close(websocket, stream)
        return stream

    stream = asyncio.run(scenario())
    assert stream.close_code == 1000, (stream.close_code, stream.close_reason, stream.types)
    assert stream.types[-1] == "complete"
    assert stream.seqs == list(range(len(stream.events)))
    assert len(stream.of_type("log")) == 10


# Odd `after` values


def test_history_after_below_minus_one(relay: RelayProcess, tmp_path: Path) -> None:
    """GET /jobs/{id}/events with after below -1 returns every event, as after=-1 does.

    With Redis, after=-3 makes the history read send XRANGE from 0--1, an invalid id.
    """
    with running_job(relay, tmp_path) as job:
        status, everything = relay.get_json(f"/jobs/{job.job_id}/events?after=-1")
        statuses = {
            after: http_status(relay, f"/jobs/{job.job_id}/events?after={after}")
            for after in (-2, -3, -5)
        }
        job.release()
    assert status == 200
    assert everything["events"][0]["seq"] == 0
    assert statuses == {-2: 200, -3: 200, -5: 200}


def test_attach_huge_after_running_job(redis_relay: RelayProcess, tmp_path: Path) -> None:
    """after=10**20 on a running job gets 4400 or the job's own close, never 1011.

    With Redis the history read sends XRANGE 0-100000000000000000002, which Redis rejects
    as an invalid stream id.
    """
    with running_job(redis_relay, tmp_path) as job:
        status = http_status(redis_relay, f"/jobs/{job.job_id}/events?after={10**20}")
        holder: dict[str, Stream] = {}
        watcher = threading.Thread(
            target=lambda: holder.update(stream=attach(redis_relay, job.job_id, 10**20, 8))
        )
        watcher.start()
        time.sleep(1.0)
        job.release()
        watcher.join(20)
    assert status in (200, 400), status
    stream = holder["stream"]
    assert stream.close_code in (1000, 4400), (stream.close_code, stream.close_reason)


def test_after_values_on_finished_job(relay: RelayProcess, tmp_path: Path) -> None:
    """after below -1 replays everything; a non-integer after closes with 4400."""
    with running_job(relay, tmp_path) as job:
        owner = job.release()
    assert owner.close_code == 1000
    replay = attach(relay, job.job_id, -5)
    assert replay.events == owner.events
    assert replay.close_code == 1000
    for after in ("1e3", "abc", "1.5"):
        rejected = attach(relay, job.job_id, after)
        assert rejected.close_code == 4400, (after, rejected.close_code)
        assert rejected.events == []
    at_end = attach(relay, job.job_id, owner.seqs[-1])
    assert at_end.events == []
    assert at_end.close_code == 1000


def test_attach_failed_job_reason(relay: RelayProcess, tmp_path: Path) -> None:
    """Attaching at the end of a failed job closes 4000 with the fatal message as reason."""
    with running_job(relay, tmp_path) as job:
        fatal = event("fatal", {"message": "out of memory", "exit_status": 9}, FIRST_ID)
        assert post_events(relay, job.job_id, job.token, json_body(fatal)).status == 202
        owner = job.client.wait(CLOSE_WAIT)
    assert owner.close_code == 4000
    assert owner.close_reason == "out of memory"
    at_end = attach(relay, job.job_id, owner.seqs[-1])
    assert at_end.close_code == 4000
    assert at_end.close_reason == "out of memory"


# Events the relay accepts but cannot deliver


def test_lone_surrogate_event(relay: RelayProcess, tmp_path: Path) -> None:
    """An event with a lone surrogate escape is rejected with 422 or delivered; it never
    breaks the job's stream or the ingest route."""
    with running_job(relay, tmp_path) as job:
        response = post_events(
            relay, job.job_id, job.token, json_body(event("log", "\ud800", FIRST_ID))
        )
        owner = job.release()
    assert response.status in (202, 422), (response.status, response.body[:200])
    assert_stream_ends(owner, "complete", 1000)
    replay = attach(relay, job.job_id, -1)
    assert_stream_ends(replay, "complete", 1000)


def test_chunk_id_unicode_digit(relay: RelayProcess, tmp_path: Path) -> None:
    """A chunk id of a Unicode digit that int() rejects ("²") gets 422, not 500."""
    with running_job(relay, tmp_path) as job:
        response = post_events(
            relay, job.job_id, job.token, b"x", "application/octet-stream", "?type=chunk&id=%C2%B2"
        )
        job.release()
    assert response.status == 422, (response.status, response.body[:200])


def test_fatal_exit_status_beyond_double(relay: RelayProcess, tmp_path: Path) -> None:
    """A fatal exit status that is a valid integer is rejected (422) or kept exactly.

    The Redis script decodes the event with cjson, whose numbers are doubles, and stores
    10**20 as "1e+20", which GET /jobs/{id} then fails to parse.
    """
    exit_status = 10**20
    with running_job(relay, tmp_path) as job:
        fatal = event("fatal", {"message": "boom", "exit_status": exit_status}, FIRST_ID)
        response = post_events(relay, job.job_id, job.token, json_body(fatal))
        job.release()
    assert response.status in (202, 422), response.status
    if response.status == 202:
        assert http_status(relay, f"/jobs/{job.job_id}") == 200
        status, record = relay.get_json(f"/jobs/{job.job_id}")
        assert record["exit_status"] == exit_status


# Idempotent ingest and terminal events


def post_all(server: RelayProcess, job_id: str, token: str, bodies: list[bytes]) -> list[Response]:
    """POST every body at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(bodies))
    responses: list[Response | None] = [None] * len(bodies)

    def post(index: int) -> None:
        barrier.wait(10)
        responses[index] = post_events(server, job_id, token, bodies[index])

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(response is not None for response in responses)
    return [response for response in responses if response is not None]


def test_complete_and_fatal_race(relay: RelayProcess, tmp_path: Path) -> None:
    """Concurrent complete and fatal: one is accepted, the other gets 409, one close."""
    with running_job(relay, tmp_path) as job:
        bodies = [
            json_body(event("complete", {"n": 1}, FIRST_ID)),
            json_body(event("fatal", {"message": "late", "exit_status": 1}, FIRST_ID + 1)),
        ]
        responses = post_all(relay, job.job_id, job.token, bodies)
        owner = job.client.wait(CLOSE_WAIT)
    statuses = sorted(response.status for response in responses)
    assert statuses == [202, 409], statuses
    terminal = [kind for kind in owner.types if kind in ("complete", "fatal", "cancelled")]
    assert len(terminal) == 1, owner.types
    assert owner.close_code == {"complete": 1000, "fatal": 4000}[terminal[0]]
    replay = attach(relay, job.job_id, -1)
    assert replay.events == owner.events
    assert replay.close_code == owner.close_code


def test_cancel_races_complete(relay: RelayProcess, tmp_path: Path) -> None:
    """DELETE racing the job's complete: the terminal event and the close code agree."""
    with running_job(relay, tmp_path) as job:
        cancel_status: list[int] = []

        def cancel() -> None:
            request = urllib.request.Request(f"{relay.http_url}/jobs/{job.job_id}", method="DELETE")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    cancel_status.append(response.status)
            except urllib.error.HTTPError as error:
                cancel_status.append(error.code)

        canceller = threading.Thread(target=cancel)
        canceller.start()
        complete = post_events(
            relay, job.job_id, job.token, json_body(event("complete", None, FIRST_ID))
        )
        canceller.join(15)
        owner = job.client.wait(CLOSE_WAIT)
    assert sorted([cancel_status[0], complete.status]) == [202, 409]
    terminal = owner.types[-1]
    assert terminal in ("complete", "cancelled"), owner.types
    assert owner.close_code == {"complete": 1000, "cancelled": 4001}[terminal]
    assert owner.seqs == list(range(len(owner.events)))


def test_batch_duplicates_and_terminal(relay: RelayProcess, tmp_path: Path) -> None:
    """An array with a repeated id, a terminal event and one event after it, then a retry."""
    batch = json_body(
        event("log", "one", FIRST_ID),
        event("log", "one again", FIRST_ID),
        event("token", "two", None),
        event("result", {"n": 3}, FIRST_ID + 1),
        event("complete", {"n": 3}, FIRST_ID + 2),
        event("log", "after the end", FIRST_ID + 3),
    )
    with running_job(relay, tmp_path) as job:
        first = post_events(relay, job.job_id, job.token, batch)
        retry = post_events(relay, job.job_id, job.token, batch)
        owner = job.client.wait(CLOSE_WAIT)
    assert first.status == 202
    assert first.json()["accepted"] == 4
    assert first.json()["duplicates"] == 1
    assert first.json()["rejected"] == 1
    assert retry.status == 409
    assert_stream_ends(owner, "complete", 1000)
    assert [entry["data"] for entry in owner.of_type("log")] == ["one"]
    assert owner.types[-4:] == ["log", "token", "result", "complete"]


def test_id_reused_across_types_is_duplicate(relay: RelayProcess, tmp_path: Path) -> None:
    """An id is unique per job, not per type: a complete reusing a log's id is dropped."""
    with running_job(relay, tmp_path) as job:
        log = post_events(relay, job.job_id, job.token, json_body(event("log", "x", FIRST_ID)))
        reused = post_events(
            relay, job.job_id, job.token, json_body(event("complete", None, FIRST_ID))
        )
        owner = job.release()
    assert log.json()["accepted"] == 1
    assert reused.json() == {
        "accepted": 0,
        "duplicates": 1,
        "rejected": 0,
        "last_seq": log.json()["last_seq"],
    }
    # The job's own complete, from the release, ends the stream.
    assert_stream_ends(owner, "complete", 1000)
    assert owner.of_type("complete")[0]["data"] is not None


def test_zero_byte_chunk(relay: RelayProcess, tmp_path: Path) -> None:
    """A chunk of 0 bytes is one binary frame with an empty payload, and empty in history."""
    with running_job(relay, tmp_path) as job:
        response = post_events(
            relay,
            job.job_id,
            job.token,
            b"",
            "application/octet-stream",
            f"?type=chunk&id={FIRST_ID}&mime=audio/wav",
        )
        owner = job.release()
    assert response.status == 202
    chunks = owner.of_type("chunk")
    assert len(chunks) == 1
    assert chunks[0]["payload"] == b""
    assert chunks[0]["mime"] == "audio/wav"
    status, body = relay.get_json(f"/jobs/{owner.job_id}/events")
    stored = [entry for entry in body["events"] if entry["type"] == "chunk"]
    assert stored[0]["data_base64"] == ""


# Many sockets on one job through Redis


ATTACH_ROUNDS = 40
CHURN_SECONDS = 5.0


async def churn(server: RelayProcess, job_id: str, seed: int) -> None:
    """Attach and leave again and again, after a random seq and a random number of frames.

    `after` stays at or below 5, which the ticking job passes within a second, so no
    socket waits for events that never come.
    """
    generator = random.Random(seed)
    deadline = time.monotonic() + CHURN_SECONDS
    for _ in range(ATTACH_ROUNDS):
        if time.monotonic() > deadline:
            return
        after = generator.randint(-1, 5)
        url = f"{server.ws_url}/ws/jobs/{job_id}?after={after}"
        async with connect(url, max_size=None, open_timeout=10) as websocket:
            try:
                for _ in range(generator.randint(0, 3)):
                    await asyncio.wait_for(websocket.recv(), 0.2)
            except (TimeoutError, ConnectionClosed):
                pass


async def watch_from(server: RelayProcess, job_id: str, delay: float, after: int) -> Stream:
    await asyncio.sleep(delay)
    return await stream_or_timeout(f"{server.ws_url}/ws/jobs/{job_id}?after={after}", 30)


# Watchers attach at these seconds after the job started, with these `after` values.
WATCHERS = ((0.0, -1), (0.0, 2), (1.0, 5), (2.0, -1), (3.0, 10))


def test_redis_attach_churn_loses_nothing(
    redis_relay: RelayProcess, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Sockets that subscribe and unsubscribe the job's channel all the time do not cost a
    steady watcher any event, and leave no subscription behind."""
    with running_job(redis_relay, tmp_path, tick=True) as job:

        async def scenario() -> list[Stream]:
            churners = [churn(redis_relay, job.job_id, seed) for seed in range(10)]
            watchers = [
                watch_from(redis_relay, job.job_id, delay, after) for delay, after in WATCHERS
            ]
            results = await asyncio.gather(*watchers, *churners, asyncio.to_thread(release_later))
            return list(results[: len(WATCHERS)])

        def release_later() -> None:
            time.sleep(4.0)
            job.release_file.touch()

        watchers = asyncio.run(scenario())
        owner = job.client.wait(CLOSE_WAIT)
    assert_stream_ends(owner, "complete", 1000)
    for (_, after), stream in zip(WATCHERS, watchers, strict=True):
        assert stream.close_code == 1000, (after, stream.close_code, stream.close_reason)
        assert stream.events == owner.events[after + 1 :], after
    client = redis.Redis.from_url(redis_server.url)
    try:
        channel = f"relay:{{{job.job_id}}}:channel"
        assert client.pubsub_numsub(channel) == [(channel.encode(), 0)]
    finally:
        client.close()
    with urllib.request.urlopen(f"{redis_relay.http_url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "relay_open_sockets 0" in metrics.splitlines()


# Redis keys of a job that never finishes


def test_redis_unfinished_job_keys_expire(
    redis_relay: RelayProcess, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Every Redis key of an unfinished job has a TTL, not only its record.

    docs/delivery.md: "Redis key lifetime of an unfinished job: 7 days". The stream and
    the id set are created by the publish script without one, so a job that never sends a
    terminal event leaves them in Redis for ever.
    """
    with running_job(redis_relay, tmp_path) as job:
        client = redis.Redis.from_url(redis_server.url)
        try:
            ttls: dict[str, Any] = {
                name: client.ttl(f"relay:{{{job.job_id}}}:{name}")
                for name in ("job", "events", "ids")
            }
        finally:
            client.close()
        job.release()
    assert ttls["job"] > 0, ttls
    assert ttls["events"] > 0, ttls
    assert ttls["ids"] > 0, ttls


def test_redis_data_lost_socket_closes(tmp_path: Path) -> None:
    """A socket whose job vanished with a Redis restart without persistence still closes.

    The subscriber reconnects and each socket reads history again, but the history and the
    record are gone: the job's posts get 401, its exit finds no record, and no terminal
    event ever reaches the socket.
    """
    server = RedisServer(tmp_path / "redis")
    server.start()
    relay = start_relay(tmp_path, "--redis", server.url)
    try:
        with running_job(relay, tmp_path, tick=True) as job:
            job.client.wait_for(lambda stream: len(stream.of_type("log")) >= 3)
            server.kill()
            time.sleep(0.5)
            server.start()
            time.sleep(1.0)
            job.release_file.touch()
            deadline = time.monotonic() + CLOSE_WAIT
            while not job.client.done and time.monotonic() < deadline:
                time.sleep(0.1)
            # Read before the relay stops, because its shutdown closes the socket with 1001.
            closed = job.client.done
            close_code = job.client.stream.close_code
    finally:
        relay.stop()
        server.stop()
    # The relay's log goes with a failure: it shows the 401s and the job's exit.
    print(relay.log())
    assert closed, f"socket still open {CLOSE_WAIT}s after the job ended"
    assert close_code in (1011, 4404), close_code
