"""Websocket endpoints: submit a job and stream its events, or attach to a running job."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from relay.broker.base import Subscription
from relay.errors import BrokerUnavailable, LimitExceeded, TemplateError
from relay.events import (
    TERMINAL_CLOSE_CODES,
    CloseCode,
    Event,
    EventType,
    JobState,
    json_problem,
)
from relay.jobs import JobService

logger = logging.getLogger(__name__)

SUBMIT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
FINAL_CLOSE_CODES: dict[str, CloseCode] = {
    JobState.COMPLETED: CloseCode.COMPLETED,
    JobState.FAILED: CloseCode.JOB_FAILED,
    JobState.CANCELLED: CloseCode.JOB_CANCELLED,
}
MAX_REASON_BYTES = 123


def close_reason(text: str) -> str:
    """Cut `text` to the 123 bytes a close frame's reason may hold, on a character boundary."""
    encoded = text.encode()[:MAX_REASON_BYTES]
    return encoded.decode("utf-8", "ignore")


async def authorize(
    websocket: WebSocket, service: JobService, record: dict[str, str] | None = None
) -> str | None:
    """Return the client's key name, or refuse the handshake (HTTP 403) and return None.

    With `record`, the key must also own that job.
    """
    origin = websocket.headers.get("origin")
    owner = service.auth.client(websocket.headers, websocket.query_params)
    if not service.auth.origin_allowed(origin):
        problem = f"origin {origin!r} not allowed"
    elif owner is None:
        problem = "missing or invalid API key"
    elif record is not None and record.get("owner") != owner:
        problem = f"key {owner} does not own job {record.get('id')}"
    else:
        return owner
    logger.info("websocket %s rejected: %s", websocket.url.path, problem)
    # Closing before accept makes the server respond to the handshake with 403.
    await websocket.close(code=1008)
    return None


async def submit_endpoint(websocket: WebSocket) -> None:
    service: JobService = websocket.app.state.jobs
    owner = await authorize(websocket, service)
    if owner is None:
        return
    await websocket.accept()
    try:
        request = await _receive_submit(websocket)
    except WebSocketDisconnect:
        return
    except (ValueError, TimeoutError) as error:
        await _close(websocket, CloseCode.INVALID_REQUEST, str(error))
        return
    try:
        job = await service.create(
            request.get("script"), request.get("args"), request.get("cluster"), owner
        )
    except LimitExceeded as error:
        logger.info("submit by %s rejected: %s", owner, error)
        await _close(websocket, CloseCode.TOO_MANY, str(error))
        return
    except TemplateError as error:
        logger.info("submit rejected: %s", error)
        await _close(websocket, CloseCode.INVALID_REQUEST, str(error))
        return
    except BrokerUnavailable as error:
        logger.warning("submit failed, broker unavailable: %s", error)
        await _close(websocket, CloseCode.INTERNAL_ERROR, "broker unavailable, retry later")
        return

    queue_size = service.settings.subscriber_queue
    try:
        # Subscribe before submitting: a job that finishes at once still reaches the socket.
        async with service.broker.subscribe(job.job_id, queue_size) as subscription:
            await service.publish(job.job_id, EventType.STARTING, {"script": job.template})
            service.submit_in_background(job)
            await _serve(websocket, service, job.job_id, -1, subscription, owner)
    except BrokerUnavailable as error:
        # NOTE: a job whose `starting` was stored before the broker failed stays unsubmitted.
        logger.warning("job %s: broker unavailable: %s", job.job_id, error)
        await _close(websocket, CloseCode.INTERNAL_ERROR, "broker unavailable, retry later")


async def attach_endpoint(websocket: WebSocket) -> None:
    service: JobService = websocket.app.state.jobs
    job_id = websocket.path_params["job_id"]
    raw_after = websocket.query_params.get("after", "-1")
    try:
        record = await service.broker.get_job(job_id)
    except BrokerUnavailable as error:
        logger.warning("job %s: attach failed, broker unavailable: %s", job_id, error)
        await websocket.accept()
        await _close(websocket, CloseCode.INTERNAL_ERROR, "broker unavailable, retry later")
        return
    # Another key's job is refused like a wrong key, and an unknown job only after a valid
    # key, so job ids cannot be probed without one.
    owner = await authorize(websocket, service, record if record else None)
    if owner is None:
        return
    await websocket.accept()
    try:
        after = max(int(raw_after), -1)
    except ValueError:
        await _close(
            websocket, CloseCode.INVALID_REQUEST, f"after must be an integer: {raw_after!r}"
        )
        return
    if record is None:
        await _close(websocket, CloseCode.UNKNOWN_JOB, f"unknown job {job_id}")
        return
    try:
        await _attach(websocket, service, record, after, owner)
    except BrokerUnavailable as error:
        logger.warning("job %s: attach failed, broker unavailable: %s", job_id, error)
        await _close(websocket, CloseCode.INTERNAL_ERROR, "broker unavailable, retry later")


