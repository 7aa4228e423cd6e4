"""Adding an sae: its row, its latents (binary COPY) and the jobs for its new neighbour pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service import errors
from service.db import copy, edges, forest, jobs, queries, tables


@dataclass(frozen=True)
class LatentColumns:
    """Per-latent statistics of a new sae, indexed by latent index."""

    max_act: np.ndarray
    n_active: np.ndarray
    sum_sq: np.ndarray
    n_tokens: int
    # The largest activations: token positions [d_sae, k] (-1: none) and values [d_sae, k].
    top_positions: np.ndarray | None = None
    top_values: np.ndarray | None = None


def default_name(conn: Connection, family: str, family_id: int) -> str:
    """`FAMILY/n`, n = 1 + the number of saes already in the family (skipping taken names)."""
    count = conn.execute(
        sa.select(sa.func.count()).where(tables.Sae.family_id == family_id)
    ).scalar_one()
    n = count + 1
    while conn.execute(sa.select(tables.Sae.id).where(tables.Sae.name == f"{family}/{n}")).first():
        n += 1
    return f"{family}/{n}"


def check_name(family: str, name: str) -> str:
    """An sae name must be `FAMILY/part`."""
    prefix = f"{family}/"
    if not name.startswith(prefix):
        raise errors.BadInput(f"sae name {name!r}: expected it to start with {prefix!r}")
    queries.check_name("sae", name[len(prefix) :])
    return name


def check_free(conn: Connection, family_id: int, name: str | None, d_sae: int | None) -> None:
    """DuplicateSae if the name, or d_sae within the family, is taken."""
    if name and conn.execute(sa.select(tables.Sae.id).where(tables.Sae.name == name)).first():
        raise errors.DuplicateSae(f"sae {name!r} already exists")
    if d_sae is not None:
        taken = conn.execute(
            sa.select(tables.Sae.name).where(
                tables.Sae.family_id == family_id, tables.Sae.d_sae == d_sae
            )
        ).scalar_one_or_none()
        if taken is not None:
            raise errors.DuplicateSae(f"d_sae {d_sae} is taken in this family by sae {taken!r}")


def lock_family(conn: Connection, family: str) -> sa.Row[Any]:
    """The family row, locked until the transaction ends (serialises ingests per family)."""
    return family_row(conn, family, lock=True)


def family_row(conn: Connection, family: str, *, lock: bool = False) -> sa.Row[Any]:
    """The family row (UnknownFamily if there is none); `lock`: FOR UPDATE."""
    query = sa.select(tables.Family.__table__).where(tables.Family.name == family)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise errors.UnknownFamily(f"unknown family {family!r}")
    return row


def check_token_set(
    family: sa.Row[Any], source: str, n_tokens: int, fingerprint: str | None
) -> None:
    """The family's token set must match: same count, same token ids when both are known."""
    if family.n_tokens is not None and family.n_tokens != n_tokens:
        raise errors.BadInput(
            f"{source}: expected {family.n_tokens} tokens (the token set of family"
            f" {family.name!r}), got {n_tokens}"
        )
    if fingerprint and family.token_fingerprint and fingerprint != family.token_fingerprint:
        raise errors.BadInput(
            f"{source}: field 'token_ids': expected the token set of family {family.name!r}"
            f" (fingerprint {family.token_fingerprint[:12]}), got {fingerprint[:12]}"
        )


