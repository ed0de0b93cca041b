"""The scheduler interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class JobSubmission:
    """A composed job script and the RELAY_* environment the job gets."""

    job_id: str
    template: str
    script: str
    environment: dict[str, str]


# Called with (job_id, exit_status) when a scheduler detects that a job ended.
ExitCallback = Callable[[str, int | None], Awaitable[None]]


class Scheduler(ABC):
    """Runs job scripts somewhere and reports their scheduler ids."""

    name: str

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def submit(self, submission: JobSubmission) -> str:
        """Submit the job and return its scheduler id; raise SubmitError on failure."""

    @abstractmethod
    async def cancel(self, scheduler_id: str) -> None:
        """Ask the scheduler to end the job; raise SchedulerError on failure."""
