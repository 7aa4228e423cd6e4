"""Database benchmark at scale: edges written through binary COPY, `latent_tree` latency and the
view refresh after a new width, on a throwaway embedded PostgreSQL.

    python -m bench.pipeline                       # widths 65536, 262144, 1048576: ~10.5M edges
    python -m bench.pipeline --widths 4096 16384 65536 --parents 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from service.db import copy, jobs, migrate, queries, saes, server, views
from service.db import engine as db_engine


def edge_columns(
    rng: np.random.Generator,
    parent_ids: np.ndarray,
    child_ids: np.ndarray,
    per_child: int,
    job_id: int,
) -> dict[str, np.ndarray]:
    """`per_child` parents for every child: its true parent scores 0.7-1, 5% get a second
    qualifying parent (a DAG), the rest score below the threshold."""
    d_p, d_c = len(parent_ids), len(child_ids)
    child = np.repeat(np.arange(d_c), per_child)
    true_parent = np.arange(d_c) * d_p // d_c
    others = rng.integers(0, d_p, (d_c, per_child - 1))
    parent = np.concatenate([true_parent[:, None], others], axis=1)
    # Distinct parents per child: shift collisions (rare) to the next index.
    parent = np.sort(parent, axis=1)
    for _ in range(per_child):
        dup = np.zeros_like(parent, dtype=bool)
        dup[:, 1:] = parent[:, 1:] <= parent[:, :-1]
        if not dup.any():
            break
        parent[dup] = (parent[:, :-1][dup[:, 1:]] + 1) % d_p
        parent = np.sort(parent, axis=1)
    parent = parent.reshape(-1)
    score = rng.uniform(0.0, 0.6, parent.size).astype(np.float32)
    is_true = parent == np.repeat(true_parent, per_child)
    score[is_true] = rng.uniform(0.7, 1.0, int(is_true.sum()))
    second = rng.random(parent.size) < 0.05 / per_child
    score[second] = rng.uniform(0.6, 0.8, int(second.sum()))
    masked_cos = np.clip(score / rng.uniform(0.9, 1.1, score.size), 0, 1).astype(np.float32)
    return {
        "parent_id": parent_ids[parent],
        "child_id": child_ids[child],
        "job_id": np.full(parent.size, job_id),
        "masked_cos": masked_cos,
        "masked_cos_parent": rng.uniform(0, 1, score.size).astype(np.float32),
        "max_ratio": (score / np.maximum(masked_cos, 1e-3)).astype(np.float32),
        "score": score,
        "n_coactive": rng.integers(1, 10_000, score.size),
    }


@dataclass
class Built:
    """A family B of saes of the given widths with generated edges, views refreshed."""

    latent_ids: list[np.ndarray]
    n_edges: int


def populate(
    engine: sa.engine.Engine, widths: list[int], parents: int, rng: np.random.Generator
) -> Built:
    """Family B: one sae per width and a published job per neighbour pair, printing the COPY,
    publish and refresh figures as it goes."""
    n_tokens = 1_000_000
    latent_ids = []
    n_edges = 0
    with engine.begin() as conn:
        queries.create_family(conn, "B")
    for i, d in enumerate(widths):
        started = time.perf_counter()
        with engine.begin() as conn:
            family = saes.lock_family(conn, "B")
            sae_id, _jobs = saes.add(
                conn,
                family,
                f"B/{i + 1}",
                d,
                saes.LatentColumns(
                    rng.uniform(1, 10, d).astype(np.float32),
                    rng.integers(10, 50_000, d),
                    rng.uniform(1, 1e4, d),
                    n_tokens,
                ),
                None,
                {"kind": "bench"},
                "none",
                "none",
                {"store_floor": 0.2},
            )
            ids = conn.execute(
                sa.text("SELECT id FROM latent WHERE sae_id = :s ORDER BY idx"), {"s": sae_id}
            ).scalars()
            latent_ids.append(np.fromiter(ids, dtype=np.int64))
        print(f"sae B/{i + 1}: {d:,} latents in {time.perf_counter() - started:.2f} s")
        if i == 0:
            continue
        with engine.begin() as conn:
            job = jobs.claim(conn, "bench", 3600)
        assert job is not None
        columns = edge_columns(rng, latent_ids[i - 1], latent_ids[i], parents, job.id)
        n = len(columns["score"])
        n_edges += n
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TEMP TABLE copy_probe (LIKE edge) ON COMMIT DROP")
            started = time.perf_counter()
            copy.copy_in(conn, "copy_probe", {k: (columns[k], t) for k, t in jobs.EDGE_COLUMNS})
            copy_s = time.perf_counter() - started
        started = time.perf_counter()
        with engine.begin() as conn:
            jobs.publish(conn, job, columns)
        publish_s = time.perf_counter() - started
        started = time.perf_counter()
        with engine.begin() as conn:
            views.refresh(conn)
        refresh_s = time.perf_counter() - started
        print(
            f"  job B/{i} -> B/{i + 1}: {n:,} edges; binary COPY {n / copy_s / 1e6:.2f}M rows/s"
            f" ({copy_s:.1f} s); publish (COPY + insert with indexes) {publish_s:.1f} s"
            f" = {n / publish_s / 1e6:.2f}M rows/s; view refresh {refresh_s:.1f} s"
        )
    # Vacuum now, or autovacuum starts on the new rows and takes a core from the measurements.
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM (ANALYZE)"))
    print(f"VACUUM (ANALYZE) in {time.perf_counter() - started:.1f} s")
    return Built(latent_ids, n_edges)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[65536, 262144, 1048576])
    parser.add_argument("--parents", type=int, default=8, help="stored parents per child")
    parser.add_argument("--roots", type=int, default=300, help="latent_tree calls to time")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    home = Path(tempfile.mkdtemp(prefix="lt-bench-", dir="/tmp"))
    try:
        url = server.ensure_running(home)
        engine = db_engine.create(url)
        migrate.upgrade(engine)
        latent_ids = populate(engine, args.widths, args.parents, rng).latent_ids
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM edge")).scalar_one()
            roots = rng.choice(latent_ids[0], args.roots, replace=False)
            labels = (
                conn.execute(
                    sa.text("SELECT label FROM latent WHERE id = ANY(:ids)"),
                    {"ids": roots.tolist()},
                )
                .scalars()
                .all()
            )
            times, sizes = [], []
            for label in labels:
                started = time.perf_counter()
                rows = conn.execute(
                    sa.text("SELECT * FROM latent_tree(CAST(:r AS text))"), {"r": label}
                ).all()
                times.append((time.perf_counter() - started) * 1000)
                sizes.append(len(rows))
        times.sort()
        p95 = times[int(0.95 * (len(times) - 1))]
        print(
            f"latent_tree at {total:,} stored edges: {len(times)} roots, median"
            f" {statistics.median(times):.2f} ms, p95 {p95:.2f} ms, max {times[-1]:.2f} ms;"
            f" {statistics.mean(sizes):.1f} nodes per tree on average"
        )
        engine.dispose()
    finally:
        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
