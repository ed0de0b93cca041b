"""Event types, close codes and the wire envelope of job events."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any


class EventType(StrEnum):
    STARTING = "starting"
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    LOG = "log"
    TOKEN = "token"
    CHUNK = "chunk"
    RESULT = "result"
    COMPLETE = "complete"
    FATAL = "fatal"
    CANCELLED = "cancelled"


class CloseCode(IntEnum):
    COMPLETED = 1000
    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    JOB_FAILED = 4000
    JOB_CANCELLED = 4001
    INVALID_REQUEST = 4400
    UNKNOWN_JOB = 4404
    TOO_SLOW = 4408
    TOO_MANY = 4429


class JobState(StrEnum):
    STARTING = "starting"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_CLOSE_CODES: dict[str, CloseCode] = {
    EventType.COMPLETE: CloseCode.COMPLETED,
    EventType.FATAL: CloseCode.JOB_FAILED,
    EventType.CANCELLED: CloseCode.JOB_CANCELLED,
}

# Event types a job may post; the others come from the relay only.
JOB_EVENT_TYPES = frozenset(
    {
        EventType.STARTED,
        EventType.PROGRESS,
        EventType.LOG,
        EventType.TOKEN,
        EventType.CHUNK,
        EventType.RESULT,
        EventType.COMPLETE,
        EventType.FATAL,
    }
)


# Deeper JSON would only exhaust the recursion of clients that decode it.
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """Return why decoded JSON cannot be stored and sent on, or None if it can.

    Lists and objects may nest at most `limit` deep, and strings may hold no lone UTF-16
    surrogate (JSON's escapes allow one, UTF-8 cannot encode it). Checked without recursion.
    """
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return f"JSON nests deeper than {limit} levels"
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return "JSON string holds a lone UTF-16 surrogate"
        elif isinstance(item, dict):
            pending.extend((key, depth + 1) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return None


def is_terminal(event_type: str) -> bool:
    return event_type in TERMINAL_CLOSE_CODES


@dataclass(frozen=True, slots=True)
class Event:
    """One sequenced event as clients receive it: a JSON text frame or a binary frame."""

    seq: int
    type: str
    frame: str | bytes

    @property
    def terminal(self) -> bool:
        return is_terminal(self.type)

    def envelope(self) -> dict[str, Any]:
        """Decode the frame back into the envelope (binary payloads as `payload` bytes)."""
        if isinstance(self.frame, str):
            envelope: dict[str, Any] = json.loads(self.frame)
            return envelope
        return decode_binary_frame(self.frame)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before the broker gives it a sequence number.

    `body` is the envelope minus `job` and `seq`, serialized as a JSON object, so the
    broker can splice the two in without decoding and encoding the event again.
    """

    type: str
    body: str
    payload: bytes | None = None
    event_id: int | None = None


def new_event(
    event_type: str,
    data: Any = None,
    *,
    ts: float,
    event_id: int | None = None,
    mime: str | None = None,
    payload: bytes | None = None,
) -> NewEvent:
    fields: dict[str, Any] = {"type": event_type}
    if payload is None:
        fields["data"] = data
    else:
        fields["mime"] = mime or "application/octet-stream"
    fields["ts"] = round(ts, 6)
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return NewEvent(type=event_type, body=body, payload=payload, event_id=event_id)


def splice_header(job_id: str, seq: int, body: str) -> str:
    """Return the JSON envelope with `job` and `seq` put in front of `body`'s fields."""
    return f'{{"job":"{job_id}","seq":{seq},{body[1:]}'


def build_frame(job_id: str, seq: int, event: NewEvent) -> str | bytes:
    header = splice_header(job_id, seq, event.body)
    if event.payload is None:
        return header
    encoded = header.encode()
    return struct.pack(">I", len(encoded)) + encoded + event.payload


def decode_binary_frame(frame: bytes) -> dict[str, Any]:
    """Split a binary frame: 4-byte big-endian header length, JSON header, payload."""
    if len(frame) < 4:
        raise ValueError(f"binary frame of {len(frame)} bytes is shorter than its length prefix")
    (length,) = struct.unpack(">I", frame[:4])
    if length > len(frame) - 4:
        raise ValueError(f"binary frame header length {length} exceeds the frame")
    envelope: dict[str, Any] = json.loads(frame[4 : 4 + length])
    envelope["payload"] = frame[4 + length :]
    return envelope
