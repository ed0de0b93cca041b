"""hpc-relay: stream the events of PBS jobs to websocket clients."""

__version__ = "0.1.0"
