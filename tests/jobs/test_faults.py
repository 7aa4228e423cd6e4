"""Fault tests with a real PostgreSQL: killed workers, concurrent workers, a database restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from service.db import engine as db_engine
from service.db import migrate, queries, server
from tests.conftest import REPO, Pipeline, cli_env, short_tmp
from tests.reference import forest_of

pytestmark = pytest.mark.slow


def random_topk(path: Path, t: int, d: int, k: int, seed: int) -> Path:
    """Top-k activations with a fixed token set; heavy enough to keep a job busy for seconds."""
    rng = np.random.default_rng(seed)
    idx = (
        np.argsort(rng.random((t, d)), axis=1)[:, :k].astype(np.int32)
        if d <= 64
        else (np.sort(rng.integers(0, d, (t, k)), axis=1).astype(np.int32))
    )
    val = rng.uniform(0.1, 2.0, (t, k)).astype(np.float32)
    val[:, 1:][idx[:, 1:] == idx[:, :-1]] = 0  # repeated draws become padding
    np.savez(path, indices=idx, values=val, token_ids=np.arange(t), d_sae=np.int64(d))
    return path


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--once"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def heavy_family(pipeline: Pipeline, tmp_path: Path) -> int:
    """Family H with one job whose compute takes a few seconds on this machine."""
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "H")
    pipeline.ingest("H", random_topk(tmp_path / "a.npz", 100_000, 1024, 32, 0))
    added = pipeline.ingest("H", random_topk(tmp_path / "b.npz", 100_000, 4096, 32, 1))
    (job_id,) = added.job_ids
    return job_id


def test_killed_worker_leaves_no_edges_and_the_job_completes_later(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    job_id = heavy_family(pipeline, tmp_path)
    # A small memory budget cuts the job into hundreds of blocks; the worker logs each one, so
    # the kill lands inside the compute, after its first block, whatever this machine's speed.
    env = pipeline.env(
        LATENT_TREES_LEASE_SECONDS="3",
        LATENT_TREES_LOG_LEVEL="INFO",
        LATENT_TREES_MEMORY_BUDGET_GB="0.002",
    )
    first = start_worker(env)
    assert first.stderr is not None
    for line in first.stderr:
        if f"job {job_id}" in line and "block 1/" in line:
            break
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert pipeline.sql("SELECT count(*) FROM edge")[0][0] == 0
    state, attempts = pipeline.sql("SELECT state, attempts FROM job WHERE id = :j", j=job_id)[0]
    assert (state, attempts) == ("running", 1)

    time.sleep(3.5)  # the dead worker's lease runs out
    second = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr
    state, attempts, n_edges = pipeline.sql(
        "SELECT state, attempts, n_edges FROM job WHERE id = :j", j=job_id
    )[0]
    assert (state, attempts) == ("done", 2)
    assert pipeline.sql("SELECT count(*) FROM edge")[0][0] == n_edges > 0


def test_two_workers_run_ten_jobs_exactly_once(pipeline: Pipeline, tmp_path: Path) -> None:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "W")
    for i in range(11):
        pipeline.ingest("W", random_topk(tmp_path / f"w{i}.npz", 20_000, 64 + 32 * i, 16, i))
    assert pipeline.sql("SELECT count(*) FROM job WHERE state = 'pending'")[0][0] == 10
    env = pipeline.env()
    workers = [start_worker(env), start_worker(env)]
    for proc in workers:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    jobs = pipeline.sql("SELECT id, state, attempts, n_edges, worker FROM job ORDER BY id")
    assert [(s, a) for _i, s, a, _n, _w in jobs] == [("done", 1)] * 10
    per_job = dict(pipeline.sql("SELECT job_id, count(*) FROM edge GROUP BY job_id"))
    assert per_job == {i: n for i, _s, _a, n, _w in jobs}
    # Both workers updated the family's forest, one job at a time: it is the whole forest.
    with pipeline.engine.connect() as conn:
        want_edges, want_nodes = forest_of(conn)
    assert {tuple(r) for r in pipeline.sql("SELECT * FROM tree_edges")} == want_edges
    assert {
        tuple(r) for r in pipeline.sql("SELECT root, node, depth FROM tree_nodes")
    } == want_nodes


@pytest.fixture
def own_server() -> Iterator[tuple[Path, str]]:
    """A server of its own, so that restarting it disturbs no other test."""
    home = short_tmp(f"lt-restart-{uuid.uuid4().hex[:8]}")
    home.mkdir()
    url = server.ensure_running(home)
    yield home, url
    server.stop(home)
    shutil.rmtree(home, ignore_errors=True)


def test_database_restart_mid_job_is_survived(own_server: tuple[Path, str], tmp_path: Path) -> None:
    home, url = own_server
    engine = db_engine.create(url)
    migrate.upgrade(engine)
    from service import settings
    from tests.conftest import Pipeline as P

    config = settings.Settings(database_url=url, home=tmp_path / "home", device="cpu")
    (tmp_path / "home").mkdir()
    pipeline = P(engine, config, url)
    job_id = heavy_family(pipeline, tmp_path)
    proc = start_worker(
        cli_env(tmp_path / "home", database_url=url, LATENT_TREES_LEASE_SECONDS="60")
    )
    wait_for(
        lambda: pipeline.sql("SELECT state FROM job WHERE id = :j", j=job_id)[0][0] == "running"
    )
    engine.dispose()
    assert server.stop(home)
    time.sleep(1.0)
    assert server.ensure_running(home) == url
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    engine = db_engine.create(url)
    with engine.connect() as conn:
        state, n_edges = conn.execute(
            sa.text("SELECT state, n_edges FROM job WHERE id = :j"), {"j": job_id}
        ).one()
        stored = conn.execute(sa.text("SELECT count(*) FROM edge")).scalar_one()
    engine.dispose()
    assert state == "done"
    assert stored == n_edges > 0


def test_ingest_wakes_a_running_worker_through_notify(pipeline: Pipeline, tmp_path: Path) -> None:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "N")
    pipeline.ingest("N", random_topk(tmp_path / "n1.npz", 2000, 32, 4, 0))
    # A 5-minute poll interval: only NOTIFY can make the worker start the job in time.
    env = pipeline.env(LATENT_TREES_POLL_SECONDS="300")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "worker"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3.0)  # the worker's first poll has found nothing
        assert pipeline.sql("SELECT count(*) FROM job")[0][0] == 0
        started = time.monotonic()
        (job_id,) = pipeline.ingest("N", random_topk(tmp_path / "n2.npz", 2000, 96, 4, 1)).job_ids
        wait_for(
            lambda: pipeline.sql("SELECT state FROM job WHERE id = :j", j=job_id)[0][0] == "done",
            timeout=60,
        )
        assert time.monotonic() - started < 60
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
