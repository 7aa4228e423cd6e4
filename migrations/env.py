"""Alembic environment: uses the connection handed over by service.db.migrate, else settings."""

from __future__ import annotations

from alembic import context

from service.db import engine as db_engine
from service.db import tables

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


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("latent-trees migrations run online only: use `latent-trees db upgrade`")
run_migrations_online()
