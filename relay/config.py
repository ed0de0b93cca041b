"""Settings of a relay: command-line flags over environment over the config file."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relay.auth import ApiKey, is_loopback
from relay.errors import ConfigError

# Values passed with `qsub -v` must survive a trip through `sh` (Slurm's Torque wrapper
# builds an sbatch command line), so they are kept to characters that need no quoting.
QSUB_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:/+=-]+")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ClusterConfig:
    """One cluster: where its login node is and how compute nodes reach the relay."""

    name: str
    scheduler: str = "local"
    host: str = ""
    port: int = 22
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    workdir: str = "relay-jobs"
    qsub_options: tuple[str, ...] = ()
    """Extra qsub arguments for every job, such as ("-A", "project", "-q", "short")."""
    public_url: str | None = None
    max_channels: int = 8
    qstat_flavour: str = "auto"
    """pbs (OpenPBS, PBS Pro), torque, slurm-torque (Slurm's Torque wrappers) or auto."""
    poll_interval: float = 120.0
    """Seconds between qstat calls that check on the cluster's running jobs."""
    min_poll_interval: float = 60.0
    """Minimum seconds between two qstat calls, across all relay instances."""
    heartbeat_timeout: float = 600.0
    """A job silent this long is checked at the next allowed qstat call."""
    finish_grace: float = 5.0
    """Seconds a job's own terminal event may lag behind qstat reporting it ended."""
    connect_timeout: float = 15.0
    connect_attempts: int = 3
    command_timeout: float = 60.0
    keepalive_interval: float = 30.0


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_url: str | None = None
    redis_url: str | None = None
    scripts: tuple[Path, ...] = ()
    clusters: dict[str, ClusterConfig] = field(default_factory=dict)
    default_cluster: str = "local"
    history_length: int = 10_000
    retention_seconds: int = 86_400
    subscriber_queue: int = 1024
    redis_max_connections: int = 100
    websocket_compression: bool = False
    """permessage-deflate on job sockets; off by default because each frame would be
    compressed once per subscriber, and job events are mostly small."""
    cancel_unwatched_after: float = 0.0
    """Seconds after its last socket closes that an unfinished job is cancelled; 0 is never."""
    local_workdir: Path | None = None

    # Client authentication
    api_keys: tuple[ApiKey, ...] = ()
    origins: tuple[str, ...] = ()
    token_grace_seconds: int = 3600
    queue_grace_seconds: int = 7 * 86_400

    # Limits
    max_body_bytes: int = 1_048_576
    max_chunk_bytes: int = 4 * 1_048_576
    max_line_bytes: int = 65_536
    events_per_second: float = 200.0
    jobs_per_key: int = 100
    sockets_per_key: int = 50
    submits_per_minute: int = 60

    @property
    def relay_url(self) -> str:
        """Return the base URL jobs post to, when no cluster sets its own."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in {"0.0.0.0", "::", ""}:
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def cluster_url(self, cluster: ClusterConfig) -> str:
        return (cluster.public_url or self.relay_url).rstrip("/")


def load_settings(
    *,
    config_file: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    scripts: list[Path] | None = None,
    redis_url: str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: flags win over PORT/REDIS_URL, which win over the config file."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read config file {config_file}: {error}") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"invalid TOML in config file {config_file}: {error}") from error
    base = config_file.parent if config_file else Path.cwd()
    server = _table(data, "server", config_file)

    env_port = env.get("PORT")
    if port is None and env_port:
        try:
            port = int(env_port)
        except ValueError as error:
            raise ConfigError(f"PORT must be an integer, got {env_port!r}") from error
    folders = [_path(base, item) for item in server.get("scripts", [])] + list(scripts or [])

    settings = Settings(
        host=host or server.get("host", DEFAULT_HOST),
        port=port if port is not None else int(server.get("port", DEFAULT_PORT)),
        public_url=server.get("public_url"),
        redis_url=redis_url or env.get("REDIS_URL") or server.get("redis_url"),
        scripts=tuple(folders),
        clusters=_clusters(data, base, config_file),
        default_cluster=server.get("default_cluster", ""),
        history_length=int(server.get("history_length", 10_000)),
        retention_seconds=int(server.get("retention_seconds", 86_400)),
        subscriber_queue=int(server.get("subscriber_queue", 1024)),
        cancel_unwatched_after=float(server.get("cancel_unwatched_after", 0)),
        redis_max_connections=int(server.get("redis_max_connections", 100)),
        websocket_compression=bool(server.get("websocket_compression", False)),
        **_auth_settings(_table(data, "auth", config_file)),
        **_limit_settings(_table(data, "limits", config_file)),
    )
    if not settings.clusters:
        settings.clusters["local"] = ClusterConfig(name="local")
    default = settings.default_cluster or next(iter(settings.clusters))
    if default not in settings.clusters:
        raise ConfigError(f"default_cluster {default!r} is not among the configured clusters")
    settings = replace(settings, default_cluster=default)

    if not settings.api_keys and not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without API keys: anyone who can reach "
            "it could run jobs. Add keys under [auth] (see `relay key`), or listen on 127.0.0.1"
        )
    for cluster in settings.clusters.values():
        url = settings.cluster_url(cluster)
        if not QSUB_SAFE_VALUE.fullmatch(url):
            raise ConfigError(
                f"public URL {url!r} of cluster {cluster.name!r} has characters that qsub -v "
                "cannot pass safely; use only letters, digits and _.:/+=-"
            )
    return settings


_LIMITS = {
    "max_body_bytes": int,
    "max_chunk_bytes": int,
    "max_line_bytes": int,
    "events_per_second": float,
    "jobs_per_key": int,
    "sockets_per_key": int,
    "submits_per_minute": int,
}


def _limit_settings(table: dict[str, Any]) -> dict[str, Any]:
    unknown = set(table) - set(_LIMITS)
    if unknown:
        raise ConfigError(f"unknown settings in [limits]: {', '.join(sorted(unknown))}")
    values = {}
    for name, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"[limits] {name} must be a positive number, got {value!r}")
        values[name] = _LIMITS[name](value)
    return values


def _auth_settings(table: dict[str, Any]) -> dict[str, Any]:
    unknown = set(table) - {"keys", "origins", "token_grace_seconds", "queue_grace_seconds"}
    if unknown:
        raise ConfigError(f"unknown settings in [auth]: {', '.join(sorted(unknown))}")
    keys = []
    for index, entry in enumerate(table.get("keys", [])):
        name = entry.get("name") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise ConfigError(f"[auth] keys[{index}] needs a name of letters, digits, _.@-")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(
                f"[auth] key {name!r} needs sha256 = the 64 lowercase hex digits of the key's "
                "SHA-256 (`relay key NAME` prints one)"
            )
        keys.append(ApiKey(name=name, sha256=digest))
    if len({key.name for key in keys}) != len(keys):
        raise ConfigError("[auth] key names must be unique")
    origins = table.get("origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ConfigError("[auth] origins must be a list of strings like https://app.example.org")
    values: dict[str, Any] = {"api_keys": tuple(keys), "origins": tuple(origins)}
    for name in ("token_grace_seconds", "queue_grace_seconds"):
        if name in table:
            values[name] = int(table[name])
    return values


def _table(data: dict[str, Any], name: str, source: Path | None) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] in {source} must be a table")
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _clusters(data: dict[str, Any], base: Path, source: Path | None) -> dict[str, ClusterConfig]:
    clusters: dict[str, ClusterConfig] = {}
    known = set(ClusterConfig.__dataclass_fields__) - {"name"}
    for name, table in _table(data, "clusters", source).items():
        if not isinstance(table, dict):
            raise ConfigError(f"[clusters.{name}] in {source} must be a table")
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"unknown settings in [clusters.{name}]: {', '.join(sorted(unknown))}"
            )
        values = dict(table)
        if "qsub_options" in values:
            options = values["qsub_options"]
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise ConfigError(f"qsub_options of cluster {name!r} must be a list of strings")
            values["qsub_options"] = tuple(options)
        for key in ("key", "known_hosts"):
            if key in values:
                values[key] = _path(base, values[key])
        cluster = ClusterConfig(name=name, **values)
        if cluster.qstat_flavour not in {"auto", "pbs", "torque", "slurm-torque"}:
            raise ConfigError(
                f"qstat_flavour of cluster {name!r} must be auto, pbs, torque or slurm-torque"
            )
        if cluster.min_poll_interval > cluster.poll_interval:
            raise ConfigError(f"min_poll_interval of cluster {name!r} exceeds its poll_interval")
        if cluster.scheduler not in {"local", "pbs"}:
            raise ConfigError(
                f"scheduler of cluster {name!r} must be 'local' or 'pbs', got {cluster.scheduler!r}"
            )
        if cluster.scheduler == "pbs":
            missing = [k for k in ("host", "user", "key", "known_hosts") if not values.get(k)]
            if missing:
                raise ConfigError(f"cluster {name!r} needs {', '.join(missing)} to use pbs")
        clusters[name] = cluster
    return clusters
