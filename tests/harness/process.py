"""Process helpers shared by the harness components: ports, bounded waits, pid files."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)

APT_PACKAGES = "redis-server openssh-server slurm-wlm slurm-wlm-torque munge curl"

# Bounds for wait_until: a poll loop never runs more than this many times, whatever its timeout.
MAX_POLLS = 2000


def require_binary(name: str, package: str) -> str:
    """Return the absolute path of an executable, or raise with the install command."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(
            f"{name} not found (Debian package {package}). Install the test dependencies with: "
            f"apt-get install -y {APT_PACKAGES}, or run scripts/test as root"
        )
    return path


def require_root() -> None:
    """Raise unless the process runs as root, which the cluster components need."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "the test cluster must be started as root, because it creates a test user and runs "
            "munged, slurmd and sshd under other users"
        )


def acquire_lock(path: Path) -> TextIO:
    """Take an exclusive lock on path for as long as the returned file stays open.

    The kernel releases the lock when the holder exits, so a crashed run leaves no stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RuntimeError(
            f"{path} is locked by another test run (pid {holder}). Wait for it to finish, "
            "because both runs would use the same state folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
) -> bool:
    """Poll predicate until it returns True, or return False after timeout seconds or MAX_POLLS."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_POLLS):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return False


def log_tail(path: Path, lines: int = 25) -> str:
    """Return the last lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(log file {path} does not exist)"
    tail = text.splitlines()[-lines:]
    return f"last {len(tail)} lines of {path}:\n" + "\n".join(tail)


def tcp_banner(port: int, timeout: float = 0.5) -> bytes:
    """Connect to 127.0.0.1:port and return the first bytes the server sends, or b"" on error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            return sock.recv(64)
    except OSError:
        return b""


def run_command(
    argv: Sequence[str],
    timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: Path | str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a short command and return its result, or raise RuntimeError with its output."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"command timed out after {timeout} s: {' '.join(argv)}") from error
    if check and result.returncode != 0:
        raise RuntimeError(
            f"command failed with exit code {result.returncode}: {' '.join(argv)}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )
    return result


def read_pid_file(path: Path) -> int | None:
    """Return the pid stored in a pid file, or None if the file is missing or invalid."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(text) if text.isdigit() else None


def process_cmdline(pid: int) -> str | None:
    """Return the command line of a live, non-zombie process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The state field follows the parenthesised command name, which may itself contain spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def child_pids(pid: int) -> list[int]:
    """Return the pids of the direct children of a process."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.extend(int(value) for value in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return children


def terminate_pid(pid: int, marker: str, name: str, timeout: float = 10.0) -> None:
    """Send SIGTERM to a process that is not our child, then SIGKILL after timeout seconds.

    The process is signalled only while its command line contains marker, so a pid that was
    reused by an unrelated process after a crash is left alone.
    """
    cmdline = process_cmdline(pid)
    if cmdline is None or marker not in cmdline:
        return
    logger.info("stopping %s (pid %d)", name, pid)
    os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: process_cmdline(pid) is None, timeout):
        return
    logger.warning(
        "%s (pid %d) did not exit %.0f s after SIGTERM; sending SIGKILL", name, pid, timeout
    )
    os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: process_cmdline(pid) is None, 5.0):
        raise RuntimeError(f"{name} (pid {pid}) did not exit after SIGKILL")


def reclaim_stale(pid_file: Path, marker: str, name: str, timeout: float = 10.0) -> None:
    """Stop a process left by an earlier run, found by its pid file, then remove the pid file."""
    pid = read_pid_file(pid_file)
    if pid is not None:
        cmdline = process_cmdline(pid)
        if cmdline is not None and marker in cmdline:
            logger.warning("reclaiming stale %s (pid %d) from %s", name, pid, pid_file)
            terminate_pid(pid, marker, name, timeout)
    pid_file.unlink(missing_ok=True)


class ChildProcess:
    """A long-running program started by the harness in the foreground, stopped by pid."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        output_file: Path,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.output_file = output_file
        self.env = dict(env) if env is not None else None
        self.user = user
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.running():
            return
        with self.output_file.open("ab") as output:
            # A new session keeps a Ctrl-C in the terminal from killing the component before
            # the fixtures stop it in order.
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user is not None else None,
                start_new_session=True,
            )
        logger.info("started %s (pid %d): %s", self.name, self._popen.pid, " ".join(self.argv))

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM, wait up to timeout seconds, then SIGKILL."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            logger.info("stopping %s (pid %d)", self.name, popen.pid)
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %d) did not exit %.0f s after SIGTERM; sending SIGKILL",
                    self.name,
                    popen.pid,
                    timeout,
                )
                self.kill()
        self._popen = None

    def kill(self) -> None:
        """Send SIGKILL and reap the process."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            logger.info("killing %s (pid %d)", self.name, popen.pid)
            popen.kill()
            try:
                popen.wait(5.0)
            except subprocess.TimeoutExpired as error:
                raise RuntimeError(
                    f"{self.name} (pid {popen.pid}) did not exit after SIGKILL"
                ) from error
        self._popen = None