async def _attach(
    websocket: WebSocket, service: JobService, record: dict[str, str], after: int, owner: str
) -> None:
    job_id = record["id"]
    last_seq = int(record.get("next_seq", "0")) - 1
    if after > last_seq:
        # A client can only have seen events that exist: this `after` names none.
        await _close(
            websocket,
            CloseCode.INVALID_REQUEST,
            f"after={after} is beyond the job's last event, seq {last_seq}",
        )
        return
    if record["state"] in FINAL_CLOSE_CODES and after == last_seq:
        # The client has every event of a finished job, the terminal one included.
        last = await service.broker.history(job_id, last_seq - 1)
        if last and last[-1].terminal:
            await _close(websocket, *_terminal_close(last[-1]))
        else:
            await _close(websocket, FINAL_CLOSE_CODES[record["state"]], record["state"])
        return
    async with service.broker.subscribe(job_id, service.settings.subscriber_queue) as subscription:
        await _serve(websocket, service, job_id, after, subscription, owner)


async def _receive_submit(websocket: WebSocket) -> dict[str, Any]:
    message = await asyncio.wait_for(websocket.receive(), SUBMIT_TIMEOUT)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise ValueError("the submit frame must be a JSON text frame")
    try:
        request = json.loads(text)
    except ValueError as error:
        raise ValueError(f"submit frame is not valid JSON: {error}") from error
    except RecursionError as error:
        raise ValueError("submit frame is nested too deeply") from error
    problem = json_problem(request)
    if problem:
        raise ValueError(f"invalid submit frame: {problem}")
    if not isinstance(request, dict) or request.get("type") != "submit":
        raise ValueError('expected {"type": "submit", "script": ..., "args": {...}}')
    unknown = set(request) - {"type", "script", "args", "cluster"}
    if unknown:
        raise ValueError(f"unknown fields in submit frame: {', '.join(sorted(unknown))}")
    return request


class Cursor:
    """The seq of the last event a socket sent: where its client resumes after a close."""

    def __init__(self, last: int) -> None:
        self.last = last


async def _serve(
    websocket: WebSocket,
    service: JobService,
    job_id: str,
    after: int,
    subscription: Subscription,
    owner: str,
) -> None:
    """Stream events until the job ends, the client leaves or the relay shuts down."""
    open_sockets = service.sockets_by_owner.get(owner, 0)
    if open_sockets >= service.settings.sockets_per_key:
        logger.info("job %s: socket rejected, key %s has %d open", job_id, owner, open_sockets)
        limit = service.settings.sockets_per_key
        await _close(websocket, CloseCode.TOO_MANY, f"this key has {limit} open sockets")
        return
    cursor = Cursor(after)
    service.sockets_by_owner[owner] = open_sockets + 1
    service.socket_opened()
    try:
        await service.watcher_joined(job_id)
        try:
            await _serve_until_done(websocket, service, job_id, cursor, subscription)
        finally:
            await service.watcher_left(job_id)
    finally:
        service.socket_closed()
        service.sockets_by_owner[owner] -= 1
        if not service.sockets_by_owner[owner]:
            del service.sockets_by_owner[owner]


