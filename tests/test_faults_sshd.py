"""Fault injection: the login node's sshd stops and starts again between submissions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.faults.config import write_cluster_config
from tests.faults.resuming_client import logs_on_failure
from tests.harness.cluster import LocalCluster
from tests.harness.redis_server import RedisServer
from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, Stream, collect, submit_frame

pytestmark = [pytest.mark.cluster, pytest.mark.redis]

# A closed port refuses connections at once, so the fatal event should come within seconds.
# The bound still leaves room for the relay's 15 s connect timeout and a few quick retries.
FATAL_WITHIN_SECONDS = 20.0


@pytest.fixture(scope="module")
def pbs_relay(
    tmp_path_factory: pytest.TempPathFactory, test_cluster: LocalCluster, redis_server: RedisServer
) -> Iterator[RelayProcess]:
    workdir = tmp_path_factory.mktemp("sshd-faults")
    config = write_cluster_config(workdir / "relay.toml", test_cluster)
    relay = RelayProcess(workdir, "--config", str(config), "--redis", redis_server.url)
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture
def sshd_restored(test_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The test cluster, with its sshd started again after the test whatever happened."""
    yield test_cluster
    test_cluster.sshd.start()


def submit_hello(relay: RelayProcess) -> Stream:
    frame = submit_frame("hello", steps=1, delay_ms=0)
    return asyncio.run(collect(f"{relay.ws_url}/ws/jobs", frame, seconds=60))


@pytest.mark.timeout(90)
def test_sshd_restart_between_submissions_reconnects(
    pbs_relay: RelayProcess, sshd_restored: LocalCluster
) -> None:
    """The relay drops its pooled SSH connection that sshd closed, and opens a new one."""
    with logs_on_failure(pbs_relay):
        first = submit_hello(pbs_relay)
        assert_complete(first)

        sshd_restored.sshd.stop(close_sessions=True)
        sshd_restored.sshd.start()

        second = submit_hello(pbs_relay)
        assert_complete(second)
        assert second.job_id != first.job_id


@pytest.mark.timeout(90)
def test_sshd_down_submission_fails_fast(
    pbs_relay: RelayProcess, sshd_restored: LocalCluster
) -> None:
    """With sshd stopped, a submission ends in fatal with close 4000 instead of hanging."""
    with logs_on_failure(pbs_relay):
        warm_up = submit_hello(pbs_relay)
        assert_complete(warm_up)

        sshd_restored.sshd.stop(close_sessions=True)
        started = time.monotonic()
        failed = submit_hello(pbs_relay)
        elapsed = time.monotonic() - started

        assert elapsed < FATAL_WITHIN_SECONDS, failed.types
        assert failed.seqs == list(range(len(failed.events))), failed.types
        assert failed.types == ["starting", "fatal"]
        assert failed.close_code == 4000, (failed.close_code, failed.close_reason)
        message = failed.events[-1]["data"]["message"]
        assert f"{sshd_restored.host}:{sshd_restored.port}" in message
        assert "connect" in message
        assert failed.events[-1]["data"]["exit_status"] is None
        assert failed.close_reason == message.encode()[:123].decode("utf-8", "ignore")

        sshd_restored.sshd.start()
        after_restart = submit_hello(pbs_relay)
        assert_complete(after_restart)
