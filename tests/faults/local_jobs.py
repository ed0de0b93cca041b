"""Clean-up of local jobs that outlive a relay killed with SIGKILL.

The local scheduler starts each job in its own session, so a job survives its relay. The
relay that started it can no longer stop it or remove its working folder, so a test that
kills a relay does both, by the pid in the job's `queued` event.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from tests.harness.process import process_cmdline

logger = logging.getLogger(__name__)

SCHEDULER_PREFIX = "local."
WORKDIR_PREFIX = "relay-jobs-"


def local_job_pid(events: list[dict[str, Any]]) -> int | None:
    """Return the pid from the `queued` event of a local job, or None if there is none."""
    for event in events:
        if event["type"] == "queued":
            scheduler_id = str(event["data"]["scheduler_id"])
            if scheduler_id.startswith(SCHEDULER_PREFIX):
                return int(scheduler_id.removeprefix(SCHEDULER_PREFIX))
    return None


def local_job_workdir(pid: int, job_id: str) -> Path | None:
    """Return the working folder of the running local job `job_id` with this pid, or None.

    The local scheduler runs `bash WORKDIR/job-JOB_ID.sh`, so the folder is read from the
    process's command line while the job runs.
    """
    cmdline = process_cmdline(pid)
    if cmdline is None or f"job-{job_id}.sh" not in cmdline:
        return None
    script = Path(cmdline.split()[-1])
    if not script.parent.name.startswith(WORKDIR_PREFIX):
        return None
    return script.parent


def end_local_job(pid: int, job_id: str) -> None:
    """Send SIGTERM to the job's process group if `pid` still runs the script of `job_id`."""
    cmdline = process_cmdline(pid)
    if cmdline is None or f"job-{job_id}.sh" not in cmdline:
        return
    logger.info("ending orphaned local job %s (pid %d)", job_id, pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return


def remove_workdir(folder: Path | None) -> None:
    """Remove a local scheduler's working folder that its killed relay left behind."""
    if folder is not None and folder.name.startswith(WORKDIR_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