def add(
    conn: Connection,
    family: sa.Row[Any],
    name: str,
    d_sae: int,
    stats: LatentColumns,
    fingerprint: str | None,
    source: dict[str, Any],
    activations_path: str,
    activations_sha256: str,
    job_params: dict[str, Any],
) -> tuple[int, list[int]]:
    """Insert the sae, its latents and its jobs; returns (sae id, new job ids)."""
    check_free(conn, family.id, name, d_sae)
    if family.n_tokens is None or (fingerprint and not family.token_fingerprint):
        conn.execute(
            sa.update(tables.Family)
            .where(tables.Family.id == family.id)
            .values(n_tokens=stats.n_tokens, token_fingerprint=fingerprint)
        )
    sae_id = conn.execute(
        sa.insert(tables.Sae)
        .values(
            family_id=family.id,
            name=name,
            d_sae=d_sae,
            source=source,
            activations_path=activations_path,
            activations_sha256=activations_sha256,
        )
        .returning(tables.Sae.id)
    ).scalar_one()
    idx = np.arange(d_sae, dtype=np.int32)
    conn.exec_driver_sql(
        "CREATE TEMP TABLE latent_stage (idx int4, max_act float4, n_active int8,"
        " sum_sq float8) ON COMMIT DROP"
    )
    copy.copy_in(
        conn,
        "latent_stage",
        {
            "idx": (idx, "int4"),
            "max_act": (stats.max_act, "float4"),
            "n_active": (stats.n_active, "int8"),
            "sum_sq": (stats.sum_sq, "float8"),
        },
    )
    conn.execute(
        sa.text(
            "INSERT INTO latent (sae_id, idx, label, max_act, n_active, frequency, sum_sq)"
            " SELECT :sae, idx, :name || '/' || idx, max_act, n_active,"
            " n_active::float8 / :t, sum_sq FROM latent_stage ORDER BY idx"
        ),
        {"sae": sae_id, "name": name, "t": stats.n_tokens},
    )
    conn.exec_driver_sql("DROP TABLE latent_stage")
    # Statistics that know the new sae: planned before, `sae_id = <new>` was estimated at one
    # row (every sae known was a most-common value) and the forest update below, and the jobs'
    # after it, chose nested loops over its latents that ran for minutes at 1M latents.
    conn.exec_driver_sql("ANALYZE latent")
    if stats.top_positions is not None and stats.top_values is not None:
        _add_top(conn, sae_id, stats.top_positions, stats.top_values)
    planned = jobs.plan_for(conn, sae_id, job_params)
    # Its latents join the forest as roots; an sae inserted between two others also takes
    # the best parents of the next larger one (their old pair is no longer adjacent).
    forest.update_from_sae(conn, sae_id, new=True)
    return sae_id, planned


def _add_top(conn: Connection, sae_id: int, positions: np.ndarray, values: np.ndarray) -> None:
    d_sae, k = positions.shape
    kept = (positions >= 0).ravel()
    ids = copy.copy_out(
        conn, "SELECT id FROM latent WHERE sae_id = %s ORDER BY idx", [sae_id], {"id": "int4"}
    )["id"]
    copy.copy_in(
        conn,
        "top_activation",
        {
            "latent_id": (np.repeat(ids, k)[kept], "int4"),
            "rank": (np.tile(np.arange(1, k + 1, dtype=np.int16), d_sae)[kept], "int2"),
            "position": (positions.ravel()[kept], "int8"),
            "value": (values.ravel()[kept], "float4"),
        },
    )


@dataclass(frozen=True)
class Deleted:
    """What deleting an sae removed and planned."""

    name: str
    activations_path: str | None
    n_latents: int
    n_edges: int
    job_ids: list[int]  # the job its removal made adjacent, when there is one


def delete(conn: Connection, name: str, job_params: dict[str, Any]) -> Deleted:
    """Delete an sae with its latents, edges and jobs, and plan the job for the pair its
    removal makes adjacent (next smaller -> next larger)."""
    row = conn.execute(
        sa.text(
            "SELECT s.id, s.family_id, s.activations_path, l.prev_id, l.next_id"
            " FROM sae s JOIN sae_level l ON l.id = s.id WHERE s.name = :n"
        ),
        {"n": name},
    ).first()
    if row is None:
        raise errors.UnknownSae(f"unknown sae {name!r}")
    # Serialise with ingests of the family (they lock its row too).
    conn.execute(sa.text("SELECT id FROM family WHERE id = :f FOR UPDATE"), {"f": row.family_id})
    # Its jobs' rows first (a publishing worker holds its job's row, then locks `edge`: the
    # same order here cannot deadlock with it), then their partitions.
    job_ids = conn.execute(
        sa.text("DELETE FROM job WHERE parent_sae_id = :s OR child_sae_id = :s RETURNING id"),
        {"s": row.id},
    ).scalars()
    n_edges = edges.drop(conn, list(job_ids))
    n_latents = conn.execute(
        sa.text("SELECT count(*) FROM latent WHERE sae_id = :s"), {"s": row.id}
    ).scalar_one()
    forest.forget(conn, [row.id])
    queries.delete_top_activations(conn, [row.id])
    queries.delete_latents(conn, [row.id])
    d_sae = conn.execute(
        sa.delete(tables.Sae).where(tables.Sae.id == row.id).returning(tables.Sae.d_sae)
    ).scalar_one()
    planned = []
    if row.prev_id and row.next_id:
        planned = jobs.plan(conn, [(row.prev_id, row.next_id)], job_params)
    # The next larger sae lost its parents: its level and those below are rewritten.
    forest.update(conn, row.family_id, d_sae)
    return Deleted(name, row.activations_path, int(n_latents), int(n_edges), planned)
