"""Websocket access control: API keys, job ownership and Origin, checked before accept."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.job_checks import assert_complete
from tests.relay_process import TEST_SCRIPTS, RelayProcess, submit_frame
from tests.security.client import collect_with, handshake_status, raw_handshake_status
from tests.security.relay_setup import (
    ALLOWED_ORIGIN,
    EVIL_ORIGIN,
    auth_config,
    new_key,
    start_relay,
)

ALICE = new_key("alice")
BOB = new_key("bob")

# Origins a browser could send that are not exactly the allowed one.
DISALLOWED_ORIGINS = [
    EVIL_ORIGIN,
    "null",
    "http://app.example.test.evil.test",
    "http://evil.test/http://app.example.test",
    "http://app.example.test:8080",
    "https://app.example.test",
    "http://sub.app.example.test",
]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = start_relay(tmp_path_factory.mktemp("websocket"), auth_config([ALICE, BOB]))
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


def test_submit_without_key_rejected(relay: RelayProcess) -> None:
    assert handshake_status(f"{relay.ws_url}/ws/jobs") == 403


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong-key",
        f"Bearer {ALICE.secret[:-1]}",
        f"Bearer {ALICE.secret}x",
        f"Bearer {ALICE.sha256}",
        f"Basic {base64.b64encode(f'alice:{ALICE.secret}'.encode()).decode()}",
        f"Token {ALICE.secret}",
        ALICE.secret,
        "Bearer ",
        "Bearer alice",
    ],
    ids=[
        "wrong",
        "prefix",
        "extended",
        "sha256-as-key",
        "basic",
        "other-scheme",
        "no-scheme",
        "empty",
        "key-name",
    ],
)
def test_submit_invalid_key_rejected(relay: RelayProcess, authorization: str) -> None:
    status = handshake_status(f"{relay.ws_url}/ws/jobs", {"Authorization": authorization})
    assert status == 403


@pytest.mark.parametrize(
    "token",
    ["", "wrong-key", ALICE.sha256, ALICE.secret[:-1]],
    ids=["empty", "wrong", "sha256-as-key", "prefix"],
)
def test_submit_invalid_query_key_rejected(relay: RelayProcess, token: str) -> None:
    assert handshake_status(f"{relay.ws_url}/ws/jobs?access_token={token}") == 403


def test_submit_with_bearer_key_completes(relay: RelayProcess) -> None:
    frame = submit_frame("echo", via="header")
    stream = collect_with(f"{relay.ws_url}/ws/jobs", frame, ALICE.headers)
    assert_complete(stream)
    assert stream.events[-1]["data"] == {"via": "header"}


def test_submit_with_query_key_completes(relay: RelayProcess) -> None:
    url = f"{relay.ws_url}/ws/jobs?access_token={BOB.secret}"
    stream = collect_with(url, submit_frame("echo", via="query"))
    assert_complete(stream)
    assert stream.events[-1]["data"] == {"via": "query"}


def test_attach_own_job_replays(relay: RelayProcess, alice_job: str) -> None:
    stream = collect_with(f"{relay.ws_url}/ws/jobs/{alice_job}", headers=ALICE.headers)
    assert stream.types[-1] == "complete"
    assert stream.close_code == 1000


def test_attach_other_keys_job_rejected(relay: RelayProcess, alice_job: str) -> None:
    url = f"{relay.ws_url}/ws/jobs/{alice_job}"
    assert handshake_status(url, BOB.headers) == 403
    assert handshake_status(f"{url}?access_token={BOB.secret}") == 403


def test_attach_without_key_rejected(relay: RelayProcess, alice_job: str) -> None:
    assert handshake_status(f"{relay.ws_url}/ws/jobs/{alice_job}") == 403
    assert handshake_status(f"{relay.ws_url}/ws/jobs/{alice_job}?after=-1") == 403


def test_attach_wrong_key_rejected(relay: RelayProcess, alice_job: str) -> None:
    headers = {"Authorization": "Bearer wrong-key"}
    assert handshake_status(f"{relay.ws_url}/ws/jobs/{alice_job}", headers) == 403


@pytest.mark.parametrize("origin", DISALLOWED_ORIGINS)
def test_submit_disallowed_origin_rejected(relay: RelayProcess, origin: str) -> None:
    status = handshake_status(f"{relay.ws_url}/ws/jobs", ALICE.headers, origin=origin)
    assert status == 403


def test_query_key_disallowed_origin_rejected(relay: RelayProcess) -> None:
    url = f"{relay.ws_url}/ws/jobs?access_token={ALICE.secret}"
    assert handshake_status(url, origin=EVIL_ORIGIN) == 403


def test_attach_disallowed_origin_rejected(relay: RelayProcess, alice_job: str) -> None:
    url = f"{relay.ws_url}/ws/jobs/{alice_job}?access_token={ALICE.secret}"
    assert handshake_status(url, origin=EVIL_ORIGIN) == 403


def test_submit_allowed_origin_completes(relay: RelayProcess) -> None:
    """A browser on the allowed origin passes its key in the query, as browsers must."""
    url = f"{relay.ws_url}/ws/jobs?access_token={ALICE.secret}"
    stream = collect_with(url, submit_frame("echo", via="browser"), origin=ALLOWED_ORIGIN)
    assert_complete(stream)
    assert stream.events[-1]["data"] == {"via": "browser"}


def test_allowed_origin_without_key_rejected(relay: RelayProcess) -> None:
    assert handshake_status(f"{relay.ws_url}/ws/jobs", origin=ALLOWED_ORIGIN) == 403


@pytest.fixture(scope="module")
def open_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay on 127.0.0.1 with no API keys, as on a developer's machine."""
    server = RelayProcess(tmp_path_factory.mktemp("open"), "--scripts", str(TEST_SCRIPTS))
    server.start()
    yield server
    server.stop()


def test_open_relay_foreign_origin_rejected(open_relay: RelayProcess) -> None:
    """Without keys, a page on another site must still not submit through a visitor's browser.

    Browsers apply no same-origin policy to websockets, so without this check any web page
    could run jobs through a relay on the visitor's loopback address. Beyond the letter of
    the spec, which describes Origin checks with keys.
    """
    assert handshake_status(f"{open_relay.ws_url}/ws/jobs", origin=EVIL_ORIGIN) == 403
    assert handshake_status(f"{open_relay.ws_url}/ws/jobs") == 101


def test_open_relay_rebinding_origin_rejected(open_relay: RelayProcess) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends matching Host and Origin.

    Comparing Origin with the Host header would let it through. Beyond the letter of the
    spec, like the test above.
    """
    host = f"rebind.evil.test:{open_relay.port}"
    status = raw_handshake_status(
        open_relay, "/ws/jobs", {"Host": host, "Origin": f"http://{host}"}
    )
    assert status == 403


def test_rebinding_origin_with_key_rejected(relay: RelayProcess) -> None:
    """With keys, a Host and Origin that match each other are still not an allowed origin."""
    host = f"rebind.evil.test:{relay.port}"
    headers = {"Host": host, "Origin": f"http://{host}", **ALICE.headers}
    assert raw_handshake_status(relay, "/ws/jobs", headers) == 403
