"""Running the API under uvicorn, with TCP_NODELAY on every connection.

With `--workers N` uvicorn hands its processes a listening socket made with protocol 0, and
asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP: each response's body then waited
for the client's delayed ACK of its headers, 40 ms a request (measured with bench/api.py).
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class NoDelayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending each write at once."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def run(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve `service.api.app:create` until stopped (SIGINT, SIGTERM)."""
    uvicorn.run(
        "service.api.app:create",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=NoDelayProtocol,
        loop="uvloop",
        log_level=log_level,
        access_log=False,
    )
