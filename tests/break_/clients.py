"""Websocket clients that report a socket left open instead of raising, and a job helper.

A client that waits for a close the relay never sends must still end the test, so these
clients stop after a deadline and leave `close_code` as None.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.relay_process import RelayProcess, Stream, read_to_close
from tests.security.held_job import HeldJob, held_job


async def stream_or_timeout(
    url: str, seconds: float, submit: dict[str, Any] | None = None
) -> Stream:
    """Read `url` until the relay closes it or `seconds` pass; close_code None means open."""
    stream = Stream()
    try:
        async with asyncio.timeout(seconds):
            async with connect(url, max_size=None, open_timeout=10) as websocket:
                if submit is not None:
                    await websocket.send(json.dumps(submit))
                await read_to_close(websocket, stream)
    except TimeoutError:
        stream.close_code = None
    return stream


def attach(server: RelayProcess, job_id: str, after: object, seconds: float = 10) -> Stream:
    """Attach to `job_id` with the query `after=...` and return what arrived."""
    url = f"{server.ws_url}/ws/jobs/{job_id}?after={after}"
    return asyncio.run(stream_or_timeout(url, seconds))


@contextmanager
def running_job(server: RelayProcess, folder: Path, **args: Any) -> Iterator[HeldJob]:
    """Yield a `hold` job of a relay without API keys, with its ingest token."""
    with held_job(server, None, folder, **args) as job:
        yield job


def event(event_type: str, data: Any, event_id: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": event_type, "data": data}
    if event_id is not None:
        body["id"] = event_id
    return body


def json_body(*events: dict[str, Any]) -> bytes:
    """Return one event as a JSON object, or several as an array."""
    value: Any = events[0] if len(events) == 1 else list(events)
    return json.dumps(value).encode()
