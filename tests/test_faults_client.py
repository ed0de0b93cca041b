"""Fault injection: a websocket client vanishes mid-stream without a close frame."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.faults.resuming_client import logs_on_failure
from tests.harness.redis_server import RedisServer
from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, Stream, collect, submit_frame

pytestmark = pytest.mark.redis

TOKENS = 30
TOKEN_DELAY_MS = 100
TOKENS_BEFORE_ABORT = 5


async def submit_then_abort(url: str, job_id_known: asyncio.Future[str]) -> list[dict[str, Any]]:
    """Submit a token job, read until the fifth token, then drop the TCP connection.

    `transport.abort()` closes the socket at once, with no websocket close frame, as when a
    browser tab is killed or a network link dies. Returns the events read before the abort.
    """
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        async with connect(url) as websocket:
            frame = submit_frame("token_stream", n=TOKENS, seed=3, delay_ms=TOKEN_DELAY_MS)
            await websocket.send(json.dumps(frame))
            try:
                async for message in websocket:
                    event = json.loads(message)
                    events.append(event)
                    if not job_id_known.done():
                        job_id_known.set_result(str(event["job"]))
                    if sum(1 for e in events if e["type"] == "token") >= TOKENS_BEFORE_ABORT:
                        websocket.transport.abort()
                        break
            except ConnectionClosed:
                pass
    return events


@pytest.mark.timeout(60)
def test_client_abort_keeps_job_and_other_sockets(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """After one client aborts, a second watcher, a new job and a later replay all work."""
    relay = RelayProcess(tmp_path, "--redis", redis_server.url)

    async def scenario() -> tuple[list[dict[str, Any]], Stream, Stream]:
        await asyncio.to_thread(relay.start)
        job_id_known: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        aborting = asyncio.create_task(submit_then_abort(f"{relay.ws_url}/ws/jobs", job_id_known))
        job_id = await asyncio.wait_for(job_id_known, 30)
        watcher = asyncio.create_task(collect(f"{relay.ws_url}/ws/jobs/{job_id}", seconds=30))
        aborted_events = await aborting
        other_job = await collect(
            f"{relay.ws_url}/ws/jobs", submit_frame("hello", steps=1, delay_ms=0), seconds=30
        )
        return aborted_events, await watcher, other_job

    with logs_on_failure(relay):
        try:
            aborted_events, watched, other_job = asyncio.run(scenario())
            replay = asyncio.run(collect(f"{relay.ws_url}/ws/jobs/{watched.job_id}", seconds=30))
        finally:
            relay.stop()
        assert_complete(watched)
        assert len(watched.of_type("token")) == TOKENS
        assert aborted_events == watched.events[: len(aborted_events)]
        assert watched.seqs[-1] > aborted_events[-1]["seq"]
        assert_complete(other_job)
        assert replay.events == watched.events
        assert replay.close_code == 1000
        assert "Traceback" not in relay.log_path.read_text(errors="replace")
