"""Jobs: creation, submission in the background, cancellation and exit handling."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from relay.auth import Authenticator, own_origins
from relay.broker.base import Broker, PublishResult
from relay.broker.states import TERMINAL_STATES
from relay.config import Settings
from relay.errors import (
    BrokerUnavailable,
    JobFinished,
    LimitExceeded,
    RelayError,
    SubmitError,
    TemplateError,
)
from relay.events import EventType, new_event
from relay.limits import BucketMap
from relay.metrics import Metrics
from relay.scheduler.base import JobSubmission, Scheduler
from relay.templates import TemplateRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewJob:
    job_id: str
    token: str
    template: str
    args: dict[str, Any]
    cluster: str
    owner: str


def owner_set(owner: str) -> str:
    """Name of the broker's set of an API key's unfinished jobs."""
    return f"owner:{owner}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, record: dict[str, str]) -> bool:
    """Compare in constant time, so response timing reveals nothing about the stored hash."""
    return hmac.compare_digest(hash_token(token), record.get("token_hash", ""))


class JobService:
    """Creates jobs, submits them to their cluster and publishes the relay's own events."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        templates: TemplateRegistry,
        schedulers: dict[str, Scheduler],
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.templates = templates
        self.schedulers = schedulers
        self._tasks: set[asyncio.Task[None]] = set()
        self.auth = Authenticator(
            settings.api_keys,
            settings.origins,
            own_origins(settings.host, settings.port, settings.relay_url),
        )
        self.submits = BucketMap(settings.submits_per_minute / 60, settings.submits_per_minute)
        self.ingest_rate = BucketMap(settings.events_per_second, 2 * settings.events_per_second)
        self.sockets_by_owner: dict[str, int] = {}
        self.metrics = Metrics()
        self.shutting_down = asyncio.Event()
        """Set when the relay stops: open sockets close with 1001 so clients resume elsewhere."""
        self.open_sockets = 0
        self._sockets_closed = asyncio.Event()

    async def create(
        self, template_name: object, args: object, cluster: object, owner: str
    ) -> NewJob:
        """Validate a submit request and store the new job's record.

        Raises TemplateError for an invalid request and LimitExceeded when the key has too
        many unfinished jobs or submits too fast.
        """
        template = self.templates.get(template_name)
        checked = self.templates.validate_args(template, {} if args is None else args)
        cluster_name = self.settings.default_cluster if cluster is None else cluster
        if not isinstance(cluster_name, str) or cluster_name not in self.schedulers:
            raise TemplateError(
                f"unknown cluster {cluster_name!r}; known: {', '.join(sorted(self.schedulers))}"
            )
        await self._check_owner_limits(owner)
        job = NewJob(
            job_id=uuid.uuid4().hex,
            token=secrets.token_urlsafe(32),
            template=template.name,
            args=checked,
            cluster=cluster_name,
            owner=owner,
        )
        await self.broker.create_job(
            job.job_id,
            {
                "id": job.job_id,
                "script": job.template,
                "args": json.dumps(checked, ensure_ascii=False),
                "cluster": cluster_name,
                "state": "starting",
                "token_hash": hash_token(job.token),
                "created": f"{time.time():.6f}",
                "scheduler_id": "",
                "exit_status": "",
                "owner": owner,
                "walltime": str(template.walltime_seconds),
            },
        )
        await self.broker.add_active(owner_set(owner), job.job_id, "")
        logger.info(
            "job %s created: template %s on cluster %s", job.job_id, job.template, cluster_name
        )
        return job

    async def _check_owner_limits(self, owner: str) -> None:
        if self.submits.take(owner):
            raise LimitExceeded(
                f"more than {self.settings.submits_per_minute} submits a minute for this key"
            )
        unfinished = await self.broker.active_jobs(owner_set(owner))
        if len(unfinished) < self.settings.jobs_per_key:
            return
        # The set is pruned here, lazily: jobs that finished since leave it.
        for job_id in list(unfinished):
            record = await self.broker.get_job(job_id)
            if record is None or record["state"] in TERMINAL_STATES:
                await self.broker.remove_active(owner_set(owner), job_id)
                del unfinished[job_id]
        if len(unfinished) >= self.settings.jobs_per_key:
            raise LimitExceeded(
                f"this key has {len(unfinished)} unfinished jobs; the limit is "
                f"{self.settings.jobs_per_key}"
            )

    def token_expired(self, record: dict[str, str], now: float) -> bool:
        """Return True once the token is past its expiry.

        A token expires at the job's start plus its walltime plus a grace period, or,
        before the job starts, the queue grace period after creation.
        """
        started = record.get("started_at")
        if started:
            walltime = int(record.get("walltime") or 0)
            return now > float(started) + walltime + self.settings.token_grace_seconds
        return now > float(record["created"]) + self.settings.queue_grace_seconds

    async def publish(self, job_id: str, event_type: str, data: Any) -> PublishResult | None:
        """Publish an event of the relay's own; return None if the job already finished."""
        try:
            return await self.broker.publish(job_id, [new_event(event_type, data, ts=time.time())])
        except JobFinished:
            logger.info("job %s: %s not published, the job already finished", job_id, event_type)
            return None

    def submit_in_background(self, job: NewJob) -> None:
        """Submit the job in a task that outlives the socket that asked for it."""
        task = asyncio.create_task(self._submit(job), name=f"submit-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, job: NewJob) -> None:
        scheduler = self.schedulers[job.cluster]
        cluster = self.settings.clusters[job.cluster]
        template = self.templates.get(job.template)
        submission = JobSubmission(
            job_id=job.job_id,
            template=job.template,
            script=self.templates.compose(template, job.token, job.args),
            environment={
                "RELAY_URL": self.settings.cluster_url(cluster),
                "RELAY_JOB_ID": job.job_id,
            },
        )
        try:
            scheduler_id = await scheduler.submit(submission)
        except RelayError as error:
            status = error.exit_status if isinstance(error, SubmitError) else None
            logger.warning("job %s: submission to %s failed: %s", job.job_id, job.cluster, error)
            self.metrics.add("relay_submit_failures_total")
            await self._publish_quietly(
                job.job_id, EventType.FATAL, {"message": str(error), "exit_status": status}
            )
            return
        except Exception as error:
            logger.exception("job %s: submission to %s crashed", job.job_id, job.cluster)
            self.metrics.add("relay_submit_failures_total")
            await self._publish_quietly(
                job.job_id,
                EventType.FATAL,
                {"message": f"internal error while submitting: {error!r}", "exit_status": None},
            )
            return
        self.metrics.add("relay_jobs_submitted_total")
        try:
            await self.broker.update_job(job.job_id, {"scheduler_id": scheduler_id})
            if self.settings.clusters[job.cluster].scheduler == "pbs":
                await self.broker.add_active(job.cluster, job.job_id, scheduler_id)
        except BrokerUnavailable as error:
            # NOTE: without the record of its scheduler id the watchdog cannot check the job.
            logger.error("job %s: scheduler id %s not stored: %s", job.job_id, scheduler_id, error)
        await self._publish_quietly(job.job_id, EventType.QUEUED, {"scheduler_id": scheduler_id})

    async def _publish_quietly(self, job_id: str, event_type: str, data: Any) -> None:
        try:
            await self.publish(job_id, event_type, data)
        except BrokerUnavailable as error:
            # NOTE: the event is lost if the broker stays down; the job's own events and
            # the scheduler's exit report still end the stream.
            logger.error(
                "job %s: %s not published, broker unavailable: %s", job_id, event_type, error
            )

    async def on_exit(self, job_id: str, exit_status: int | None) -> None:
        """End the stream of a job that exited without sending complete or fatal."""
        record = await self.broker.get_job(job_id)
        if record is None or record["state"] in TERMINAL_STATES:
            return
        logger.warning("job %s exited with status %s without a terminal event", job_id, exit_status)
        await self._publish_quietly(
            job_id,
            EventType.FATAL,
            {
                "message": f"job ended with exit status {exit_status} without a terminal event",
                "exit_status": exit_status,
            },
        )

    async def cancel(self, job_id: str, by: str) -> bool:
        """Cancel the job: publish `cancelled`, then ask the scheduler to end it.

        `cancelled` goes first so that the job's own `fatal` from its TERM trap arrives
        after the terminal event and is refused. Returns False if the job had finished.
        """
        record = await self.broker.get_job(job_id)
        if record is None or record["state"] in TERMINAL_STATES:
            return False
        if await self.publish(job_id, EventType.CANCELLED, {"by": by}) is None:
            return False
        scheduler_id = record.get("scheduler_id", "")
        if not scheduler_id:
            # NOTE: a job cancelled while its qsub is still running is not qdel'ed.
            logger.warning("job %s cancelled before it had a scheduler id", job_id)
            return True
        try:
            await self.schedulers[record["cluster"]].cancel(scheduler_id)
            logger.info("job %s (%s) cancelled by %s", job_id, scheduler_id, by)
        except RelayError as error:
            logger.warning("job %s: cancel of %s failed: %s", job_id, scheduler_id, error)
        return True

    async def watcher_joined(self, job_id: str) -> None:
        await self.broker.count_watchers(job_id, 1)

    async def watcher_left(self, job_id: str) -> None:
        """Count the socket out; start the grace period when it was the job's last one."""
        if await self.broker.count_watchers(job_id, -1) or self.shutting_down.is_set():
            return
        if self.settings.cancel_unwatched_after > 0:
            task = asyncio.create_task(self._cancel_if_unwatched(job_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _cancel_if_unwatched(self, job_id: str) -> None:
        await asyncio.sleep(self.settings.cancel_unwatched_after)
        try:
            if await self.broker.count_watchers(job_id, 0):
                return
            if await self.cancel(job_id, by="unwatched"):
                logger.info(
                    "job %s cancelled: no socket watched it for %.0fs",
                    job_id,
                    self.settings.cancel_unwatched_after,
                )
        except BrokerUnavailable as error:
            logger.warning("job %s: unwatched check failed, broker unavailable: %s", job_id, error)

    def socket_opened(self) -> None:
        self.open_sockets += 1
        self._sockets_closed.clear()

    def socket_closed(self) -> None:
        self.open_sockets -= 1
        if not self.open_sockets:
            self._sockets_closed.set()

    async def close_sockets(self) -> None:
        """Close every open socket with 1001, waiting at most 3 seconds for them."""
        self.shutting_down.set()
        if not self.open_sockets:
            return
        logger.info("closing %d sockets for shutdown", self.open_sockets)
        try:
            async with asyncio.timeout(3):
                await self._sockets_closed.wait()
        except TimeoutError:
            logger.warning("%d sockets still open at shutdown", self.open_sockets)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
