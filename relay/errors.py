"""Exceptions of the relay."""

from __future__ import annotations


class RelayError(Exception):
    """Base class of the relay's own errors."""


class ConfigError(RelayError):
    """Raised when the configuration is invalid or names something unusable."""


class TemplateError(RelayError):
    """Raised when a submit names an unknown template or passes invalid arguments."""


class LimitExceeded(RelayError):
    """Raised when an API key has too many jobs or sockets, or submits too fast."""


class BrokerUnavailable(RelayError):
    """Raised when the broker cannot be reached; callers respond with 503 so the client retries."""


class JobFinished(RelayError):
    """Raised when an event arrives for a job that already has a terminal event."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} has already finished")
        self.job_id = job_id


class SubmitError(RelayError):
    """Raised when the scheduler refuses or fails to submit a job."""

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        exit_status: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr

    def __str__(self) -> str:
        text = self.args[0]
        if self.exit_status is not None:
            text += f" (exit status {self.exit_status})"
        if self.stderr.strip():
            text += f": {self.stderr.strip()}"
        return str(text)


class SchedulerError(SubmitError):
    """Raised when a scheduler command other than submit (status, cancel) fails."""
