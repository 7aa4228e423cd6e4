"""Running the API under uvicorn, with TCP_NODELAY on every connection.

With `--workers N` uvicorn hands its processes a listening socket made with protocol 0, and
asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP: each response's body then waited
for the client's delayed ACK of its headers, 40 ms a request (measured with bench/api.py).
"""

from __future__ import annotations

import asyncio
import socket

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import errors


class NoDelayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending each write at once."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def send_400_response(self, msg: str) -> None:
        """A request uvicorn cannot parse (a 70k-character URL, a malformed line) gets the
        API's one error shape, not plain text."""
        body = orjson.dumps({"ok": False, "error": f"bad HTTP request: {msg}"})
        head = [
            b"HTTP/1.1 400 Bad Request\r\n",
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def check_port(host: str, port: int) -> None:
    """ServiceError, in one line, when `host:port` cannot be listened on (taken, no such
    address), before anything is printed or started."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _name, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise errors.ServiceError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


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
