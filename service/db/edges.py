"""Stored edges, one partition per job: a job's edges are loaded, indexed and attached whole.

`edge` is partitioned by job (LIST on `job_id`). Publishing a job builds its partition as a
table of its own inside the publishing transaction: binary COPY with FREEZE into a table made
in the same transaction (no later vacuum to set hint bits; no WAL under `wal_level = minimal`), both
indexes built once over the loaded rows (far cheaper than keeping them up to date row by row),
then ATTACH, which takes only a SHARE UPDATE EXCLUSIVE lock on `edge`: readers go on, and
see all of the job's edges or none when the transaction commits. Removing a job's edges drops
its partition. bench/pipeline.py measures it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.db import copy, tables

COLUMNS = (
    ("parent_id", "int4"),
    ("child_id", "int4"),
    ("job_id", "int4"),
    ("masked_cos", "float4"),
    ("masked_cos_parent", "float4"),
    ("max_ratio", "float4"),
    ("score", "float4"),
    ("n_coactive", "int4"),
    ("dec_cos", "float4"),  # only when both saes came from checkpoints; else NULL
)
# Rows encoded per COPY write: encoding the next slice overlaps the server's parsing.
ROWS_PER_WRITE = 1 << 18


def partition(job_id: int) -> str:
    """The name of the table that holds job `job_id`'s edges."""
    return f"edge_job_{int(job_id)}"


def is_partition(table: str) -> bool:
    """Whether `table` is named as a job's partition of `edge`."""
    return re.fullmatch(r"edge_job_[0-9]+", table) is not None


def publish(conn: Connection, job_id: int, columns: Mapping[str, np.ndarray]) -> int:
    """Make `columns` the edges of job `job_id` (replacing any it had), inside the caller's
    transaction; returns the number of edges."""
    name = partition(job_id)
    drop(conn, [job_id])
    conn.exec_driver_sql(
        f"CREATE TABLE {name} (LIKE edge INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    # A valid CHECK that implies the partition bound spares ATTACH its own scan under the lock.
    # Added to the empty table it is valid at once, and COPY checks each row as it writes it:
    # 2e7 rows loaded in 8.0-8.4 s this way, 8.6-9.6 s with the constraint's scan after them.
    conn.exec_driver_sql(f"ALTER TABLE {name} ADD CONSTRAINT {name}_job CHECK (job_id = {job_id})")
    n = copy.copy_in(
        conn,
        name,
        {column: (columns[column], kind) for column, kind in COLUMNS if column in columns},
        freeze=True,
        rows_per_write=ROWS_PER_WRITE,
    )
    # The partitioned indexes' definitions (tables.Edge), so that ATTACH adopts them.
    for index in tables.Base.metadata.tables["edge"].indexes:
        keys = [column.name for column in index.columns]
        conn.exec_driver_sql(f"CREATE INDEX {name}_{'_'.join(keys)} ON {name} ({', '.join(keys)})")
    conn.exec_driver_sql(f"ALTER TABLE edge ATTACH PARTITION {name} FOR VALUES IN ({job_id})")
    # Planner statistics now: autovacuum analyzes new partitions only after a while.
    conn.exec_driver_sql(f"ANALYZE {name}")
    return n


def drop(conn: Connection, job_ids: Iterable[int]) -> int:
    """Remove the edges of these jobs (their partitions); returns how many edges went."""
    n = 0
    for job_id in job_ids:
        name = partition(job_id)
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": name}).scalar() is None:
            continue
        n += conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
        conn.exec_driver_sql(f"DROP TABLE {name}")
    return n


def drop_all(conn: Connection) -> None:
    """Remove every job's edges (tests start from an empty database this way)."""
    names = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'edge'::regclass"
        )
    ).scalars()
    for name in list(names):
        conn.exec_driver_sql(f"DROP TABLE {name}")
