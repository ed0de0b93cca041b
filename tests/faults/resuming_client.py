"""A websocket client that resumes a job's stream with `after` when its socket drops.

It records every frame it receives, duplicates included, so that a test can check that the
events of all its connections together are seq 0..N, each once.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from relay.events import decode_binary_frame
from tests.relay_process import RelayProcess, Stream

# Close codes after which resuming cannot bring more events, because the job ended or the
# request itself is wrong.
FINAL_CLOSE_CODES = frozenset({1000, 4000, 4001, 4400, 4404})
OPEN_TIMEOUT = 5.0
LOG_LINES = 80
# uvicorn's access log lines, such as `INFO:     127.0.0.1:5000 - "POST /jobs/... HTTP/1.1" 202`.
ACCESS_LINE = re.compile(r'INFO: +[0-9.]+:[0-9]+ - "')

EventsPredicate = Callable[[list[dict[str, Any]]], bool]


@dataclass
class Connection:
    """One websocket connection of a ResumingClient and how it ended."""

    url: str
    events: int = 0
    close_code: int | None = None
    close_reason: str = ""
    error: str = ""
    """The error that made connecting fail, or an empty string."""


class ResumingClient:
    """Follows one job across socket drops, until a final close code or a deadline.

    `ws_url` is the relay's base URL (ws://host:port). Between connections the client waits
    `retry_interval` seconds, and it opens at most `max_connections`.
    """

    def __init__(self, ws_url: str, retry_interval: float = 0.2, max_connections: int = 200):
        self.ws_url = ws_url
        self.retry_interval = retry_interval
        self.max_connections = max_connections
        self.events: list[dict[str, Any]] = []
        self.connections: list[Connection] = []
        self.job_id: str | None = None
        self._watches: list[tuple[EventsPredicate, asyncio.Event]] = []

    @property
    def last_seq(self) -> int:
        """Return the seq of the newest event received, or -1 before the first."""
        return int(self.events[-1]["seq"]) if self.events else -1

    def watch(self, predicate: EventsPredicate) -> asyncio.Event:
        """Return a flag that is set once `predicate(events received so far)` is true."""
        flag = asyncio.Event()
        self._watches.append((predicate, flag))
        return flag

    def describe(self) -> str:
        """Return the connections and the types and seqs received, for failure messages."""
        lines = [f"job {self.job_id}: {len(self.events)} events, seqs {self._seqs()}"]
        for connection in self.connections:
            lines.append(
                f"  {connection.url}: {connection.events} events, close code "
                f"{connection.close_code} {connection.close_reason!r} {connection.error}"
            )
        return "\n".join(lines)

    def _seqs(self) -> list[int]:
        return [int(event["seq"]) for event in self.events]

    async def run(
        self, submit: dict[str, Any] | None = None, job_id: str | None = None, seconds: float = 60
    ) -> Stream:
        """Submit a job (or attach to `job_id`) and follow it until a final close code.

        Every connection after the first attaches with `after` set to the last seq received.
        Raises AssertionError with the connection history after `seconds`, or when the job
        id is still unknown after the first connection.
        """
        self.job_id = job_id
        try:
            async with asyncio.timeout(seconds):
                await self._follow(submit)
        except TimeoutError:
            raise AssertionError(
                f"the stream did not end within {seconds} s\n{self.describe()}"
            ) from None
        last = self.connections[-1]
        return Stream(list(self.events), last.close_code, last.close_reason)

    async def _follow(self, submit: dict[str, Any] | None) -> None:
        while len(self.connections) < self.max_connections:
            if not self.connections and submit is not None:
                connection = await self._read(f"{self.ws_url}/ws/jobs", submit)
            elif self.job_id is None:
                raise AssertionError(
                    f"the submit socket ended before the first event\n{self.describe()}"
                )
            else:
                url = f"{self.ws_url}/ws/jobs/{self.job_id}?after={self.last_seq}"
                connection = await self._read(url, None)
            if connection.close_code in FINAL_CLOSE_CODES:
                return
            await asyncio.sleep(self.retry_interval)
        raise AssertionError(
            f"no final close code after {self.max_connections} connections\n{self.describe()}"
        )

    async def _read(self, url: str, submit: dict[str, Any] | None) -> Connection:
        connection = Connection(url)
        self.connections.append(connection)
        try:
            async with connect(url, max_size=None, open_timeout=OPEN_TIMEOUT) as websocket:
                if submit is not None:
                    await websocket.send(json.dumps(submit))
                try:
                    async for message in websocket:
                        if isinstance(message, bytes):
                            self._record(decode_binary_frame(message))
                        else:
                            self._record(json.loads(message))
                        connection.events += 1
                except ConnectionClosed:
                    pass
                connection.close_code = websocket.close_code
                connection.close_reason = websocket.close_reason or ""
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as error:
            # The relay is down, does not accept connections yet or dropped the socket before
            # the submit frame went out, so the caller retries.
            connection.error = repr(error)
        return connection

    def _record(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.job_id is None:
            self.job_id = str(event["job"])
        for predicate, flag in self._watches:
            if not flag.is_set() and predicate(self.events):
                flag.set()


def count_type(kind: str, at_least: int) -> EventsPredicate:
    """Return a predicate that is true once `at_least` events of type `kind` arrived."""

    def predicate(events: list[dict[str, Any]]) -> bool:
        return sum(1 for event in events if event["type"] == kind) >= at_least

    return predicate


async def wait_for_flag(flag: asyncio.Event, reader: asyncio.Task[Stream], seconds: float) -> None:
    """Wait until `flag` is set. Raise AssertionError if `reader` ends first or time runs out."""
    waiter = asyncio.create_task(flag.wait())
    try:
        done, _ = await asyncio.wait(
            {waiter, reader}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if waiter in done:
        return
    if reader in done:
        stream = reader.result()
        raise AssertionError(f"the stream ended before the fault: {stream.types}")
    raise AssertionError(f"the stream did not reach the fault point within {seconds} s")


@contextmanager
def logs_on_failure(*relays: RelayProcess) -> Iterator[None]:
    """Print the relays' logs when the block raises, so pytest shows them with the failure.

    uvicorn's access lines are left out, and only the last LOG_LINES lines are printed. A
    block that stops the relays before it ends also shows their shutdown messages.
    """
    try:
        yield
    except BaseException:
        for relay in relays:
            print(f"--- relay log {relay.log_path}, without access lines ---")
            print("\n".join(log_lines_without_access(relay)[-LOG_LINES:]))
        raise


def log_lines_without_access(relay: RelayProcess) -> list[str]:
    """Return the lines of the relay's whole log file, except uvicorn's access lines."""
    try:
        text = relay.log_path.read_text(errors="replace")
    except OSError as error:
        return [f"(log not readable: {error})"]
    return [line for line in text.splitlines() if not ACCESS_LINE.match(line)]
