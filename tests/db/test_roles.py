"""The dashboards' read-only role: reads every view and function, writes nothing, times out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service import errors
from tests.conftest import Planted, cli_env, run_cli


@pytest.fixture
def role(planted_family: Planted) -> Iterator[str]:
    name = "t_reader_" + uuid.uuid4().hex[:8]
    yield name
    with psycopg.connect(planted_family.url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def as_role(url: str, role: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql://postgres:@", f"postgresql://{role}@"))


def test_reader_role_reads_views_and_writes_nothing(
    planted_family: Planted, role: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, database_url=planted_family.url, LATENT_TREES_STATEMENT_TIMEOUT="0.5")
    proc = run_cli("db", "reader", role, env=env)
    assert f"role {role} created: read-only, statement timeout 0.5 s" in proc.stdout
    assert "updated" in run_cli("db", "reader", role, env=env).stdout  # idempotent
    with as_role(planted_family.url, role) as conn:
        assert conn.execute("SELECT count(*) FROM latent_edges").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM tree_nodes").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM latent_tree('P/1/3', 0.8)").fetchone()[0] >= 1
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "500ms"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM edge")
        conn.rollback()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(3)")
        conn.rollback()
        # Even outside read-only mode, the role holds no write privilege.
        conn.execute("SET default_transaction_read_only = off")
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO family (name) VALUES ('X')")


def test_reader_role_names_are_checked(planted_family: Planted, tmp_path: Path) -> None:
    from service.db import roles

    with planted_family.engine.begin() as conn:
        with pytest.raises(errors.BadInput, match="expected lower-case letters"):
            roles.grant_reader(conn, "Robert'); DROP TABLE edge;--", None, 5)
        with pytest.raises(errors.BadInput, match="is a superuser"):
            roles.grant_reader(conn, "postgres", None, 5)
