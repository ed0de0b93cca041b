"""Tests of the job-side helper pbs_scripts/relay.sh and of the templates, without the relay.

Each test composes a job script the way the relay does, runs it with bash and the RELAY_*
environment, and checks what a stdlib HTTP receiver on 127.0.0.1 got.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "pbs_scripts" / "relay.sh"
TEMPLATES = ROOT / "pbs_scripts"
TEST_TEMPLATES = ROOT / "tests" / "scripts"
JOB_ID = "job-42"
# Distinctive, so that a leak shows up in a plain substring search.
TOKEN = "tok-5f1c9a0d7e3b42c8"
# Template body for scripts written inline in a test.
INLINE_HEADER = "#!/bin/bash\n#PBS -N relay-inline\n#PBS -l walltime=00:01:00\n\n"


def compose(template_text: str) -> str:
    """Compose a job script as the relay does: shebang, template header, helper, template body.

    The header is the template's leading block of comment lines (its #PBS lines) after its
    own shebang. The helper goes in without its shebang line.
    """
    lines = template_text.splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    header_end = 0
    while header_end < len(lines) and lines[header_end].startswith("#"):
        header_end += 1
    helper_lines = HELPER.read_text().splitlines(keepends=True)
    assert helper_lines[0].startswith("#!"), "relay.sh must start with a shebang line"
    return (
        "#!/bin/bash\n"
        + "".join(lines[:header_end])
        + "".join(helper_lines[1:])
        + "".join(lines[header_end:])
    )


def encode_arguments(arguments_json: str) -> str:
    """Encode arguments as RELAY_ARGS: base64url of the UTF-8 JSON text, without padding."""
    return base64.urlsafe_b64encode(arguments_json.encode()).decode().rstrip("=")


def template_arguments(schema_path: Path, arguments: dict[str, Any]) -> dict[str, Any]:
    """Fill in the schema's defaults and validate, as the relay does before submitting."""
    schema = json.loads(schema_path.read_text())
    filled = {
        name: spec["default"]
        for name, spec in schema.get("properties", {}).items()
        if "default" in spec
    }
    filled.update(arguments)
    jsonschema.Draft202012Validator(schema).validate(filled)
    return filled


