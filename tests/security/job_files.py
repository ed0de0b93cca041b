"""Where the schedulers under test leave a job's script file."""

from __future__ import annotations

import tempfile
from pathlib import Path


def job_script_files(job_id: str, cluster_workdir: Path | None) -> list[Path]:
    """Return the script files of `job_id`.

    On the test cluster they are in its working folder (`cluster_workdir`, seen from this
    machine). The local scheduler keeps `job-ID.sh` in its own temporary folder until the
    relay stops.
    """
    if cluster_workdir is not None:
        return sorted(cluster_workdir.glob(f"*{job_id}*.pbs"))
    return sorted(Path(tempfile.gettempdir()).glob(f"relay-jobs-*/job-{job_id}.sh"))
