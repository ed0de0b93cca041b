"""Config files for relays under test."""

from __future__ import annotations

from pathlib import Path

from tests.harness.cluster import LocalCluster


def write_public_url_config(path: Path, public_url: str) -> Path:
    """Write a config whose jobs POST their events to `public_url`, and return its path."""
    path.write_text(f'[server]\npublic_url = "{public_url}"\n')
    return path


def write_cluster_config(path: Path, cluster: LocalCluster) -> Path:
    """Write a config with one pbs cluster, the harness's test cluster, and return its path."""
    path.write_text(
        "[clusters.test]\n"
        'scheduler = "pbs"\n'
        f'host = "{cluster.host}"\n'
        f"port = {cluster.port}\n"
        f'user = "{cluster.user}"\n'
        f'key = "{cluster.client_key}"\n'
        f'known_hosts = "{cluster.known_hosts}"\n'
        f'workdir = "{cluster.workdir}"\n'
    )
    return path
