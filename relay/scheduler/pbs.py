"""The PBS scheduler: submits job scripts with qsub on a login node over SSH."""

from __future__ import annotations

import logging
import re
import shlex

from relay.config import QSUB_SAFE_VALUE, ClusterConfig
from relay.errors import SchedulerError, SubmitError
from relay.scheduler.base import JobSubmission, Scheduler
from relay.ssh import SSHConnection

logger = logging.getLogger(__name__)

# PBS Pro and Torque print `1234.server`; Slurm's Torque wrapper prints `1234`; array
# jobs look like `1234[].server`.
_JOB_ID = re.compile(r"\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?")


def parse_qsub_output(stdout: str) -> str:
    """Return the job id qsub printed: the last line that is one, after any notices."""
    for line in reversed(stdout.strip().splitlines()):
        candidate = line.strip()
        if _JOB_ID.fullmatch(candidate):
            return candidate
    raise SubmitError(f"qsub printed no job id: {stdout.strip()[:200]!r}")


def qsub_variables(environment: dict[str, str]) -> str:
    """Return the `-v` list; every value must pass unquoted through a shell and commas."""
    items = []
    for name, value in environment.items():
        if not QSUB_SAFE_VALUE.fullmatch(value):
            raise SubmitError(f"value of {name} has characters qsub -v cannot pass safely")
        items.append(f"{name}={value}")
    return ",".join(items)


class PBSScheduler(Scheduler):
    """Writes the job script over SFTP into the cluster's working folder, then runs qsub."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.name = cluster.name
        self.cluster = cluster
        self.ssh = SSHConnection(cluster)

    async def close(self) -> None:
        await self.ssh.close()

    async def submit(self, submission: JobSubmission) -> str:
        folder = self.cluster.workdir.rstrip("/") or "."
        name = f"{submission.template}-{submission.job_id}.pbs"
        await self.ssh.write_file(folder, name, submission.script)
        options = " ".join(shlex.quote(option) for option in self.cluster.qsub_options)
        command = (
            f"cd {shlex.quote(folder)} && qsub {options} -v "
            f"{shlex.quote(qsub_variables(submission.environment))} {shlex.quote(name)}"
        )
        result = await self.ssh.run(command)
        stdout = _text(result.stdout)
        if result.exit_status != 0:
            raise SubmitError(
                "qsub failed",
                command="qsub",
                exit_status=result.exit_status,
                stderr=_text(result.stderr) or stdout,
            )
        scheduler_id = parse_qsub_output(stdout)
        logger.info("job %s submitted to %s as %s", submission.job_id, self.name, scheduler_id)
        return scheduler_id

    async def cancel(self, scheduler_id: str) -> None:
        result = await self.ssh.run(f"qdel {shlex.quote(scheduler_id)}")
        if result.exit_status != 0:
            raise SchedulerError(
                f"qdel {scheduler_id} failed",
                command="qdel",
                exit_status=result.exit_status,
                stderr=_text(result.stderr),
            )


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
