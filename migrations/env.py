"""Alembic environment: uses the connection handed over by service.db.migrate, else settings."""

from __future__ import annotations

from alembic import context

from service.db import edges, tables
from service.db import engine as db_engine

config = context.config
target_metadata = tables.Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = db_engine.get()
    with engine.begin() as conn:
        _run(conn)


def _include_name(name: str | None, type_: str, _parents: object) -> bool:
    """Compare everything but each job's partition of `edge` (made by publishing, not here)."""
    return not (type_ == "table" and name is not None and edges.is_partition(name))


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        include_name=_include_name,
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("latent-trees migrations run online only: use `latent-trees db upgrade`")
run_migrations_online()
