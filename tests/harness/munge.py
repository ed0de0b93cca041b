"""A private munged with its own key and socket, run as the munge user."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
from pathlib import Path

from tests.harness.process import (
    ChildProcess,
    log_tail,
    reclaim_stale,
    require_binary,
    require_root,
    wait_until,
)

logger = logging.getLogger(__name__)

MUNGE_USER = "munge"
KEY_SIZE = 1024
START_TIMEOUT = 10.0


class MungeDaemon:
    """munged in the foreground with its key, socket, seed, pid and log files in state_dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.socket = self.state_dir / "munge.socket"
        self.key_file = self.state_dir / "munge.key"
        self.pid_file = self.state_dir / "munged.pid"
        self.log_file = self.state_dir / "munged.log"
        self.seed_file = self.state_dir / "munged.seed"
        self._munged = require_binary("munged", "munge")
        self._munge = require_binary("munge", "munge")
        self._unmunge = require_binary("unmunge", "munge")
        self._process: ChildProcess | None = None

    def prepare(self) -> None:
        """Create state_dir owned by munge and a random key. An existing key is kept."""
        require_root()
        try:
            account = pwd.getpwnam(MUNGE_USER)
        except KeyError as error:
            raise RuntimeError(
                f"user {MUNGE_USER} not found. Install the munge package: apt-get install -y munge"
            ) from error
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # munged rejects a socket or seed folder that group or others can write to, and Slurm
        # clients running as the test user must reach the socket, so the folder is 755.
        os.chown(self.state_dir, account.pw_uid, account.pw_gid)
        self.state_dir.chmod(0o755)
        if not self.key_file.exists():
            self.key_file.write_bytes(os.urandom(KEY_SIZE))
        os.chown(self.key_file, account.pw_uid, account.pw_gid)
        self.key_file.chmod(0o400)

    def start(self) -> None:
        """Start munged and wait until a credential round trip works. A running one is kept."""
        if self._process is not None and self._process.running():
            return
        self.prepare()
        reclaim_stale(self.pid_file, str(self.socket), "munged")
        argv = [
            self._munged,
            "--foreground",
            f"--socket={self.socket}",
            f"--key-file={self.key_file}",
            f"--pid-file={self.pid_file}",
            f"--seed-file={self.seed_file}",
        ]
        # In the foreground munged logs to stderr and ignores --log-file.
        self._process = ChildProcess("munged", argv, self.log_file, user=MUNGE_USER)
        self._process.start()
        if not wait_until(self._ready, START_TIMEOUT):
            self.stop()
            raise RuntimeError(
                f"munged did not accept credentials on {self.socket} within {START_TIMEOUT} s\n"
                + log_tail(self.log_file)
            )
        if not self._process.running():
            code = self._process.exit_code()
            self._process = None
            raise RuntimeError(
                f"munged exited with code {code} during start-up\n" + log_tail(self.log_file)
            )
        logger.info("munged ready on %s", self.socket)

    def _ready(self) -> bool:
        if self._process is None or not self._process.running():
            return True
        if not self.socket.exists():
            return False
        return self.credential_round_trip()

    def credential_round_trip(self) -> bool:
        """Return whether an empty credential encodes and decodes through the socket."""
        try:
            credential = subprocess.run(
                [self._munge, "-n", "-S", str(self.socket)],
                capture_output=True,
                timeout=5,
                check=True,
            ).stdout
            subprocess.run(
                [self._unmunge, "-S", str(self.socket)],
                input=credential,
                capture_output=True,
                timeout=5,
                check=True,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return True

    def stop(self) -> None:
        """Stop munged with SIGTERM. The key and state folder are kept for start()."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        reclaim_stale(self.pid_file, str(self.socket), "munged")
