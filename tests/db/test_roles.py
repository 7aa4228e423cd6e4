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


def test_an_existing_writer_role_loses_its_write_grants(
    planted_family: Planted, role: str, tmp_path: Path
) -> None:
    with psycopg.connect(planted_family.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    env = cli_env(tmp_path, database_url=planted_family.url)
    assert "updated: read-only" in run_cli("db", "reader", role, env=env).stdout
    with as_role(planted_family.url, role) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO family (name) VALUES ('X')")


def test_roles_that_cannot_be_made_read_only_are_refused(
    planted_family: Planted, role: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, database_url=planted_family.url)
    with psycopg.connect(planted_family.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT pg_write_all_data TO {role}")
    refused = run_cli("db", "reader", role, env=env, check=False)
    assert refused.returncode == 1
    assert f"role '{role}' is a member of pg_write_all_data" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    reserved = run_cli("db", "reader", "pg_monitor", env=env, check=False)
    assert reserved.returncode == 1 and "reserved by PostgreSQL" in reserved.stderr
    assert "Traceback" not in reserved.stderr
