"""Ownership and job tokens across two relay instances that share one Redis."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.redis_server import RedisServer
from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess
from tests.security.client import (
    collect_with,
    event_body,
    handshake_status,
    http_request,
    post_events,
)
from tests.security.held_job import held_job
from tests.security.relay_setup import auth_config, new_key, start_relay

pytestmark = pytest.mark.redis

ALICE = new_key("alice")
BOB = new_key("bob")


@pytest.fixture
def relays(
    tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    config = auth_config([ALICE, BOB])
    first = start_relay(tmp_path, config, "--redis", redis_server.url)
    try:
        second = start_relay(tmp_path, config, "--redis", redis_server.url)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def test_other_instance_enforces_owner_and_token(
    relays: tuple[RelayProcess, RelayProcess], tmp_path: Path
) -> None:
    """alice submits on the first relay; the second applies the same owner and token checks."""
    first, second = relays
    with held_job(first, ALICE, tmp_path) as job:
        path = f"/jobs/{job.job_id}"
        own = http_request(second, "GET", path, headers=ALICE.headers)
        others = http_request(second, "GET", path, headers=BOB.headers)
        cancel = http_request(second, "DELETE", path, headers=BOB.headers)
        attach_other = handshake_status(f"{second.ws_url}/ws{path}", BOB.headers)
        forged = post_events(second, job.job_id, secrets.token_urlsafe(32), event_body("log", "x"))
        valid = post_events(second, job.job_id, job.token, event_body("log", "via second", 1000))
        stream = job.release()
    replay = collect_with(f"{second.ws_url}/ws{path}", headers=ALICE.headers)

    assert own.status == 200
    assert others.status == 404
    assert cancel.status == 404
    assert attach_other == 403
    assert forged.status == 401
    assert valid.status == 202
    assert_complete(stream)
    assert [event["data"] for event in stream.of_type("log")] == ["via second"]
    assert replay.events == stream.events
