"""Run `relay serve` as a child process on a free loopback port, and talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.events import decode_binary_frame

ROOT = Path(__file__).resolve().parent.parent
TEST_SCRIPTS = ROOT / "tests" / "scripts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelayProcess:
    """A `relay serve` child process; stop() ends only that process, by its pid."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.args = args
        self.env = env or {}
        self.log_path = workdir / f"relay-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        environment = {k: v for k, v in os.environ.items() if k not in {"PORT", "REDIS_URL"}}
        environment.update(self.env)
        command = [sys.executable, "-m", "relay.cli", "serve", "--port", str(self.port), *self.args]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"relay did not answer /healthz within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def get_json(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@dataclass
class Stream:
    """What a websocket client received: every event in order, and how the socket closed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    @property
    def seqs(self) -> list[int]:
        return [event["seq"] for event in self.events]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    @property
    def job_id(self) -> str:
        return str(self.events[0]["job"])


async def collect(url: str, submit: dict[str, Any] | None = None, seconds: float = 60) -> Stream:
    """Open `url`, send `submit` if given, and read frames until the relay closes."""
    stream = Stream()
    async with asyncio.timeout(seconds):
        async with connect(url, max_size=None) as websocket:
            if submit is not None:
                await websocket.send(json.dumps(submit))
            await read_to_close(websocket, stream)
    return stream


async def read_to_close(websocket: Any, stream: Stream) -> None:
    """Append every further event to `stream`, then record how the socket closed."""
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


def submit_frame(script: str, **args: Any) -> dict[str, Any]:
    return {"type": "submit", "script": script, "args": args}
