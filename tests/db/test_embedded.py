"""The embedded server: starts, is reused by later processes, stops cleanly; DATABASE_URL wins."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from service.db import server
from tests.conftest import cli_env, run_cli, short_tmp


@pytest.fixture
def home() -> object:
    path = short_tmp(f"lt-emb-{uuid.uuid4().hex[:8]}")
    yield path
    server.stop(path)
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_server_starts_is_reused_and_survives_processes(home: Path) -> None:
    env = cli_env(home)
    first = run_cli("db", "url", env=env).stdout.strip()
    assert first.startswith("postgresql://")
    pid = server.running_pid(home)
    assert pid is not None, "the server should outlive the process that started it"

    second = run_cli("db", "url", env=env).stdout.strip()
    assert second == first
    assert server.running_pid(home) == pid, "a second process must reuse the running server"

    with psycopg.connect(first) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (server.DATABASE,)

    # A new embedded database needs no `db upgrade` (the README's promise): it is migrated.
    assert "family S created" in run_cli("family", "create", "S", env=env).stdout

    stopped = run_cli("db", "stop", env=env).stdout
    assert "stopped" in stopped
    assert server.running_pid(home) is None

    # Restarting reuses the data directory: no re-initialisation, the family is still there.
    assert run_cli("db", "url", env=env).stdout.strip().startswith("postgresql://")
    assert "already exists" in run_cli("family", "create", "S", env=env, check=False).stderr


def test_database_url_wins_over_embedded_default(home: Path, migrated_url: str) -> None:
    env = cli_env(home, database_url=migrated_url)
    assert run_cli("db", "url", env=env).stdout.strip() == migrated_url
    run_cli("status", env=env)
    assert not server.pgdata(home).exists(), "no embedded server may start with DATABASE_URL set"


def test_postgres_scheme_is_normalised_to_libpq(home: Path, migrated_url: str) -> None:
    env = cli_env(home, database_url=migrated_url.replace("postgresql://", "postgres://"))
    assert run_cli("db", "url", env=env).stdout.strip() == migrated_url
