"""One pooled SSH connection per cluster, with host keys always checked."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

from relay.config import ClusterConfig
from relay.errors import ConfigError, SubmitError

logger = logging.getLogger(__name__)

CHANNEL_OPEN_ATTEMPTS = 6


class SSHConnection:
    """A lazily opened, shared SSH connection to one cluster's login node.

    Commands and SFTP sessions are channels of one connection; a semaphore keeps them
    under the server's per-connection limit (OpenSSH's MaxSessions defaults to 10).
    """

    def __init__(self, cluster: ClusterConfig) -> None:
        self._cluster = cluster
        self._connection: asyncssh.SSHClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._channels = asyncio.Semaphore(cluster.max_channels)

    @property
    def target(self) -> str:
        cluster = self._cluster
        return f"{cluster.user}@{cluster.host}:{cluster.port}"

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            await self._connection.wait_closed()
            self._connection = None
            logger.info("cluster %s: SSH connection to %s closed", self._cluster.name, self.target)

    async def connect(self) -> asyncssh.SSHClientConnection:
        """Return the open connection, or open one with a bounded number of retries."""
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and not connection.is_closed():
                return connection
            delay = 1.0
            attempt = 1
            while True:
                try:
                    self._connection = await self._open()
                    return self._connection
                except SubmitError as error:
                    if attempt >= self._cluster.connect_attempts:
                        raise SubmitError(
                            f"cluster {self._cluster.name!r} unreachable after {attempt} "
                            f"attempts: {error}"
                        ) from error
                    logger.warning(
                        "cluster %s: connect attempt %d failed (%s); retrying in %.0fs",
                        self._cluster.name,
                        attempt,
                        error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    attempt += 1

    async def run(self, command: str) -> asyncssh.SSHCompletedProcess:
        """Run `command` in the login shell and return its result, whatever its exit status."""

        async def attempt(connection: asyncssh.SSHClientConnection) -> Any:
            return await asyncio.wait_for(
                connection.run(command, check=False), self._cluster.command_timeout
            )

        try:
            result: asyncssh.SSHCompletedProcess = await self._on_channel(attempt)
        except TimeoutError as error:
            raise SubmitError(
                f"command timed out after {self._cluster.command_timeout:.0f}s on {self.target}",
                command=command,
            ) from error
        except (OSError, asyncssh.Error) as error:
            raise SubmitError(f"command failed on {self.target}: {error}") from error
        return result

    async def write_file(self, folder: str, name: str, text: str) -> str:
        """Write `text` to `folder/name` over SFTP; the folder is created with mode 700."""
        path = f"{folder}/{name}"

        async def attempt(connection: asyncssh.SSHClientConnection) -> None:
            async with connection.start_sftp_client() as sftp:
                await sftp.makedirs(folder, exist_ok=True)
                await sftp.chmod(folder, 0o700)
                async with sftp.open(path, "w", asyncssh.SFTPAttrs(permissions=0o600)) as file:
                    await file.write(text)

        try:
            await self._on_channel(attempt)
        except (OSError, asyncssh.Error) as error:
            raise SubmitError(
                f"writing {path} over SFTP to {self.target} failed: {error}"
            ) from error
        return path

    async def _on_channel(
        self, action: Callable[[asyncssh.SSHClientConnection], Awaitable[Any]]
    ) -> Any:
        """Run `action` on the connection, under the channel limit.

        A refused channel open is retried: sshd counts a channel until its close completes,
        which can lag behind our side of the close, and a site may allow fewer channels
        than `max_channels`. Nothing ran on a refused channel, so the retry is safe.
        """
        delay = 0.1
        for attempt in range(1, CHANNEL_OPEN_ATTEMPTS + 1):
            connection = await self.connect()
            async with self._channels:
                try:
                    return await action(connection)
                except asyncssh.ChannelOpenError as error:
                    if attempt == CHANNEL_OPEN_ATTEMPTS:
                        raise
                    logger.warning(
                        "cluster %s: channel open rejected (%s); retry %d in %.1fs",
                        self._cluster.name,
                        error.reason,
                        attempt,
                        delay,
                    )
                except (OSError, asyncssh.Error):
                    await self._forget(connection)
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("the loop returns or raises")

    async def _forget(self, connection: asyncssh.SSHClientConnection) -> None:
        # A dead connection is dropped so the next command opens a new one.
        if connection.is_closed() and self._connection is connection:
            self._connection = None

    async def _open(self) -> asyncssh.SSHClientConnection:
        cluster = self._cluster
        assert cluster.key is not None and cluster.known_hosts is not None
        check_key_file(cluster.key)
        if not cluster.known_hosts.is_file():
            raise ConfigError(
                f"known_hosts file {cluster.known_hosts} of cluster {cluster.name!r} is missing"
            )
        logger.info("cluster %s: connecting to %s", cluster.name, self.target)
        try:
            connection = await asyncssh.connect(
                cluster.host,
                port=cluster.port,
                username=cluster.user,
                client_keys=[str(cluster.key)],
                known_hosts=str(cluster.known_hosts),
                agent_path=None,
                agent_forwarding=False,
                password=None,
                preferred_auth="publickey",
                config=[],
                connect_timeout=cluster.connect_timeout,
                keepalive_interval=cluster.keepalive_interval,
                keepalive_count_max=3,
            )
        except asyncssh.HostKeyNotVerifiable as error:
            raise ConfigError(
                f"host key of {cluster.host}:{cluster.port} is not trusted by "
                f"{cluster.known_hosts} ({error.reason}); add the cluster's key to that "
                "file after checking its fingerprint"
            ) from error
        except asyncssh.PermissionDenied as error:
            raise ConfigError(
                f"SSH login to {self.target} with key {cluster.key} was rejected: {error.reason}"
            ) from error
        except (OSError, asyncssh.Error, TimeoutError) as error:
            raise SubmitError(f"cannot connect to {self.target}: {error!r}") from error
        logger.info("cluster %s: connected to %s", cluster.name, self.target)
        return connection


def check_key_file(key: Path) -> None:
    """Raise ConfigError when the private key is missing or readable by others."""
    try:
        mode = key.stat().st_mode
    except OSError as error:
        raise ConfigError(f"SSH key {key} cannot be read: {error.strerror}") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"SSH key {key} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {key}"
        )
