"""Jobs from submit to close, over the real chain in three set-ups.

- `local-memory`: the embedded defaults (memory broker, local scheduler), as a fresh
  machine runs `relay serve`.
- `local-redis`: the Redis broker on a private redis-server.
- `pbs-redis`: the Redis broker, and jobs submitted with the real `qsub` of a one-node
  Slurm (Torque wrappers) over a real sshd with host-key checking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.config import write_cluster_config
from tests.file_server import serve_folder
from tests.job_checks import assert_complete, assert_fatal
from tests.relay_process import TEST_SCRIPTS, RelayProcess, collect, submit_frame
from tests.sample_text import write_sample

SETUPS = ["local-memory", "local-redis", "pbs-redis"]


@pytest.fixture(scope="module", params=SETUPS)
def relay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    setup = request.param
    workdir = tmp_path_factory.mktemp(setup)
    args = ["--scripts", str(TEST_SCRIPTS)]
    if setup.endswith("redis"):
        args += ["--redis", request.getfixturevalue("redis_server").url]
    if setup.startswith("pbs"):
        cluster = request.getfixturevalue("test_cluster")
        args += ["--config", str(write_cluster_config(workdir / "relay.toml", cluster))]
    server = RelayProcess(workdir, *args)
    server.start()
    yield server
    server.stop()


def run(relay: RelayProcess, script: str, **args: Any) -> Any:
    return asyncio.run(collect(f"{relay.ws_url}/ws/jobs", submit_frame(script, **args)))


def test_hello_streams_progress_logs_and_result(relay: RelayProcess) -> None:
    stream = run(relay, "hello", name='Ada "Byron"', steps=3, delay_ms=10)
    assert_complete(stream)
    assert len(stream.of_type("progress")) >= 3
    assert stream.of_type("log")
    percents = [event["data"]["percent"] for event in stream.of_type("progress")]
    assert percents == sorted(percents)
    assert stream.events[-1]["data"]["greeting"] == 'Hello, Ada "Byron"!'
    queued = stream.of_type("queued")[0]["data"]["scheduler_id"]
    status, record = relay.get_json(f"/jobs/{stream.job_id}")
    assert status == 200
    assert record["state"] == "completed"
    assert record["scheduler_id"] == queued
    assert record["last_seq"] == stream.seqs[-1]
    assert "token_hash" not in record


def test_fetch_and_count_downloads_and_counts(relay: RelayProcess, tmp_path: Path) -> None:
    expected = write_sample(tmp_path)
    with serve_folder(tmp_path) as base_url:
        stream = run(relay, "fetch_and_count", url=f"{base_url}/sample.txt")
    assert_complete(stream)
    result = stream.events[-1]["data"]
    for key, value in expected.items():
        assert result[key] == value, key
    assert stream.of_type("progress")


def test_fetch_and_count_missing_file_is_fatal(relay: RelayProcess, tmp_path: Path) -> None:
    with serve_folder(tmp_path) as base_url:
        stream = run(relay, "fetch_and_count", url=f"{base_url}/missing.txt")
    data = assert_fatal(stream, None)
    assert "404" in str(data["message"]) or "missing.txt" in str(data["message"])


def test_token_stream_sends_each_token(relay: RelayProcess) -> None:
    stream = run(relay, "token_stream", prompt="It is", n=30, seed=7, delay_ms=0)
    assert_complete(stream)
    tokens = [event["data"] for event in stream.of_type("token")]
    assert len(tokens) == 30
    text = "".join(tokens)
    assert len(text.split()) >= 25
    assert stream.events[-1]["data"]["tokens"] == 30


def test_token_stream_seed_is_reproducible(relay: RelayProcess) -> None:
    first = run(relay, "token_stream", n=12, seed=99, delay_ms=0)
    second = run(relay, "token_stream", n=12, seed=99, delay_ms=0)
    assert [e["data"] for e in first.of_type("token")] == [
        e["data"] for e in second.of_type("token")
    ]


AWKWARD = {
    "commas": "a,b,,c",
    "quotes": 'it\'s "quoted" `tick`',
    "spaces": "  leading and trailing  ",
    "equals": "k=v=w",
    "backslashes": "C:\\path\\to\\ \\n not a newline",
    "newlines": "line one\nline two\r\nline three\n",
    "unicode": "naïve café ✓ 日本語 🚀",
    "shell": "$(touch /tmp/pwned) ; rm -rf / | cat `id` && echo $HOME",
    "nested": {"list": [1, 2.5, None, True], "empty": ""},
}


def test_arguments_reach_job_byte_for_byte(relay: RelayProcess) -> None:
    stream = run(relay, "echo", **AWKWARD)
    assert_complete(stream)
    assert stream.events[-1]["data"] == AWKWARD


def test_script_exit_status_becomes_fatal(relay: RelayProcess) -> None:
    stream = run(relay, "fail", status=3)
    data = assert_fatal(stream, 3)
    assert "3" in str(data["message"])


def test_finished_job_replays_and_closes(relay: RelayProcess) -> None:
    first = run(relay, "hello", steps=1, delay_ms=0)
    assert_complete(first)
    replay = asyncio.run(collect(f"{relay.ws_url}/ws/jobs/{first.job_id}"))
    assert replay.events == first.events
    assert replay.close_code == 1000
    tail = asyncio.run(collect(f"{relay.ws_url}/ws/jobs/{first.job_id}?after=2"))
    assert tail.events == first.events[3:]
    assert tail.close_code == 1000


def test_events_route_returns_history(relay: RelayProcess) -> None:
    first = run(relay, "hello", steps=1, delay_ms=0)
    status, body = relay.get_json(f"/jobs/{first.job_id}/events?after=0")
    assert status == 200
    assert body["state"] == "completed"
    assert body["events"] == first.events[1:]


def test_unknown_job_closes_4404(relay: RelayProcess) -> None:
    stream = asyncio.run(collect(f"{relay.ws_url}/ws/jobs/{'0' * 32}"))
    assert stream.events == []
    assert stream.close_code == 4404
    assert relay.get_json(f"/jobs/{'0' * 32}")[0] == 404


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ({"type": "submit", "script": "nope"}, "unknown template"),
        ({"type": "submit", "script": "../hello"}, "invalid template name"),
        ({"type": "submit", "script": "hello", "args": {"steps": 999}}, "steps"),
        ({"type": "submit", "script": "hello", "args": {"bogus": 1}}, "bogus"),
        ({"type": "submit", "script": "hello", "cluster": "elsewhere"}, "unknown cluster"),
        ({"type": "subscribe"}, "expected"),
    ],
)
def test_invalid_submit_closes_4400(
    relay: RelayProcess, frame: dict[str, Any], reason: str
) -> None:
    stream = asyncio.run(collect(f"{relay.ws_url}/ws/jobs", frame))
    assert stream.events == []
    assert stream.close_code == 4400
    assert reason in stream.close_reason


def test_many_jobs_at_once_all_complete(relay: RelayProcess) -> None:
    async def many() -> list[Any]:
        frames = [submit_frame("hello", steps=1, delay_ms=0) for _ in range(12)]
        return await asyncio.gather(*(collect(f"{relay.ws_url}/ws/jobs", f) for f in frames))

    streams = asyncio.run(many())
    for stream in streams:
        assert_complete(stream)
    assert len({stream.job_id for stream in streams}) == 12