async def _serve_until_done(
    websocket: WebSocket,
    service: JobService,
    job_id: str,
    cursor: Cursor,
    subscription: Subscription,
) -> None:
    sender = asyncio.create_task(_stream(websocket, service, job_id, cursor, subscription))
    reader = asyncio.create_task(_read_client(websocket, service, job_id))
    stopping = asyncio.create_task(service.shutting_down.wait())
    overflow = asyncio.create_task(subscription.overflow.wait())
    tasks = (sender, reader, stopping, overflow)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if sender in done and not sender.cancelled():
        error = sender.exception()
        if error is None:
            code, reason = sender.result()
            if code == CloseCode.TOO_SLOW:
                service.metrics.add("relay_slow_clients_total")
            await _close(websocket, code, reason)
        elif isinstance(error, WebSocketDisconnect | OSError):
            logger.info("job %s: client left while events were sent", job_id)
        else:
            logger.error("job %s: streaming failed", job_id, exc_info=error)
            await _close(websocket, CloseCode.INTERNAL_ERROR, "internal error")
    elif overflow in done:
        service.metrics.add("relay_slow_clients_total")
        logger.warning("job %s: client too slow, closing after seq %d", job_id, cursor.last)
        await _close(websocket, CloseCode.TOO_SLOW, f"too slow; resume with after={cursor.last}")
    elif stopping in done:
        logger.info("job %s: closing socket for shutdown after seq %d", job_id, cursor.last)
        await _close(
            websocket, CloseCode.GOING_AWAY, f"relay shutting down; resume with after={cursor.last}"
        )
    else:
        logger.info("job %s: client disconnected", job_id)


async def _stream(
    websocket: WebSocket,
    service: JobService,
    job_id: str,
    cursor: Cursor,
    subscription: Subscription,
) -> tuple[int, str]:
    """Send history after the cursor, then live events, with no gap and no duplicate."""

    async def send(event: Event) -> None:
        if isinstance(event.frame, str):
            await websocket.send_text(event.frame)
        else:
            await websocket.send_bytes(event.frame)
        cursor.last = event.seq

    async def catch_up() -> Event | None:
        history = await service.broker.history(job_id, cursor.last)
        if history and history[0].seq > cursor.last + 1:
            # The bounded history no longer contains what the client requested, so it gets one
            # notice with the lost range before the events that remain.
            logger.warning(
                "job %s: history trimmed, events %d-%d are gone",
                job_id,
                cursor.last + 1,
                history[0].seq - 1,
            )
            await websocket.send_text(_trimmed_notice(job_id, cursor.last, history[0].seq))
        for event in history:
            if event.seq > cursor.last:
                await send(event)
                if event.terminal:
                    return event
        return None

    terminal = await catch_up()
    while terminal is None:
        event = await subscription.get()
        if event is None:
            if subscription.overflowed:
                logger.warning("job %s: client too slow, closing after seq %d", job_id, cursor.last)
                return CloseCode.TOO_SLOW, f"too slow; resume with after={cursor.last}"
            if await service.broker.get_job(job_id) is None:
                # The broker lost the job (Redis restarted without persistence).
                logger.error("job %s: record lost from the broker", job_id)
                return CloseCode.INTERNAL_ERROR, "job record lost from the broker"
            terminal = await catch_up()
            continue
        if event.seq <= cursor.last:
            continue
        if event.seq > cursor.last + 1:
            # A live event overtook one this socket has not seen: fill the gap from history.
            terminal = await catch_up()
            continue
        await send(event)
        if event.terminal:
            terminal = event
    return _terminal_close(terminal)


def _trimmed_notice(job_id: str, after: int, first_seq: int) -> str:
    data = {"after": after, "first_seq": first_seq}
    return json.dumps({"job": job_id, "type": "trimmed", "data": data}, separators=(",", ":"))


def _terminal_close(event: Event) -> tuple[int, str]:
    code = TERMINAL_CLOSE_CODES[event.type]
    reason = event.type
    if event.type == EventType.FATAL:
        data = event.envelope().get("data")
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            reason = data["message"]
    return code, close_reason(reason)


async def _read_client(websocket: WebSocket, service: JobService, job_id: str) -> None:
    """Handle client frames until the client disconnects; `cancel` cancels the job."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        try:
            frame = json.loads(text) if text is not None else None
        except (ValueError, RecursionError):
            frame = None
        if isinstance(frame, dict) and frame.get("type") == "cancel":
            logger.info("job %s: cancel requested by a client", job_id)
            await service.cancel(job_id, by="client")
        else:
            logger.debug("job %s: ignored a client frame that is not a cancel", job_id)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    try:
        # A client that stopped reading blocks the close frame behind unsent data; after
        # the timeout the handler returns and the server drops the connection instead.
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await websocket.close(code, close_reason(reason))
    except TimeoutError:
        logger.info("close %d not sent within %.0fs; dropping the connection", code, CLOSE_TIMEOUT)
    except (RuntimeError, OSError) as error:
        logger.debug("close %d not sent: %r", code, error)
