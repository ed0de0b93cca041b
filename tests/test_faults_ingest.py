"""Fault injection: the response to an ingest POST is lost after the relay stored the event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.config import write_public_url_config
from tests.faults.holding_proxy import Exchange, HoldingProxy
from tests.faults.resuming_client import logs_on_failure
from tests.harness.redis_server import RedisServer
from tests.job_checks import assert_complete
from tests.relay_process import RelayProcess, Stream, collect, submit_frame

pytestmark = pytest.mark.redis

# pbs_scripts/relay.sh runs curl with a fixed `--max-time 30` that no environment variable
# changes, so the proxy has to withhold the response for the full 30 s.
CURL_MAX_TIME = 30.0
MAX_HOLD_SECONDS = CURL_MAX_TIME + 5


@pytest.mark.timeout(75)
def test_ingest_timeout_retry_counted_as_duplicate(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """curl times out on a POST that the relay stored, and its retry counts as a duplicate.

    A fake proxy between the job and the relay withholds the first ingest response (the
    `started` event), because a response lost after the relay stored the event cannot be
    caused on demand with real components.
    """
    # The config file is written once the proxy has its port, before the relay starts.
    config = tmp_path / "relay.toml"
    relay = RelayProcess(tmp_path, "--redis", redis_server.url, "--config", str(config))

    async def scenario() -> tuple[Stream, HoldingProxy]:
        proxy = HoldingProxy(relay.port, MAX_HOLD_SECONDS)
        await proxy.start()
        try:
            write_public_url_config(config, proxy.url)
            await asyncio.to_thread(relay.start)
            frame = submit_frame("hello", steps=2, delay_ms=0)
            stream = await collect(f"{relay.ws_url}/ws/jobs", frame, seconds=60)
        finally:
            await proxy.close()
        return stream, proxy

    with logs_on_failure(relay):
        try:
            stream, proxy = asyncio.run(scenario())
        finally:
            relay.stop()
        assert_complete(stream)
        assert stream.types.count("started") == 1
        assert proxy.errors == []

        withheld = [exchange for exchange in proxy.exchanges if exchange.withheld]
        assert len(withheld) == 1, proxy.exchanges
        first = withheld[0]
        assert first.request_json()["type"] == "started"
        assert first.status == 202
        assert first.response_json()["accepted"] == 1
        assert first.response_json()["duplicates"] == 0
        assert first.held_seconds >= CURL_MAX_TIME - 1, first.held_seconds
        assert first.held_seconds < MAX_HOLD_SECONDS, "curl did not give up at --max-time"

        retries = retries_of(first, proxy.exchanges)
        assert len(retries) == 1, proxy.exchanges
        assert retries[0].status == 202
        assert retries[0].response_json()["accepted"] == 0
        assert retries[0].response_json()["duplicates"] == 1


def retries_of(original: Exchange, exchanges: list[Exchange]) -> list[Exchange]:
    """Return the later exchanges that carried the same event id as `original`."""
    event_id = original.request_json()["id"]
    index = exchanges.index(original)
    return [
        exchange
        for exchange in exchanges[index + 1 :]
        if exchange.request_line.startswith("POST ") and exchange.request_json()["id"] == event_id
    ]
