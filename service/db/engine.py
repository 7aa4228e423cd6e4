"""The database URL in use and the SQLAlchemy engine; the same path for embedded and external."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service import errors, settings
from service.db import server

log = logging.getLogger(__name__)
T = TypeVar("T")


def url(config: settings.Settings) -> str:
    """The libpq URL in use: DATABASE_URL if set, else the embedded server (started if needed)."""
    if config.database_url:
        scheme, rest = config.database_url.split("://", 1)
        return "postgresql://" + rest if scheme != "postgresql" else config.database_url
    return server.ensure_running(config.home)


def sqlalchemy_url(libpq_url: str) -> str:
    """The same URL for SQLAlchemy's psycopg 3 dialect."""
    return "postgresql+psycopg://" + libpq_url.split("://", 1)[1]


def create(
    libpq_url: str,
    connect_timeout: int = 5,
    *,
    read_only_timeout: float | None = None,
    pool_size: int = 5,
) -> Engine:
    """An engine for `libpq_url`, checked by connecting once (DatabaseUnreachable if not).
    With `read_only_timeout` (seconds), every transaction is a read-only REPEATABLE READ one
    (one snapshot for all its statements) and every statement is cancelled after that long:
    the dashboards' engine."""
    connect_args: dict[str, object] = {
        "connect_timeout": connect_timeout,
        "application_name": "latent-trees",
    }
    if read_only_timeout is not None:
        connect_args["options"] = (
            "-c default_transaction_read_only=on"
            f" -c statement_timeout={max(1, round(read_only_timeout * 1000))}"
        )
    engine = sa.create_engine(
        sqlalchemy_url(libpq_url),
        # The API retries a lost connection itself, sparing a round trip per request.
        pool_pre_ping=read_only_timeout is None,
        isolation_level="REPEATABLE READ" if read_only_timeout is not None else None,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=connect_args,
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise errors.DatabaseUnreachable(
            f"database unreachable at {redact(libpq_url)}"
        ) from exc.orig
    return engine


def redact(libpq_url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(libpq_url)
    except psycopg.ProgrammingError:
        return "<unparseable URL>"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


@functools.cache
def get() -> Engine:
    """The engine of this process, from the settings."""
    config = settings.get()
    return create(url(config), config.connect_timeout)


def transaction(engine: Engine, fn: Callable[[Connection], T], tries: int = 6) -> T:
    """`fn` in one transaction, retried whole while the database is unavailable (a restart):
    waits of 1, 2, 4, 8 and 10 s. Each try commits all or nothing."""
    for attempt in range(tries):
        try:
            with engine.begin() as conn:
                return fn(conn)
        except sa.exc.OperationalError:
            if attempt == tries - 1:
                raise
            log.warning("database unavailable; retrying", exc_info=True)
            time.sleep(min(2.0**attempt, 10.0))
    raise AssertionError("unreachable")
