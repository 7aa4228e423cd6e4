"""`latent-trees serve` as a process: what reaches the socket before the app does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from tests.conftest import REPO, Planted, cli_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unparseable_request_gets_the_json_error_shape(
    planted_family: Planted, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=cli_env(tmp_path, database_url=planted_family.url),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        with conn:
            conn.sendall(b"GET /api/trees/" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)
        assert error["ok"] is False and error["error"].startswith("bad HTTP request")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
