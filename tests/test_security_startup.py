"""Start-up security: no open relay on a public address, and keys made by `relay key`."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.relay_process import ROOT, TEST_SCRIPTS, RelayProcess, free_port, submit_frame
from tests.security.client import collect_with, handshake_status, http_request
from tests.security.relay_setup import ApiKey, auth_config, start_relay

REFUSAL_SECONDS = 10


def relay_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `relay ARGS` in a new network namespace, and kill it after REFUSAL_SECONDS.

    In the namespace (unshare --net, which needs root) only a loopback interface exists and is
    down, so a relay that does not refuse a public address binds one that nothing can reach.
    """
    environment = {k: v for k, v in os.environ.items() if k not in {"PORT", "REDIS_URL"}}
    command = ["unshare", "--net", "--", sys.executable, "-m", "relay.cli", *args]
    try:
        return subprocess.run(
            command,
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=REFUSAL_SECONDS,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"relay still running after {REFUSAL_SECONDS}s: {error.stderr!r}")


@pytest.mark.parametrize("where", ["flag", "config", "empty-keys"])
def test_serve_public_host_without_keys_exits(tmp_path: Path, where: str) -> None:
    """`relay serve` on 0.0.0.0 with no API keys exits at once, with the reason and the fix."""
    args = ["serve", "--port", str(free_port()), "--scripts", str(TEST_SCRIPTS)]
    config = tmp_path / "relay.toml"
    if where == "flag":
        args += ["--host", "0.0.0.0"]
    elif where == "config":
        config.write_text('[server]\nhost = "0.0.0.0"\n')
        args += ["--config", str(config)]
    else:
        config.write_text('[server]\nhost = "0.0.0.0"\n[auth]\nkeys = []\n')
        args += ["--config", str(config)]

    result = relay_command(*args)
    message = result.stdout + result.stderr

    assert result.returncode != 0, message
    assert "Uvicorn running" not in message
    assert "key" in message.lower(), message
    # What to do: create a key with `relay key`, or configure [auth].
    assert "relay key" in message or "[auth]" in message, message


def test_serve_loopback_without_keys_is_open(tmp_path: Path) -> None:
    server = RelayProcess(tmp_path, "--scripts", str(TEST_SCRIPTS))
    server.start()
    try:
        stream = collect_with(f"{server.ws_url}/ws/jobs", submit_frame("echo", a=1))
        record = http_request(server, "GET", f"/jobs/{stream.job_id}")
    finally:
        server.stop()

    assert stream.close_code == 1000, (stream.close_code, stream.close_reason)
    assert stream.events[-1]["data"] == {"a": 1}
    assert record.status == 200


def test_key_command_prints_working_key(tmp_path: Path) -> None:
    """`relay key NAME` prints a random key and a config line with its SHA-256."""
    outputs = []
    for _ in range(2):
        result = relay_command("key", "alice")
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)

    keys = []
    for output in outputs:
        digest = re.search(r'sha256\s*=\s*"([0-9a-f]{64})"', output)
        assert digest, output
        assert re.search(r'name\s*=\s*"alice"', output), output
        words = set(re.split(r"[\s\"'{},=]+", output))
        matching = [
            word for word in words if hashlib.sha256(word.encode()).hexdigest() == digest[1]
        ]
        assert len(matching) == 1, output
        keys.append(matching[0])
    # 22 characters of base64url (or 32 of hex) carry 128 bits.
    assert len(keys[0]) >= 22
    assert keys[0] != keys[1]

    printed = ApiKey("alice", keys[0])
    server = start_relay(tmp_path, auth_config([printed]))
    try:
        accepted = handshake_status(f"{server.ws_url}/ws/jobs", printed.headers)
        refused = handshake_status(f"{server.ws_url}/ws/jobs")
    finally:
        server.stop()
    assert accepted == 101, server.log()
    assert refused == 403, server.log()
