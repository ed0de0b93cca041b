"""Checks that the test harness starts real, usable components."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest
import redis

from tests.harness.cluster import LocalCluster
from tests.harness.redis_server import RedisServer

JOB_SCRIPT = "#!/bin/bash\necho harness-job-output\n"
JOB_TIMEOUT = 30.0


@asynccontextmanager
async def connect(
    cluster: LocalCluster, known_hosts: Path
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Open an SSH connection to the cluster's login node, checking its host key."""
    async with asyncssh.connect(
        cluster.host,
        port=cluster.port,
        username=cluster.user,
        client_keys=[str(cluster.client_key)],
        known_hosts=str(known_hosts),
        connect_timeout=10,
    ) as connection:
        yield connection


@pytest.mark.redis
def test_redis_server_replies_to_ping(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    finally:
        client.close()


@pytest.mark.redis
def test_redis_server_restarts_on_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("harness:key", "before-restart")
        redis_server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()

        redis_server.start()
        assert redis_server.port == port
        assert client.ping() is True
        # No persistence is configured, so a restart starts with an empty database.
        assert client.get("harness:key") is None
    finally:
        client.close()


@pytest.mark.redis
def test_redis_server_restarts_after_kill(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        redis_server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()

        redis_server.start()
        assert client.ping() is True
    finally:
        client.close()


async def submit_and_wait(cluster: LocalCluster) -> tuple[str, str]:
    """Submit a job with qsub over SSH and return its id and the qstat output that lists it."""
    async with connect(cluster, cluster.known_hosts) as connection:
        workdir = cluster.workdir
        await connection.run(f"cat > {workdir}/harness.pbs", input=JOB_SCRIPT, check=True)
        submitted = await connection.run(f"cd {workdir} && qsub harness.pbs", check=True)
        job_id = str(submitted.stdout).strip()
        assert re.fullmatch(r"\d+", job_id), f"qsub printed {submitted.stdout!r}"

        deadline = time.monotonic() + JOB_TIMEOUT
        qstat_output = ""
        while time.monotonic() < deadline:
            result = await connection.run("qstat", check=True)
            qstat_output = str(result.stdout)
            if re.search(rf"^{job_id}\s.*\sC\s", qstat_output, re.MULTILINE):
                break
            await asyncio.sleep(0.2)
        return job_id, qstat_output


@pytest.mark.cluster
def test_cluster_qsub_over_asyncssh(test_cluster: LocalCluster) -> None:
    job_id, qstat_output = asyncio.run(submit_and_wait(test_cluster))

    job_line = re.search(rf"^{job_id}\s.*$", qstat_output, re.MULTILINE)
    assert job_line is not None, f"job {job_id} missing from qstat output:\n{qstat_output}"
    assert test_cluster.user in job_line.group(0)
    assert job_line.group(0).split()[-2] == "C", f"job {job_id} not complete:\n{qstat_output}"
    output_file = test_cluster.local_workdir / f"harness.pbs.o{job_id}"
    assert output_file.read_text() == "harness-job-output\n"


@pytest.mark.cluster
def test_cluster_sessions_get_slurm_conf(test_cluster: LocalCluster) -> None:
    async def read_environment() -> str:
        async with connect(test_cluster, test_cluster.known_hosts) as connection:
            result = await connection.run("echo $SLURM_CONF", check=True)
            return str(result.stdout).strip()

    assert asyncio.run(read_environment()) == str(test_cluster.slurm_conf)


@pytest.mark.cluster
def test_sshd_rejects_unknown_host_key(test_cluster: LocalCluster, tmp_path: Path) -> None:
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")

    async def connect_unverified() -> None:
        async with connect(test_cluster, empty_known_hosts):
            pass

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(connect_unverified())


@pytest.mark.cluster
def test_sshd_restarts_on_same_port(test_cluster: LocalCluster) -> None:
    port = test_cluster.port

    async def run_whoami() -> str:
        async with connect(test_cluster, test_cluster.known_hosts) as connection:
            result = await connection.run("whoami", check=True)
            return str(result.stdout).strip()

    test_cluster.sshd.stop()
    with pytest.raises(OSError):
        asyncio.run(run_whoami())

    test_cluster.sshd.start()
    assert test_cluster.port == port
    assert asyncio.run(run_whoami()) == test_cluster.user
