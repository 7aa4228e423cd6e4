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
    if role.startswith("pg_"):
        raise errors.BadInput(f"role {role!r}: names starting with pg_ are reserved by PostgreSQL")
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
    if existing is not None:
        _refuse_writers(conn, role)
    if existing is None:
        run(sql.SQL("CREATE ROLE {} LOGIN").format(name))
    run(
        sql.SQL(
            "ALTER ROLE {} WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
        ).format(name)
    )
    # Whatever an existing role was granted before goes: it reads, nothing more.
    run(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(name))
    run(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(name))
    run(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(name))
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
    writable = conn.exec_driver_sql(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        " AND has_table_privilege(%(r)s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')",
        {"r": role},
    ).scalar_one()
    if writable:  # granted to PUBLIC: nothing a role of its own can take back
        raise errors.BadInput(
            f"role {role!r} can still write {writable} tables (privileges granted to PUBLIC)"
        )
    return existing is None


def _refuse_writers(conn: Connection, role: str) -> None:
    """An existing role that owns objects or belongs to other roles cannot be made read-only
    by revoking its own grants: refuse it."""
    owned = conn.exec_driver_sql(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
        " WHERE r.rolname = %(r)s",
        {"r": role},
    ).scalar_one()
    if owned:
        raise errors.BadInput(f"role {role!r} owns {owned} relations: choose another name")
    member_of = [
        row[0]
        for row in conn.exec_driver_sql(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %(r)s ORDER BY 1",
            {"r": role},
        ).all()
    ]
    if member_of:
        raise errors.BadInput(
            f"role {role!r} is a member of {', '.join(member_of)}: choose another name"
        )
