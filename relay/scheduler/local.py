"""The local scheduler: runs job scripts with bash on this machine, as a PBS job would."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from pathlib import Path

from relay.errors import SchedulerError, SubmitError
from relay.scheduler.base import ExitCallback, JobSubmission, Scheduler

logger = logging.getLogger(__name__)

# Variables a login shell would give a batch job; nothing else leaks from the relay.
# Seconds jobs get after SIGTERM at shutdown before SIGKILL.
KILL_AFTER = 3.0
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "SHELL", "TZ")


class LocalScheduler(Scheduler):
    """Runs each job as a child process in its own session, with only the job environment."""

    def __init__(self, name: str, workdir: Path | None, on_exit: ExitCallback) -> None:
        self.name = name
        self._workdir = workdir
        self._own_workdir: tempfile.TemporaryDirectory[str] | None = None
        self._on_exit = on_exit
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._workdir is None:
            self._own_workdir = tempfile.TemporaryDirectory(prefix="relay-jobs-")
            self._workdir = Path(self._own_workdir.name)
        self._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        logger.info("local scheduler %s runs jobs in %s", self.name, self._workdir)

    async def close(self) -> None:
        for scheduler_id in list(self._processes):
            await self.cancel(scheduler_id)
        if self._waiters:
            await asyncio.wait(self._waiters, timeout=KILL_AFTER)
        # A job's TERM trap retries its fatal for minutes against a relay that is gone, so
        # what is left after the grace period is killed with its whole process group.
        for scheduler_id, process in list(self._processes.items()):
            logger.warning("local job %s still running at shutdown; sending SIGKILL", scheduler_id)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._waiters:
            await asyncio.wait(self._waiters, timeout=5)
        if self._own_workdir is not None:
            self._own_workdir.cleanup()

    async def submit(self, submission: JobSubmission) -> str:
        assert self._workdir is not None, "start() was not called"
        script = self._workdir / f"job-{submission.job_id}.sh"
        output = self._workdir / f"job-{submission.job_id}.out"
        # The script contains the job's token, so only its owner may read it.
        descriptor = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(submission.script)
        environment = {key: os.environ[key] for key in _INHERITED if key in os.environ}
        environment.update(submission.environment)
        try:
            with output.open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    "bash",
                    str(script),
                    cwd=self._workdir,
                    env=environment,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            raise SubmitError(f"cannot start bash for job {submission.job_id}: {error}") from error

        scheduler_id = f"local.{process.pid}"
        self._processes[scheduler_id] = process
        waiter = asyncio.create_task(self._wait(submission.job_id, scheduler_id, process))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        logger.info("job %s started locally as %s", submission.job_id, scheduler_id)
        return scheduler_id

    async def cancel(self, scheduler_id: str) -> None:
        process = self._processes.get(scheduler_id)
        if process is None or process.returncode is not None:
            raise SchedulerError(f"no running local job {scheduler_id}")
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        logger.info("local job %s sent SIGTERM", scheduler_id)

    async def _wait(
        self, job_id: str, scheduler_id: str, process: asyncio.subprocess.Process
    ) -> None:
        status = await process.wait()
        self._processes.pop(scheduler_id, None)
        # A negative return code means a signal; report it as a shell would (128 + signal).
        exit_status = status if status >= 0 else 128 - status
        logger.info("job %s (%s) exited with status %d", job_id, scheduler_id, exit_status)
        try:
            await self._on_exit(job_id, exit_status)
        except Exception:
            logger.exception("job %s: exit handler failed", job_id)
