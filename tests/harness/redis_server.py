"""A private redis-server on a free loopback port, for tests."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from tests.harness.process import (
    ChildProcess,
    find_free_port,
    log_tail,
    reclaim_stale,
    require_binary,
    wait_until,
)

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0


def ping(port: int, timeout: float = 0.5) -> bool:
    """Send a Redis PING to 127.0.0.1:port and return whether the reply is +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server without persistence, bound to 127.0.0.1, with its files in state_dir."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.port = port if port is not None else find_free_port()
        self.log_file = self.state_dir / "redis.log"
        self.pid_file = self.state_dir / "redis.pid"
        self._binary = require_binary("redis-server", "redis-server")
        self._process: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server and wait until it replies to PING. A running server is left as is."""
        if self._process is not None and self._process.running():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        reclaim_stale(self.pid_file, str(self.state_dir), "redis-server")

        self._process = ChildProcess("redis-server", self._command(), self.log_file)
        self._process.start()
        if not wait_until(lambda: ping(self.port) or not self._alive(), START_TIMEOUT):
            self.stop()
            raise RuntimeError(
                f"redis-server did not reply to PING on port {self.port} within {START_TIMEOUT} s\n"
                + log_tail(self.log_file)
            )
        if not self._alive():
            code = self._process.exit_code()
            self._process = None
            raise RuntimeError(
                f"redis-server exited with code {code} during start-up on port {self.port}\n"
                + log_tail(self.log_file)
            )
        logger.info("redis-server ready at %s", self.url)

    def _command(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(self.state_dir),
            "pidfile": str(self.pid_file),
            "daemonize": "no",
            # Keep the original command line, which names state_dir, for stale-process checks.
            "set-proc-title": "no",
        }
        argv = [self._binary]
        for name, value in options.items():
            argv += [f"--{name}", value]
        return argv

    def _alive(self) -> bool:
        return self._process is not None and self._process.running()

    def stop(self) -> None:
        """Stop redis-server with SIGTERM. The port and state folder are kept for start()."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        reclaim_stale(self.pid_file, str(self.state_dir), "redis-server")

    def kill(self) -> None:
        """Kill redis-server with SIGKILL, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process = None
        self.pid_file.unlink(missing_ok=True)
