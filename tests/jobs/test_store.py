"""The store under races and kills: no entry is deleted while a committed row references it,
and what killed writers leave behind is collected (issue 12, items 1 and 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from service import entries, errors
from service.compute import chunks
from service.db import queries
from service.sources import store
from tests.conftest import REPO, Pipeline, run_cli
from tests.jobs.test_faults import random_topk, wait_for

pytestmark = pytest.mark.slow


def _waiting_on_a_lock(pipeline: Pipeline) -> bool:
    return bool(
        pipeline.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )[0][0]
    )


def test_a_failed_ingest_keeps_the_entry_a_concurrent_ingest_committed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The repro of issue 12, item 1: R1's ingest of X fails under a held family lock while
    R2's ingest of the same X commits; X's store entry must survive for R2's job."""
    x = random_topk(tmp_path / "x.npz", 300_000, 2048, 32, 0)
    y = random_topk(tmp_path / "y.npz", 300_000, 512, 16, 1)
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "R1")
        queries.create_family(conn, "R2")
    pipeline.ingest("R2", y)
    tmp_root = pipeline.config.home / "store" / "tmp"
    outcome: list[BaseException | None] = []

    def ingest_r1() -> None:
        try:
            pipeline.ingest("R1", x)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    r1 = threading.Thread(target=ingest_r1)
    r1.start()
    wait_for(lambda: tmp_root.is_dir() and any(tmp_root.iterdir()), timeout=30)  # R1 streams
    with pipeline.engine.connect() as psql:
        holder = psql.begin()
        psql.execute(sa.text("UPDATE family SET n_tokens = 7 WHERE name = 'R1'"))
        wait_for(lambda: _waiting_on_a_lock(pipeline), timeout=60)  # R1 waits at its commit
        added = pipeline.ingest("R2", x)
        holder.commit()
    r1.join(timeout=60)
    assert isinstance(outcome[0], errors.BadInput), outcome  # the scenario happened
    (path,) = pipeline.sql("SELECT activations_path FROM sae WHERE name = :n", n=added.name)[0]
    assert store.Store.under(pipeline.config.home).exists(path)
    (result,) = pipeline.drain()
    assert pipeline.sql("SELECT state FROM job WHERE id = :j", j=result.job_id)[0][0] == "done"


def _entry(the_store: store.Store, seed: int) -> store.Pending[store.Stored]:
    """A small pending activations entry (its content depends on `seed`)."""
    n = 50
    values = torch.from_numpy(np.random.default_rng(seed).uniform(0.1, 1, n).astype(np.float32))
    chunk = chunks.SparseChunk(0, n, torch.arange(n), torch.arange(n), values)
    return the_store.write_activations([chunk], n, n)


def test_gc_removes_only_what_nothing_references(pipeline: Pipeline) -> None:
    the_store = store.Store.under(pipeline.config.home)
    kept = _entry(the_store, 0)
    with entries.referencing(pipeline.engine, the_store, kept) as (conn, stored):
        queries.create_family(conn, "G", {"path": stored.path}, 50, None)
    # An ingest killed between placing its entry and committing leaves it unreferenced.
    orphan = the_store.place(_entry(the_store, 1))
    assert the_store.entries() == sorted([kept.entry.path, orphan.path])
    done = entries.collect(pipeline.engine, the_store)
    assert (done.entries, done.kept) == (1, 1) and done.entry_bytes > 0
    assert the_store.entries() == [kept.entry.path]


def test_a_failed_transaction_releases_its_own_entry(pipeline: Pipeline) -> None:
    the_store = store.Store.under(pipeline.config.home)
    pending = _entry(the_store, 2)
    with pytest.raises(RuntimeError), entries.referencing(pipeline.engine, the_store, pending):
        raise RuntimeError("the transaction fails")
    assert the_store.entries() == []
    assert not any((the_store.root / "tmp").iterdir())


def test_gc_waits_for_a_transaction_that_is_placing_an_entry(pipeline: Pipeline) -> None:
    the_store = store.Store.under(pipeline.config.home)
    pending = _entry(the_store, 3)
    collector: list[entries.Collected] = []
    with entries.referencing(pipeline.engine, the_store, pending) as (conn, stored):
        gc = threading.Thread(
            target=lambda: collector.append(entries.collect(pipeline.engine, the_store))
        )
        gc.start()
        gc.join(timeout=1.0)
        assert gc.is_alive()  # blocked on the entry's lock, not deleting it
        queries.create_family(conn, "G", {"path": stored.path}, 50, None)
    gc.join(timeout=30)
    assert collector[0].entries == 0 and the_store.entries() == [stored.path]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_ingest_leaves_nothing_after_gc(
    pipeline: Pipeline, tmp_path: Path, sig: signal.Signals
) -> None:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "K")
    x = random_topk(tmp_path / "x.npz", 1_000_000, 2048, 32, 0)
    tmp_root = pipeline.config.home / "store" / "tmp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "ingest", "K", "--activations", str(x)],
        env=pipeline.env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: tmp_root.is_dir() and any(tmp_root.iterdir()), timeout=60)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    left = list(tmp_root.iterdir())
    if sig == signal.SIGTERM:
        assert left == []  # unwound: its temporary folder is gone at once
        return
    assert len(left) == 1
    # A live writer's folder is never swept; a dead one's is, once older than the grace period.
    old = time.time() - 3600
    os.utime(left[0], (old, old))
    out = run_cli("store", "gc", env=pipeline.env()).stdout
    assert "1 abandoned temporary folders" in out, out
    assert list(tmp_root.iterdir()) == []
    assert pipeline.sql("SELECT count(*) FROM sae")[0][0] == 0


def test_a_live_writers_folder_is_not_swept(pipeline: Pipeline) -> None:
    the_store = store.Store.under(pipeline.config.home)
    pending = _entry(the_store, 4)
    old = time.time() - 3600
    os.utime(pending.tmp, (old, old))
    assert the_store.sweep_tmp() == (0, 0)
    the_store.discard(pending)
    assert not pending.tmp.exists()
