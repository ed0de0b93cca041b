"""Argument values that try to run commands, on the local scheduler and through `qsub -v`.

The `echo` test template completes with its arguments exactly as it received them, so a test
compares them with what it sent. Each injected command would create two marker files: one in
/tmp, because jobs on the test cluster run as the user relaytest, and one in the test's
tmp_path, where local jobs (run as root) can write. No marker may appear.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, Stream, submit_frame
from tests.security.client import collect_with
from tests.security.job_files import job_script_files
from tests.security.relay_setup import auth_config, new_key, start_relay
from tests.test_pbs_submit import write_config

ALICE = new_key("alice")
SETUPS = ["local", "pbs"]


@pytest.fixture(scope="module", params=SETUPS)
def relay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    workdir = tmp_path_factory.mktemp(f"injection-{request.param}")
    config = auth_config([ALICE])
    if request.param == "pbs":
        cluster = request.getfixturevalue("test_cluster")
        config = write_config(workdir / "cluster.toml", cluster).read_text() + config
    server = start_relay(workdir, config)
    yield server
    server.stop()


class Markers:
    """Marker files that an injected command would create, and the commands that create them."""

    def __init__(self, tmp_path: Path) -> None:
        self.paths: list[Path] = []
        self.tmp_path = tmp_path
        self.prefix = f"/tmp/PWNED_{uuid.uuid4().hex}"

    def command(self) -> str:
        number = len(self.paths)
        shared = Path(f"{self.prefix}_{number}")
        private = self.tmp_path / f"pwned_{number}"
        self.paths += [shared, private]
        return f"touch {shared} {private}"

    def existing(self) -> list[Path]:
        return [path for path in self.paths if path.exists()]

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


def injection_args(markers: Markers) -> dict[str, Any]:
    return {
        "command_substitution": f"$({markers.command()})",
        "backticks": f"`{markers.command()}`",
        "semicolon": f"x; {markers.command()}",
        "pipe": f"x | {markers.command()}",
        "and": f"x && {markers.command()}",
        "or": f"false || {markers.command()}",
        "background": f"x & {markers.command()}",
        "newline": f"x\n{markers.command()}\n",
        "carriage_return": f"x\r{markers.command()}\r",
        "single_quote": f"x'; {markers.command()}; echo '",
        "double_quote": f'x"; {markers.command()}; echo "',
        "process_substitution": f"<({markers.command()})",
        "arithmetic": f"$(( $({markers.command()}) ))",
        "redirect": f"x > {markers.tmp_path / 'redirected'}",
        "nul": f"a\u0000b\u0000; {markers.command()}",
        "comma_in_qsub_list": (
            f"x,RELAY_URL=http://127.0.0.1:9/,RELAY_TOKEN=forged,Y=$({markers.command()})"
        ),
        "variables": "$RELAY_TOKEN ${RELAY_TOKEN} $HOME ${IFS} $0 $$",
        "glob": "* ? [a-z] ~ ~root",
        "format_string": "%s%n%x%%",
        "backslashes": "\\ \\\\ \\n \\u0000 \\x41 \\'",
        "control_characters": "\u0001\u0007\u001b[31m\u007f",
        "unicode": "h\u00e9llo \u2713 \u202e\u0645\u0631\u062d\u0628\u0627 \U0001f600",
        "-x": "--help",
        "--help": "-x",
        "-v": "RELAY_TOKEN=forged",
        "--": "-",
        "-e RELAY_URL=http://127.0.0.1:9": "-o /tmp/x",
        f"name $({markers.command()})": "key injection",
        "nested": {f"`{markers.command()}`": [f"$({markers.command()})", None, True, 1.5, -3]},
        "numbers": [0, -1, 1e300, 12345678901234567890, 0.1],
        "empty": "",
    }


def run_echo(relay: RelayProcess, args: dict[str, Any]) -> Stream:
    frame = submit_frame("echo", **args)
    return collect_with(f"{relay.ws_url}/ws/jobs", frame, ALICE.headers, seconds=45)


def test_echo_injection_values_round_trip(relay: RelayProcess, tmp_path: Path) -> None:
    markers = Markers(tmp_path)
    args = injection_args(markers)
    try:
        stream = run_echo(relay, args)
        time.sleep(0.5)  # time for a backgrounded injected command to run
        created = markers.existing()
    finally:
        markers.remove()

    assert_complete(stream)
    assert stream.events[-1]["data"] == args
    assert created == []
    assert not (tmp_path / "redirected").exists()


def test_echo_large_value_round_trips(relay: RelayProcess, tmp_path: Path) -> None:
    """A 100 KB argument, with an injection in the middle, arrives whole."""
    markers = Markers(tmp_path)
    value = "A" * 50_000 + f"$({markers.command()})" + "\u00e9" * 10_000 + "Z" * 30_000
    args = {"big": value}
    try:
        stream = run_echo(relay, args)
        created = markers.existing()
    finally:
        markers.remove()

    assert_complete(stream)
    assert stream.events[-1]["data"] == args
    assert created == []


def test_echo_option_like_only_args(relay: RelayProcess, tmp_path: Path) -> None:
    """Arguments that are nothing but options, as a command line parser would read them."""
    args = {"-h": "-h", "--version": "--version", "-": "--", "-v": "A=B,C=D"}
    stream = run_echo(relay, args)
    assert_complete(stream)
    assert stream.events[-1]["data"] == args


def test_job_script_has_no_argument_values(
    request: pytest.FixtureRequest, relay: RelayProcess
) -> None:
    """The job script file contains no argument value: only RELAY_ARGS carries them."""
    canary = f"canary-{uuid.uuid4().hex}"
    stream = run_echo(relay, {"value": canary})
    assert_complete(stream)
    cluster_workdir = None
    if request.node.callspec.params["relay"] == "pbs":
        cluster_workdir = Path(request.getfixturevalue("test_cluster").local_workdir)
    scripts = job_script_files(stream.job_id, cluster_workdir)
    assert scripts, f"no script of job {stream.job_id}"
    for script in scripts:
        assert canary not in script.read_text(errors="replace"), script
