"""Fault injection: Redis crashes and restarts while a job streams through the Redis broker.

Each test runs its own redis-server with the append-only file fsynced on every write, so the
restart keeps every job record, history entry and event id the relay stored before the crash.
The shared `redis_server` fixture runs without persistence, and no relay can survive losing
its data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.faults.redis_aof import PersistentRedisServer
from tests.faults.resuming_client import (
    ResumingClient,
    count_type,
    logs_on_failure,
    wait_for_flag,
)
from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, Stream, collect, submit_frame

pytestmark = pytest.mark.redis

TOKENS = 60
TOKEN_DELAY_MS = 100
# Seconds that Redis stays down. This is longer than the relay's first resubscribe delay
# (0.2 s) and the job's first curl retry delay (1 s), and well inside curl's retry budget.
REDIS_DOWN_SECONDS = 2.0
JOB_END_TIMEOUT = 30.0


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedisServer]:
    server = PersistentRedisServer(tmp_path / "redis")
    server.start()
    try:
        settings = redis.Redis.from_url(server.url)
        try:
            assert settings.config_get("appendonly") == {"appendonly": "yes"}
            assert settings.config_get("appendfsync") == {"appendfsync": "always"}
        finally:
            settings.close()
        yield server
    finally:
        server.stop()


async def crash_and_restart(server: PersistentRedisServer) -> None:
    """SIGKILL Redis, and start it again on the same port after REDIS_DOWN_SECONDS."""
    await asyncio.to_thread(server.kill)
    await asyncio.sleep(REDIS_DOWN_SECONDS)
    await asyncio.to_thread(server.start)


@pytest.mark.timeout(60)
def test_redis_kill_restart_delivers_each_event_once(
    tmp_path: Path, persistent_redis: PersistentRedisServer
) -> None:
    """A client attached across the Redis restart receives seq 0..N once, then close 1000.

    The relay may close the socket while Redis is down, and the client then resumes with
    after=<last seq>.
    """
    relay = RelayProcess(tmp_path, "--redis", persistent_redis.url)
    client = ResumingClient(relay.ws_url)

    async def scenario() -> tuple[Stream, int]:
        frame = submit_frame("token_stream", n=TOKENS, seed=11, delay_ms=TOKEN_DELAY_MS)
        reader = asyncio.create_task(client.run(frame, seconds=30))
        await wait_for_flag(client.watch(count_type("token", 10)), reader, 30)
        seq_at_kill = client.last_seq
        await crash_and_restart(persistent_redis)
        return await reader, seq_at_kill

    # The relay stops before the checks, so a failure shows its shutdown messages too.
    with logs_on_failure(relay):
        try:
            relay.start()
            stream, seq_at_kill = asyncio.run(scenario())
        finally:
            relay.stop()
        print(client.describe())
        assert_complete(stream)
        assert seq_at_kill < stream.seqs[-1]
        assert len(stream.of_type("token")) == TOKENS
        assert stream.events[-1]["data"] == {"tokens": TOKENS}


@pytest.mark.timeout(60)
def test_redis_restart_new_socket_replays_job(
    tmp_path: Path, persistent_redis: PersistentRedisServer
) -> None:
    """After a Redis restart, a socket opened on the same relay replays the whole job.

    The first client closes its socket before the crash, so no socket is open during the
    restart, and the job finishes before the new socket opens.
    """
    relay = RelayProcess(tmp_path, "--redis", persistent_redis.url)
    client = ResumingClient(relay.ws_url)

    async def scenario() -> tuple[str, Stream]:
        frame = submit_frame("token_stream", n=TOKENS, seed=12, delay_ms=TOKEN_DELAY_MS)
        reader = asyncio.create_task(client.run(frame, seconds=30))
        await wait_for_flag(client.watch(count_type("token", 10)), reader, 30)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert client.job_id is not None
        await crash_and_restart(persistent_redis)
        await asyncio.to_thread(wait_for_state, relay, client.job_id, "completed")
        replay = await collect(f"{relay.ws_url}/ws/jobs/{client.job_id}", seconds=30)
        return client.job_id, replay

    with logs_on_failure(relay):
        try:
            relay.start()
            job_id, replay = asyncio.run(scenario())
        finally:
            relay.stop()
        assert replay.close_code == 1000, (replay.close_code, replay.close_reason)
        assert_complete(replay)
        assert replay.job_id == job_id
        assert len(replay.of_type("token")) == TOKENS


def wait_for_state(relay: RelayProcess, job_id: str, state: str) -> None:
    """Poll GET /jobs/{job_id} until the record has `state`. Raise AssertionError on timeout."""
    deadline = time.monotonic() + JOB_END_TIMEOUT
    record: object = None
    for _ in range(int(JOB_END_TIMEOUT / 0.2) + 1):
        status, record = relay.get_json(f"/jobs/{job_id}")
        if status == 200 and isinstance(record, dict) and record.get("state") == state:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not {state} within {JOB_END_TIMEOUT} s: {record}")
