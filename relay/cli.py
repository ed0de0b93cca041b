"""The `relay` command: `relay serve` runs the server, `relay submit` streams a job."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from relay import __version__
from relay.errors import ConfigError

logger = logging.getLogger("relay")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hpc-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the relay server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default $PORT, else 8000)")
    serve.add_argument(
        "--scripts",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="folder of extra templates (NAME.pbs + NAME.json); repeatable",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL for the broker (default $REDIS_URL, else in-memory)",
    )
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=Path(os.environ["RELAY_CONFIG"]) if os.environ.get("RELAY_CONFIG") else None,
        help="TOML config file (default $RELAY_CONFIG)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    key = commands.add_parser("key", help="create an API key and print its config line")
    key.add_argument("name", help="name of the key's owner, e.g. web-frontend")

    for name, text in (
        ("submit", "submit a job and print its events"),
        ("watch", "attach to a job and print its events"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--server",
            default="http://127.0.0.1:8000",
            help="base URL of the relay (default http://127.0.0.1:8000)",
        )
        if name == "submit":
            command.add_argument("script", help="template name, e.g. hello")
            command.add_argument(
                "--arg",
                action="append",
                default=[],
                metavar="NAME=VALUE",
                help="an argument; VALUE is read as JSON if it parses, "
                "else as a string; repeatable",
            )
            command.add_argument(
                "--args-json", metavar="JSON", help="all arguments as one JSON object"
            )
            command.add_argument("--cluster", help="cluster name from the relay's config")
        else:
            command.add_argument("job_id")
            command.add_argument(
                "--after", type=int, default=-1, help="replay events with seq greater than this"
            )
    return parser


def _ws_url(server: str, path: str) -> str:
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, parts.query, ""))


def _serve(options: argparse.Namespace) -> int:
    import uvicorn

    from relay.app import create_app
    from relay.config import load_settings
    from relay.logs import redact_access_tokens
    from relay.server import RelayServer

    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(
            config_file=options.config,
            host=options.host,
            port=options.port,
            scripts=options.scripts,
            redis_url=options.redis,
        )
        app = create_app(settings)
    except ConfigError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    broker = "redis" if settings.redis_url else "memory"
    logger.info(
        "relay %s starting on %s:%d with the %s broker",
        __version__,
        settings.host,
        settings.port,
        broker,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=options.log_level,
        # Pings find clients that vanished without a close frame, and keep proxies with
        # idle timeouts of 60 s or more from cutting quiet sockets.
        ws_ping_interval=20,
        ws_ping_timeout=20,
        ws_max_size=1_048_576,
        ws_per_message_deflate=settings.websocket_compression,
        timeout_graceful_shutdown=10,
    )
    redact_access_tokens()
    RelayServer(config, app.state.jobs).run()
    return 0


def _submit(options: argparse.Namespace) -> int:
    from relay.client import parse_arg, stream_job

    args: dict[str, object] = {}
    try:
        if options.args_json:
            loaded = json.loads(options.args_json)
            if not isinstance(loaded, dict):
                raise ValueError("--args-json must be a JSON object")
            args.update(loaded)
        for item in options.arg:
            name, value = parse_arg(item)
            args[name] = value
    except ValueError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    frame: dict[str, object] = {"type": "submit", "script": options.script, "args": args}
    if options.cluster:
        frame["cluster"] = options.cluster
    return asyncio.run(stream_job(_ws_url(options.server, "/ws/jobs"), frame, key=options.key))


def _key(options: argparse.Namespace) -> int:
    from relay.auth import hash_key, new_key

    key = new_key()
    print(f"key (give it to the client; it is not stored): {key}")
    print("config line for [auth] keys:")
    print(f'  {{ name = "{options.name}", sha256 = "{hash_key(key)}" }},')
    return 0


def _watch(options: argparse.Namespace) -> int:
    from relay.client import stream_job

    url = _ws_url(options.server, f"/ws/jobs/{options.job_id}?after={options.after}")
    return asyncio.run(stream_job(url, None, key=options.key))


def main(argv: list[str] | None = None) -> int:
    options = _build_parser().parse_args(argv)
    handlers = {"serve": _serve, "submit": _submit, "watch": _watch, "key": _key}
    try:
        return handlers[options.command](options)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
