"""Jobs of the `hold` test template, whose ingest token a test reads from a file.

The relay never reveals a job's token, so the `hold` template writes `$RELAY_TOKEN` into a file
that the test names, then waits until the test creates a release file. Meanwhile the test can
POST crafted requests to the ingest route with the real token.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.relay_process import RelayProcess, Stream, submit_frame
from tests.security.client import BackgroundStream
from tests.security.relay_setup import ApiKey

START_SECONDS = 30.0


@dataclass
class HeldJob:
    client: BackgroundStream
    job_id: str
    token: str
    release_file: Path

    def release(self, seconds: float = 30) -> Stream:
        """Let the job complete and return its stream once the socket closed."""
        self.release_file.touch()
        return self.client.wait(seconds)


def wait_for_file(path: Path, client: BackgroundStream, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if client.done:
            raise AssertionError(
                f"job ended before writing {path}: {client.stream.types} "
                f"{client.stream.close_code} {client.stream.close_reason!r}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written within {seconds}s: {client.stream.types}")
        time.sleep(0.05)


@contextmanager
def held_job(
    server: RelayProcess,
    key: ApiKey | None,
    folder: Path,
    script: str = "hold",
    **args: Any,
) -> Iterator[HeldJob]:
    """Submit a `hold` job as `key` and yield it once its token file exists.

    On exit the job is released; its socket is then closed or closes soon after.
    """
    name = uuid.uuid4().hex
    token_file = folder / f"token-{name}"
    release_file = folder / f"release-{name}"
    frame = submit_frame(
        script, token_file=str(token_file), release_file=str(release_file), seconds=60, **args
    )
    client = BackgroundStream(f"{server.ws_url}/ws/jobs", frame, key.headers if key else None)
    try:
        client.wait_for(lambda stream: bool(stream.events), START_SECONDS)
        wait_for_file(token_file, client, START_SECONDS)
        yield HeldJob(client, client.stream.job_id, token_file.read_text(), release_file)
    finally:
        release_file.touch()


@contextmanager
def folder_for_user(user: str) -> Iterator[Path]:
    """Yield a new folder in /tmp that `user` owns (mode 700), and remove it afterwards.

    Jobs on the test cluster run as that user, so they cannot write into pytest's tmp_path.
    """
    folder = Path(tempfile.mkdtemp(prefix="relay-security-"))
    account = pwd.getpwnam(user)
    os.chown(folder, account.pw_uid, account.pw_gid)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
