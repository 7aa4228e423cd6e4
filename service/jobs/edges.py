"""The edge job: score every pair of two neighbouring saes and publish the stored edges.

Three phases: a short transaction reads what the job needs, the compute runs with no session
open (renewing the lease meanwhile), and one transaction writes every edge and marks the job
done. Re-running a job replaces its edges, so every write is idempotent."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy.engine import Engine

from service import settings
from service.compute import decoder, scores
from service.compute import device as device_
from service.compute import engine as compute
from service.compute import stats as stats_
from service.db import engine as db_engine
from service.db import jobs
from service.sources import store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    job_id: int
    label: str
    n_edges: int
    n_coactivations: int
    compute_seconds: float
    write_seconds: float
    forest_seconds: float = 0.0  # the forest update after it (service/jobs/worker.py)


def run(
    engine: Engine,
    config: settings.Settings,
    activation_store: store.Store,
    job: jobs.Claim,
    runner: compute.Runner | None = None,
) -> Outcome:
    """Compute and publish the edges of a claimed job (raises on failure, leaving no edges)."""
    inputs = db_engine.transaction(engine, lambda conn: jobs.inputs(conn, job))
    parent = activation_store.open_activations(inputs.parent.activations_path)
    child = activation_store.open_activations(inputs.child.activations_path)
    # The rule recorded when the job was planned (jobs planned before top_children was part
    # of the rule stored each child's top parents only).
    params = scores.EdgeParams(
        store_floor=float(job.params.get("store_floor", config.store_floor)),
        top_parents=int(job.params.get("top_parents", 3)),
        top_children=int(job.params.get("top_children", 0)),
    )
    budget = int(config.memory_budget_gb * 2**30) if config.memory_budget_gb else None
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        log.info(
            "job %d %s: block %d/%d (%.1f s)",
            job.id,
            inputs.label,
            done,
            total,
            time.perf_counter() - started,
        )

    with _Heartbeat(engine, job, config.lease_seconds):
        result = compute.score_pair(
            parent,
            child,
            params,
            device=config.device,
            backend=config.engine,
            memory_budget=budget,
            chunk_tokens=config.chunk_tokens,
            # Stored at ingest by the same accumulator: no second pass over the activations.
            parent_stats=_stats(inputs.parent),
            child_stats=_stats(inputs.child),
            on_block=progress,
            runner=runner,
        )
    found, dec_cos, max_dec_cos = result.edges, None, None
    parent_rows, child_rows = parent.decoder(), child.decoder()
    if parent_rows is not None and child_rows is not None:
        # Both saes came from checkpoints: decoder cosines too (SPEC.md section 2).
        cos = decoder.extend(
            result,
            parent,
            child,
            parent_rows,
            child_rows,
            top=params.top_parents,
            device=device_.resolve(config.device),
            chunk_tokens=config.chunk_tokens,
        )
        found, dec_cos = cos.edges, cos.dec_cos
        max_dec_cos = (inputs.child.ids, cos.max_dec_cos)
    columns = edge_columns(found, inputs, job.id, dec_cos)
    started = time.perf_counter()
    n = db_engine.transaction(engine, lambda conn: jobs.publish(conn, job, columns, max_dec_cos))
    return Outcome(
        job.id,
        inputs.label,
        n,
        result.n_coactivations,
        result.seconds,
        time.perf_counter() - started,
    )


def _stats(latents: jobs.SaeLatents) -> stats_.LatentStats:
    return stats_.LatentStats(
        latents.n_tokens,
        torch.from_numpy(latents.max_act),
        torch.from_numpy(latents.n_active),
        torch.from_numpy(latents.sum_sq),
    )


def edge_columns(
    edges: scores.Edges,
    inputs: jobs.JobInputs,
    job_id: int,
    dec_cos: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Rows for the edge table (with their decoder cosines when given); pairs whose parts
    overflow float4 are dropped (never Inf)."""
    parts = {
        name: getattr(edges, name).numpy().astype(np.float32)
        for name in ("masked_cos", "masked_cos_parent", "max_ratio", "score")
    }
    finite = np.logical_and.reduce([np.isfinite(v) for v in parts.values()])
    if not finite.all():
        log.warning("job %d: %d edges overflow float4 and are not stored", job_id, (~finite).sum())
    n_coactive = edges.n_coactive.numpy()
    return {
        "parent_id": inputs.parent.ids[edges.parent.numpy()][finite],
        "child_id": inputs.child.ids[edges.child.numpy()][finite],
        "job_id": np.full(int(finite.sum()), job_id, dtype=np.int64),
        **{name: values[finite] for name, values in parts.items()},
        "n_coactive": np.minimum(n_coactive, np.iinfo(np.int32).max)[finite],
        **({} if dec_cos is None else {"dec_cos": dec_cos.astype(np.float32)[finite]}),
    }


class _Heartbeat:
    """Renews the job's lease every third of it while the compute runs."""

    def __init__(self, engine: Engine, job: jobs.Claim, lease_seconds: float) -> None:
        self._engine, self._job, self._lease = engine, job, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job.id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                with self._engine.begin() as conn:
                    if not jobs.heartbeat(conn, self._job, self._lease):
                        log.warning("job %d: lease lost", self._job.id)
                        return
            except Exception:  # a missed beat is retried; the lease has slack for two more
                log.warning("job %d: lease renewal failed", self._job.id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
