"""Websocket endpoints: submit a job and stream its events, or attach to a running job."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from relay.broker.base import Subscription
from relay.errors import BrokerUnavailable, TemplateError
from relay.events import TERMINAL_CLOSE_CODES, CloseCode, Event, EventType
from relay.jobs import JobService

logger = logging.getLogger(__name__)

SUBMIT_TIMEOUT = 30.0
MAX_REASON_BYTES = 123


def close_reason(text: str) -> str:
    """Cut `text` to the 123 bytes a close frame's reason may hold, on a character boundary."""
    encoded = text.encode()[:MAX_REASON_BYTES]
    return encoded.decode("utf-8", "ignore")


async def submit_endpoint(websocket: WebSocket) -> None:
    service: JobService = websocket.app.state.jobs
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
            request.get("script"), request.get("args"), request.get("cluster")
        )
    except TemplateError as error:
        logger.info("submit refused: %s", error)
        await _close(websocket, CloseCode.INVALID_REQUEST, str(error))
        return
    except BrokerUnavailable as error:
        logger.warning("submit failed, broker unavailable: %s", error)
        await _close(websocket, CloseCode.INTERNAL_ERROR, "broker unavailable, retry later")
        return

    queue_size = service.settings.subscriber_queue
    # Subscribe before submitting: a job that finishes at once still reaches the socket.
    async with service.broker.subscribe(job.job_id, queue_size) as subscription:
        await service.publish(job.job_id, EventType.STARTING, {"script": job.template})
        service.submit_in_background(job)
        await _serve(websocket, service, job.job_id, -1, subscription)


async def attach_endpoint(websocket: WebSocket) -> None:
    service: JobService = websocket.app.state.jobs
    job_id = websocket.path_params["job_id"]
    raw_after = websocket.query_params.get("after", "-1")
    await websocket.accept()
    try:
        after = int(raw_after)
    except ValueError:
        await _close(
            websocket, CloseCode.INVALID_REQUEST, f"after must be an integer: {raw_after!r}"
        )
        return
    if await service.broker.get_job(job_id) is None:
        await _close(websocket, CloseCode.UNKNOWN_JOB, f"unknown job {job_id}")
        return
    async with service.broker.subscribe(job_id, service.settings.subscriber_queue) as subscription:
        await _serve(websocket, service, job_id, max(after, -1), subscription)


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
    if not isinstance(request, dict) or request.get("type") != "submit":
        raise ValueError('expected {"type": "submit", "script": ..., "args": {...}}')
    unknown = set(request) - {"type", "script", "args", "cluster"}
    if unknown:
        raise ValueError(f"unknown fields in submit frame: {', '.join(sorted(unknown))}")
    return request


async def _serve(
    websocket: WebSocket, service: JobService, job_id: str, after: int, subscription: Subscription
) -> None:
    """Stream events until the job ends or the client leaves, reading client frames meanwhile."""
    sender = asyncio.create_task(_stream(websocket, service, job_id, after, subscription))
    reader = asyncio.create_task(_read_client(websocket, service, job_id))
    try:
        done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, reader):
            task.cancel()
        await asyncio.gather(sender, reader, return_exceptions=True)

    if sender in done and not sender.cancelled():
        error = sender.exception()
        if error is None:
            code, reason = sender.result()
            await _close(websocket, code, reason)
        elif isinstance(error, WebSocketDisconnect | OSError):
            logger.info("job %s: client left while events were sent", job_id)
        else:
            logger.error("job %s: streaming failed", job_id, exc_info=error)
            await _close(websocket, CloseCode.INTERNAL_ERROR, "internal error")
    else:
        logger.info("job %s: client disconnected", job_id)


async def _stream(
    websocket: WebSocket, service: JobService, job_id: str, after: int, subscription: Subscription
) -> tuple[int, str]:
    """Send history after `after`, then live events, with no gap and no duplicate."""
    last = after

    async def send(event: Event) -> None:
        nonlocal last
        if isinstance(event.frame, str):
            await websocket.send_text(event.frame)
        else:
            await websocket.send_bytes(event.frame)
        last = event.seq

    async def catch_up() -> Event | None:
        for event in await service.broker.history(job_id, last):
            if event.seq > last:
                await send(event)
                if event.terminal:
                    return event
        return None

    terminal = await catch_up()
    while terminal is None:
        event = await subscription.get()
        if event is None:
            if subscription.overflowed:
                logger.warning("job %s: client too slow, closing after seq %d", job_id, last)
                return CloseCode.TOO_SLOW, f"too slow; resume with after={last}"
            subscription.interrupted = False
            terminal = await catch_up()
            continue
        if event.seq <= last:
            continue
        if event.seq > last + 1:
            # A live event overtook one this socket has not seen: fill the gap from history.
            terminal = await catch_up()
            continue
        await send(event)
        if event.terminal:
            terminal = event
    return _terminal_close(terminal)


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
        except ValueError:
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
        await websocket.close(code, close_reason(reason))
    except (RuntimeError, OSError) as error:
        logger.debug("close %d not sent: %r", code, error)
