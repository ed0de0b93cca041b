"""A private OpenSSH server on a free loopback port, with its own keys and a test user."""

from __future__ import annotations

import logging
import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.harness.process import (
    ChildProcess,
    child_pids,
    find_free_port,
    log_tail,
    process_cmdline,
    reclaim_stale,
    require_binary,
    run_command,
    tcp_banner,
    wait_until,
)

logger = logging.getLogger(__name__)

SSHD_BINARY = "/usr/sbin/sshd"
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0
DEFAULT_USER = "relaytest"


@dataclass(frozen=True)
class SshEndpoint:
    """Connection details for the private sshd."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path


def ensure_user(name: str) -> Path:
    """Create a local user with a bash shell if it does not exist, and return its home folder.

    useradd leaves the password field as "!", which sshd treats as a locked account even for
    public key authentication when UsePAM is off, so the field is set to "*" (no password).
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        logger.info("creating test user %s", name)
        run_command(["useradd", "-m", "-s", "/bin/bash", name])
        entry = pwd.getpwnam(name)
    run_command(["usermod", "-p", "*", name])
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return home


class SshServer:
    """sshd in the foreground with its config, host key, client key and logs in state_dir."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        user: str = DEFAULT_USER,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.port = port if port is not None else find_free_port()
        self.user = user
        # Variables that sshd sets for every session, through SetEnv.
        self.environment = dict(environment or {})
        self.config_file = self.state_dir / "sshd_config"
        self.host_key = self.state_dir / "ssh_host_ed25519_key"
        self.client_key = self.state_dir / "client_ed25519_key"
        self.authorized_keys = self.state_dir / "authorized_keys"
        self.known_hosts = self.state_dir / "known_hosts"
        self.log_file = self.state_dir / "sshd.log"
        self.pid_file = self.state_dir / "sshd.pid"
        self._process: ChildProcess | None = None

    @property
    def endpoint(self) -> SshEndpoint:
        return SshEndpoint(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            client_key=self.client_key,
            known_hosts=self.known_hosts,
        )

    def prepare(self) -> None:
        """Create the test user, the keys, known_hosts and sshd_config. Existing keys are kept."""
        require_binary(SSHD_BINARY, "openssh-server")
        require_binary("ssh-keygen", "openssh-client")
        ensure_user(self.user)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                comment = f"hpc-relay-test-{key.stem}"
                keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment]
                run_command([*keygen, "-f", str(key)])
            key.chmod(0o600)
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        key_type, key_base64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key_type} {key_base64}\n")
        self.config_file.write_text(self._config_text())

    def _config_text(self) -> str:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            # The key files belong to root and live outside the user's home.
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {self.user}",
            "Subsystem sftp internal-sftp",
            "MaxSessions 10",
            "LogLevel VERBOSE",
        ]
        lines += [f"SetEnv {name}={value}" for name, value in sorted(self.environment.items())]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start sshd and wait until it sends its banner. A running server is left as is."""
        if self._process is not None and self._process.running():
            return
        self.prepare()
        reclaim_stale(self.pid_file, str(self.config_file), "sshd")
        run_command([SSHD_BINARY, "-t", "-f", str(self.config_file)])
        argv = [SSHD_BINARY, "-D", "-f", str(self.config_file), "-E", str(self.log_file)]
        self._process = ChildProcess("sshd", argv, self.state_dir / "sshd.out")
        self._process.start()
        if not wait_until(self._ready, START_TIMEOUT) or not self._process.running():
            code = self._process.exit_code()
            self.stop()
            reason = (
                f"exited with code {code}"
                if code is not None
                else f"sent no SSH banner within {START_TIMEOUT} s"
            )
            raise RuntimeError(f"sshd on port {self.port} {reason}\n" + log_tail(self.log_file))
        logger.info("sshd ready on 127.0.0.1:%d for user %s", self.port, self.user)

    def _ready(self) -> bool:
        if self._process is None or not self._process.running():
            return True
        return tcp_banner(self.port).startswith(b"SSH-")

    def stop(self, close_sessions: bool = True) -> None:
        """Stop the sshd listener, and with close_sessions also end the open SSH connections.

        Without close_sessions the open connections survive, as they do when an sshd service
        restarts, because each connection has its own sshd process. Commands that a closed
        connection started without a terminal keep running, as after a dropped network link.
        """
        if self._process is not None:
            listener = self._process.pid
            sessions = child_pids(listener) if listener is not None else []
            self._process.stop()
            self._process = None
            if close_sessions:
                self._end_sessions(sessions)
        reclaim_stale(self.pid_file, str(self.config_file), "sshd")

    def _end_sessions(self, pids: list[int]) -> None:
        for pid in pids:
            cmdline = process_cmdline(pid)
            # Per-connection processes set their title to "sshd: USER ...".
            if cmdline is None or not cmdline.startswith("sshd:"):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            logger.info("closed SSH connection process %d", pid)
