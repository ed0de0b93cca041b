"""Secrets stay secret: the job token and the API keys appear in no log, response or argv.

The token is read from the file that the `hold` test template writes (see
tests/security/held_job.py). With `tick` the job sends a log event every 100 ms, so curl
processes run while /proc is scanned.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, submit_frame
from tests.security.client import Response, collect_with, event_body, http_request, post_events
from tests.security.held_job import folder_for_user, held_job
from tests.security.job_files import job_script_files
from tests.security.relay_setup import auth_config, new_key, start_relay
from tests.test_pbs_submit import write_config

ALICE = new_key("alice")
BOB = new_key("bob")
SCAN_SECONDS = 1.0
MAX_RECORD_SECONDS = 60.0


@dataclass
class Target:
    server: RelayProcess
    folder: Path
    """A folder the jobs can write their token file into."""
    cluster_workdir: Path | None = None
    """The test cluster's working folder, seen from this machine; None for local jobs."""


@pytest.fixture(scope="module", params=["local", "pbs"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp(f"secrets-{request.param}")
    config = auth_config([ALICE, BOB], limits={"max_body_bytes": 4096})
    with ExitStack() as stack:
        folder = workdir
        cluster_workdir = None
        if request.param == "pbs":
            cluster = request.getfixturevalue("test_cluster")
            config = write_config(workdir / "cluster.toml", cluster).read_text() + config
            folder = stack.enter_context(folder_for_user(cluster.user))
            cluster_workdir = Path(cluster.local_workdir)
        server = start_relay(workdir, config)
        stack.callback(server.stop)
        yield Target(server, folder, cluster_workdir)


class CommandLineRecorder:
    """Records every distinct process argv, as ps shows it, in a thread until stop()."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.scans = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_RECORD_SECONDS
        while not self._stopping.is_set() and time.monotonic() < deadline:
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    self.seen.add(path.read_bytes())
                except OSError:
                    continue
            self.scans += 1

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)

    def containing(self, secret: str) -> list[str]:
        return [
            argv.replace(b"\0", b" ").decode(errors="replace")
            for argv in self.seen
            if secret.encode() in argv
        ]


def test_token_absent_from_job_command_lines(target: Target) -> None:
    """While the job runs and sends events, no process shows the token in its argv.

    Short-lived processes such as curl can slip between two scans, so a pass is evidence,
    not proof.
    """
    with held_job(target.server, ALICE, target.folder, tick=True) as job:
        job.client.wait_for(lambda stream: len(stream.of_type("log")) >= 2)
        recorder = CommandLineRecorder()
        try:
            time.sleep(SCAN_SECONDS)
        finally:
            recorder.stop()
        stream = job.release(45)

    assert recorder.scans > 0
    assert recorder.containing(job.token) == []
    assert_complete(stream)


def test_token_absent_from_submit_command_lines(target: Target) -> None:
    """From the submit until the job runs, no process shows the token in its argv.

    On the test cluster the login node is this machine, so the scan covers the commands
    that the relay runs over SSH: qsub, and sbatch under Slurm's Torque wrapper. Any user of
    a shared login node can read their argv with ps.
    """
    recorder = CommandLineRecorder()
    try:
        with held_job(target.server, ALICE, target.folder) as job:
            recorder.stop()
            stream = job.release(45)
    finally:
        recorder.stop()

    assert recorder.scans > 0
    assert recorder.containing(job.token) == []
    assert_complete(stream)


def test_job_script_folder_private(target: Target) -> None:
    """Other users cannot list or read the folder of the job scripts.

    A script may contain what its job needs, the token included, and other users of the login
    node could otherwise read it.
    """
    with held_job(target.server, ALICE, target.folder) as job:
        scripts = job_script_files(job.job_id, target.cluster_workdir)
        stream = job.release(45)

    assert scripts, f"no script of job {job.job_id}"
    for script in scripts:
        assert script.parent.stat().st_mode & 0o077 == 0, oct(script.parent.stat().st_mode)
    assert_complete(stream)


def test_token_absent_from_responses_and_log(target: Target) -> None:
    server = target.server
    with held_job(server, ALICE, target.folder) as job:
        token = job.token
        post = post_events
        responses: dict[str, Response] = {
            "202": post(server, job.job_id, token, event_body("log", "fine")),
            "400": post(server, job.job_id, token, b"{not json"),
            "401": post(server, job.job_id, secrets.token_urlsafe(32), event_body("log", "x")),
            "413": post(server, job.job_id, token, event_body("log", "x" * 5000)),
            "415": post(server, job.job_id, token, b"x", "text/plain"),
            "422": post(server, job.job_id, token, event_body("bogus", token)),
            "GET job": http_request(server, "GET", f"/jobs/{job.job_id}", headers=ALICE.headers),
            "GET events": http_request(
                server, "GET", f"/jobs/{job.job_id}/events", headers=ALICE.headers
            ),
            "GET job as bob": http_request(
                server, "GET", f"/jobs/{job.job_id}", headers=BOB.headers
            ),
        }
        stream = job.release(45)
    responses["409"] = post(server, job.job_id, token, event_body("log", "late"))
    replay = collect_with(f"{server.ws_url}/ws/jobs/{job.job_id}", headers=ALICE.headers)
    log = server.log_path.read_text(errors="replace")

    assert responses["202"].status == 202
    for name, response in responses.items():
        assert token not in response.body.decode(errors="replace"), name
        assert token not in json.dumps(response.headers), name
    assert token not in json.dumps(stream.events)
    assert token not in json.dumps(replay.events)
    assert token not in stream.close_reason
    assert token not in log


def test_api_keys_absent_from_log(target: Target) -> None:
    """Keys sent in the query, as browsers must, are not logged with the request line.

    Beyond the letter of the spec, which names the job token: a logged key lets anyone
    who reads the log run jobs on the cluster account.
    """
    server = target.server
    stream = collect_with(
        f"{server.ws_url}/ws/jobs?access_token={BOB.secret}", submit_frame("echo", a=1)
    )
    query = f"?access_token={BOB.secret}"
    record = http_request(server, "GET", f"/jobs/{stream.job_id}{query}")
    refused = http_request(server, "GET", f"/jobs/{stream.job_id}?access_token={BOB.sha256}x")
    log = server.log_path.read_text(errors="replace")

    assert_complete(stream)
    assert record.status == 200
    assert refused.status == 401
    assert BOB.secret not in log
    assert ALICE.secret not in log
