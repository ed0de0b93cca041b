"""Submit frames that try to run something other than a valid template with valid arguments."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.relay_process import RelayProcess
from tests.security.client import collect_with, http_request
from tests.security.relay_setup import auth_config, new_key, start_relay

ALICE = new_key("alice")

INVALID_NAMES: list[Any] = [
    "../echo",
    "echo/../echo",
    "../../pbs_scripts/hello",
    "/bin/sh",
    "./echo",
    "..",
    ".",
    "-echo",
    "--help",
    "-",
    "echo.pbs",
    "relay",
    "relay.sh",
    "no_such_template",
    "echo\n",
    "echo\u0000",
    "echo ",
    "echo;id",
    "$(id)",
    "h\u00e9llo",
    "",
    "a" * 65,
    7,
    None,
    True,
    ["echo"],
    {"name": "echo"},
]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = start_relay(tmp_path_factory.mktemp("submit"), auth_config([ALICE]))
    yield server
    server.stop()


def log_size(relay: RelayProcess) -> int:
    return relay.log_path.stat().st_size


def log_since(relay: RelayProcess, offset: int) -> str:
    with relay.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def submit(relay: RelayProcess, frame: dict[str, Any]) -> Any:
    return collect_with(f"{relay.ws_url}/ws/jobs", frame, ALICE.headers, seconds=30)


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_template_name_invalid_closes_4400(relay: RelayProcess, name: Any) -> None:
    before = log_size(relay)
    stream = submit(relay, {"type": "submit", "script": name, "args": {}})
    added = log_since(relay, before)

    assert stream.close_code == 4400, (stream.close_code, stream.close_reason)
    assert stream.events == []
    assert "started locally" not in added
    assert " created" not in added


@pytest.mark.parametrize(
    "script,args,argument",
    [
        ("hello", {"name": "x" * 201}, "name"),
        ("hello", {"name": ["Ada"]}, "name"),
        ("hello", {"name": {"$(id)": 1}}, "name"),
        ("hello", {"steps": 1000}, "steps"),
        ("hello", {"steps": "3"}, "steps"),
        ("hello", {"steps": 2.5}, "steps"),
        ("hello", {"delay_ms": -1}, "delay_ms"),
        ("hello", {"evil": "$(id)"}, "evil"),
        ("hello", {"--help": ""}, "--help"),
        ("fetch_and_count", {"url": "file:///etc/passwd"}, "url"),
        ("fetch_and_count", {"url": "http://x/ -o /tmp/x"}, "url"),
        ("fail", {"status": 0}, "status"),
        ("token_stream", {"n": -1}, "n"),
    ],
)
def test_args_invalid_close_4400_naming_argument(
    relay: RelayProcess, script: str, args: dict[str, Any], argument: str
) -> None:
    before = log_size(relay)
    stream = submit(relay, {"type": "submit", "script": script, "args": args})
    added = log_since(relay, before)

    assert stream.close_code == 4400, (stream.close_code, stream.close_reason)
    assert argument in stream.close_reason
    assert stream.events == []
    assert "started locally" not in added


@pytest.mark.parametrize("args", [["a"], "name=Ada", 1, True], ids=repr)
def test_args_not_object_closes_4400(relay: RelayProcess, args: Any) -> None:
    stream = submit(relay, {"type": "submit", "script": "hello", "args": args})
    assert stream.close_code == 4400, (stream.close_code, stream.close_reason)
    assert stream.events == []


@pytest.mark.parametrize("cluster", ["../local", "no_such_cluster", 1, ["local"]], ids=repr)
def test_cluster_invalid_closes_4400(relay: RelayProcess, cluster: Any) -> None:
    frame = {"type": "submit", "script": "echo", "args": {}, "cluster": cluster}
    stream = submit(relay, frame)
    assert stream.close_code == 4400, (stream.close_code, stream.close_reason)
    assert stream.events == []


def test_deeply_nested_args_close_4400(relay: RelayProcess) -> None:
    """Arguments nested deeper than Python's recursion limit get 4400, not a crashed handler."""
    depth = 100_000
    text = '{"type": "submit", "script": "echo", "args": {"a": ' + "[" * depth + "]" * depth + "}}"

    async def send_raw() -> tuple[int | None, str]:
        async with connect(
            f"{relay.ws_url}/ws/jobs", additional_headers=ALICE.headers, max_size=None
        ) as websocket:
            await websocket.send(text)
            try:
                async for _ in websocket:
                    pass
            except ConnectionClosed:
                pass
            return websocket.close_code, websocket.close_reason or ""

    code, reason = asyncio.run(send_raw())
    assert code == 4400, (code, reason)
    assert http_request(relay, "GET", "/healthz").status == 200
