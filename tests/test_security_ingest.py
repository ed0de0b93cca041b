"""The ingest route under attack: tokens, expiry, malformed and oversized bodies, floods.

Every test reads the job's real token from a file that the `hold` test template writes on the
local scheduler (see tests/security/held_job.py), and POSTs crafted requests with it. After
the refused requests the job must go on, and later valid events must still arrive in order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay_process import RelayProcess, Stream
from tests.security.client import Response, event_body, http_request, post_events
from tests.security.held_job import held_job
from tests.security.relay_setup import auth_config, new_key, start_relay

ALICE = new_key("alice")
BOB = new_key("bob")

MAX_BODY = 65_536
MAX_CHUNK = 262_144
MAX_LINE = 4_096
LIMITS = {"max_body_bytes": MAX_BODY, "max_chunk_bytes": MAX_CHUNK, "max_line_bytes": MAX_LINE}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    config = auth_config([ALICE, BOB], limits=LIMITS)
    server = start_relay(tmp_path_factory.mktemp("ingest"), config)
    yield server
    server.stop()


def log_texts(stream: Stream) -> list[str]:
    return [event["data"] for event in stream.of_type("log")]


def assert_delivered_in_order(stream: Stream, logs: list[str]) -> None:
    """The job completed, seq has no gap, and the log events are exactly `logs`, in order."""
    assert stream.seqs == list(range(len(stream.events))), stream.types
    assert log_texts(stream) == logs
    assert stream.types[-1] == "complete", stream.events[-3:]
    assert stream.close_code == 1000, (stream.close_code, stream.close_reason)


def test_ingest_auth_failures_share_body(relay: RelayProcess, tmp_path: Path) -> None:
    """Missing, forged, other job's or client tokens, and unknown jobs: one 401 body."""
    body = event_body("log", "forged", 10_001)
    with held_job(relay, ALICE, tmp_path) as job, held_job(relay, BOB, tmp_path) as other:
        basic = base64.b64encode(job.token.encode()).decode()
        refused: dict[str, Response] = {
            "missing": post_events(relay, job.job_id, None, body),
            "forged": post_events(relay, job.job_id, secrets.token_urlsafe(32), body),
            "other job's token": post_events(relay, job.job_id, other.token, body),
            "client API key": post_events(relay, job.job_id, ALICE.secret, body),
            "token prefix": post_events(relay, job.job_id, job.token[:-1], body),
            "token sha256": post_events(
                relay, job.job_id, hashlib.sha256(job.token.encode()).hexdigest(), body
            ),
            "unknown job": post_events(relay, uuid.uuid4().hex, job.token, body),
            "unknown job, no token": post_events(relay, uuid.uuid4().hex, None, body),
            "not a job id": post_events(relay, "not-a-job", job.token, body),
            "basic scheme": http_request(
                relay,
                "POST",
                f"/jobs/{job.job_id}/events",
                body,
                {"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
            ),
            "empty bearer": http_request(
                relay,
                "POST",
                f"/jobs/{job.job_id}/events",
                body,
                {"Authorization": "Bearer", "Content-Type": "application/json"},
            ),
        }
        valid = post_events(relay, job.job_id, job.token, event_body("log", "valid", 10_002))
        stream = job.release()
        other.release()

    statuses = {name: response.status for name, response in refused.items()}
    assert statuses == {name: 401 for name in refused}
    bodies = {name: response.body for name, response in refused.items()}
    assert len(set(bodies.values())) == 1, bodies
    assert valid.status == 202
    assert_delivered_in_order(stream, ["valid"])


def test_ingest_token_expires_before_start(tmp_path: Path) -> None:
    """The token of a job that never started expires queue_grace_seconds after creation.

    public_url points at a path the relay does not route, so the job's own `started` POST
    gets 404 and the relay never learns that the job started. The response to an invalid
    event type shows whether the token passed: 422 means it did and nothing was stored, 401
    means it did not.
    """
    grace = 4
    config = auth_config(
        [ALICE],
        auth={"queue_grace_seconds": grace},
        limits=LIMITS,
        server={"public_url": "http://127.0.0.1:{port}/unrouted"},
    )
    server = start_relay(tmp_path, config)
    probe = event_body("bogus", None)
    try:
        created = time.monotonic()
        with held_job(server, ALICE, tmp_path) as job:
            early = post_events(server, job.job_id, job.token, probe)
            time.sleep(max(0.0, created + grace + 1.5 - time.monotonic()))
            late = post_events(server, job.job_id, job.token, probe)
            forged = post_events(server, job.job_id, secrets.token_urlsafe(32), probe)
            stream = job.release()
    finally:
        server.stop()

    assert "started" not in stream.types
    assert early.status == 422, server.log()
    assert late.status == 401, server.log()
    assert late.body == forged.body


def test_ingest_token_expires_after_walltime(tmp_path: Path) -> None:
    """The token of a started job expires at started + walltime + token_grace_seconds.

    The `hold_brief` template has a walltime of 1 s, which the local scheduler does not
    enforce, and token_grace_seconds is 2, so the token is invalid 3 s after `started`.
    """
    config = auth_config([ALICE], auth={"token_grace_seconds": 2}, limits=LIMITS)
    server = start_relay(tmp_path, config)
    probe = event_body("bogus", None)
    try:
        with held_job(server, ALICE, tmp_path, script="hold_brief") as job:
            job.client.wait_for(lambda stream: "started" in stream.types)
            started = time.monotonic()
            early = post_events(server, job.job_id, job.token, probe)
            time.sleep(max(0.0, started + 4.5 - time.monotonic()))
            late = post_events(server, job.job_id, job.token, probe)
            forged = post_events(server, job.job_id, secrets.token_urlsafe(32), probe)
            stream = job.release()
    finally:
        server.stop()

    assert early.status == 422, server.log()
    assert late.status == 401, server.log()
    assert late.body == forged.body
    # The job's own complete was refused too, so the stream ends in fatal.
    assert "complete" not in stream.types


def test_ingest_after_terminal_409(relay: RelayProcess, tmp_path: Path) -> None:
    """After complete, new and replayed requests get 409 and deliver nothing."""
    before = event_body("log", "before", 20_001)
    complete = event_body("complete", {"by": "test"}, 20_002)
    with held_job(relay, ALICE, tmp_path) as job:
        first = post_events(relay, job.job_id, job.token, before)
        finished = post_events(relay, job.job_id, job.token, complete)
        stream = job.client.wait(30)
        late = {
            "replayed log": post_events(relay, job.job_id, job.token, before),
            "replayed complete": post_events(relay, job.job_id, job.token, complete),
            "new log": post_events(relay, job.job_id, job.token, event_body("log", "late", 20_003)),
            "new log without id": post_events(
                relay, job.job_id, job.token, event_body("log", "late")
            ),
            "fatal": post_events(
                relay,
                job.job_id,
                job.token,
                event_body("fatal", {"message": "late", "exit_status": 1}, 20_004),
            ),
            "chunk": post_events(
                relay,
                job.job_id,
                job.token,
                b"late",
                "application/octet-stream",
                "?type=chunk&id=20005&mime=text/plain",
            ),
        }
        forged = post_events(relay, job.job_id, secrets.token_urlsafe(32), before)
        unknown = post_events(relay, uuid.uuid4().hex, secrets.token_urlsafe(32), before)
    history = http_request(relay, "GET", f"/jobs/{job.job_id}/events", headers=ALICE.headers)

    assert first.status == 202
    assert finished.status == 202
    assert {name: response.status for name, response in late.items()} == {
        name: 409 for name in late
    }
    # A forged token gets 401, not 409, so it cannot tell that the job exists and finished.
    assert forged.status == 401
    assert forged.body == unknown.body
    assert_delivered_in_order(stream, ["before"])
    assert stream.events[-1]["data"] == {"by": "test"}
    events = history.json()["events"]
    assert [event["seq"] for event in events] == stream.seqs
    assert events[-1]["type"] == "complete"


def test_ingest_malformed_body_400(relay: RelayProcess, tmp_path: Path) -> None:
    cases = {
        "truncated JSON": (b'{"type": "log", "data": ', "application/json"),
        "invalid UTF-8": (b'{"type": "log", "data": "MARK-\xff\xfe"}', "application/json"),
        "overlong UTF-8": (b'{"type": "log", "data": "MARK-\xc0\xaf"}', "application/json"),
        "UTF-16 surrogate bytes": (
            b'{"type": "log", "data": "MARK-\xed\xa0\x80"}',
            "application/json",
        ),
        "NaN": (b'{"type": "progress", "data": {"percent": NaN}}', "application/json"),
        "Infinity": (b'{"type": "progress", "data": {"percent": Infinity}}', "application/json"),
        "trailing garbage": (b'{"type": "log", "data": "MARK-a"} x', "application/json"),
        "NDJSON bad second line": (
            b'{"type": "log", "data": "MARK-first-line"}\n{oops\n',
            "application/x-ndjson",
        ),
    }
    with held_job(relay, ALICE, tmp_path) as job:
        post_events(relay, job.job_id, job.token, event_body("log", "before", 30_001))
        responses = {
            name: post_events(relay, job.job_id, job.token, body, content_type)
            for name, (body, content_type) in cases.items()
        }
        post_events(relay, job.job_id, job.token, event_body("log", "after", 30_002))
        stream = job.release()

    assert {name: response.status for name, response in responses.items()} == {
        name: 400 for name in cases
    }
    assert_delivered_in_order(stream, ["before", "after"])


def test_ingest_deep_nesting_rejected(relay: RelayProcess, tmp_path: Path) -> None:
    """JSON nested deeper than Python's recursion limit is refused, not a 500 or a crash.

    A `result` may carry any JSON, so 400, 413 and 422 are all fitting responses.
    """
    depth = MAX_BODY // 3
    nested = b'{"type": "result", "data": ' + b"[" * depth + b"]" * depth + b"}"
    with held_job(relay, ALICE, tmp_path) as job:
        post_events(relay, job.job_id, job.token, event_body("log", "before", 35_001))
        as_json = post_events(relay, job.job_id, job.token, nested)
        as_ndjson = post_events(relay, job.job_id, job.token, nested, "application/x-ndjson")
        post_events(relay, job.job_id, job.token, event_body("log", "after", 35_002))
        stream = job.release()

    assert as_json.status in (400, 413, 422), as_json.body
    assert as_ndjson.status in (400, 413, 422), as_ndjson.body
    assert_delivered_in_order(stream, ["before", "after"])
    assert not stream.of_type("result")


def test_ingest_unsupported_content_type_415(relay: RelayProcess, tmp_path: Path) -> None:
    body = event_body("log", "MARK-415")
    content_types = [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
        "application/xml",
        "application/jsonx",
    ]
    with held_job(relay, ALICE, tmp_path) as job:
        post_events(relay, job.job_id, job.token, event_body("log", "before", 40_001))
        responses = {
            str(content_type): post_events(relay, job.job_id, job.token, body, content_type)
            for content_type in content_types
        }
        post_events(relay, job.job_id, job.token, event_body("log", "after", 40_002))
        stream = job.release()

    assert {name: response.status for name, response in responses.items()} == {
        name: 415 for name in responses
    }
    assert_delivered_in_order(stream, ["before", "after"])


INVALID_EVENTS: dict[str, object] = {
    "relay-only starting": {"type": "starting", "data": {"script": "hold"}},
    "relay-only queued": {"type": "queued", "data": {"scheduler_id": "1.x"}},
    "relay-only cancelled": {"type": "cancelled", "data": {"by": "api"}},
    "relay-only trimmed": {"type": "trimmed", "data": {"after": 0, "first_seq": 5}},
    "unknown type": {"type": "bogus", "data": "MARK-bogus"},
    "type not a string": {"type": ["log"], "data": "MARK-type"},
    "no type": {"data": "MARK-no-type"},
    "unknown field seq": {"type": "log", "data": "MARK-seq", "seq": 0},
    "unknown field job": {"type": "log", "data": "MARK-job", "job": "0" * 32},
    "unknown field ts": {"type": "log", "data": "MARK-ts", "ts": 0},
    "log data object": {"type": "log", "data": {"text": "MARK-object"}},
    "token data number": {"type": "token", "data": 7},
    "progress over 100": {"type": "progress", "data": {"percent": 101}},
    "progress negative": {"type": "progress", "data": {"percent": -1}},
    "progress string": {"type": "progress", "data": {"percent": "50"}},
    "progress boolean": {"type": "progress", "data": {"percent": True}},
    "progress message object": {"type": "progress", "data": {"percent": 5, "message": {}}},
    "fatal without message": {"type": "fatal", "data": {"exit_status": 1}},
    "fatal status string": {"type": "fatal", "data": {"message": "x", "exit_status": "1"}},
    "started data list": {"type": "started", "data": ["MARK-started"]},
    "chunk as JSON": {"type": "chunk", "data": "MARK-chunk"},
    "negative id": {"type": "log", "data": "MARK-negative-id", "id": -1},
    "string id": {"type": "log", "data": "MARK-string-id", "id": "7"},
    "float id": {"type": "log", "data": "MARK-float-id", "id": 7.5},
    "huge id": {"type": "log", "data": "MARK-huge-id", "id": 2**64},
    "not an object": "MARK-string",
    "empty array": [],
    "array of 1001": [{"type": "log", "data": "MARK-many"}] * 1001,
    "valid then invalid": [
        {"type": "log", "data": "MARK-valid-first"},
        {"type": "bogus", "data": "MARK-bogus-second"},
    ],
}


def test_ingest_invalid_events_422(relay: RelayProcess, tmp_path: Path) -> None:
    with held_job(relay, ALICE, tmp_path) as job:
        post_events(relay, job.job_id, job.token, event_body("log", "before", 50_001))
        responses = {
            name: post_events(relay, job.job_id, job.token, json.dumps(body).encode())
            for name, body in INVALID_EVENTS.items()
        }
        binary = {
            "binary log": post_events(
                relay, job.job_id, job.token, b"MARK", "application/octet-stream", "?type=log"
            ),
            "binary negative id": post_events(
                relay, job.job_id, job.token, b"MARK", "application/octet-stream", "?id=-1"
            ),
            "binary mime with newline": post_events(
                relay,
                job.job_id,
                job.token,
                b"MARK",
                "application/octet-stream",
                "?mime=text/plain%0d%0aX-Evil:%201",
            ),
        }
        post_events(relay, job.job_id, job.token, event_body("log", "after", 50_002))
        stream = job.release()

    statuses = {name: response.status for name, response in {**responses, **binary}.items()}
    assert statuses == {name: 422 for name in statuses}
    assert_delivered_in_order(stream, ["before", "after"])
    assert stream.types.count("started") == 1
    assert not stream.of_type("chunk")
    assert not stream.of_type("progress")


def test_ingest_oversized_413(relay: RelayProcess, tmp_path: Path) -> None:
    """Bodies, NDJSON lines and chunks over their limits get 413, counted by what was read."""
    big_log = event_body("log", "MARK-" + "x" * MAX_BODY)
    long_line = b'{"type": "log", "data": "MARK-' + b"y" * MAX_LINE + b'"}'
    ndjson_long_line = event_body("log", "MARK-short") + b"\n" + long_line + b"\n"
    with held_job(relay, ALICE, tmp_path) as job:
        post_events(relay, job.job_id, job.token, event_body("log", "before", 60_001))
        oversized = {
            "JSON body": post_events(relay, job.job_id, job.token, big_log),
            "chunked JSON body": post_events(
                relay,
                job.job_id,
                job.token,
                (big_log[i : i + 8192] for i in range(0, len(big_log), 8192)),
            ),
            "NDJSON line": post_events(
                relay, job.job_id, job.token, ndjson_long_line, "application/x-ndjson"
            ),
            "chunk": post_events(
                relay,
                job.job_id,
                job.token,
                b"z" * (MAX_CHUNK + 1),
                "application/octet-stream",
                "?type=chunk&mime=application/octet-stream",
            ),
        }
        # Within their own limits: a chunk larger than max_body_bytes, and NDJSON lines just
        # under max_line_bytes.
        chunk = post_events(
            relay,
            job.job_id,
            job.token,
            b"c" * (MAX_BODY + 1),
            "application/octet-stream",
            "?type=chunk&id=60002&mime=application/octet-stream",
        )
        line = json.dumps({"type": "log", "data": "l" * (MAX_LINE - 100), "id": 60_003})
        lines = post_events(
            relay, job.job_id, job.token, (line + "\n").encode(), "application/x-ndjson"
        )
        post_events(relay, job.job_id, job.token, event_body("log", "after", 60_004))
        stream = job.release()

    assert {name: response.status for name, response in oversized.items()} == {
        name: 413 for name in oversized
    }
    assert chunk.status == 202
    assert lines.status == 202
    assert_delivered_in_order(stream, ["before", "l" * (MAX_LINE - 100), "after"])
    chunks = stream.of_type("chunk")
    assert len(chunks) == 1
    assert len(chunks[0]["payload"]) == MAX_BODY + 1


def test_ingest_rate_limit_429(tmp_path: Path) -> None:
    """events_per_second per job, with a burst of twice that: excess events get 429.

    One job floods with single events, then sends one array of three bursts' worth. Another
    job of the same key is not limited meanwhile.
    """
    rate = 20
    burst = 2 * rate
    config = auth_config([ALICE], limits={**LIMITS, "events_per_second": rate})
    server = start_relay(tmp_path, config)
    try:
        with held_job(server, ALICE, tmp_path) as job, held_job(server, ALICE, tmp_path) as other:
            flood_started = time.monotonic()
            flood = [
                post_events(server, job.job_id, job.token, event_body("log", f"flood {n}"))
                for n in range(3 * burst)
            ]
            flood_seconds = time.monotonic() - flood_started
            neighbour = post_events(server, other.job_id, other.token, event_body("log", "next"))
            limited = [response for response in flood if response.status == 429]
            retry_after = limited[0].headers.get("retry-after", "") if limited else ""
            if re.fullmatch(r"\d+", retry_after):
                time.sleep(min(int(retry_after), 5))
            after_wait = post_events(server, job.job_id, job.token, event_body("log", "waited"))
            time.sleep(burst / rate)  # a full bucket again
            array = [{"type": "log", "data": f"batch {n}"} for n in range(3 * burst)]
            batch = post_events(server, job.job_id, job.token, json.dumps(array).encode())
            time.sleep(0.5)
            final = post_events(server, job.job_id, job.token, event_body("log", "final"))
            stream = job.release()
            other.release()
    finally:
        server.stop()

    accepted = [response for response in flood if response.status == 202]
    assert {response.status for response in flood} == {202, 429}
    # The job's own `started` took one event from the burst.
    assert len(accepted) >= burst - 2
    assert len(accepted) <= burst + rate * flood_seconds + 1
    assert re.fullmatch(r"\d+", retry_after), retry_after
    assert int(retry_after) >= 1
    assert neighbour.status == 202
    assert after_wait.status == 202
    # 413 fits too: a batch larger than the whole burst could never be accepted.
    assert batch.status in (202, 413, 429), batch.body
    batch_accepted = batch.json()["accepted"] if batch.status == 202 else 0
    assert batch_accepted <= burst
    assert final.status == 202
    flood_logs = [f"flood {n}" for n, response in enumerate(flood) if response.status == 202]
    batch_logs = [text for text in log_texts(stream) if text.startswith("batch ")]
    assert len(batch_logs) == batch_accepted
    assert_delivered_in_order(stream, [*flood_logs, "waited", *batch_logs, "final"])
