"""The ASGI application: routes, and the broker and schedulers it starts and stops."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from relay.broker.base import Broker, record_to_public
from relay.broker.memory import MemoryBroker
from relay.broker.redis import RedisBroker
from relay.config import Settings
from relay.errors import BrokerUnavailable
from relay.ingest import ingest_events
from relay.jobs import JobService
from relay.scheduler.base import Scheduler
from relay.scheduler.local import LocalScheduler
from relay.scheduler.pbs import PBSScheduler
from relay.sockets import attach_endpoint, submit_endpoint
from relay.templates import TemplateRegistry, builtin_scripts_dir
from relay.watchdog import Watchdog
from relay.web import WEB_ROUTES

logger = logging.getLogger(__name__)


def make_broker(settings: Settings) -> Broker:
    if settings.redis_url:
        return RedisBroker(
            settings.redis_url,
            history_length=settings.history_length,
            retention_seconds=settings.retention_seconds,
            max_connections=settings.redis_max_connections,
        )
    return MemoryBroker(
        history_length=settings.history_length, retention_seconds=settings.retention_seconds
    )


def make_schedulers(settings: Settings, service: JobService) -> dict[str, Scheduler]:
    schedulers: dict[str, Scheduler] = {}
    for name, cluster in settings.clusters.items():
        if cluster.scheduler == "pbs":
            schedulers[name] = PBSScheduler(cluster)
        else:
            schedulers[name] = LocalScheduler(name, settings.local_workdir, service.on_exit)
    return schedulers


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _owned_record(request: Request) -> dict[str, str] | Response:
    """Return the job's record if the request's key owns it, else the error response.

    Another key's job gets the same 404 as an unknown job, so its id is not confirmed.
    """
    service: JobService = request.app.state.jobs
    owner = service.auth.client(request.headers, request.query_params)
    if owner is None:
        return _error(401, "missing or invalid API key", **{"WWW-Authenticate": "Bearer"})
    try:
        record = await service.broker.get_job(request.path_params["job_id"])
    except BrokerUnavailable:
        return _error(503, "broker unavailable, retry later")
    if record is None or record.get("owner") != owner:
        return _error(404, "unknown job")
    return record


async def get_job(request: Request) -> Response:
    record = await _owned_record(request)
    if isinstance(record, Response):
        return record
    return JSONResponse(record_to_public(record))


async def get_events(request: Request) -> Response:
    service: JobService = request.app.state.jobs
    job_id = request.path_params["job_id"]
    raw_after = request.query_params.get("after", "-1")
    try:
        after = max(int(raw_after), -1)
    except ValueError:
        return _error(400, f"after must be an integer: {raw_after!r}")
    record = await _owned_record(request)
    if isinstance(record, Response):
        return record
    last_seq = int(record.get("next_seq", "0")) - 1
    if after > last_seq:
        return _error(400, f"after={after} is beyond the job's last event, seq {last_seq}")
    try:
        events = await service.broker.history(job_id, after)
    except BrokerUnavailable:
        return _error(503, "broker unavailable, retry later")
    envelopes = []
    for event in events:
        envelope = event.envelope()
        payload = envelope.pop("payload", None)
        if payload is not None:
            envelope["data_base64"] = base64.b64encode(payload).decode("ascii")
        envelopes.append(envelope)
    body: dict[str, object] = {"job": job_id, "state": record["state"], "events": envelopes}
    if events and events[0].seq > after + 1:
        body["trimmed"] = {"after": after, "first_seq": events[0].seq}
    return JSONResponse(body)


async def cancel_job(request: Request) -> Response:
    service: JobService = request.app.state.jobs
    job_id = request.path_params["job_id"]
    record = await _owned_record(request)
    if isinstance(record, Response):
        return record
    try:
        if not await service.cancel(job_id, by="api"):
            return _error(409, "job already finished")
    except BrokerUnavailable:
        return _error(503, "broker unavailable, retry later")
    return JSONResponse({"cancelled": job_id}, status_code=202)


async def list_templates(request: Request) -> Response:
    """Return the templates this relay runs, each with its argument schema."""
    service: JobService = request.app.state.jobs
    if service.auth.client(request.headers, request.query_params) is None:
        return _error(401, "missing or invalid API key", **{"WWW-Authenticate": "Bearer"})
    templates = [
        {"name": template.name, "schema": template.schema}
        for template in sorted(service.templates.templates.values(), key=lambda t: t.name)
    ]
    return JSONResponse({"templates": templates, "clusters": sorted(service.schedulers)})


async def metrics(request: Request) -> Response:
    service: JobService = request.app.state.jobs
    gauges = {"relay_open_sockets": ("Websockets streaming a job.", float(service.open_sockets))}
    return PlainTextResponse(service.metrics.render(gauges), media_type="text/plain; version=0.0.4")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    service: JobService = request.app.state.jobs
    try:
        await service.broker.ping()
    except BrokerUnavailable as error:
        return JSONResponse({"status": "unavailable", "broker": str(error)}, status_code=503)
    return JSONResponse({"status": "ready"})


def create_app(settings: Settings) -> Starlette:
    templates = TemplateRegistry([builtin_scripts_dir(), *settings.scripts])
    broker = make_broker(settings)
    service = JobService(settings, broker, templates, {})
    service.schedulers.update(make_schedulers(settings, service))
    watchdog = Watchdog(service)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        for scheduler in service.schedulers.values():
            await scheduler.start()
        watchdog.start()
        logger.info("relay ready: jobs post to %s", settings.relay_url)
        try:
            yield
        finally:
            await watchdog.close()
            await service.close()
            for scheduler in service.schedulers.values():
                await scheduler.close()
            await broker.close()
            logger.info("relay stopped")

    app = Starlette(
        routes=[
            WebSocketRoute("/ws/jobs", submit_endpoint),
            WebSocketRoute("/ws/jobs/{job_id}", attach_endpoint),
            Route("/jobs/{job_id}/events", ingest_events, methods=["POST"]),
            Route("/jobs/{job_id}/events", get_events, methods=["GET"]),
            Route("/jobs/{job_id}", get_job, methods=["GET"]),
            Route("/jobs/{job_id}", cancel_job, methods=["DELETE"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/templates", list_templates),
            *WEB_ROUTES,
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.origins),
                allow_methods=["GET", "DELETE"],
                allow_headers=["Authorization"],
            )
        ],
    )
    app.state.jobs = service
    app.state.settings = settings
    return app
