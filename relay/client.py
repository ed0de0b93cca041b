"""A terminal client: submit a job or attach to one and print its events as they arrive."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from relay.events import CloseCode, decode_binary_frame

EXIT_COMPLETE = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_OTHER = 4


def parse_arg(text: str) -> tuple[str, Any]:
    """Split `K=V`; V is taken as JSON when it parses as JSON, else as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


class EventPrinter:
    """Prints events for a person: tokens joined inline, other events one a line."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._inline = False

    def _line(self, text: str, stream: TextIO | None = None) -> None:
        if self._inline:
            self.out.write("\n")
            self.out.flush()
            self._inline = False
        print(text, file=stream or self.out, flush=True)

    def show(self, envelope: dict[str, Any]) -> None:
        kind = envelope.get("type")
        data = envelope.get("data")
        if kind == "token":
            self.out.write(str(data))
            self.out.flush()
            self._inline = True
        elif kind == "log":
            self._line(f"[log] {data}")
        elif kind == "progress" and isinstance(data, dict):
            message = data.get("message") or ""
            self._line(f"[progress {data.get('percent')}%] {message}".rstrip())
        elif kind == "chunk":
            size = len(envelope.get("payload", b""))
            self._line(f"[chunk] {size} bytes {envelope.get('mime')}")
        elif kind == "starting":
            self._line(
                f"[starting] job {envelope.get('job')} {json.dumps(data, ensure_ascii=False)}"
            )
        elif kind == "fatal" and isinstance(data, dict):
            status = data.get("exit_status")
            suffix = f" (exit status {status})" if status is not None else ""
            self._line(f"[fatal] {data.get('message')}{suffix}", self.err)
        else:
            self._line(f"[{kind}] {json.dumps(data, ensure_ascii=False)}")

    def finish(self) -> None:
        if self._inline:
            self.out.write("\n")
            self.out.flush()
            self._inline = False


async def stream_job(
    url: str,
    submit: dict[str, Any] | None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    key: str | None = None,
) -> int:
    """Open `url`, send `submit` if given, print events until close; return an exit status."""
    printer = EventPrinter(out, err)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    try:
        async with connect(url, max_size=None, additional_headers=headers) as websocket:
            if submit is not None:
                await websocket.send(json.dumps(submit))
            try:
                async for message in websocket:
                    if isinstance(message, bytes):
                        printer.show(decode_binary_frame(message))
                    else:
                        printer.show(json.loads(message))
            except ConnectionClosed:
                pass
            code = websocket.close_code
            reason = websocket.close_reason or ""
    except InvalidStatus as error:
        printer.finish()
        status = error.response.status_code
        hint = (
            " (missing or invalid API key: pass --key or set RELAY_API_KEY)"
            if status == 403
            else ""
        )
        print(f"relay: {url} refused the connection with HTTP {status}{hint}", file=err)
        return EXIT_USAGE
    except (OSError, InvalidHandshake, InvalidURI) as error:
        printer.finish()
        print(f"relay: cannot connect to {url}: {error}", file=err)
        return EXIT_USAGE
    printer.finish()
    return _exit_status(code, reason, err)


def _exit_status(code: int | None, reason: str, err: TextIO) -> int:
    if code == CloseCode.COMPLETED:
        return EXIT_COMPLETE
    if code == CloseCode.JOB_FAILED:
        return EXIT_FATAL
    if code == CloseCode.JOB_CANCELLED:
        return EXIT_CANCELLED
    print(f"relay: connection closed with code {code}: {reason}", file=err)
    if code in (CloseCode.INVALID_REQUEST, CloseCode.UNKNOWN_JOB):
        return EXIT_USAGE
    return EXIT_OTHER
