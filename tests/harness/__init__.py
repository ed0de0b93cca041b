"""Real components for tests (Redis, sshd, munged, Slurm), started privately on loopback."""
