"""The in-process broker: the embedded default for a single relay process."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.broker.base import Broker, PublishResult, Subscription
from relay.broker.states import TERMINAL_STATES, next_state
from relay.errors import JobFinished
from relay.events import Event, EventType, NewEvent, build_frame

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    record: dict[str, str]
    history: deque[Event]
    seen_ids: set[int] = field(default_factory=set)
    subscribers: set[Subscription] = field(default_factory=set)


class MemoryBroker(Broker):
    """Keeps records and history in this process; nothing survives a restart."""

    def __init__(self, history_length: int = 10_000, retention_seconds: int = 86_400) -> None:
        self._history_length = history_length
        self._retention_seconds = retention_seconds
        self._jobs: dict[str, _Job] = {}
        self._active: dict[str, dict[str, str]] = {}
        self._watchers: dict[str, int] = {}

    async def start(self) -> None:
        logger.info("memory broker started (history of %d events a job)", self._history_length)

    async def close(self) -> None:
        logger.info("memory broker stopped")

    async def ping(self) -> None:
        return None

    async def create_job(self, job_id: str, record: dict[str, str]) -> None:
        self._forget_expired()
        self._jobs[job_id] = _Job(
            record={**record, "next_seq": "0"}, history=deque(maxlen=self._history_length)
        )

    async def get_job(self, job_id: str) -> dict[str, str] | None:
        job = self._jobs.get(job_id)
        return dict(job.record) if job else None

    async def update_job(self, job_id: str, fields: dict[str, str]) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.record.update(fields)

    async def publish(self, job_id: str, events: Sequence[NewEvent]) -> PublishResult:
        job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        record = job.record
        if record["state"] in TERMINAL_STATES:
            raise JobFinished(job_id)

        accepted = duplicates = rejected = 0
        now = f"{time.time():.6f}"
        for new in events:
            if record["state"] in TERMINAL_STATES:
                rejected += 1
                continue
            if new.event_id is not None:
                if new.event_id in job.seen_ids:
                    duplicates += 1
                    continue
                job.seen_ids.add(new.event_id)

            seq = int(record["next_seq"])
            record["next_seq"] = str(seq + 1)
            record["last_event_at"] = now
            record["state"] = next_state(record["state"], new.type)
            if new.type == EventType.STARTED and "started_at" not in record:
                record["started_at"] = now
            if new.type == EventType.FATAL:
                record["exit_status"] = _exit_status_of(new.body)
            if record["state"] in TERMINAL_STATES:
                record["finished"] = now

            event = Event(seq=seq, type=new.type, frame=build_frame(job_id, seq, new))
            job.history.append(event)
            accepted += 1
            for subscription in list(job.subscribers):
                subscription.deliver(event)

        return PublishResult(accepted, duplicates, int(record["next_seq"]) - 1, rejected)

    def _forget_expired(self) -> None:
        """Drop jobs that finished more than the retention period ago, as Redis expires them."""
        cutoff = time.time() - self._retention_seconds
        expired = [
            job_id
            for job_id, job in self._jobs.items()
            if "finished" in job.record
            and float(job.record["finished"]) < cutoff
            and not job.subscribers
        ]
        for job_id in expired:
            del self._jobs[job_id]
        if expired:
            logger.debug("forgot %d jobs finished before the retention period", len(expired))

    async def history(self, job_id: str, after: int = -1) -> list[Event]:
        job = self._jobs.get(job_id)
        if job is None:
            return []
        return [event for event in job.history if event.seq > after]

    async def add_active(self, cluster: str, job_id: str, scheduler_id: str) -> None:
        self._active.setdefault(cluster, {})[job_id] = scheduler_id

    async def remove_active(self, cluster: str, job_id: str) -> None:
        self._active.get(cluster, {}).pop(job_id, None)

    async def active_jobs(self, cluster: str) -> dict[str, str]:
        return dict(self._active.get(cluster, {}))

    async def count_watchers(self, job_id: str, change: int) -> int:
        count = self._watchers.get(job_id, 0) + change
        if count > 0:
            self._watchers[job_id] = count
        else:
            self._watchers.pop(job_id, None)
        return max(count, 0)

    async def claim_poll(self, cluster: str, seconds: float) -> bool:
        # All sockets and jobs live in this one process, so no other instance polls.
        return True

    async def _add_subscriber(self, subscription: Subscription) -> None:
        job = self._jobs.get(subscription.job_id)
        if job is not None:
            job.subscribers.add(subscription)

    async def _remove_subscriber(self, subscription: Subscription) -> None:
        job = self._jobs.get(subscription.job_id)
        if job is not None:
            job.subscribers.discard(subscription)


def _exit_status_of(body: str) -> str:
    data = json.loads(body).get("data")
    status = data.get("exit_status") if isinstance(data, dict) else None
    return str(status) if isinstance(status, int) else ""
