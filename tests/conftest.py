"""Session fixtures for real components: a private Redis and a local test cluster.

Each fixture starts its component the first time a test requests it and stops it at the end of
the session, so tests that request neither start nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import DEFAULT_STATE_DIR, LocalCluster
from tests.harness.process import acquire_lock
from tests.harness.redis_server import RedisServer


@pytest.fixture(scope="session")
def testenv_dir() -> Iterator[Path]:
    """State folder of the harness, locked against a second test run for the whole session."""
    lock = acquire_lock(DEFAULT_STATE_DIR / "harness.lock")
    try:
        yield DEFAULT_STATE_DIR
    finally:
        lock.close()


@pytest.fixture(scope="session")
def redis_server(testenv_dir: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port. Its url attribute is the Redis URL."""
    server = RedisServer(testenv_dir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def test_cluster(testenv_dir: Path) -> Iterator[LocalCluster]:
    """munged, one-node Slurm with the Torque wrappers and sshd, reached as a login node.

    Attributes: host, port, user, client_key, known_hosts, workdir (relative to the test
    user's home) and local_workdir (the same folder seen from the tests). A test that stops a
    component must start it again before it ends, because the cluster is shared by the session.
    """
    cluster = LocalCluster(testenv_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