@dataclass
class ReceivedRequest:
    path: str
    query: dict[str, str]
    raw_query: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """HTTP server on 127.0.0.1 that imitates the relay's ingest route.

    It records every POST and, like the relay, accepts each event id once. `planned` sets the
    outcome of the next requests: an HTTP status to answer without accepting, or "drop" to
    accept the events and close the connection without a response. `status_for_all` answers
    every later request with one status.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.events: list[dict[str, Any]] = []
        self.planned: list[int | str] = []
        self.status_for_all: int | None = None
        self.lock = threading.Lock()
        self._seen_ids: set[int] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def events_of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == event_type]

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length", "0")))
        url = urlsplit(request.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        with self.lock:
            self.requests.append(
                ReceivedRequest(url.path, query, url.query, dict(request.headers), body)
            )
            action = self.planned.pop(0) if self.planned else self.status_for_all
        if isinstance(action, int):
            self.respond(request, action, {"detail": "planned failure"})
            return
        if url.path != f"/jobs/{JOB_ID}/events":
            self.respond(request, 404, {"detail": f"no route {url.path}"})
            return
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.respond(request, 401, {"detail": "invalid token"})
            return

        content_type = request.headers.get("Content-Type", "")
        if content_type == "application/json":
            try:
                parsed = json.loads(body)
            except ValueError as error:
                self.respond(request, 400, {"detail": f"invalid JSON: {error}"})
                return
            events = parsed if isinstance(parsed, list) else [parsed]
            if not all(
                isinstance(event, dict)
                and set(event) == {"id", "type", "data"}
                and isinstance(event["id"], int)
                for event in events
            ):
                self.respond(request, 422, {"detail": "invalid event"})
                return
            for event in events:
                event["raw_body"] = body
        elif content_type == "application/octet-stream":
            events = [
                {
                    "id": int(query["id"]),
                    "type": query["type"],
                    "mime": query["mime"],
                    "data": body,
                }
            ]
        else:
            self.respond(request, 415, {"detail": f"unsupported Content-Type {content_type}"})
            return

        accepted = duplicates = 0
        with self.lock:
            for event in events:
                if event["id"] in self._seen_ids:
                    duplicates += 1
                else:
                    self._seen_ids.add(event["id"])
                    self.events.append(event)
                    accepted += 1
            last_seq = max(self._seen_ids)
        if action == "drop":
            request.close_connection = True
            return
        self.respond(
            request, 202, {"accepted": accepted, "duplicates": duplicates, "last_seq": last_seq}
        )

    @staticmethod
    def respond(request: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        if status == 503:
            request.send_header("Retry-After", "1")
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def job_environment(
    receiver: Receiver,
    tmp_path: Path,
    arguments_json: str,
    token: str = TOKEN,
    path_prefix: Path | None = None,
) -> dict[str, str]:
    """Build the small environment that a PBS job gets: PATH, HOME, TMPDIR and RELAY_*."""
    temp_folder = tmp_path / "tmp"
    temp_folder.mkdir(exist_ok=True)
    path = os.environ["PATH"]
    if path_prefix is not None:
        path = f"{path_prefix}{os.pathsep}{path}"
    return {
        "PATH": path,
        "HOME": str(tmp_path),
        "TMPDIR": str(temp_folder),
        "RELAY_URL": receiver.url,
        "RELAY_JOB_ID": JOB_ID,
        "RELAY_TOKEN": token,
        "RELAY_ARGS": encode_arguments(arguments_json),
    }


def write_job(tmp_path: Path, template_text: str) -> Path:
    script = tmp_path / "job.sh"
    script.write_text(compose(template_text))
    return script


def run_job(
    receiver: Receiver,
    tmp_path: Path,
    template_text: str,
    arguments: dict[str, Any] | None = None,
    *,
    arguments_json: str | None = None,
    token: str = TOKEN,
    path_prefix: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the composed job script with bash and return the finished process."""
    if arguments_json is None:
        arguments_json = json.dumps(arguments or {}, ensure_ascii=False)
    script = write_job(tmp_path, template_text)
    environment = job_environment(receiver, tmp_path, arguments_json, token, path_prefix)
    return subprocess.run(
        ["bash", str(script)],
        env=environment,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_template(
    receiver: Receiver, tmp_path: Path, folder: Path, name: str, arguments: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    filled = template_arguments(folder / f"{name}.json", arguments)
    return run_job(receiver, tmp_path, (folder / f"{name}.pbs").read_text(), filled)


def assert_unique_increasing_ids(events: list[dict[str, Any]]) -> None:
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids), f"duplicate ids: {ids}"
    assert ids == sorted(ids), f"ids out of order: {ids}"


# --- templates ------------------------------------------------------------------------


def test_hello_sends_events_in_order(receiver: Receiver, tmp_path: Path) -> None:
    name = 'Ada "the Countess" \\ Lovelace'
    result = run_template(receiver, tmp_path, TEMPLATES, "hello", {"name": name, "delay_ms": 0})

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert receiver.types() == [
        "started",
        "progress",
        "log",
        "progress",
        "log",
        "progress",
        "log",
        "complete",
    ]
    assert [event["id"] for event in receiver.events] == list(range(1, 9))
    assert receiver.events[0]["data"] == {"host": socket.gethostname()}
    percents = [event["data"]["percent"] for event in receiver.events_of_type("progress")]
    assert percents == [33, 66, 100]
    assert receiver.events_of_type("progress")[0]["data"]["message"] == "step 1 of 3"
    assert receiver.events_of_type("log")[0]["data"].startswith(f"Hello, {name}! (step 1 of 3")
    complete = receiver.events[-1]["data"]
    assert complete["greeting"] == f"Hello, {name}!"
    assert complete["steps"] == 3


def test_hello_requests_use_route_and_token(receiver: Receiver, tmp_path: Path) -> None:
    result = run_template(receiver, tmp_path, TEMPLATES, "hello", {"steps": 1, "delay_ms": 0})

    assert result.returncode == 0, result.stderr
    for request in receiver.requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
        assert request.path == f"/jobs/{JOB_ID}/events"


def test_echo_returns_arguments_byte_for_byte(receiver: Receiver, tmp_path: Path) -> None:
    arguments = {
        "commas": "a,b,,c",
        "quotes": "say \"hi\" and 'bye'",
        "spaces": "  leading and trailing  ",
        "equals": "key=value==",
        "backslashes": "C:\\path\\to\\file \\n is not a newline",
        "newlines": "line 1\nline 2\n",
        "tabs": "col1\tcol2",
        "unicode": "naïve café, 日本語, emoji 🚀",
        "number": 1.5,
        "list": [1, "two", None, True],
        "nested": {"k=v": "a,b", "empty": ""},
    }
    arguments_json = json.dumps(arguments, ensure_ascii=False)
    result = run_job(
        receiver,
        tmp_path,
        (TEST_TEMPLATES / "echo.pbs").read_text(),
        arguments_json=arguments_json,
    )

    assert result.returncode == 0, result.stderr
    assert receiver.types() == ["started", "complete"]
    complete = receiver.events[-1]
    assert complete["data"] == arguments
    expected_tail = ('"data": ' + arguments_json + "}").encode()
    assert complete["raw_body"].endswith(expected_tail)


def test_fail_reports_exit_status(receiver: Receiver, tmp_path: Path) -> None:
    result = run_template(receiver, tmp_path, TEST_TEMPLATES, "fail", {})

    assert result.returncode == 3
    assert receiver.types() == ["started", "log", "fatal"]
    assert receiver.events[-1]["data"] == {
        "message": "job script exited with status 3 before sending complete",
        "exit_status": 3,
    }


def test_exit_zero_without_complete_is_fatal(receiver: Receiver, tmp_path: Path) -> None:
    result = run_job(receiver, tmp_path, INLINE_HEADER + 'relay_log "done, but no complete"\n')

    assert result.returncode == 0
    assert receiver.types() == ["started", "log", "fatal"]
    assert receiver.events[-1]["data"]["exit_status"] == 0


def test_token_stream_sends_n_tokens(receiver: Receiver, tmp_path: Path) -> None:
    template = (TEMPLATES / "token_stream.pbs").read_text()
    corpus = template.split("<<'TEXT'\n", 1)[1].split("\nTEXT\n", 1)[0]
    vocabulary = set(corpus.split())
    result = run_template(
        receiver, tmp_path, TEMPLATES, "token_stream", {"n": 25, "seed": 7, "delay_ms": 0}
    )

    assert result.returncode == 0, result.stderr
    tokens = [event["data"] for event in receiver.events_of_type("token")]
    assert len(tokens) == 25
    for token in tokens:
        assert re.fullmatch(r" \S+", token), f"token {token!r} is not one word with a space"
    words = "".join(tokens).split()
    assert len(words) == 25
    assert set(words) <= vocabulary
    assert receiver.types()[-1] == "complete"
    assert receiver.events[-1]["data"] == {"tokens": 25}
    assert_unique_increasing_ids(receiver.events)


def test_token_stream_same_seed_same_text(receiver: Receiver, tmp_path: Path) -> None:
    arguments = {"prompt": "My dear", "n": 12, "seed": 99, "delay_ms": 0}
    first = run_template(receiver, tmp_path, TEMPLATES, "token_stream", arguments)
    first_tokens = [event["data"] for event in receiver.events_of_type("token")]
    second_receiver = Receiver()
    try:
        second = run_template(second_receiver, tmp_path, TEMPLATES, "token_stream", arguments)
        second_tokens = [event["data"] for event in second_receiver.events_of_type("token")]
    finally:
        second_receiver.close()

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert len(first_tokens) == 12
    assert first_tokens == second_tokens
    # In the corpus, "My dear" is always followed by "Mr." ("My dear, you" has "dear,").
    assert first_tokens[0] == " Mr."


def test_token_stream_unknown_prompt_starts_sentence(receiver: Receiver, tmp_path: Path) -> None:
    arguments = {"prompt": "xyzzy plugh", "n": 5, "seed": 3, "delay_ms": 0}
    result = run_template(receiver, tmp_path, TEMPLATES, "token_stream", arguments)

    assert result.returncode == 0, result.stderr
    tokens = [event["data"] for event in receiver.events_of_type("token")]
    assert len(tokens) == 5
    assert tokens[0].lstrip(' "')[0].isupper()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve tmp_path/site on 127.0.0.1 and yield its base URL and folder."""
    site = tmp_path / "site"
    site.mkdir()

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", site
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_and_count_matches_python(
    receiver: Receiver, tmp_path: Path, file_server: tuple[str, Path]
) -> None:
    base_url, site = file_server
    data = (
        "It is a truth universally acknowledged,\n"
        "that a single man in possession of a good fortune\n"
        "  must be in want of a wife.\t(Austen, 1813)\n\n"
        "naïve café 日本語 — déjà vu\n"
        "last line without a newline"
    ).encode() * 50
    (site / "sample.txt").write_bytes(data)
    url = f"{base_url}/sample.txt"
    result = run_template(receiver, tmp_path, TEMPLATES, "fetch_and_count", {"url": url})

    assert result.returncode == 0, result.stderr
    expected = {
        "url": url,
        "bytes": len(data),
        "lines": data.count(b"\n"),
        "words": len(data.split()),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert receiver.events_of_type("result")[0]["data"] == expected
    assert receiver.events[-1]["type"] == "complete"
    assert receiver.events[-1]["data"] == expected
    percents = [event["data"]["percent"] for event in receiver.events_of_type("progress")]
    assert percents == [0, 40, 70, 100]


def test_fetch_and_count_reports_http_error(
    receiver: Receiver, tmp_path: Path, file_server: tuple[str, Path]
) -> None:
    base_url, _ = file_server
    url = f"{base_url}/missing.txt"
    result = run_template(receiver, tmp_path, TEMPLATES, "fetch_and_count", {"url": url})

    assert result.returncode == 1
    fatal = receiver.events[-1]
    assert fatal["type"] == "fatal"
    assert fatal["data"]["exit_status"] is None
    assert fatal["data"]["message"].startswith(f"download of {url} failed: curl: (22)")
    assert "404" in fatal["data"]["message"]


# --- helper functions -------------------------------------------------------------------


def test_pipeline_tokens_have_unique_ids(receiver: Receiver, tmp_path: Path) -> None:
    body = (
        'seq 1 20 | while IFS= read -r i; do relay_token " pipe$i"; done\n'
        'for i in 1 2 3 4 5 6 7 8; do relay_token " background$i" & done\n'
        "wait\n"
        'relay_log "$(relay_token " substitution")"\n'
        "relay_complete\n"
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0, result.stderr
    ids = [event["id"] for event in receiver.events]
    assert sorted(ids) == list(range(1, 33))
    tokens = {event["data"] for event in receiver.events_of_type("token")}
    expected = {f" pipe{i}" for i in range(1, 21)} | {f" background{i}" for i in range(1, 9)}
    assert tokens == expected | {" substitution"}
    assert receiver.types()[-1] == "complete"
    assert receiver.events[-1]["data"] is None


def test_retries_after_503_deliver_once(receiver: Receiver, tmp_path: Path) -> None:
    receiver.planned = [503, 503]
    result = run_template(receiver, tmp_path, TEMPLATES, "hello", {"steps": 2, "delay_ms": 0})

    assert result.returncode == 0, result.stderr
    assert receiver.types() == ["started", "progress", "log", "progress", "log", "complete"]
    assert [event["id"] for event in receiver.events] == list(range(1, 7))
    assert len(receiver.requests) == 6 + 2


def test_dropped_connection_retried_and_deduplicated(receiver: Receiver, tmp_path: Path) -> None:
    receiver.planned = ["drop"]
    result = run_template(receiver, tmp_path, TEMPLATES, "hello", {"steps": 1, "delay_ms": 0})

    assert result.returncode == 0, result.stderr
    assert receiver.types() == ["started", "progress", "log", "complete"]
    started_bodies = [r.body for r in receiver.requests if b'"type": "started"' in r.body]
    assert len(started_bodies) == 2
    assert started_bodies[0] == started_bodies[1]
    assert "retrying in 1 s" in result.stderr


def test_conflict_stops_quietly(receiver: Receiver, tmp_path: Path) -> None:
    receiver.status_for_all = 409
    result = run_template(receiver, tmp_path, TEMPLATES, "hello", {"steps": 2, "delay_ms": 0})

    assert result.returncode == 0
    assert result.stderr == ""
    assert len(receiver.requests) == 1


def test_rejected_token_returns_error(receiver: Receiver, tmp_path: Path) -> None:
    body = (
        'relay_log "hello"\n'
        'echo "relay_log status $?"\n'
        "relay_complete\n"
        'echo "relay_complete status $?"\n'
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body, token="wrong-token")

    assert result.returncode == 0
    assert result.stdout.splitlines() == ["relay_log status 1", "relay_complete status 1"]
    # started, log, complete and the EXIT trap's fatal each fail once, without retries.
    assert result.stderr.count("failed with HTTP 401") == 4
    assert len(receiver.requests) == 4
    assert receiver.events == []


def test_chunk_posts_bytes_with_mime(receiver: Receiver, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 16
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(payload)
    quoted = shlex.quote(str(data_file))
    body = (
        f'relay_chunk {quoted} "text/plain; charset=utf-8"\nrelay_chunk {quoted}\nrelay_complete\n'
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0, result.stderr
    chunks = receiver.events_of_type("chunk")
    assert len(chunks) == 2
    assert chunks[0]["data"] == payload
    assert chunks[0]["mime"] == "text/plain; charset=utf-8"
    assert chunks[1]["mime"] == "application/octet-stream"
    chunk_request = next(r for r in receiver.requests if r.query.get("type") == "chunk")
    assert chunk_request.headers["Content-Type"] == "application/octet-stream"
    assert "mime=text%2Fplain%3B%20charset%3Dutf-8" in chunk_request.raw_query
    assert_unique_increasing_ids(receiver.events)


def test_chunk_missing_file_is_usage_error(receiver: Receiver, tmp_path: Path) -> None:
    body = 'relay_chunk /nonexistent/file\necho "status $?"\nrelay_complete\n'
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert "status 2" in result.stdout
    assert "is not a readable regular file" in result.stderr
    assert receiver.types() == ["started", "complete"]


def test_json_escaping_round_trips(receiver: Receiver, tmp_path: Path) -> None:
    text = (
        "".join(chr(code) for code in range(1, 32))
        + ' quote " backslash \\ slash / del \x7f naïve 日本語 🚀 trailing newline\n'
    )
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    quoted = shlex.quote(str(text_file))
    # printf x keeps the trailing newline that command substitution would drop.
    body = (
        f"text=$(cat {quoted}; printf x)\n"
        "text=${text%x}\n"
        'relay_log "$text"\n'
        'relay_token "$text"\n'
        'relay_progress 50 "$text"\n'
        'relay_complete "{\\"text\\": $(relay_json_string "$text")}"\n'
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0, result.stderr
    assert receiver.events_of_type("log")[0]["data"] == text
    assert receiver.events_of_type("token")[0]["data"] == text
    assert receiver.events_of_type("progress")[0]["data"] == {"percent": 50, "message": text}
    assert receiver.events[-1]["data"] == {"text": text}
    raw_log = receiver.events_of_type("log")[0]["raw_body"]
    assert b"\\u0001" in raw_log
    assert b"\\u001f" in raw_log
    assert b"\\n" in raw_log
    assert "日本語".encode() in raw_log


def test_long_text_round_trips(receiver: Receiver, tmp_path: Path) -> None:
    # Long enough to span several of the helper's 32 KiB escaping pieces, with multibyte
    # characters and escapes crossing the piece boundaries.
    text = "".join(f'{i} é\x01"\\\t日本\n' for i in range(20000))
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    body = (
        f"text=$(cat {shlex.quote(str(text_file))}; printf x)\n"
        "text=${text%x}\n"
        'relay_log "$text"\n'
        "relay_complete\n"
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0, result.stderr
    assert len(text.encode()) > 4 * 32768
    assert receiver.events_of_type("log")[0]["data"] == text


def test_helper_works_under_strict_options(receiver: Receiver, tmp_path: Path) -> None:
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(b"abc")
    body = (
        "set -euo pipefail -o noclobber -o noglob\n"
        'relay_log "strict"\n'
        'relay_progress 10 "ten"\n'
        'relay_token " word"\n'
        f"relay_chunk {shlex.quote(str(data_file))} text/plain\n"
        'value=$(relay_arg missing) || value="default"\n'
        'relay_result "{\\"value\\": $(relay_json_string "$value")}"\n'
        "false\n"
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 1
    assert receiver.types() == ["started", "log", "progress", "token", "chunk", "result", "fatal"]
    assert receiver.events_of_type("result")[0]["data"] == {"value": "default"}
    assert receiver.events[-1]["data"] == {
        "message": "job script exited with status 1 before sending complete",
        "exit_status": 1,
    }


def test_relay_arg_prints_values(receiver: Receiver, tmp_path: Path) -> None:
    arguments = {
        "text": "two\nlines\n",
        "empty": "",
        "integer": 5,
        "real": 1.5,
        "flag": True,
        "nothing": None,
        "list": [1, "x"],
        "object": {"a": "é"},
    }
    arguments_json = json.dumps(arguments, ensure_ascii=False)
    output = tmp_path / "out"
    output.mkdir()
    names = " ".join([*arguments, "missing"])
    body = (
        f"for name in {names}; do\n"
        f'    relay_arg "$name" >{output}/"$name"\n'
        f'    echo "$?" >{output}/"$name".status\n'
        "done\n"
        f"relay_args >{output}/all\n"
        "relay_complete\n"
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body, arguments_json=arguments_json)

    assert result.returncode == 0, result.stderr
    expected = {
        "text": b"two\nlines\n",
        "empty": b"",
        "integer": b"5",
        "real": b"1.5",
        "flag": b"true",
        "nothing": b"null",
        "list": b'[1,"x"]',
        "object": '{"a":"é"}'.encode(),
    }
    for name, value in expected.items():
        assert (output / name).read_bytes() == value, name
        assert (output / f"{name}.status").read_text() == "0\n", name
    assert (output / "missing").read_bytes() == b""
    assert (output / "missing.status").read_text() == "1\n"
    assert (output / "all").read_bytes() == arguments_json.encode()


def test_progress_validates_percent(receiver: Receiver, tmp_path: Path) -> None:
    body = (
        "for percent in 101 100.5 -1 abc 1e2 ''; do\n"
        '    relay_progress "$percent"\n'
        '    echo "$percent:$?"\n'
        "done\n"
        "relay_progress 007 seven\n"
        "relay_progress 62.5\n"
        "relay_progress 100.00\n"
        "relay_complete\n"
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["101:2", "100.5:2", "-1:2", "abc:2", "1e2:2", ":2"]
    progress = [event["data"] for event in receiver.events_of_type("progress")]
    assert progress == [{"percent": 7, "message": "seven"}, {"percent": 62.5}, {"percent": 100}]
    assert b'"percent": 100.00}' in receiver.events_of_type("progress")[2]["raw_body"]


def test_complete_sent_only_once(receiver: Receiver, tmp_path: Path) -> None:
    body = 'relay_complete \'{"n": 1}\'\nrelay_complete \'{"n": 2}\'\necho "second $?"\n'
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0
    assert "second 1" in result.stdout
    assert receiver.types() == ["started", "complete"]
    assert receiver.events[-1]["data"] == {"n": 1}


def test_fatal_in_pipeline_ends_script(receiver: Receiver, tmp_path: Path) -> None:
    body = (
        'echo bad | while IFS= read -r line; do relay_fatal "rejected input: $line"; done\n'
        'relay_log "not reached"\n'
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 1
    assert receiver.types() == ["started", "fatal"]
    assert receiver.events[-1]["data"] == {"message": "rejected input: bad", "exit_status": None}
    assert "relay_fatal: rejected input: bad" in result.stderr


@pytest.mark.parametrize(
    "signal_number,exit_status",
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["TERM", "HUP", "INT"],
)
def test_signal_sends_fatal(
    receiver: Receiver, tmp_path: Path, signal_number: signal.Signals, exit_status: int
) -> None:
    script = write_job(tmp_path, INLINE_HEADER + 'relay_log "waiting"\nsleep 30\nrelay_complete\n')
    environment = job_environment(receiver, tmp_path, "{}")
    # qdel and the walltime limit signal the job's whole process group, so the test does too.
    process = subprocess.Popen(
        ["bash", str(script)],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while "log" not in receiver.types() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "log" in receiver.types(), "the job sent no log event within 20 s"
        os.killpg(process.pid, signal_number)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert returncode == exit_status
    assert receiver.types() == ["started", "log", "fatal"]
    fatal = receiver.events[-1]["data"]
    assert fatal["exit_status"] == exit_status
    assert f"SIG{signal_number.name[3:]}" in fatal["message"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_temp_folder_private_and_removed(receiver: Receiver, tmp_path: Path) -> None:
    body = (
        'stat -c %a "$RELAY_SCRATCH/.."\n'
        'stat -c %a "$RELAY_SCRATCH/../auth_header"\n'
        "relay_complete\n"
    )
    result = run_job(receiver, tmp_path, INLINE_HEADER + body)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["700", "600"]
    assert list((tmp_path / "tmp").iterdir()) == []


def write_curl_shim(tmp_path: Path, fail_first_call: bool = False) -> tuple[Path, Path]:
    """Write a curl wrapper that appends its argv to a log, then runs the real curl.

    With fail_first_call, the first call exits with curl's status 7 (failed to connect)
    without a request, as curl does once its retries for a refused connection run out.
    Returns the wrapper's folder, to put first in PATH, and the log.
    """
    real_curl = shutil.which("curl")
    assert real_curl is not None, "curl not found in PATH"
    shim_folder = tmp_path / "shim"
    shim_folder.mkdir()
    argv_log = tmp_path / "curl-argv.log"
    failure = ""
    if fail_first_call:
        failure = (
            f"if [[ $(wc -l <{shlex.quote(str(argv_log))}) == 1 ]]; then\n"
            "    echo 'curl: (7) Failed to connect (simulated)' >&2\n"
            "    printf 000\n"
            "    exit 7\n"
            "fi\n"
        )
    shim = shim_folder / "curl"
    shim.write_text(
        "#!/bin/bash\n"
        f"printf '%s\\n' \"$*\" >>{shlex.quote(str(argv_log))}\n"
        + failure
        + f'exec {shlex.quote(real_curl)} "$@"\n'
    )
    shim.chmod(0o755)
    return shim_folder, argv_log


def test_failed_post_limits_later_retries(receiver: Receiver, tmp_path: Path) -> None:
    shim_folder, argv_log = write_curl_shim(tmp_path, fail_first_call=True)
    body = 'relay_log "one"\nrelay_log "two"\nrelay_complete\n'
    result = run_job(receiver, tmp_path, INLINE_HEADER + body, path_prefix=shim_folder)

    assert result.returncode == 0, result.stderr
    assert "POST of event 1 (started)" in result.stderr
    assert "failed with curl exit status 7" in result.stderr
    assert receiver.types() == ["log", "log", "complete"]
    curl_calls = argv_log.read_text().splitlines()
    assert len(curl_calls) == 4
    assert "--retry 10 " in curl_calls[0]
    # After the failure, "one" gets a single attempt. Its success restores full retries.
    assert "--retry 0 " in curl_calls[1]
    assert "--retry 10 " in curl_calls[2]
    assert "--retry 10 " in curl_calls[3]


def test_token_absent_from_command_lines(receiver: Receiver, tmp_path: Path) -> None:
    shim_folder, argv_log = write_curl_shim(tmp_path)
    arguments = template_arguments(
        TEMPLATES / "token_stream.json", {"n": 30, "seed": 5, "delay_ms": 20}
    )
    script = write_job(tmp_path, (TEMPLATES / "token_stream.pbs").read_text())
    environment = job_environment(
        receiver, tmp_path, json.dumps(arguments), path_prefix=shim_folder
    )
    process = subprocess.Popen(
        ["bash", str(script)],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Sample every process's argv while the job runs, as ps would show it.
    leaked_in: list[str] = []
    samples = 0
    while process.poll() is None:
        for command_line in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = command_line.read_bytes()
            except OSError:
                continue
            if TOKEN.encode() in argv:
                leaked_in.append(argv.replace(b"\0", b" ").decode(errors="replace"))
        samples += 1
        time.sleep(0.001)
    returncode = process.wait(timeout=60)

    assert returncode == 0
    assert samples > 0
    assert leaked_in == []
    curl_calls = argv_log.read_text().splitlines()
    assert len(curl_calls) == len(receiver.requests) == 1 + 30 + 1
    for call in curl_calls:
        assert TOKEN not in call
        assert "-H @" in call
        assert "--data-binary @-" in call


# --- files ------------------------------------------------------------------------------


def template_pairs(folder: Path) -> list[tuple[Path, Path]]:
    return [(template, template.with_suffix(".json")) for template in sorted(folder.glob("*.pbs"))]


@pytest.mark.parametrize(
    "template,schema_path",
    template_pairs(TEMPLATES) + template_pairs(TEST_TEMPLATES),
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_template_files_are_valid(template: Path, schema_path: Path) -> None:
    name = template.stem
    text = template.read_text()
    assert re.search(rf"^#PBS -N relay-{re.escape(name)}$", text, re.MULTILINE)
    assert re.search(r"^#PBS -l walltime=\d\d:\d\d:\d\d$", text, re.MULTILINE)
    check = subprocess.run(["bash", "-n", str(template)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"


@pytest.mark.parametrize(
    "schema_path",
    [schema_path for _, schema_path in template_pairs(TEMPLATES)],
    ids=lambda path: path.name,
)
def test_template_schema_describes_form(schema_path: Path) -> None:
    # A web page renders these schemas as forms, so every field needs a title and a
    # description, and unknown fields are rejected.
    schema = json.loads(schema_path.read_text())
    assert schema["title"]
    assert schema["description"]
    assert schema["additionalProperties"] is False
    assert isinstance(schema["required"], list)
    for property_name, spec in schema["properties"].items():
        assert spec.get("type"), f"{property_name} has no type"
        assert spec.get("title"), f"{property_name} has no title"
        assert spec.get("description"), f"{property_name} has no description"
    defaults = {
        name: spec["default"] for name, spec in schema["properties"].items() if "default" in spec
    }
    for name in schema["required"]:
        assert name not in defaults, f"required {name} has a default"
    if not schema["required"]:
        # A form submitted unchanged sends the defaults, so they must be valid together.
        jsonschema.Draft202012Validator(schema).validate(defaults)


def test_helper_parses_with_bash_n() -> None:
    check = subprocess.run(["bash", "-n", str(HELPER)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    "url,valid",
    [
        ("https://example.org/data.txt", True),
        ("http://127.0.0.1:8080/a?b=c#d", True),
        ("ftp://example.org/data.txt", False),
        ("file:///etc/passwd", False),
        ("http://", False),
        ("http://host/with space", False),
    ],
)
def test_fetch_schema_url_pattern(url: str, valid: bool) -> None:
    schema = json.loads((TEMPLATES / "fetch_and_count.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"url": url}) is valid
