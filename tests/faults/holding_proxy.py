"""An HTTP proxy on loopback that withholds the relay's response to the first ingest POST.

It is a fake, because a response lost after the relay stored the event cannot be caused on
demand with real components. The proxy forwards the request, so the relay stores and publishes the
event, then keeps the response from curl until curl's --max-time runs out and curl retries.

It handles one request per connection, which is what the job-side helper sends, because each
event is a new curl process. Bodies must carry Content-Length; chunked bodies are not parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
HEAD_END = b"\r\n\r\n"


@dataclass
class Exchange:
    """One request through the proxy and the relay's response to it."""

    request_line: str
    request_body: bytes
    status: int
    response_body: bytes
    withheld: bool
    """True when the response never reached the client."""
    held_seconds: float = 0.0
    """Seconds the client waited for a withheld response before it closed the connection."""

    def request_json(self) -> Any:
        return json.loads(self.request_body)

    def response_json(self) -> Any:
        return json.loads(self.response_body)


def _content_length(head: bytes) -> int:
    match = CONTENT_LENGTH.search(head)
    if match is None:
        raise ValueError(f"no Content-Length in {head[:200]!r}")
    return int(match.group(1))


class HoldingProxy:
    """Forwards HTTP requests to 127.0.0.1:upstream_port and withholds one ingest response.

    The first POST whose path contains /events is forwarded, and its response is kept from the
    client until the client closes the connection or `max_hold_seconds` pass.
    """

    def __init__(self, upstream_port: int, max_hold_seconds: float) -> None:
        self.upstream_port = upstream_port
        self.max_hold_seconds = max_hold_seconds
        self.exchanges: list[Exchange] = []
        self.errors: list[str] = []
        self._withheld_one = False
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() was not called"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            request_head = await reader.readuntil(HEAD_END)
            request_body = await reader.readexactly(_content_length(request_head))
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
            upstream_writer.write(request_head + request_body)
            await upstream_writer.drain()
            response_head = await upstream_reader.readuntil(HEAD_END)
            response_body = await upstream_reader.readexactly(_content_length(response_head))

            request_line = request_head.split(b"\r\n", 1)[0].decode()
            method, path = request_line.split(" ")[:2]
            withhold = not self._withheld_one and method == "POST" and "/events" in path
            exchange = Exchange(
                request_line=request_line,
                request_body=request_body,
                status=int(response_head.split(b" ", 2)[1]),
                response_body=response_body,
                withheld=withhold,
            )
            self.exchanges.append(exchange)
            if withhold:
                self._withheld_one = True
                started = time.monotonic()
                # read() returns when the client closes its end, which curl does at --max-time.
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(), self.max_hold_seconds)
                exchange.held_seconds = time.monotonic() - started
            else:
                writer.write(response_head + response_body)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            self.errors.append(repr(error))
        except ConnectionError as error:
            self.errors.append(repr(error))
        finally:
            for stream_writer in (writer, upstream_writer):
                if stream_writer is not None:
                    stream_writer.close()
                    with contextlib.suppress(ConnectionError):
                        await stream_writer.wait_closed()
