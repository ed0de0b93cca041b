"""Session fixtures for real components: a private Redis and a local test cluster.

Each fixture starts its component the first time a test requests it and stops it at the end of
the session, so tests that request neither start nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import DEFAULT_STATE_DIR, LocalCluster
from tests.harness.process import acquire_lock
from tests.harness.redis_server import RedisServer


@pytest.fixture(scope="session")
def testenv_dir() -> Iterator[Path]:
    """State folder of the harness, locked against a second test run for the whole session.

    RELAY_TESTENV names another folder, so two runs can go on side by side.
    """
    state_dir = Path(os.environ.get("RELAY_TESTENV", DEFAULT_STATE_DIR)).resolve()
    lock = acquire_lock(state_dir / "harness.lock")
    try:
        yield state_dir
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
    workdir = "relay-jobs" if testenv_dir == DEFAULT_STATE_DIR else f"relay-jobs-{testenv_dir.name}"
    cluster = LocalCluster(testenv_dir, workdir=workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
