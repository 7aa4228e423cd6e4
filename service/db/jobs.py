"""The job table as a queue: claims with FOR UPDATE SKIP LOCKED and a lease, atomic publishing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from service import errors
from service.db import copy, edges, forest, tables

# NOTIFY channel on which planned jobs wake the workers.
CHANNEL = "latent_trees_jobs"


class LeaseLost(errors.ServiceError):
    """the job's lease expired and another worker took it over."""


@dataclass(frozen=True)
class Claim:
    """A job this worker holds until its lease runs out."""

    id: int
    parent_sae_id: int
    child_sae_id: int
    params: dict[str, Any]
    attempts: int
    worker: str


@dataclass(frozen=True)
class SaeLatents:
    """One sae's latent ids and statistics (as stored at ingest), indexed by latent index."""

    activations_path: str
    ids: np.ndarray
    max_act: np.ndarray
    n_active: np.ndarray
    sum_sq: np.ndarray
    n_tokens: int


@dataclass(frozen=True)
class JobInputs:
    """What a job reads before computing: both saes' activations, latent ids and statistics."""

    parent: SaeLatents
    child: SaeLatents
    label: str


def claim(conn: Connection, worker: str, lease_seconds: float) -> Claim | None:
    """Take the oldest claimable job: pending, or running with an expired lease."""
    row = conn.execute(
        sa.text(
            """
            UPDATE job SET state = 'running', attempts = attempts + 1, worker = :worker,
                   lease_until = now() + make_interval(secs => :lease), started_at = now(),
                   finished_at = NULL, forest_at = NULL
            WHERE id = (
                SELECT id FROM job
                WHERE (state = 'pending' OR (state = 'running' AND lease_until < now()))
                  AND attempts < max_attempts
                ORDER BY id
                FOR UPDATE SKIP LOCKED
                LIMIT 1)
            RETURNING id, parent_sae_id, child_sae_id, params, attempts
            """
        ),
        {"worker": worker, "lease": lease_seconds},
    ).first()
    if row is None:
        return None
    return Claim(row.id, row.parent_sae_id, row.child_sae_id, row.params, row.attempts, worker)


def heartbeat(conn: Connection, job: Claim, lease_seconds: float) -> bool:
    """Extend the lease; False if the job is no longer ours."""
    result = conn.execute(
        sa.text(
            "UPDATE job SET lease_until = now() + make_interval(secs => :lease)"
            " WHERE id = :id AND worker = :worker AND state = 'running'"
        ),
        {"id": job.id, "worker": job.worker, "lease": lease_seconds},
    )
    return result.rowcount == 1


def inputs(conn: Connection, job: Claim) -> JobInputs:
    """The activation paths, latent ids and latent statistics of the job's two saes."""

    def sae(sae_id: int) -> tuple[str, SaeLatents]:
        name, path, n_tokens = conn.execute(
            sa.text(
                "SELECT s.name, s.activations_path, f.n_tokens FROM sae s"
                " JOIN family f ON f.id = s.family_id WHERE s.id = :s"
            ),
            {"s": sae_id},
        ).one()
        latents = copy.copy_out(
            conn,
            "SELECT id, max_act, n_active, sum_sq FROM latent WHERE sae_id = %s ORDER BY idx",
            [sae_id],
            {"id": "int4", "max_act": "float4", "n_active": "int8", "sum_sq": "float8"},
        )
        return name, SaeLatents(
            path,
            latents["id"].astype(np.int64),
            latents["max_act"],
            latents["n_active"],
            latents["sum_sq"],
            int(n_tokens),
        )

    parent_name, parent = sae(job.parent_sae_id)
    child_name, child = sae(job.child_sae_id)
    return JobInputs(parent, child, f"{parent_name} -> {child_name}")


