"""The PBS scheduler: submits job scripts with qsub on a login node over SSH."""

from __future__ import annotations

import logging
import re
import shlex

from relay.config import QSUB_SAFE_VALUE, ClusterConfig
from relay.errors import SchedulerError, SubmitError
from relay.scheduler.base import JobSubmission, Scheduler
from relay.scheduler.qstat import (
    FLAVOURS,
    JobStatus,
    detect_and_parse,
    status_command,
    unknown_job_ids,
)
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
        self.flavour: str | None = (
            None if cluster.qstat_flavour == "auto" else cluster.qstat_flavour
        )

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

    async def status(self, scheduler_ids: list[str]) -> tuple[dict[str, JobStatus], set[str]]:
        """Ask qstat about all `scheduler_ids` in one call.

        Returns the statuses qstat listed and the ids it reported as unknown. On the first
        call with the flavour "auto", the qstat flavours are tried in turn and the first
        that works is kept.
        """
        flavours = [self.flavour] if self.flavour else list(FLAVOURS)
        failures = []
        for flavour in flavours:
            result = await self.ssh.run(status_command(flavour, scheduler_ids))
            stdout, stderr = _text(result.stdout), _text(result.stderr)
            unknown = unknown_job_ids(stderr)
            if result.exit_status != 0 and not unknown and (stdout.strip() or _is_usage(stderr)):
                failures.append(f"{flavour}: exit status {result.exit_status}: {stderr.strip()}")
                continue
            try:
                statuses = detect_and_parse(stdout)
            except ValueError as error:
                failures.append(f"{flavour}: {error}")
                continue
            if self.flavour is None:
                logger.info("cluster %s: qstat flavour is %s", self.name, flavour)
                self.flavour = flavour
            return statuses, unknown
        raise SchedulerError(f"qstat on {self.name} failed: {'; '.join(failures)[:500]}")

    async def cancel(self, scheduler_id: str) -> None:
        result = await self.ssh.run(f"qdel {shlex.quote(scheduler_id)}")
        if result.exit_status != 0:
            raise SchedulerError(
                f"qdel {scheduler_id} failed",
                command="qdel",
                exit_status=result.exit_status,
                stderr=_text(result.stderr),
            )


def _is_usage(stderr: str) -> bool:
    text = stderr.lower()
    return any(word in text for word in ("usage", "invalid option", "unknown option", "illegal"))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
