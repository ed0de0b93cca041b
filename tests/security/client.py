"""HTTP and websocket clients that send the headers an attacker chooses."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from relay.events import decode_binary_frame
from tests.relay_process import RelayProcess, Stream


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    server: RelayProcess,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Send one request with exactly `headers` (http.client adds no Content-Type).

    An iterable body is sent with chunked transfer encoding and no Content-Length.
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        try:
            connection.request(
                method, path, body=body, headers=headers or {}, encode_chunked=chunked
            )
        except (BrokenPipeError, ConnectionResetError):
            # The relay may respond (413) and close before it has read the whole body.
            pass
        response = connection.getresponse()
        return Response(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def post_events(
    server: RelayProcess,
    job_id: str,
    token: str | None,
    body: bytes | Iterable[bytes],
    content_type: str | None = "application/json",
    query: str = "",
) -> Response:
    """POST `body` to the ingest route of `job_id` with `token` as the bearer token."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if content_type is not None:
        headers["Content-Type"] = content_type
    return http_request(server, "POST", f"/jobs/{job_id}/events{query}", body, headers)


def event_body(event_type: str, data: Any, event_id: int | None = None) -> bytes:
    event: dict[str, Any] = {"type": event_type, "data": data}
    if event_id is not None:
        event["id"] = event_id
    return json.dumps(event).encode()


async def stream_into(
    stream: Stream,
    url: str,
    submit: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    origin: str | None = None,
    seconds: float = 60,
) -> None:
    """Open `url`, send `submit` if given, and append frames to `stream` until the close."""
    async with asyncio.timeout(seconds):
        async with connect(
            url,
            additional_headers=headers,
            origin=Origin(origin) if origin else None,
            max_size=None,
            open_timeout=10,
        ) as websocket:
            if submit is not None:
                await websocket.send(json.dumps(submit))
            try:
                async for message in websocket:
                    if isinstance(message, bytes):
                        stream.events.append(decode_binary_frame(message))
                    else:
                        stream.events.append(json.loads(message))
            except ConnectionClosed:
                pass
            stream.close_code = websocket.close_code
            stream.close_reason = websocket.close_reason or ""


def collect_with(
    url: str,
    submit: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    origin: str | None = None,
    seconds: float = 60,
) -> Stream:
    """Run a websocket client to the end and return what it received."""
    stream = Stream()
    asyncio.run(stream_into(stream, url, submit, headers, origin, seconds))
    return stream


def handshake_status(
    url: str, headers: dict[str, str] | None = None, origin: str | None = None
) -> int:
    """Return the HTTP status of the websocket handshake: 101 if accepted, else the refusal."""

    async def attempt() -> int:
        try:
            async with connect(
                url,
                additional_headers=headers,
                origin=Origin(origin) if origin else None,
                open_timeout=10,
            ):
                return 101
        except InvalidStatus as error:
            return int(error.response.status_code)

    return asyncio.run(attempt())


def raw_handshake_status(server: RelayProcess, path: str, headers: dict[str, str]) -> int:
    """Send a websocket handshake with exactly `headers` (Host included) and return its status.

    Client libraries set Host from the URL; a DNS rebinding attack sends another one.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        *(f"{name}: {value}" for name, value in headers.items()),
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            data = sock.recv(4096)
            if not data:
                break
            head += data
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"no HTTP status line in the response: {head[:200]!r}")
    return int(parts[1])


class BackgroundStream:
    """A websocket client that runs in its own thread, so that a test can act meanwhile."""

    def __init__(
        self,
        url: str,
        submit: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        seconds: float = 60,
    ) -> None:
        self.stream = Stream()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(url, submit, headers, seconds), daemon=True
        )
        self._thread.start()

    def _run(
        self,
        url: str,
        submit: dict[str, Any] | None,
        headers: dict[str, str] | None,
        seconds: float,
    ) -> None:
        try:
            asyncio.run(stream_into(self.stream, url, submit, headers, None, seconds))
        except BaseException as error:  # reported by wait() and wait_for()
            self.error = error

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, seconds: float = 60) -> Stream:
        """Wait for the socket to close and return the stream; raise what the client raised."""
        self._thread.join(seconds)
        if self._thread.is_alive():
            raise TimeoutError(f"socket still open after {seconds}s: {self.stream.types}")
        if self.error is not None:
            raise self.error
        return self.stream

    def wait_for(self, condition: Callable[[Stream], bool], seconds: float = 20) -> Stream:
        """Wait until `condition(stream)` holds; raise if the socket closes or time runs out."""
        deadline = time.monotonic() + seconds
        while not condition(self.stream):
            if self.done:
                if self.error is not None:
                    raise self.error
                raise AssertionError(
                    f"socket closed {self.stream.close_code} {self.stream.close_reason!r} "
                    f"before the condition held: {self.stream.types}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {seconds}s: {self.stream.types}")
            time.sleep(0.05)
        return self.stream
