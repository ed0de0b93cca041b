"""Client authentication: API keys stored as SHA-256 hashes, and the browser Origin allowlist."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

LOCAL_OWNER = "local"
"""Owner of every job when no API keys are configured (loopback only)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_urlsafe(32)


def own_origins(host: str, port: int, public_url: str) -> tuple[str, ...]:
    """Return the origins of the relay's own web page: its public URL, and its loopback names."""
    scheme, _, rest = public_url.partition("://")
    origins = [f"{scheme}://{rest.split('/')[0]}"]
    if is_loopback(host):
        origins += [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    return tuple(origins)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Finds the API key of a request and checks browser Origins."""

    def __init__(
        self, keys: tuple[ApiKey, ...], origins: tuple[str, ...], own_origins: tuple[str, ...] = ()
    ) -> None:
        self.keys = keys
        self.origins = frozenset(origin.rstrip("/") for origin in (*origins, *own_origins))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def client(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        """Return the name of the request's key, LOCAL_OWNER without keys, or None if invalid."""
        if not self.keys:
            return LOCAL_OWNER
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            presented = query.get("access_token", "")
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        # Every configured hash is compared, in constant time, so timing reveals nothing
        # about which key was close.
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key.name
        return found

    def origin_allowed(self, origin: str | None) -> bool:
        """Allow requests without Origin (not a browser), and the listed and own origins.

        The Host header is not trusted to name the relay's own origin: after DNS rebinding a
        hostile page sends a Host and an Origin that match each other.
        """
        return origin is None or origin.rstrip("/") in self.origins
