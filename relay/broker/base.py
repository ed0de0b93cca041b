"""The broker interface: job records, sequenced history and live fan-out."""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from relay.events import Event, NewEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublishResult:
    accepted: int
    duplicates: int
    last_seq: int
    """Sequence number of the job's newest event, -1 when it has none."""
    rejected: int = 0
    """Events that arrived after the job's terminal event and were not delivered."""


class Subscription:
    """A bounded queue of one socket's live events for one job.

    The broker puts events with `deliver`; a subscriber that falls more than `maxsize`
    events behind is marked overflowed instead of growing memory.
    """

    def __init__(self, job_id: str, maxsize: int) -> None:
        self.job_id = job_id
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.overflow = asyncio.Event()
        """Set on overflow, so a socket whose send is blocked still learns of it."""

    def deliver(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.overflow.set()
            logger.warning("job %s: subscriber queue full, dropping the subscriber", self.job_id)

    def interrupt(self) -> None:
        """Wake the reader so it fetches history again, after the broker lost messages."""
        # A sentinel with seq -1 makes `get` return None to a reader blocked on the queue.
        try:
            self._queue.put_nowait(Event(seq=-1, type="", frame=""))
        except asyncio.QueueFull:
            pass

    async def get(self) -> Event | None:
        """Return the next live event, or None when the reader must resynchronize."""
        event = await self._queue.get()
        if self.overflowed or event.seq < 0:
            return None
        return event


class Broker(ABC):
    """Stores job records and event history and fans events out to subscribers."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise BrokerUnavailable when the broker cannot serve requests."""

    @abstractmethod
    async def create_job(self, job_id: str, record: dict[str, str]) -> None: ...

    @abstractmethod
    async def get_job(self, job_id: str) -> dict[str, str] | None: ...

    @abstractmethod
    async def update_job(self, job_id: str, fields: dict[str, str]) -> None: ...

    @abstractmethod
    async def publish(self, job_id: str, events: Sequence[NewEvent]) -> PublishResult:
        """Sequence, store and fan out `events` in one atomic step.

        Events with an `event_id` the job already sent count as duplicates. Raises
        JobFinished when the job had a terminal event before the first one.
        """

    @abstractmethod
    async def history(self, job_id: str, after: int = -1) -> list[Event]:
        """Return the stored events with seq > `after`, oldest first."""

    # Jobs the watchdog checks with the scheduler

    @abstractmethod
    async def add_active(self, cluster: str, job_id: str, scheduler_id: str) -> None: ...

    @abstractmethod
    async def remove_active(self, cluster: str, job_id: str) -> None: ...

    @abstractmethod
    async def active_jobs(self, cluster: str) -> dict[str, str]:
        """Return job id to scheduler id for the cluster's jobs that have not finished."""

    @abstractmethod
    async def count_watchers(self, job_id: str, change: int) -> int:
        """Add `change` to the number of sockets watching the job, on every instance, and
        return the new number."""

    @abstractmethod
    async def claim_poll(self, cluster: str, seconds: float) -> bool:
        """Return True if this instance may ask the scheduler now; False if another did
        within the last `seconds`."""

    @abstractmethod
    async def _add_subscriber(self, subscription: Subscription) -> None:
        """Register `subscription`; return once live delivery to it has begun."""

    @abstractmethod
    async def _remove_subscriber(self, subscription: Subscription) -> None: ...

    @asynccontextmanager
    async def subscribe(self, job_id: str, maxsize: int = 1024) -> AsyncIterator[Subscription]:
        """Receive the job's live events for the duration of the block."""
        subscription = Subscription(job_id, maxsize)
        await self._add_subscriber(subscription)
        try:
            yield subscription
        finally:
            await self._remove_subscriber(subscription)


def record_to_public(record: dict[str, str]) -> dict[str, Any]:
    """Return the job record as clients see it: no token hash, typed numbers."""
    public: dict[str, Any] = {
        key: value
        for key, value in record.items()
        if key not in {"token_hash", "next_seq", "walltime"}
    }
    public["last_seq"] = int(record.get("next_seq", "0")) - 1
    for key in ("created", "finished", "last_event_at", "started_at"):
        if key in public:
            public[key] = float(public[key])
    if "args" in public:
        public["args"] = json.loads(public["args"])
    if "exit_status" in public:
        public["exit_status"] = int(public["exit_status"]) if public["exit_status"] else None
    return public
