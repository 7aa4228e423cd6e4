"""Jobs and encodes as Ray tasks on a real local Ray cluster (2 CPUs, one for the whole
session): the same edges as the single-process engine, a task whose process is killed is run
again and the job publishes every edge once, a sharded encode equals the unsharded one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from service import errors, families, ingest
from service.compute import chunks, cluster, engine
from service.db import queries
from service.jobs import edges, worker
from service.sources import planted
from tests.conftest import Pipeline
from tests.jobs.test_checkpoints import _inputs, _topk_sae
from tests.unit.test_engine import as_dict, sparse_matrix

ray = pytest.importorskip("ray")


def test_blocks_as_ray_tasks_give_the_same_edges(ray_cluster: str) -> None:
    rng = np.random.default_rng(5)
    parent = chunks.DenseSource(torch.from_numpy(sparse_matrix(rng, 4000, 60, 0.08)))
    child = chunks.DenseSource(torch.from_numpy(sparse_matrix(rng, 4000, 240, 0.04)))
    here = engine.score_pair(parent, child, device="cpu")
    runner = cluster.RayRunner(ray_cluster)
    progress: list[tuple[int, int]] = []
    for rows in (None, 7):  # blocks planned for the cluster's slots, then many small ones
        there = engine.score_pair(
            parent,
            child,
            runner=runner,
            max_block_rows=rows,
            on_block=lambda d, n: progress.append((d, n)),
        )
        assert len(there.blocks) >= 2 * runner.slots() == 4
        assert as_dict(there.edges) == as_dict(here.edges)
        assert (there.n_coactivations, there.n_pairs) == (here.n_coactivations, here.n_pairs)
    assert progress[-1] == (len(there.blocks), len(there.blocks))


def _family(pipeline: Pipeline, name: str, fam: planted.PlantedFamily, folder: Path) -> None:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, name)
    for level in range(2):
        pipeline.ingest(name, fam.write(folder, level))


def _edges(pipeline: Pipeline, family: str) -> list[tuple]:
    return sorted(
        pipeline.sql(
            "SELECT p.idx, c.idx, e.score, e.masked_cos, e.masked_cos_parent, e.n_coactive"
            " FROM edge e JOIN latent p ON p.id = e.parent_id JOIN latent c ON c.id = e.child_id"
            " JOIN sae s ON s.id = c.sae_id JOIN family f ON f.id = s.family_id"
            " WHERE f.name = :family",
            family=family,
        )
    )


def _kill_a_task(name: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker process seen running task `name` (its process title)."""
    while not stop.is_set():
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].startswith(f"ray::{name}"):
                proc.kill()
                killed.append(proc.pid)
                return
        time.sleep(0.01)


def test_a_killed_task_is_retried_and_the_job_publishes_every_edge_once(
    pipeline: Pipeline, tmp_path: Path, ray_cluster: str
) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(400, 4000), n_tokens=300_000, seed=3))
    _family(pipeline, "A", fam, tmp_path / "a")
    _family(pipeline, "B", fam, tmp_path / "b")
    # A's job in this process, B's as Ray tasks while one of them is killed.
    local = worker.Worker(pipeline.engine, pipeline.config)
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE job SET state = 'failed' WHERE child_sae_id IN"
            " (SELECT s.id FROM sae s JOIN family f ON f.id = s.family_id WHERE f.name = 'B')"
        )
    assert [r.label for r in local.drain() if isinstance(r, edges.Outcome)] == ["A/1 -> A/2"]
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE job SET state = 'pending' WHERE state = 'failed'")
    config = pipeline.config.model_copy(update={"ray": ray_cluster})
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_task, args=("_score_block", killed, stop))
    killer.start()
    try:
        (outcome,) = worker.Worker(pipeline.engine, config).drain()
    finally:
        stop.set()
        killer.join()
    assert killed, "no task was seen running"
    assert isinstance(outcome, edges.Outcome), outcome
    assert outcome.label == "B/1 -> B/2" and outcome.n_edges > 1000
    assert pipeline.sql("SELECT state, attempts FROM job ORDER BY id") == [("done", 1)] * 2
    a, b = _edges(pipeline, "A"), _edges(pipeline, "B")
    assert len({(p, c) for p, c, *_ in b}) == len(b) == outcome.n_edges  # each edge once
    assert b == a


def test_sharded_encode_equals_the_unsharded_one(
    pipeline: Pipeline, tmp_path: Path, ray_cluster: str
) -> None:
    inputs = _inputs(tmp_path, n=5000)
    folder = _topk_sae(tmp_path / "sae", 96)
    for name in ("U", "R"):
        families.create_from_inputs(pipeline.engine, pipeline.config, name, inputs, "float32")
    config = pipeline.config.model_copy(update={"encode_tokens": 512})
    plain = ingest.ingest_checkpoint(pipeline.engine, config, "U", folder)
    sharded = ingest.ingest_checkpoint(
        pipeline.engine, config.model_copy(update={"ray": ray_cluster}), "R", folder
    )
    assert sharded.source["ray"] == "auto" and "ray" not in plain.source
    assert sharded.source["fvu"] == pytest.approx(plain.source["fvu"], rel=1e-9)
    assert sharded.source["l0"] == plain.source["l0"]
    rows = pipeline.sql("SELECT s.name, s.activations_sha256 FROM sae s ORDER BY s.name")
    assert rows[0][1] == rows[1][1]  # the same activations, byte for byte
    latents = pipeline.sql(
        "SELECT l.idx, l.max_act, l.n_active, l.sum_sq, s.name FROM latent l"
        " JOIN sae s ON s.id = l.sae_id ORDER BY s.name, l.idx"
    )
    half = len(latents) // 2
    assert [r[:4] for r in latents[:half]] == [r[:4] for r in latents[half:]]
    top = pipeline.sql(
        "SELECT l.idx, t.rank, t.position, t.value, s.name FROM top_activation t"
        " JOIN latent l ON l.id = t.latent_id JOIN sae s ON s.id = l.sae_id"
        " ORDER BY s.name, l.idx, t.rank"
    )
    half = len(top) // 2
    assert [r[:4] for r in top[:half]] == [r[:4] for r in top[half:]]


def test_one_line_errors(pipeline: Pipeline, tmp_path: Path, ray_cluster: str) -> None:
    with pytest.raises(
        errors.ServiceError, match="Ray tasks ask for 1 GPU each but the cluster has 0"
    ):
        cluster.RayRunner(ray_cluster, gpus=1)
    with pytest.raises(errors.ServiceError, match="unknown Ray address 'nowhere'"):
        cluster.connect("nowhere")
    # Without the extra: one line naming it, and nothing run.
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ray':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = pipeline.env(PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once", "--ray", "local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("Ray is not installed: pip install 'latent-trees[ray]' to use --ray")
    ), proc.stderr
