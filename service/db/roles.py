"""A read-only login role for dashboards (Grafana, Metabase, Superset, psql): it may read every
table, view and function, write nothing, and each of its statements is cancelled after a timeout.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql
from sqlalchemy.engine import Connection

from service import errors

ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def grant_reader(
    conn: Connection, role: str, password: str | None, statement_timeout: float
) -> bool:
    """Create `role` (or update it) as a read-only login with a statement timeout in seconds;
    True if it was created. Idempotent: run it again after new migrations, or to change the
    password or the timeout."""
    if not ROLE.match(role):
        raise errors.BadInput(
            f"role {role!r}: expected lower-case letters, digits and '_' (at most 63)"
        )
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)

    def run(statement: sql.Composable) -> None:
        conn.exec_driver_sql(statement.as_string(raw).replace("%", "%%"))

    name = sql.Identifier(role)
    existing = conn.exec_driver_sql(
        "SELECT rolsuper FROM pg_roles WHERE rolname = %(r)s", {"r": role}
    ).first()
    if existing is not None and existing[0]:
        raise errors.BadInput(f"role {role!r} is a superuser: choose another name")
    if existing is None:
        run(sql.SQL("CREATE ROLE {} LOGIN").format(name))
    run(sql.SQL("ALTER ROLE {} WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT").format(name))
    if password is not None:
        run(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))
    milliseconds = max(1, round(statement_timeout * 1000))
    run(sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(name, milliseconds))
    run(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(name))
    database = sql.Identifier(raw.info.dbname)
    run(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, name))
    run(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name))
    # Tables, views and materialized views alike; and those that later migrations create.
    run(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(name))
    run(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}").format(name))
    run(
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(
            name
        )
    )
    return existing is None
