"""Per-key limits: a flood from one key gets 4429 while another key still runs jobs."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

from relay.config import load_settings
from tests.job_checks import assert_complete
from tests.relay_process import ROOT, RelayProcess, Stream, submit_frame
from tests.security.client import BackgroundStream, collect_with, stream_into
from tests.security.held_job import held_job
from tests.security.relay_setup import ApiKey, auth_config, new_key, start_relay

ALICE = new_key("alice")
BOB = new_key("bob")


def submit_echo(server: RelayProcess, key: ApiKey, **args: object) -> Stream:
    frame = submit_frame("echo", **args)
    return collect_with(f"{server.ws_url}/ws/jobs", frame, key.headers, seconds=30)


def submit_many(server: RelayProcess, key: ApiKey, count: int) -> list[Stream]:
    """Submit `count` echo jobs at once and return their streams."""

    async def all_at_once() -> list[Stream]:
        streams = [Stream() for _ in range(count)]
        await asyncio.gather(
            *(
                stream_into(
                    stream,
                    f"{server.ws_url}/ws/jobs",
                    submit_frame("echo", n=n),
                    key.headers,
                    seconds=30,
                )
                for n, stream in enumerate(streams)
            )
        )
        return streams

    return asyncio.run(all_at_once())


def assert_rejected_4429(stream: Stream) -> None:
    assert stream.close_code == 4429, (stream.close_code, stream.close_reason)
    assert stream.events == []


def test_submits_per_minute_excess_4429(tmp_path: Path) -> None:
    limit = 4
    server = start_relay(tmp_path, auth_config([ALICE, BOB], limits={"submits_per_minute": limit}))
    try:
        flood = submit_many(server, ALICE, limit + 3)
        other = submit_echo(server, BOB, who="bob")
        again = submit_echo(server, ALICE, who="alice")
    finally:
        server.stop()

    codes = sorted(stream.close_code or 0 for stream in flood)
    assert codes == [1000] * limit + [4429] * 3, server.log()
    for stream in flood:
        if stream.close_code == 4429:
            assert_rejected_4429(stream)
        else:
            assert_complete(stream)
    assert_complete(other)
    assert other.events[-1]["data"] == {"who": "bob"}
    assert_rejected_4429(again)


def test_jobs_per_key_excess_4429(tmp_path: Path) -> None:
    """Only unfinished jobs count: once one ends, the key may submit again."""
    limit = 2
    server = start_relay(tmp_path, auth_config([ALICE, BOB], limits={"jobs_per_key": limit}))
    try:
        with held_job(server, ALICE, tmp_path) as first, held_job(server, ALICE, tmp_path):
            excess = submit_echo(server, ALICE, n="excess")
            other = submit_echo(server, BOB, who="bob")
            first.release()
            after_release = submit_echo(server, ALICE, n="after release")
    finally:
        server.stop()

    assert_rejected_4429(excess)
    assert_complete(other)
    assert_complete(after_release)


def test_sockets_per_key_excess_4429(tmp_path: Path) -> None:
    """The submit socket and attach sockets of one key count together."""
    limit = 3
    server = start_relay(tmp_path, auth_config([ALICE, BOB], limits={"sockets_per_key": limit}))
    try:
        with held_job(server, ALICE, tmp_path) as job, ExitStack() as attached:
            url = f"{server.ws_url}/ws/jobs/{job.job_id}"
            watchers = []
            for _ in range(limit - 1):
                watcher = BackgroundStream(url, headers=ALICE.headers, seconds=40)
                attached.callback(watcher.wait, 40)
                watcher.wait_for(lambda stream: "started" in stream.types)
                watchers.append(watcher)
            excess_attach = collect_with(url, headers=ALICE.headers, seconds=15)
            excess_submit = submit_echo(server, ALICE, n="excess")
            other = submit_echo(server, BOB, who="bob")
            stream = job.release()
        after_release = submit_echo(server, ALICE, n="after release")
    finally:
        server.stop()

    assert_rejected_4429(excess_attach)
    assert_rejected_4429(excess_submit)
    assert_complete(other)
    assert_complete(stream)
    for watcher in watchers:
        assert watcher.stream.close_code == 1000
    assert_complete(after_release)


def test_limit_defaults_match_security_doc() -> None:
    """The defaults the relay applies are the ones docs/security.md promises."""
    settings = load_settings(environ={})
    table = (ROOT / "docs" / "security.md").read_text()
    assert f"| `[limits] jobs_per_key` | {settings.jobs_per_key} unfinished jobs |" in table
    assert f"| `[limits] sockets_per_key` | {settings.sockets_per_key} open sockets |" in table
    assert f"| `[limits] submits_per_minute` | {settings.submits_per_minute} per key |" in table
    per_second = int(settings.events_per_second)
    assert (
        f"| `[limits] events_per_second` | {per_second} per job, bursts of {2 * per_second} |"
        in table
    )
