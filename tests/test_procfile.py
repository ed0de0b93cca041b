"""The Procfile's web process, as a platform runs it: through a shell, with PORT set."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from relay.auth import hash_key
from tests.job_checks import assert_complete
from tests.relay_process import ROOT, collect, free_port, submit_frame


def test_procfile_web_honours_port_redis_and_config(tmp_path: Path, redis_server: Any) -> None:
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ")
    command = line.removeprefix("web: ")
    config = tmp_path / "relay.toml"
    config.write_text(f'[auth]\nkeys = [{{ name = "web", sha256 = "{hash_key("k-1")}" }}]\n')
    port = free_port()
    environment = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "PORT": str(port),
        "REDIS_URL": redis_server.url,
        "RELAY_CONFIG": str(config),
        # Tests listen on loopback only; a platform leaves HOST unset.
        "HOST": "127.0.0.1",
    }
    log = (tmp_path / "web.log").open("wb")
    process = subprocess.Popen(
        ["sh", "-c", f"exec {command}"], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "web.log").read_text()
                assert time.monotonic() < deadline, "web process did not listen on $PORT"
                time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/ws/jobs?access_token=k-1"
        stream = asyncio.run(collect(url, submit_frame("hello", steps=1, delay_ms=0)))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        log.close()
    assert_complete(stream)
    client = redis.Redis.from_url(redis_server.url)
    try:
        stored = client.hget(f"relay:{{{stream.job_id}}}:job", "owner")
    finally:
        client.close()
    assert stored == b"web"
