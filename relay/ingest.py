"""The ingest route: jobs POST their events here."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from relay.errors import BrokerUnavailable, JobFinished
from relay.events import JOB_EVENT_TYPES, EventType, NewEvent, json_problem, new_event
from relay.jobs import JobService, token_matches

logger = logging.getLogger(__name__)

JSON_TYPES = {"application/json"}
NDJSON_TYPES = {"application/x-ndjson", "application/jsonl"}
BINARY_TYPES = {"application/octet-stream"}
MAX_EVENTS_PER_REQUEST = 1000
JOB_ID = re.compile(r"[0-9a-f]{32}")


class InvalidEvent(ValueError):
    """Raised for a body that parses but contains an event the contract does not allow."""


class MalformedBody(ValueError):
    """Raised for a body that is not valid JSON, NDJSON or UTF-8."""


class BodyTooLarge(ValueError):
    """Raised when a body exceeds the configured maximum size."""


def _error(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unauthorized() -> JSONResponse:
    return JSONResponse(
        {"error": "invalid or expired token for this job"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def ingest_events(request: Request) -> JSONResponse:
    service: JobService = request.app.state.jobs
    response = await _ingest(request, service)
    if response.status_code != 202:
        service.metrics.add("relay_ingest_refused_total")
    return response


async def _ingest(request: Request, service: JobService) -> JSONResponse:
    job_id = request.path_params["job_id"]

    # A missing, wrong or expired token and an unknown job all get the same response, so
    # it reveals nothing about which job ids exist.
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token or not JOB_ID.fullmatch(job_id):
        return _unauthorized()
    try:
        record = await service.broker.get_job(job_id)
    except BrokerUnavailable:
        return _error(503, "broker unavailable, retry later")
    if record is None or not token_matches(token, record):
        logger.info("job %s: ingest rejected, invalid token", job_id)
        return _unauthorized()
    if service.token_expired(record, time.time()):
        logger.info("job %s: ingest rejected, token expired", job_id)
        return _unauthorized()

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    settings = service.settings
    limit = settings.max_chunk_bytes if content_type in BINARY_TYPES else settings.max_body_bytes
    try:
        body = await _read_body(request, limit)
        events = _parse_events(request, content_type, body, settings.max_line_bytes)
    except BodyTooLarge as error:
        return _error(413, str(error))
    except MalformedBody as error:
        return _error(400, str(error))
    except InvalidEvent as error:
        return _error(422, str(error))
    if events is None:
        return _error(
            415,
            f"unsupported content type {content_type!r}: use application/json, "
            "application/x-ndjson or application/octet-stream",
        )

    # Each event costs one token. A batch larger than the whole burst could never pass, so
    # it is rejected as too large rather than sent back to retry.
    burst = 2 * settings.events_per_second
    if len(events) > burst:
        return _error(413, f"{len(events)} events in one request; at most {burst:g} for this job")
    wait = service.ingest_rate.take(job_id, len(events))
    if wait:
        logger.info("job %s: ingest rate limited, %d events rejected", job_id, len(events))
        return _error(
            429,
            f"more than {settings.events_per_second:g} events a second for this job",
            retry_after=wait,
        )
    try:
        result = await service.broker.publish(job_id, events)
    except JobFinished:
        return _error(409, "job already finished")
    except BrokerUnavailable as error:
        logger.warning("job %s: ingest responded 503, broker unavailable: %s", job_id, error)
        return _error(503, "broker unavailable, retry later")
    except KeyError:
        return _error(401, "invalid token for this job")
    service.metrics.add("relay_events_ingested_total", result.accepted)
    service.metrics.add("relay_events_duplicate_total", result.duplicates)
    if result.duplicates or result.rejected:
        logger.info(
            "job %s: %d duplicate and %d late events not delivered",
            job_id,
            result.duplicates,
            result.rejected,
        )
    return JSONResponse(
        {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": result.rejected,
            "last_seq": result.last_seq,
        },
        status_code=202,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_events(
    request: Request, content_type: str, body: bytes, max_line_bytes: int
) -> list[NewEvent] | None:
    now = time.time()
    if content_type in BINARY_TYPES:
        return [_binary_event(request, body, now)]
    if content_type in JSON_TYPES:
        items = _decode_json(body)
        if isinstance(items, dict):
            items = [items]
        elif not isinstance(items, list):
            raise InvalidEvent("body must be an event object or an array of events")
    elif content_type in NDJSON_TYPES:
        lines = [line for line in body.split(b"\n") if line.strip()]
        for number, line in enumerate(lines, 1):
            if len(line) > max_line_bytes:
                raise BodyTooLarge(
                    f"NDJSON line {number} has {len(line)} bytes; the limit is {max_line_bytes}"
                )
        items = [_decode_json(line) for line in lines]
    else:
        return None
    if not items:
        raise InvalidEvent("no events in the body")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise InvalidEvent(f"{len(items)} events in one request; at most {MAX_EVENTS_PER_REQUEST}")
    return [_json_event(item, index, now) for index, item in enumerate(items)]


def _decode_json(raw: bytes) -> Any:
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise MalformedBody(f"body is not valid UTF-8: {error}") from error
    except ValueError as error:
        raise MalformedBody(f"body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise MalformedBody("body is nested too deeply to parse") from error
    problem = json_problem(value)
    if problem:
        raise InvalidEvent(f"invalid event: {problem}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _event_id(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidEvent(f"{where}: id must be a non-negative integer, got {value!r}")
    return value


def _json_event(item: Any, index: int, now: float) -> NewEvent:
    where = f"event {index}"
    if not isinstance(item, dict):
        raise InvalidEvent(f"{where}: expected an object, got {type(item).__name__}")
    unknown = set(item) - {"id", "type", "data"}
    if unknown:
        raise InvalidEvent(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    event_type = item.get("type")
    if not isinstance(event_type, str) or event_type not in JOB_EVENT_TYPES:
        raise InvalidEvent(
            f"{where}: type {event_type!r} is not one a job may send; expected one of "
            f"{', '.join(sorted(JOB_EVENT_TYPES))}"
        )
    if event_type == EventType.CHUNK:
        raise InvalidEvent(f"{where}: send chunk events as application/octet-stream")
    data = item.get("data")
    _check_data(event_type, data, where)
    return new_event(event_type, data, ts=now, event_id=_event_id(item.get("id"), where))


def _check_data(event_type: str, data: Any, where: str) -> None:
    if event_type in (EventType.LOG, EventType.TOKEN):
        if not isinstance(data, str):
            raise InvalidEvent(f"{where}: {event_type} data must be a string")
    elif event_type == EventType.PROGRESS:
        percent = data.get("percent") if isinstance(data, dict) else None
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise InvalidEvent(f"{where}: progress data needs a numeric percent")
        if not (math.isfinite(percent) and 0 <= percent <= 100):
            raise InvalidEvent(f"{where}: progress percent must be 0-100, got {percent}")
        assert isinstance(data, dict)
        if not isinstance(data.get("message", ""), str):
            raise InvalidEvent(f"{where}: progress message must be a string")
    elif event_type == EventType.FATAL:
        if not isinstance(data, dict) or not isinstance(data.get("message"), str):
            raise InvalidEvent(f"{where}: fatal data needs a message string")
        status = data.get("exit_status")
        if status is not None and (
            isinstance(status, bool)
            or not isinstance(status, int)
            or not -(2**31) <= status < 2**31
        ):
            raise InvalidEvent(f"{where}: fatal exit_status must be a 32-bit integer or null")
    elif event_type == EventType.STARTED:
        if data is not None and not isinstance(data, dict):
            raise InvalidEvent(f"{where}: started data must be an object")


def _binary_event(request: Request, body: bytes, now: float) -> NewEvent:
    params = request.query_params
    if params.get("type", "chunk") != EventType.CHUNK:
        raise InvalidEvent("binary bodies carry chunk events only")
    raw_id = params.get("id")
    event_id = None
    if raw_id is not None:
        if not re.fullmatch(r"[0-9]{1,19}", raw_id):
            raise InvalidEvent(f"id must be a non-negative integer, got {raw_id!r}")
        event_id = _event_id(int(raw_id), "chunk")
    mime = params.get("mime") or "application/octet-stream"
    if len(mime) > 255 or not mime.isprintable():
        raise InvalidEvent("mime must be a printable media type of at most 255 characters")
    return new_event(EventType.CHUNK, ts=now, event_id=event_id, mime=mime, payload=body)
