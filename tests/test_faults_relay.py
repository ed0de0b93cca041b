"""Fault injection: the relay process crashes, or the job posts to another relay instance."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.faults.config import write_public_url_config
from tests.faults.local_jobs import end_local_job, local_job_pid, local_job_workdir, remove_workdir
from tests.faults.resuming_client import (
    ResumingClient,
    count_type,
    logs_on_failure,
    wait_for_flag,
)
from tests.harness.redis_server import RedisServer
from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, Stream, collect, submit_frame

pytestmark = pytest.mark.redis

TOKENS = 60
TOKEN_DELAY_MS = 100
# Seconds between the SIGKILL and the start of the new relay process, while the job's curl
# retries.
RELAY_DOWN_SECONDS = 1.0
ABNORMAL_CLOSE = 1006


@pytest.mark.timeout(60)
def test_relay_kill_restart_client_resumes(tmp_path: Path, redis_server: RedisServer) -> None:
    """SIGKILL the relay after 10 tokens and start it again on the same port and Redis.

    The client's socket drops, and the client reconnects with after=<last seq> until the new
    process accepts, then receives the rest of the stream once.
    """
    relay = RelayProcess(tmp_path, "--redis", redis_server.url)
    relay.start()
    client = ResumingClient(relay.ws_url)
    job_pid: int | None = None
    job_workdir: Path | None = None

    async def stream_across_relay_restart() -> tuple[Stream, int]:
        nonlocal job_pid, job_workdir
        tenth_token = client.watch(count_type("token", 10))
        frame = submit_frame("token_stream", n=TOKENS, seed=5, delay_ms=TOKEN_DELAY_MS)
        reader = asyncio.create_task(client.run(frame, seconds=40))
        await wait_for_flag(tenth_token, reader, 30)
        job_pid = local_job_pid(client.events)
        if job_pid is not None and client.job_id is not None:
            job_workdir = local_job_workdir(job_pid, client.job_id)
        seq_at_kill = client.last_seq
        await asyncio.to_thread(relay.stop, signal.SIGKILL)
        await asyncio.sleep(RELAY_DOWN_SECONDS)
        await asyncio.to_thread(relay.start)
        return await reader, seq_at_kill

    try:
        with logs_on_failure(relay):
            try:
                stream, seq_at_kill = asyncio.run(stream_across_relay_restart())
            finally:
                relay.stop()
            print(client.describe())
            assert_complete(stream)
            assert seq_at_kill < stream.seqs[-1]
            assert len(stream.of_type("token")) == TOKENS
            assert client.connections[0].close_code == ABNORMAL_CLOSE, client.describe()
            urls_with_events = [c.url for c in client.connections if c.events]
            assert len(urls_with_events) >= 2, client.describe()
            assert urls_with_events[1].endswith(f"?after={seq_at_kill}"), client.describe()
            assert job_workdir is not None
    finally:
        if job_pid is not None and client.job_id is not None:
            end_local_job(job_pid, client.job_id)
        remove_workdir(job_workdir)


@pytest.mark.timeout(60)
def test_two_relays_socket_on_one_ingest_on_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The job posts to instance B while its client watches on instance A, through Redis."""
    ingest = RelayProcess(tmp_path, "--redis", redis_server.url)
    config = write_public_url_config(tmp_path / "socket-relay.toml", ingest.http_url)
    socket_relay = RelayProcess(tmp_path, "--redis", redis_server.url, "--config", str(config))
    with logs_on_failure(socket_relay, ingest):
        try:
            ingest.start()
            socket_relay.start()
            frame = submit_frame("hello", steps=3, delay_ms=50)
            stream = asyncio.run(collect(f"{socket_relay.ws_url}/ws/jobs", frame, seconds=30))
            replay = asyncio.run(collect(f"{ingest.ws_url}/ws/jobs/{stream.job_id}", seconds=30))
        finally:
            socket_relay.stop()
            ingest.stop()
        assert_complete(stream)
        assert len(stream.of_type("progress")) == 3
        ingest_route = f"POST /jobs/{stream.job_id}/events"
        assert ingest_route in ingest.log_path.read_text(errors="replace")
        assert ingest_route not in socket_relay.log_path.read_text(errors="replace")
        assert replay.events == stream.events
        assert replay.close_code == 1000
