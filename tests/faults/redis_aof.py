"""A private redis-server that keeps its data across a crash, for fault-injection tests."""

from __future__ import annotations

from tests.harness.redis_server import RedisServer


class PersistentRedisServer(RedisServer):
    """redis-server with the append-only file on and fsynced before every reply.

    With `appendfsync always`, every write that Redis acknowledged survives a SIGKILL, so a
    restart on the same state folder brings back every job record, history and id set.
    """

    def _command(self) -> list[str]:
        # redis-server applies options in order, so these override the base class's
        # `--appendonly no`. The test checks CONFIG GET, so a renamed base method cannot
        # silently give a server without persistence.
        return [*super()._command(), "--appendonly", "yes", "--appendfsync", "always"]
