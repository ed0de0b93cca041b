"""Jobs on the real test cluster that end without saying so, or are cancelled.

The watchdog's qstat runs through the private sshd against a one-node Slurm with its
Torque wrappers, with short intervals so the tests take seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.relay_process import TEST_SCRIPTS, RelayProcess, Stream, read_to_close, submit_frame
from tests.test_pbs_submit import write_config

FAST_WATCHDOG = {"poll_interval": 2, "min_poll_interval": 1, "finish_grace": 1}


@pytest.fixture
def relay_with(tmp_path: Path, test_cluster: Any) -> Iterator[Any]:
    started: list[RelayProcess] = []

    def start(**overrides: Any) -> RelayProcess:
        path = tmp_path / f"relay-{len(started)}.toml"
        config = write_config(path, test_cluster, **{**FAST_WATCHDOG, **overrides})
        server = RelayProcess(tmp_path, "--config", str(config), "--scripts", str(TEST_SCRIPTS))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def watch_until_started(url: str, action: Any, seconds: float = 120) -> Stream:
    """Submit `sleepy`, call `action(stream)` once the job has logged, and read to the close."""
    stream = Stream()
    async with asyncio.timeout(seconds):
        async with connect(url) as websocket:
            await websocket.send(json.dumps(submit_frame("sleepy", seconds=300)))
            while "log" not in stream.types:
                stream.events.append(json.loads(await websocket.recv()))
            await asyncio.to_thread(action, stream)
            await read_to_close(websocket, stream)
    return stream


def scheduler_id(stream: Stream) -> str:
    return str(stream.of_type("queued")[0]["data"]["scheduler_id"])


@pytest.mark.parametrize(
    "timings",
    [
        pytest.param({}, id="regular-poll"),
        # The regular poll is minutes away: only the silence of the killed job brings the
        # check forward.
        pytest.param({"poll_interval": 600, "heartbeat_timeout": 2}, id="silent-job"),
    ],
)
def test_sigkilled_job_reported_by_watchdog(
    relay_with: Any, test_cluster: Any, timings: dict[str, int]
) -> None:
    server = relay_with(**timings)

    def kill(stream: Stream) -> None:
        # SIGKILL to the batch shell only: its traps cannot run, so the job sends nothing.
        subprocess.run(
            ["scancel", "--batch", "--signal=KILL", scheduler_id(stream)],
            env=test_cluster.slurm.env,
            check=True,
            timeout=30,
        )

    stream = asyncio.run(watch_until_started(f"{server.ws_url}/ws/jobs", kill, seconds=60))
    assert stream.types[-1] == "fatal"
    assert stream.types.count("fatal") == 1
    data = stream.events[-1]["data"]
    assert f"job {scheduler_id(stream)}" in data["message"]
    assert "without a terminal event" in data["message"]
    assert stream.close_code == 4000
    assert stream.seqs == list(range(len(stream.events)))
    assert "qstat flavour is slurm-torque" in server.log()


def test_walltime_kill_ends_in_one_fatal(relay_with: Any, test_cluster: Any) -> None:
    """Slurm enforces a one-minute limit within about 30 s after it passes."""
    server = relay_with(qsub_options=["-l", "walltime=00:01:00"])
    stream = asyncio.run(
        watch_until_started(f"{server.ws_url}/ws/jobs", lambda stream: None, seconds=150)
    )
    assert stream.types[-1] == "fatal"
    assert stream.types.count("fatal") == 1
    assert stream.close_code == 4000
    assert stream.seqs == list(range(len(stream.events)))
    data = stream.events[-1]["data"]
    assert data["exit_status"] == 143, data
    assert "SIGTERM" in data["message"]
    deadline = time.monotonic() + 30
    while (state := test_cluster.slurm.job_state(scheduler_id(stream))) == "COMPLETING":
        assert time.monotonic() < deadline, "job still completing after 30 s"
        time.sleep(0.5)
    assert state == "TIMEOUT"


def test_delete_runs_qdel_on_cluster(relay_with: Any, test_cluster: Any) -> None:
    server = relay_with()

    def cancel(stream: Stream) -> None:
        request = urllib.request.Request(f"{server.http_url}/jobs/{stream.job_id}", method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202

    stream = asyncio.run(watch_until_started(f"{server.ws_url}/ws/jobs", cancel))
    assert stream.types[-1] == "cancelled"
    assert stream.close_code == 4001
    assert "fatal" not in stream.types
    deadline = time.monotonic() + 30
    while test_cluster.slurm.job_state(scheduler_id(stream)) not in {"CANCELLED", ""}:
        assert time.monotonic() < deadline, "qdel did not end the job within 30 s"
        time.sleep(0.5)
