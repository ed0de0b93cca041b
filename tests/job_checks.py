"""Checks every end-to-end job test makes of a finished stream."""

from __future__ import annotations

from tests.relay_process import Stream


def assert_complete(stream: Stream) -> None:
    """Every event arrived once and in order, the last one is complete, the socket closed 1000."""
    assert stream.events, "no events received"
    assert stream.seqs == list(range(len(stream.events))), stream.types
    assert stream.types[0] == "starting"
    assert stream.types[-1] == "complete", stream.events[-3:]
    assert stream.types.count("complete") == 1
    assert "fatal" not in stream.types
    assert "queued" in stream.types
    assert "started" in stream.types
    assert stream.close_code == 1000, (stream.close_code, stream.close_reason)
    assert len({event["job"] for event in stream.events}) == 1


def assert_fatal(stream: Stream, exit_status: int | None) -> dict[str, object]:
    """The stream ends in one fatal with `exit_status` and the socket closed 4000."""
    assert stream.seqs == list(range(len(stream.events))), stream.types
    assert stream.types[-1] == "fatal", stream.events[-3:]
    assert stream.types.count("fatal") == 1
    assert "complete" not in stream.types
    assert stream.close_code == 4000, (stream.close_code, stream.close_reason)
    data = stream.events[-1]["data"]
    assert isinstance(data, dict)
    assert data["exit_status"] == exit_status, data
    return data
