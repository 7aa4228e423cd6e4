"""Database benchmark at scale (issue "storage at real scale"), on a throwaway embedded PostgreSQL
configured as the product configures its own:

- publishing: each job's edges through `jobs.publish` (COPY into its partition, both indexes,
  ATTACH, commit: visible to readers), edges/s end to end, the biggest job 20M+ edges; then the
  forest update that follows it (`jobs.next_forest_update`), timed apart;
- the forest update after a job, timed on family F alone, then again once ten other families
  with ~100M edges between them are in the database (the ratio should stay near 1);
- rooted trees (`latent_tree`) and DAGs (the API's query) p50/p95 at thresholds 0.4, 0.6, 0.8;
- the size on disk per stored edge (heap and indexes).

    python -m bench.pipeline                    # ~110M edges over 11 families, ~16 GB of disk
    python -m bench.pipeline --scale 0.05       # the same shape at 1/20 of the widths (CI-sized)

Edges are generated with the shape of real ones (SPEC.md section 2's stored-edge rule: ~20 per
child): each child has a true parent (score 0.7-1), 5% a second qualifying one, and others
scoring 0-0.47, so that a few per child qualify at 0.4.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from service.db import browse, forest, jobs, migrate, queries, saes, server
from service.db import engine as db_engine

N_TOKENS = 10_000_000
PER_CHILD = 20
THRESHOLDS = (0.4, 0.6, 0.8)


def edge_columns(
    rng: np.random.Generator, parent_ids: np.ndarray, child_ids: np.ndarray, job_id: int
) -> dict[str, np.ndarray]:
    """PER_CHILD distinct parents for every child, scored as the module says."""
    d_p, d_c = len(parent_ids), len(child_ids)
    true_parent = np.arange(d_c, dtype=np.int64) * d_p // d_c
    # Distinct modulo d_p: one parent in each of PER_CHILD strides away from the true one.
    stride = max(d_p // PER_CHILD, 1)
    offsets = np.arange(PER_CHILD) * stride + rng.integers(0, stride, (d_c, PER_CHILD))
    offsets[:, 0] = 0
    parent = ((true_parent[:, None] + offsets) % d_p).reshape(-1)
    child = np.repeat(np.arange(d_c), PER_CHILD)
    n = parent.size
    score = rng.uniform(0.0, 0.47, n).astype(np.float32)
    score[::PER_CHILD] = rng.uniform(0.7, 1.0, d_c)
    second = np.flatnonzero(rng.random(d_c) < 0.05) * PER_CHILD + 1
    score[second] = rng.uniform(0.6, 0.8, second.size)
    masked_cos = np.clip(score / rng.uniform(0.9, 1.1, n), 0, 1).astype(np.float32)
    return {
        "parent_id": parent_ids[parent],
        "child_id": child_ids[child],
        "job_id": np.full(n, job_id),
        "masked_cos": masked_cos,
        "masked_cos_parent": rng.uniform(0, 1, n).astype(np.float32),
        "max_ratio": (score / np.maximum(masked_cos, 1e-3)).astype(np.float32),
        "score": score,
        "n_coactive": rng.integers(1, 10_000, n),
    }


@dataclass
class Published:
    family: str
    job: str
    n_edges: int
    seconds: float
    forest_seconds: float


@dataclass
class Built:
    """A family of generated saes, in level order, with its stored edges."""

    sae_ids: list[int]
    latent_ids: list[np.ndarray]
    n_edges: int


def add_family(
    engine: sa.Engine,
    name: str,
    widths: list[int],
    rng: np.random.Generator,
    report: Callable[[Published], None],
) -> Built:
    """Family `name`, one sae per width, every job published through `jobs.publish` and the
    forest brought up to date after it, as a worker does."""
    with engine.begin() as conn:
        queries.create_family(conn, name)
    sae_ids, latent_ids, n_edges = [], [], 0
    for i, d in enumerate(widths):
        with engine.begin() as conn:
            family = saes.lock_family(conn, name)
            sae_id, _planned = saes.add(
                conn,
                family,
                f"{name}/{i + 1}",
                d,
                saes.LatentColumns(
                    rng.uniform(1, 10, d).astype(np.float32),
                    rng.integers(10, 50_000, d),
                    rng.uniform(1, 1e4, d),
                    N_TOKENS,
                ),
                None,
                {"kind": "bench"},
                "none",
                "none",
                {},
            )
            ids = conn.execute(
                sa.text("SELECT id FROM latent WHERE sae_id = :s ORDER BY idx"), {"s": sae_id}
            ).scalars()
            latent_ids.append(np.fromiter(ids, dtype=np.int64))
        sae_ids.append(sae_id)
        if i == 0:
            continue
        with engine.begin() as conn:
            job = jobs.claim(conn, "bench", 3600)
        assert job is not None and job.child_sae_id == sae_id
        columns = edge_columns(rng, latent_ids[i - 1], latent_ids[i], job.id)
        started = time.perf_counter()
        with engine.begin() as conn:
            n = jobs.publish(conn, job, columns)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        with engine.begin() as conn:
            assert jobs.next_forest_update(conn) == job.id
        forest_seconds = time.perf_counter() - started
        n_edges += n
        report(Published(name, f"{name}/{i} -> {name}/{i + 1}", n, seconds, forest_seconds))
    return Built(sae_ids, latent_ids, n_edges)


def forest_update_seconds(engine: sa.Engine, sae_id: int, repeats: int = 3) -> float:
    """Median time of bringing the forest up to date from sae `sae_id` down (one transaction)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with engine.begin() as conn:
            forest.update_from_sae(conn, sae_id)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def latencies(engine: sa.Engine, roots: list[str], threshold: float) -> dict[str, list[float]]:
    """Milliseconds per rooted tree and per DAG (the API's queries) from each root."""
    found: dict[str, list[float]] = {"tree": [], "dag": [], "nodes": []}
    with engine.connect() as conn:
        for root in roots:
            started = time.perf_counter()
            tree = conn.execute(
                sa.text("SELECT * FROM latent_tree(CAST(:r AS text), CAST(:t AS real))"),
                {"r": root, "t": threshold},
            ).all()
            found["tree"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            browse.dag(conn, root, threshold, 10)
            found["dag"].append((time.perf_counter() - started) * 1000)
            found["nodes"].append(len(tree))
    return found


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="widths times this")
    parser.add_argument("--others", type=int, default=10, help="families besides F")
    parser.add_argument("--roots", type=int, default=200, help="roots timed per threshold")
    args = parser.parse_args()

    def widths(*ws: int) -> list[int]:
        return [max(int(w * args.scale), 64) for w in ws]

    rng = np.random.default_rng(0)
    home = Path(tempfile.mkdtemp(prefix="lt-bench-", dir="/tmp"))
    published: list[Published] = []

    def report(job: Published) -> None:
        published.append(job)
        print(
            f"  {job.job}: {job.n_edges:,} edges published in {job.seconds:.1f} s"
            f" = {job.n_edges / job.seconds / 1e6:.2f}M edges/s (COPY, indexes, attach, commit);"
            f" forest update {job.forest_seconds:.1f} s",
            flush=True,
        )

    try:
        url = server.ensure_running(home)
        engine = db_engine.create(url)
        migrate.upgrade(engine)
        print("family F alone:")
        f_saes = add_family(engine, "F", widths(16384, 65536, 262144), rng, report).sae_ids
        alone = forest_update_seconds(engine, f_saes[-1])
        print(f"  forest update after F's last job: {alone:.2f} s (median of 3)")
        print(f"{args.others} other families:")
        add_family(engine, "G0", widths(65536, 262144, 1048576), rng, report)
        for i in range(1, args.others):
            add_family(engine, f"G{i}", widths(32768, 131072, 393216), rng, report)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
        crowded = forest_update_seconds(engine, f_saes[-1])
        with engine.connect() as conn:
            n_edges = conn.execute(sa.text("SELECT sum(n_edges) FROM job")).scalar_one()
            others = n_edges - sum(j.n_edges for j in published if j.family == "F")
            size = conn.execute(
                sa.text(
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                    " WHERE inhparent = 'edge'::regclass"
                )
            ).scalar_one()
            first = sorted(
                conn.execute(
                    sa.text("SELECT label FROM latent WHERE sae_id = :s"), {"s": f_saes[0]}
                ).scalars()
            )
        roots = list(rng.choice(first, min(args.roots, len(first)), replace=False))
        biggest = max(published, key=lambda j: j.n_edges)
        total_rate = sum(j.n_edges for j in published) / sum(j.seconds for j in published)
        print("\n| figure | value |\n| --- | --- |")
        print(
            f"| stored edges | {n_edges:,} in {len(published)} jobs, {args.others + 1} families |"
        )
        print(
            f"| publish, biggest job ({biggest.job}) | {biggest.n_edges:,} edges in"
            f" {biggest.seconds:.1f} s = {biggest.n_edges / biggest.seconds / 1e6:.2f}M edges/s |"
        )
        print(f"| publish, all jobs | {total_rate / 1e6:.2f}M edges/s |")
        print(
            f"| forest update after the biggest job | {biggest.forest_seconds:.1f} s"
            f" ({biggest.n_edges / biggest.forest_seconds / 1e6:.2f}M edges/s) |"
        )
        print(
            f"| forest update after F's last job | {alone:.2f} s alone, {crowded:.2f} s beside"
            f" {args.others} families with {others:,} edges: {crowded / alone:.2f}x |"
        )
        for t in THRESHOLDS:
            found = latencies(engine, roots, t)
            print(
                f"| threshold {t}: rooted tree / DAG, p50 and p95 ({len(roots)} roots of F,"
                f" {statistics.mean(found['nodes']):.0f} nodes on average) |"
                f" {p(found['tree'], 0.5):.2f} / {p(found['tree'], 0.95):.2f} ms;"
                f" {p(found['dag'], 0.5):.2f} / {p(found['dag'], 0.95):.2f} ms |"
            )
        print(f"| on disk per edge (heap and both indexes) | {size / n_edges:.0f} bytes |")
        engine.dispose()
    finally:
        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
