"""Shared fixtures: one throwaway embedded PostgreSQL per test session, never a mock.

tests/gpu has its own conftest and is run on the GPU machine with `--confcutdir=tests/gpu`,
which keeps this one (and its database libraries) out of it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from service import ingest, settings
from service.db import edges, migrate, server
from service.db import engine as db_engine
from service.jobs import worker

REPO = Path(__file__).resolve().parents[1]


def short_tmp(name: str) -> Path:
    """A folder under TMPDIR, or under /tmp when TMPDIR is too long for the server's socket
    path (at most 107 bytes)."""
    base = Path(tempfile.gettempdir())
    return (base if len(str(base)) <= 40 else Path("/tmp")) / name


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """LATENT_TREES_HOME of the session's embedded server (short path: sockets need < 108 chars)."""
    home = short_tmp(f"lt-test-{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    server.ensure_running(home)
    yield home
    server.stop(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_home: Path) -> str:
    """libpq URL of the session server's `latent_trees` database (left unmigrated)."""
    return server.ensure_running(pg_home)


def _create_database(pg_url: str, name: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return pg_url.replace(f"/{server.DATABASE}?", f"/{name}?")


def _drop_database(pg_url: str, name: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_url(pg_url: str) -> Iterator[str]:
    """A new empty database for one test (migration and fault tests)."""
    name = "t_" + uuid.uuid4().hex[:12]
    url = _create_database(pg_url, name)
    yield url
    _drop_database(pg_url, name)


@pytest.fixture(scope="session")
def migrated_url(pg_url: str) -> Iterator[str]:
    """A database migrated to head, shared by the session's db tests."""
    name = "t_session_" + uuid.uuid4().hex[:8]
    url = _create_database(pg_url, name)
    engine = db_engine.create(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    _drop_database(pg_url, name)


@pytest.fixture(scope="session")
def engine(migrated_url: str) -> Iterator[Engine]:
    eng = db_engine.create(migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test."""
    with engine.connect() as connection:
        outer = connection.begin()
        connection.begin_nested()
        yield connection
        outer.rollback()


def cli_env(home: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for running the CLI in a subprocess against a chosen database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENT_TREES_")}
    env.pop("DATABASE_URL", None)
    env["LATENT_TREES_HOME"] = str(home)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m service ARGS` and return the finished process."""
    proc = subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"latent-trees {' '.join(args)} failed:\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def read_only_app(
    url: str, config: settings.Settings, statement_timeout: float = 5
) -> Iterator[FastAPI]:
    """The API app on a read-only engine with a statement timeout, as `serve` builds it."""
    from service.api import app as api_app

    engine = db_engine.create(url, read_only_timeout=statement_timeout)
    try:
        yield api_app.create_app(engine, config)
    finally:
        engine.dispose()


def table_snapshot(connection: Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, sorted: two equal snapshots mean an untouched database."""
    names = sa.inspect(connection).get_table_names()
    snap = {}
    for name in sorted(names):
        rows = connection.execute(sa.text(f'SELECT * FROM "{name}"')).all()
        snap[name] = sorted((tuple(r) for r in rows), key=repr)
    return snap


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster (2 CPUs, no GPU) for the whole session, which other processes of
    this machine join with the address it yields (`auto`)."""
    ray = pytest.importorskip("ray")
    from service.compute import cluster

    cluster.connect("local", num_cpus=2)
    yield "auto"
    ray.shutdown()


@dataclass
class Pipeline:
    """A clean migrated database, a store under its own home, and settings pointing at both."""

    engine: Engine
    config: settings.Settings
    url: str

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(self.config.home, database_url=self.url, **extra)

    def ingest(self, family: str, path: Path, **kwargs: Any) -> ingest.Ingested:
        return ingest.ingest_activations(self.engine, self.config, family, path, **kwargs)

    def drain(self) -> list[Any]:
        return worker.Worker(self.engine, self.config).drain()

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(query), params).all())


@pytest.fixture
def pipeline(migrated_url: str, engine: Engine, tmp_path: Path) -> Iterator[Pipeline]:
    """Job tests share the session database; each starts and leaves it empty (TRUNCATE)."""

    def empty() -> None:
        with engine.begin() as conn:
            # A connection a test left open fails this at once, rather than hanging the suite.
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            edges.drop_all(conn)
            conn.execute(
                sa.text(
                    "TRUNCATE family, sae, latent, top_activation, job, edge, tree_edges,"
                    " tree_nodes RESTART IDENTITY CASCADE"
                )
            )

    empty()
    home = tmp_path / "home"
    home.mkdir()
    config = settings.Settings(
        database_url=migrated_url, home=home, device="cpu", lease_seconds=30, poll_seconds=1
    )
    yield Pipeline(engine, config, migrated_url)
    empty()


@dataclass
class Planted:
    """A planted family P (widths 16, 48, 144; the middle one inserted last) in its own
    database, scored and refreshed; read-only for the tests that share it."""

    url: str
    engine: Engine
    config: settings.Settings
    names: dict[int, str]

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(query), params).all())


@pytest.fixture(scope="session")
def planted_family(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planted]:
    from service.db import queries
    from service.sources import planted

    name = "t_planted_" + uuid.uuid4().hex[:8]
    url = _create_database(pg_url, name)
    eng = db_engine.create(url)
    migrate.upgrade(eng)
    home = tmp_path_factory.mktemp("planted-home")
    config = settings.Settings(database_url=url, home=home, device="cpu")
    fam = planted.generate(planted.PlantedSpec(widths=(16, 48, 144), n_tokens=8000, seed=3))
    with eng.begin() as conn:
        queries.create_family(conn, "P")
    names = {}
    for level in (0, 2, 1):
        path = fam.write(home / "files", level)
        names[level] = ingest.ingest_activations(eng, config, "P", path).name
        worker.Worker(eng, config).drain()
    yield Planted(url, eng, config, names)
    eng.dispose()
    _drop_database(pg_url, name)
