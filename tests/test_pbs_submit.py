"""Submission failures on the real test cluster: they end the stream with fatal and 4000."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.job_checks import assert_complete, assert_fatal
from tests.relay_process import RelayProcess, collect, submit_frame


def write_config(path: Path, cluster: Any, **overrides: Any) -> Path:
    values = {
        "scheduler": "pbs",
        "host": cluster.host,
        "port": cluster.port,
        "user": cluster.user,
        "key": str(cluster.client_key),
        "known_hosts": str(cluster.known_hosts),
        "workdir": cluster.workdir,
        **overrides,
    }
    lines = ["[clusters.test]"]
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(item) for item in value)}]")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def relay_with(tmp_path: Path, test_cluster: Any) -> Iterator[Any]:
    started: list[RelayProcess] = []

    def start(**overrides: Any) -> RelayProcess:
        config = write_config(tmp_path / f"relay-{len(started)}.toml", test_cluster, **overrides)
        server = RelayProcess(tmp_path, "--config", str(config))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def submit(server: RelayProcess, script: str = "hello") -> Any:
    return asyncio.run(collect(f"{server.ws_url}/ws/jobs", submit_frame(script, delay_ms=0)))


def test_qsub_failure_becomes_fatal_with_its_message(relay_with: Any) -> None:
    server = relay_with(qsub_options=["-q", "no_such_queue"])
    stream = submit(server)
    data = assert_fatal(stream, 1)
    assert "qsub failed" in str(data["message"])
    assert "partition" in str(data["message"]).lower()
    assert stream.types == ["starting", "fatal"]
    status, record = server.get_json(f"/jobs/{stream.job_id}")
    assert record["state"] == "failed"
    assert record["exit_status"] == 1


def test_unknown_host_key_fatal(relay_with: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    server = relay_with(known_hosts=str(empty))
    stream = submit(server)
    data = assert_fatal(stream, None)
    assert str(empty) in str(data["message"])
    assert "not trusted" in str(data["message"])


def test_key_readable_by_others_is_refused(
    relay_with: Any, tmp_path: Path, test_cluster: Any
) -> None:
    loose = tmp_path / "loose_key"
    loose.write_bytes(Path(test_cluster.client_key).read_bytes())
    loose.chmod(0o644)
    server = relay_with(key=str(loose))
    stream = submit(server)
    data = assert_fatal(stream, None)
    assert "chmod 600" in str(data["message"])


def test_thirty_jobs_at_once_share_one_connection(relay_with: Any) -> None:
    """sshd allows 10 channels a connection; the relay keeps its own count under that."""
    server = relay_with()

    async def many() -> list[Any]:
        frames = [submit_frame("hello", steps=1, delay_ms=0) for _ in range(30)]
        url = f"{server.ws_url}/ws/jobs"
        return await asyncio.gather(*(collect(url, frame, seconds=120) for frame in frames))

    streams = asyncio.run(many())
    for stream in streams:
        assert_complete(stream)
    scheduler_ids = {stream.of_type("queued")[0]["data"]["scheduler_id"] for stream in streams}
    assert len(scheduler_ids) == 30
    assert server.log_path.read_text().count("connected to") == 1
