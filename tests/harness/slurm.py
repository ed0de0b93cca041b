"""A private one-node Slurm (slurmctld and slurmd) that authenticates through a private munged."""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

from tests.harness.process import (
    ChildProcess,
    find_free_port,
    log_tail,
    process_cmdline,
    read_pid_file,
    reclaim_stale,
    require_binary,
    require_root,
    run_command,
    wait_until,
)

logger = logging.getLogger(__name__)

START_TIMEOUT = 30.0
PROBE_TIMEOUT = 20.0
DRAIN_TIMEOUT = 20.0
# Time each daemon gets to exit after SIGTERM before SIGKILL, because slurmctld saves its state.
STOP_TIMEOUT = 15.0
PARTITION = "batch"
CLUSTER_NAME = "hpcrelay"


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def node_memory_mb() -> int:
    """Return 90% of MemTotal in MB, so slurmd never reports less memory than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    raise RuntimeError("MemTotal not found in /proc/meminfo")


class SlurmCluster:
    """slurmctld and slurmd for one node and one partition, with all files in state_dir."""

    def __init__(
        self,
        state_dir: Path,
        munge_socket: Path,
        probe_user: str,
        controller_port: int | None = None,
        node_port: int | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.munge_socket = munge_socket
        # A job is submitted as this user at start-up to prove that jobs run.
        self.probe_user = probe_user
        self.controller_port = controller_port if controller_port is not None else find_free_port()
        self.node_port = node_port if node_port is not None else find_free_port()
        self.node_name = short_hostname()
        self.config_file = self.state_dir / "slurm.conf"
        self.controller_log = self.state_dir / "slurmctld.log"
        self.node_log = self.state_dir / "slurmd.log"
        self.controller_pid_file = self.state_dir / "slurmctld.pid"
        self.node_pid_file = self.state_dir / "slurmd.pid"
        self.save_dir = self.state_dir / "state"
        self.spool_dir = self.state_dir / "spool"
        self.job_completion_file = self.state_dir / "jobcomp.txt"
        self._slurmctld = require_binary("slurmctld", "slurmctld")
        self._slurmd = require_binary("slurmd", "slurmd")
        for client in ("sinfo", "squeue", "scancel", "scontrol", "sbatch"):
            require_binary(client, "slurm-client")
        self._controller: ChildProcess | None = None
        self._node: ChildProcess | None = None
        # Whether the running daemons have completed a probe job.
        self._verified = False

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm daemons and client commands, pointing them at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.config_file)}

    def prepare(self) -> None:
        """Create the state folders and write slurm.conf. Saved job state is kept."""
        require_root()
        for folder in (self.state_dir, self.save_dir, self.spool_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Clients running as the test user read slurm.conf through this folder.
        self.state_dir.chmod(0o755)
        self.config_file.write_text(self._config_text())
        self.config_file.chmod(0o644)

    def _config_text(self) -> str:
        lines = [
            f"ClusterName={CLUSTER_NAME}",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            f"SlurmctldPort={self.controller_port}",
            f"SlurmdPort={self.node_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            "MpiDefault=none",
            # Plugins that need neither cgroups nor accounting storage.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.job_completion_file}",
            # Finished jobs stay visible to qstat (state C) for 300 s.
            "MinJobAge=300",
            "KillWait=5",
            "ReturnToService=2",
            "SchedulerParameters=batch_sched_delay=0",
            # Bind to 127.0.0.1 only, not to all addresses.
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            f"StateSaveLocation={self.save_dir}",
            f"SlurmdSpoolDir={self.spool_dir}",
            f"SlurmctldPidFile={self.controller_pid_file}",
            f"SlurmdPidFile={self.node_pid_file}",
            f"SlurmctldLogFile={self.controller_log}",
            f"SlurmdLogFile={self.node_log}",
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} "
            f"RealMemory={node_memory_mb()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
            "OverSubscribe=FORCE:4",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start slurmctld and slurmd, then wait until the node is idle and a probe job ran."""
        self.launch()
        if not self._verified:
            self.wait_ready()

    def launch(self) -> None:
        """Start slurmctld and slurmd without waiting. A running pair is left as is."""
        if self.running():
            return
        self._verified = False
        # Reclaim first, because a stale slurmctld needs the old slurm.conf to cancel its jobs.
        self.reclaim_stale()
        self.prepare()
        marker = str(self.config_file)
        self._controller = ChildProcess(
            "slurmctld",
            [self._slurmctld, "-D", "-f", marker],
            self.state_dir / "slurmctld.out",
            env=self.env,
        )
        self._node = ChildProcess(
            "slurmd",
            [self._slurmd, "-D", "-f", marker, "-N", self.node_name],
            self.state_dir / "slurmd.out",
            env=self.env,
        )
        self._controller.start()
        self._node.start()

    def wait_ready(self) -> None:
        """Wait until the node is idle and a probe job completed, or stop both daemons and raise."""
        try:
            self._wait_for_idle_node()
            self._run_probe_job()
        except RuntimeError:
            self.stop()
            raise
        self._verified = True
        logger.info(
            "Slurm ready: node %s, controller port %d", self.node_name, self.controller_port
        )

    def running(self) -> bool:
        return (
            self._controller is not None
            and self._controller.running()
            and self._node is not None
            and self._node.running()
        )

    def _failure(self, message: str) -> RuntimeError:
        for daemon in (self._controller, self._node):
            if daemon is not None and daemon.exit_code() is not None:
                message += f"\n{daemon.name} exited with code {daemon.exit_code()}"
        return RuntimeError(
            f"{message}\n{log_tail(self.controller_log)}\n{log_tail(self.node_log)}"
        )

    def _wait_for_idle_node(self) -> None:
        def node_idle() -> bool:
            if not self.running():
                return True
            result = run_command(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, check=False)
            return result.returncode == 0 and f"{self.node_name} idle" in result.stdout

        idle = wait_until(node_idle, START_TIMEOUT, interval=0.1)
        if not self.running():
            raise self._failure("Slurm daemons exited during start-up")
        if not idle:
            raise self._failure(
                f"node {self.node_name} did not become idle within {START_TIMEOUT} s"
            )

    def _run_probe_job(self) -> None:
        result = run_command(
            [
                "sbatch",
                "--parsable",
                "--job-name=harness-probe",
                "--output=/dev/null",
                "--wrap",
                "true",
            ],
            env=self.env,
            user=self.probe_user,
            cwd="/tmp",
            check=False,
        )
        if result.returncode != 0:
            raise self._failure(
                f"probe job submission as {self.probe_user} failed: {result.stderr.strip()}"
            )
        job_id = result.stdout.strip().split(";")[0]
        state = ""

        def job_finished() -> bool:
            nonlocal state
            state = self.job_state(job_id)
            return state not in ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING")

        if not wait_until(job_finished, PROBE_TIMEOUT, interval=0.1):
            raise self._failure(
                f"probe job {job_id} did not finish within {PROBE_TIMEOUT} s "
                f"(state {state or 'unknown'})"
            )
        if state != "COMPLETED":
            raise self._failure(f"probe job {job_id} ended in state {state}")

    def job_state(self, job_id: str) -> str:
        """Return the JobState of a job, or "" if slurmctld does not know it."""
        result = run_command(["scontrol", "-o", "show", "job", job_id], env=self.env, check=False)
        match = re.search(r"\bJobState=(\S+)", result.stdout)
        return match.group(1) if match else ""

    def cancel_all_jobs(self) -> None:
        """Cancel every job and wait until none is pending, running or completing.

        Job steps run under slurmstepd, which outlives slurmd, so jobs are cancelled before the
        daemons stop.
        """
        result = run_command(["squeue", "-h", "-o", "%A"], env=self.env, check=False)
        job_ids = result.stdout.split()
        if not job_ids:
            return
        logger.info("cancelling Slurm jobs %s", " ".join(job_ids))
        run_command(["scancel", *job_ids], env=self.env, check=False)

        def queue_empty() -> bool:
            queue = run_command(["squeue", "-h", "-o", "%A"], env=self.env, check=False)
            return queue.returncode != 0 or not queue.stdout.strip()

        if not wait_until(queue_empty, DRAIN_TIMEOUT, interval=0.2):
            logger.warning("Slurm jobs still in the queue %.0f s after scancel", DRAIN_TIMEOUT)

    def stop(self) -> None:
        """Cancel all jobs, then stop slurmd and slurmctld. Saved state is kept for start()."""
        self._verified = False
        if self._controller_alive():
            self.cancel_all_jobs()
        if self._node is not None:
            self._node.stop(STOP_TIMEOUT)
            self._node = None
        if self._controller is not None:
            self._controller.stop(STOP_TIMEOUT)
            self._controller = None
        self.reclaim_stale()

    def _controller_alive(self) -> bool:
        if self._controller is not None:
            return self._controller.running()
        pid = read_pid_file(self.controller_pid_file)
        cmdline = process_cmdline(pid) if pid is not None else None
        return cmdline is not None and str(self.config_file) in cmdline

    def reclaim_stale(self) -> None:
        """Stop slurmd and slurmctld left by an earlier run, found by their pid files."""
        if self._controller is None and self._controller_alive():
            self.cancel_all_jobs()
        marker = str(self.config_file)
        reclaim_stale(self.node_pid_file, marker, "slurmd", STOP_TIMEOUT)
        reclaim_stale(self.controller_pid_file, marker, "slurmctld", STOP_TIMEOUT)
