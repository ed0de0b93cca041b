"""HTTP access control on the job routes: keys, job ownership, and CORS by Origin."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, submit_frame
from tests.security.client import Response, collect_with, http_request
from tests.security.held_job import held_job
from tests.security.relay_setup import (
    ALLOWED_ORIGIN,
    EVIL_ORIGIN,
    auth_config,
    new_key,
    start_relay,
)

ALICE = new_key("alice")
BOB = new_key("bob")

ROUTES = [("GET", ""), ("GET", "/events"), ("DELETE", "")]
ROUTE_IDS = ["get-job", "get-events", "delete-job"]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = start_relay(tmp_path_factory.mktemp("http"), auth_config([ALICE, BOB]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alice_job(relay: RelayProcess) -> str:
    """The id of a finished echo job of alice."""
    stream = collect_with(
        f"{relay.ws_url}/ws/jobs", submit_frame("echo", owner="alice"), ALICE.headers
    )
    assert_complete(stream)
    return stream.job_id


def job_request(
    relay: RelayProcess,
    method: str,
    job_id: str,
    suffix: str = "",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> Response:
    return http_request(relay, method, f"/jobs/{job_id}{suffix}{query}", headers=headers)


@pytest.mark.parametrize("method,suffix", ROUTES, ids=ROUTE_IDS)
def test_job_route_without_key_401(
    relay: RelayProcess, alice_job: str, method: str, suffix: str
) -> None:
    assert job_request(relay, method, alice_job, suffix).status == 401


@pytest.mark.parametrize("method,suffix", ROUTES, ids=ROUTE_IDS)
def test_job_route_wrong_key_401(
    relay: RelayProcess, alice_job: str, method: str, suffix: str
) -> None:
    headers = {"Authorization": f"Bearer {ALICE.sha256}"}
    assert job_request(relay, method, alice_job, suffix, headers).status == 401
    wrong_query = "?access_token=wrong-key"
    assert job_request(relay, method, alice_job, suffix, query=wrong_query).status == 401


@pytest.mark.parametrize("method,suffix", ROUTES, ids=ROUTE_IDS)
def test_job_route_other_key_looks_unknown(
    relay: RelayProcess, alice_job: str, method: str, suffix: str
) -> None:
    """bob gets the same 404 for alice's job as for a job that does not exist."""
    unknown_id = uuid.uuid4().hex
    others = job_request(relay, method, alice_job, suffix, BOB.headers)
    unknown = job_request(relay, method, unknown_id, suffix, BOB.headers)
    assert others.status == 404
    assert unknown.status == 404
    assert others.body.replace(alice_job.encode(), b"ID") == unknown.body.replace(
        unknown_id.encode(), b"ID"
    )


def test_get_own_job_with_header_key(relay: RelayProcess, alice_job: str) -> None:
    response = job_request(relay, "GET", alice_job, headers=ALICE.headers)
    assert response.status == 200
    assert response.json()["state"] == "completed"


def test_get_own_events_with_query_key(relay: RelayProcess, alice_job: str) -> None:
    query = f"?access_token={ALICE.secret}"
    response = job_request(relay, "GET", alice_job, "/events", query=query)
    assert response.status == 200
    assert response.json()["events"][-1]["type"] == "complete"


def test_delete_other_keys_job_keeps_it_running(relay: RelayProcess, tmp_path: Path) -> None:
    with held_job(relay, ALICE, tmp_path) as job:
        refused = job_request(relay, "DELETE", job.job_id, headers=BOB.headers)
        unauthenticated = job_request(relay, "DELETE", job.job_id)
        record = job_request(relay, "GET", job.job_id, headers=ALICE.headers)
        stream = job.release()

    assert refused.status == 404
    assert unauthenticated.status == 401
    assert record.json()["state"] != "cancelled"
    assert_complete(stream)
    assert "cancelled" not in stream.types


def test_delete_own_job_cancels(relay: RelayProcess, tmp_path: Path) -> None:
    with held_job(relay, BOB, tmp_path) as job:
        response = job_request(relay, "DELETE", job.job_id, headers=BOB.headers)
        stream = job.client.wait(30)

    assert response.status == 202
    assert stream.types[-1] == "cancelled"
    assert stream.close_code == 4001


def test_cors_header_absent_for_disallowed_origin(relay: RelayProcess, alice_job: str) -> None:
    headers = {**ALICE.headers, "Origin": EVIL_ORIGIN}
    for suffix in ("", "/events"):
        response = job_request(relay, "GET", alice_job, suffix, headers)
        assert response.status in (200, 403), response.status
        assert "access-control-allow-origin" not in response.headers, suffix


def test_cors_header_names_allowed_origin(relay: RelayProcess, alice_job: str) -> None:
    headers = {**ALICE.headers, "Origin": ALLOWED_ORIGIN}
    response = job_request(relay, "GET", alice_job, headers=headers)
    assert response.status == 200
    assert response.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN


@pytest.mark.parametrize(
    "origin,expected",
    [(EVIL_ORIGIN, None), (ALLOWED_ORIGIN, ALLOWED_ORIGIN)],
    ids=["evil", "allowed"],
)
def test_cors_preflight_follows_allowlist(
    relay: RelayProcess, alice_job: str, origin: str, expected: str | None
) -> None:
    """A browser sends OPTIONS before a DELETE or a request with Authorization."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization",
    }
    response = job_request(relay, "OPTIONS", alice_job, headers=headers)
    allowed = response.headers.get("access-control-allow-origin")
    assert allowed == expected, (response.status, response.headers)


def test_cors_header_never_wildcard(relay: RelayProcess, alice_job: str) -> None:
    """A `*` would let any page read the responses of a browser that has a key."""
    for origin in (None, ALLOWED_ORIGIN, EVIL_ORIGIN):
        headers = {**ALICE.headers, **({"Origin": origin} if origin else {})}
        response = job_request(relay, "GET", alice_job, headers=headers)
        assert response.headers.get("access-control-allow-origin") != "*", origin
