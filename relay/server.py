"""The uvicorn server, with a shutdown that closes job sockets with 1001 first."""

from __future__ import annotations

import socket

import uvicorn

from relay.jobs import JobService


class RelayServer(uvicorn.Server):
    """Closes job sockets with 1001 (going away) before uvicorn drops the connections.

    uvicorn alone closes open websockets with 1012; 1001 is the code this relay's clients
    take as "resume with after on another instance".
    """

    def __init__(self, config: uvicorn.Config, service: JobService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.service.close_sockets()
        await super().shutdown(sockets)
