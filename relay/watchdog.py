"""The watchdog: finds PBS jobs that ended without a terminal event and reports them.

A job killed by its walltime, by SIGKILL or with its node sends nothing. For each PBS
cluster the watchdog queries qstat about all of the cluster's unfinished jobs in one call,
every `poll_interval` seconds, sooner when a job has been silent for `heartbeat_timeout`,
and never more often than `min_poll_interval` across all relay instances. A job that
qstat reports finished, or no longer lists, and that still has no terminal event after
`finish_grace` seconds gets a `fatal` from the relay.
"""

from __future__ import annotations

import asyncio
import logging
import time

from relay.broker.states import TERMINAL_STATES
from relay.config import ClusterConfig
from relay.errors import BrokerUnavailable, RelayError
from relay.events import EventType
from relay.jobs import JobService
from relay.scheduler.pbs import PBSScheduler
from relay.scheduler.qstat import JobStatus, SchedulerState, find

logger = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, service: JobService) -> None:
        self.service = service
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, scheduler in self.service.schedulers.items():
            if isinstance(scheduler, PBSScheduler):
                cluster = self.service.settings.clusters[name]
                task = asyncio.create_task(self._watch(cluster, scheduler), name=f"watch-{name}")
                self._tasks.append(task)
                logger.info(
                    "watchdog for cluster %s started: qstat every %.0fs, at most every %.0fs",
                    name,
                    cluster.poll_interval,
                    cluster.min_poll_interval,
                )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self, cluster: ClusterConfig, scheduler: PBSScheduler) -> None:
        tick = min(1.0, cluster.min_poll_interval)
        last_poll = 0.0
        while True:
            await asyncio.sleep(tick)
            try:
                if await self._poll_due(cluster, last_poll):
                    last_poll = time.monotonic()
                    await self._poll(cluster, scheduler)
            except (RelayError, ValueError) as error:
                logger.warning("watchdog for cluster %s: check failed: %s", cluster.name, error)
            except Exception:
                logger.exception("watchdog for cluster %s crashed; it goes on", cluster.name)

    async def _poll_due(self, cluster: ClusterConfig, last_poll: float) -> bool:
        since = time.monotonic() - last_poll
        if since < cluster.min_poll_interval:
            return False
        active = await self.service.broker.active_jobs(cluster.name)
        if not active:
            return False
        if since < cluster.poll_interval and not await self._any_silent(cluster, active):
            return False
        return await self.service.broker.claim_poll(cluster.name, cluster.min_poll_interval)

    async def _any_silent(self, cluster: ClusterConfig, active: dict[str, str]) -> bool:
        now = time.time()
        for job_id in active:
            record = await self.service.broker.get_job(job_id)
            if record is None:
                continue
            last = float(record.get("last_event_at") or record.get("created") or now)
            if now - last > cluster.heartbeat_timeout:
                return True
        return False

    async def _poll(self, cluster: ClusterConfig, scheduler: PBSScheduler) -> None:
        broker = self.service.broker
        active = await broker.active_jobs(cluster.name)
        if not active:
            return
        statuses, unknown = await scheduler.status(sorted(set(active.values())))
        logger.debug(
            "cluster %s: qstat listed %d of %d jobs", cluster.name, len(statuses), len(active)
        )
        ended: dict[str, JobStatus | None] = {}
        for job_id, scheduler_id in active.items():
            status = find(statuses, scheduler_id)
            if status is None or status.state == SchedulerState.FINISHED:
                ended[job_id] = status
            elif scheduler_id in unknown:
                ended[job_id] = None
        if not ended:
            return
        # The job's own terminal event may still be on its way: give it time to arrive.
        await asyncio.sleep(cluster.finish_grace)
        for job_id, status in ended.items():
            await self._report_end(cluster, job_id, active[job_id], status)

    async def _report_end(
        self, cluster: ClusterConfig, job_id: str, scheduler_id: str, status: JobStatus | None
    ) -> None:
        broker = self.service.broker
        record = await broker.get_job(job_id)
        if record is None or record["state"] in TERMINAL_STATES:
            await broker.remove_active(cluster.name, job_id)
            return
        if status is None:
            message = f"job {scheduler_id} left the scheduler without a terminal event"
            exit_status = None
        else:
            reason = status.reason or f"scheduler state {status.raw_state}"
            message = f"job {scheduler_id} ended without a terminal event: {reason}"
            exit_status = status.exit_status
        logger.warning("job %s (%s): %s", job_id, scheduler_id, message)
        try:
            await self.service.publish(
                job_id, EventType.FATAL, {"message": message, "exit_status": exit_status}
            )
        except BrokerUnavailable as error:
            logger.warning("job %s: fatal not published, broker unavailable: %s", job_id, error)
            return
        self.service.metrics.add("relay_watchdog_fatals_total")
        await broker.remove_active(cluster.name, job_id)
