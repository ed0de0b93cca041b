"""API keys and config files for relays that run with [auth] and [limits]."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.relay_process import TEST_SCRIPTS, RelayProcess

ALLOWED_ORIGIN = "http://app.example.test"
EVIL_ORIGIN = "http://evil.example.test"

# Limits high enough that tests which do not test a limit never reach one.
GENEROUS_LIMITS: dict[str, int] = {
    "events_per_second": 100_000,
    "jobs_per_key": 1000,
    "sockets_per_key": 1000,
    "submits_per_minute": 10_000,
}


@dataclass(frozen=True)
class ApiKey:
    """A client API key: its name in the config and the secret a client sends."""

    name: str
    secret: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def new_key(name: str) -> ApiKey:
    return ApiKey(name, secrets.token_urlsafe(32))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def auth_config(
    keys: list[ApiKey],
    *,
    origins: tuple[str, ...] = (ALLOWED_ORIGIN,),
    auth: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    default_limits: bool = False,
) -> str:
    """Return the TOML text of [server], [auth] and [limits] for `keys`.

    [limits] contains GENEROUS_LIMITS updated with `limits`, or is left out with
    `default_limits`, so that the relay's own defaults apply.
    """
    entries = ", ".join(f'{{ name = "{key.name}", sha256 = "{key.sha256}" }}' for key in keys)
    text = ""
    if server:
        text += _table("server", server)
    text += f"[auth]\nkeys = [{entries}]\n"
    text += "".join(f"{key} = {_toml_value(value)}\n" for key, value in (auth or {}).items())
    text += f"origins = {_toml_value(list(origins))}\n"
    if not default_limits:
        text += _table("limits", {**GENEROUS_LIMITS, **(limits or {})})
    return text


def start_relay(workdir: Path, config: str, *extra: str) -> RelayProcess:
    """Start `relay serve` with the test templates and `config`, and return it running.

    `config` may contain `{port}`, replaced with the relay's own port before it starts.
    """
    server = RelayProcess(workdir, "--scripts", str(TEST_SCRIPTS), *extra)
    path = workdir / f"relay-{server.port}.toml"
    path.write_text(config.replace("{port}", str(server.port)))
    server.args = (*server.args, "--config", str(path))
    server.start()
    return server