def publish(
    conn: Connection,
    job: Claim,
    columns: dict[str, np.ndarray],
    max_dec_cos: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:
    """In one transaction: mark the job done, make `columns` its edges (its partition of
    `edge`) and, with decoder cosines, set `max_dec_cos` (latent ids, values) of its child
    latents. Its forest update follows in a transaction of its own (`next_forest_update`).

    Raises LeaseLost (and the transaction rolls back) if the job is no longer ours."""
    done = conn.execute(
        sa.text(
            "UPDATE job SET state = 'done', finished_at = now(), lease_until = NULL,"
            " error = NULL, n_edges = :n WHERE id = :id AND worker = :worker AND state = 'running'"
        ),
        {"id": job.id, "worker": job.worker, "n": len(columns["parent_id"])},
    )
    if done.rowcount != 1:
        raise LeaseLost(f"job {job.id}: lease lost; its edges were not written")
    n = edges.publish(conn, job.id, columns)
    if max_dec_cos is not None:
        ids, values = max_dec_cos
        conn.execute(
            sa.text(
                "UPDATE latent l SET max_dec_cos = v.m FROM unnest(CAST(:ids AS integer[]),"
                " CAST(:m AS real[])) AS v(id, m) WHERE l.id = v.id"
            ),
            {"ids": ids.tolist(), "m": values.tolist()},
        )
    return n


def next_forest_update(conn: Connection) -> int | None:
    """Bring the forest up to date after one done job whose edges it does not hold yet (the
    oldest not taken by another worker); returns its id, None when there is none."""
    row = conn.execute(
        sa.text(
            "SELECT id, child_sae_id FROM job WHERE state = 'done' AND forest_at IS NULL"
            " ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
        )
    ).first()
    if row is None:
        return None
    forest.update_from_sae(conn, row.child_sae_id)
    conn.execute(sa.text("UPDATE job SET forest_at = now() WHERE id = :id"), {"id": row.id})
    return int(row.id)


def fail(conn: Connection, job: Claim, error: str) -> str:
    """Record a failure: back to pending while attempts remain, else failed. Returns the state."""
    row = conn.execute(
        sa.text(
            """
            UPDATE job SET state = CASE WHEN attempts >= max_attempts THEN 'failed'
                                        ELSE 'pending' END,
                   error = :error, lease_until = NULL, finished_at = now()
            WHERE id = :id AND worker = :worker AND state = 'running'
            RETURNING state
            """
        ),
        {"id": job.id, "worker": job.worker, "error": error[:2000]},
    ).first()
    return row.state if row else "lost"


def reap(conn: Connection) -> int:
    """Fail running jobs whose lease expired with no attempts left (their workers died)."""
    return conn.execute(
        sa.text(
            "UPDATE job SET state = 'failed', finished_at = now(),"
            " error = coalesce(error || '; ', '') || 'lease expired on attempt ' || attempts"
            " || ' of ' || max_attempts || ' (worker ' || coalesce(worker, '?') || ' died?)'"
            " WHERE state = 'running' AND lease_until < now() AND attempts >= max_attempts"
        )
    ).rowcount


def listing(conn: Connection, state: str | None = None) -> list[dict[str, Any]]:
    """Every job (or those in `state`) with its pair, attempts, worker, lease, error, timings."""
    rows = conn.execute(
        sa.text(
            """
            SELECT j.id, p.name AS parent, c.name AS child, j.state, j.attempts, j.max_attempts,
                   j.worker, j.lease_until, (j.lease_until < now()) AS lease_expired, j.error,
                   j.n_edges, j.created_at, j.started_at, j.finished_at, j.forest_at,
                   extract(epoch FROM j.finished_at - j.started_at) AS seconds
            FROM job j JOIN sae p ON p.id = j.parent_sae_id JOIN sae c ON c.id = j.child_sae_id
            WHERE CAST(:state AS text) IS NULL OR j.state = :state
            ORDER BY j.id
            """
        ),
        {"state": state},
    ).mappings()
    return [dict(r) for r in rows]


class UnknownJob(errors.NotFound):
    """unknown job."""


def retry(conn: Connection, job_id: int) -> None:
    """Put a failed job back in the queue with a fresh count of attempts."""
    row = conn.execute(
        sa.text("SELECT state FROM job WHERE id = :id FOR UPDATE"), {"id": job_id}
    ).first()
    if row is None:
        raise UnknownJob(f"unknown job {job_id}")
    if row.state != "failed":
        raise errors.BadInput(f"job {job_id} is {row.state}: only a failed job is retried")
    conn.execute(
        sa.text(
            "UPDATE job SET state = 'pending', attempts = 0, worker = NULL, lease_until = NULL,"
            " started_at = NULL, finished_at = NULL WHERE id = :id"
        ),
        {"id": job_id},
    )
    _notify(conn, [job_id])


def plan_for(conn: Connection, sae_id: int, params: dict[str, Any]) -> list[int]:
    """Jobs for a new sae's neighbour pairs (never for pairs already planned)."""
    prev_id, next_id = conn.execute(
        sa.text("SELECT prev_id, next_id FROM sae_level WHERE id = :id"), {"id": sae_id}
    ).one()
    return plan(
        conn, [(p, c) for p, c in ((prev_id, sae_id), (sae_id, next_id)) if p and c], params
    )


def plan(conn: Connection, pairs: list[tuple[int, int]], params: dict[str, Any]) -> list[int]:
    """A pending job for each (parent sae, child sae) pair not planned before; NOTIFY."""
    if not pairs:
        return []
    new_ids = (
        conn.execute(
            pg.insert(tables.Job)
            .values(
                [
                    {
                        "parent_sae_id": p,
                        "child_sae_id": c,
                        "params": params,
                        "max_attempts": int(params.get("max_attempts", 3)),
                    }
                    for p, c in pairs
                ]
            )
            .on_conflict_do_nothing()
            .returning(tables.Job.id)
        )
        .scalars()
        .all()
    )
    if new_ids:
        _notify(conn, new_ids)
    return list(new_ids)


def _notify(conn: Connection, job_ids: Sequence[int]) -> None:
    conn.execute(
        sa.text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": ",".join(map(str, job_ids))},
    )
