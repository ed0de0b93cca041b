"""A local stand-in for an HPC login node: munged, one-node Slurm with the Torque wrappers, sshd.

Run ``python -m tests.harness.cluster up`` from the repository root to start it by hand (it keeps
running after the command exits) and ``python -m tests.harness.cluster down`` to stop it.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import sys
import time
from pathlib import Path

from tests.harness.munge import MungeDaemon
from tests.harness.process import require_binary, require_root
from tests.harness.slurm import SlurmCluster
from tests.harness.sshd import DEFAULT_USER, SshServer, ensure_user

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".testenv"
DEFAULT_WORKDIR = "relay-jobs"
COMPONENT_DIRS = ("munge", "slurm", "sshd")


class LocalCluster:
    """munged, slurmctld, slurmd and sshd on loopback, with their files under state_dir.

    The components are public (munge, slurm, sshd) so that fault-injection tests can stop and
    restart one of them on the same port and state.
    """

    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        user: str = DEFAULT_USER,
        workdir: str = DEFAULT_WORKDIR,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.user = user
        # Folder for job scripts and outputs, relative to the test user's home.
        self.workdir = workdir
        require_binary("qsub", "slurm-wlm-torque")
        require_binary("qstat", "slurm-wlm-torque")
        self.munge = MungeDaemon(self.state_dir / "munge")
        self.slurm = SlurmCluster(self.state_dir / "slurm", self.munge.socket, probe_user=user)
        self.sshd = SshServer(
            self.state_dir / "sshd",
            user=user,
            # The Torque wrappers and Slurm clients find the private cluster through SLURM_CONF.
            environment={"SLURM_CONF": str(self.slurm.config_file)},
        )
        self._started_once = False

    @property
    def host(self) -> str:
        return self.sshd.endpoint.host

    @property
    def port(self) -> int:
        return self.sshd.port

    @property
    def client_key(self) -> Path:
        return self.sshd.client_key

    @property
    def known_hosts(self) -> Path:
        return self.sshd.known_hosts

    @property
    def slurm_conf(self) -> Path:
        return self.slurm.config_file

    @property
    def home(self) -> Path:
        """Home folder of the test user, as seen from the machine running the tests."""
        return Path(pwd.getpwnam(self.user).pw_dir)

    @property
    def local_workdir(self) -> Path:
        """The remote working folder, as seen from the machine running the tests."""
        return self.home / self.workdir

    def start(self) -> None:
        """Start every component that is not running and wait until all are ready.

        The first start() of an instance stops processes that an earlier run left behind and
        clears their state, so job numbers and queues begin empty.
        """
        require_root()
        started = time.monotonic()
        if not self._started_once:
            self.reclaim_stale()
            self._reset_state()
            self._started_once = True
        self.munge.start()
        try:
            # slurmctld takes a few seconds before it schedules the first job, so sshd starts
            # in the meantime.
            self.slurm.launch()
            self.sshd.start()
            self.slurm.start()
        except RuntimeError:
            self.stop()
            raise
        logger.info(
            "test cluster ready in %.1f s: ssh -p %d %s@%s",
            time.monotonic() - started,
            self.port,
            self.user,
            self.host,
        )

    def _reset_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for name in COMPONENT_DIRS:
            shutil.rmtree(self.state_dir / name, ignore_errors=True)
        home = ensure_user(self.user)
        workdir = home / self.workdir
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        account = pwd.getpwnam(self.user)
        os.chown(workdir, account.pw_uid, account.pw_gid)

    def stop(self) -> None:
        """Stop sshd, then Slurm after cancelling its jobs, then munged."""
        self.sshd.stop()
        self.slurm.stop()
        self.munge.stop()

    def reclaim_stale(self) -> None:
        """Stop components that an earlier run left running, found by their pid files only."""
        self.sshd.stop()
        self.slurm.reclaim_stale()
        self.munge.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "action",
        choices=["up", "down"],
        help="up starts the cluster and leaves it running, and down stops it",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"folder for the components' files (default {DEFAULT_STATE_DIR})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cluster = LocalCluster(args.state_dir)
    if args.action == "down":
        cluster.reclaim_stale()
        return 0
    cluster.start()
    print(
        f"ssh -i {cluster.client_key} -o UserKnownHostsFile={cluster.known_hosts} "
        f"-p {cluster.port} {cluster.user}@{cluster.host}"
    )
    print(f"export SLURM_CONF={cluster.slurm_conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
