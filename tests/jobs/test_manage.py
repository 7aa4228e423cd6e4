"""Managing jobs and saes from the CLI: job list, job retry, sae delete, worker --once's exit
status (issue 12, items 5 and 7)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service import settings
from service.db import queries
from service.jobs import worker
from service.sources import store
from tests.conftest import Pipeline, run_cli
from tests.jobs.test_faults import random_topk


def _family(pipeline: Pipeline, tmp_path: Path, widths: tuple[int, ...]) -> list[str]:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "M")
    return [
        pipeline.ingest("M", random_topk(tmp_path / f"m{d}.npz", 3000, d, 8, i)).name
        for i, d in enumerate(widths)
    ]


def test_sae_delete_removes_everything_and_plans_the_gap(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    names = _family(pipeline, tmp_path, (32, 96, 288))
    pipeline.drain()
    (middle_id,) = pipeline.sql("SELECT id FROM sae WHERE name = :n", n=names[1])[0]
    path = pipeline.sql("SELECT activations_path FROM sae WHERE id = :i", i=middle_id)[0][0]
    assert pipeline.sql("SELECT count(*) FROM edge")[0][0] > 0
    out = run_cli("sae", "delete", names[1], env=pipeline.env()).stdout
    assert f"sae {names[1]} deleted: 96 latents" in out and "job planned" in out
    assert pipeline.sql("SELECT count(*) FROM latent WHERE sae_id = :i", i=middle_id)[0][0] == 0
    assert pipeline.sql("SELECT count(*) FROM edge")[0][0] == 0  # both jobs touched the middle
    assert pipeline.sql("SELECT count(*) FROM tree_edges")[0][0] == 0
    (job,) = pipeline.sql(
        "SELECT p.name, c.name, j.state FROM job j JOIN sae p ON p.id = j.parent_sae_id"
        " JOIN sae c ON c.id = j.child_sae_id"
    )
    assert tuple(job) == (names[0], names[2], "pending")
    assert not store.Store.under(pipeline.config.home).exists(path)  # nothing references it
    pipeline.drain()
    assert pipeline.sql("SELECT count(*) FROM latent_edges WHERE adjacent")[0][0] > 0
    bad = run_cli("sae", "delete", names[1], env=pipeline.env(), check=False)
    assert bad.returncode == 1 and f"unknown sae '{names[1]}'" in bad.stderr


def test_deleting_an_sae_keeps_an_entry_another_sae_shares(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "A")
        queries.create_family(conn, "B")
    x = random_topk(tmp_path / "x.npz", 2000, 64, 8, 0)
    pipeline.ingest("A", x)
    pipeline.ingest("B", x)
    path = pipeline.sql("SELECT activations_path FROM sae WHERE name = 'A/1'")[0][0]
    run_cli("sae", "delete", "A/1", env=pipeline.env())
    assert store.Store.under(pipeline.config.home).exists(path)


def test_job_list_retry_and_exit_status(pipeline: Pipeline, tmp_path: Path) -> None:
    names = _family(pipeline, tmp_path, (32, 96))
    the_store = store.Store.under(pipeline.config.home)
    path = pipeline.sql("SELECT activations_path FROM sae WHERE name = :n", n=names[1])[0][0]
    hidden = tmp_path / "hidden"
    shutil.move(the_store.root / path, hidden)  # every attempt fails: the entry is missing
    failed = run_cli("worker", "--once", env=pipeline.env(), check=False)
    assert failed.returncode == 1
    (job,) = json.loads(run_cli("job", "list", "--json", env=pipeline.env()).stdout)
    assert (job["state"], job["attempts"], job["parent"], job["child"]) == (
        "failed",
        3,
        names[0],
        names[1],
    )
    assert "is missing or damaged" in job["error"]
    table = run_cli("job", "list", "--state", "failed", env=pipeline.env()).stdout
    assert "failed" in table and "3/3" in table
    assert (
        json.loads(run_cli("job", "list", "--state", "done", "--json", env=pipeline.env()).stdout)
        == []
    )
    not_failed = run_cli("job", "retry", "999", env=pipeline.env(), check=False)
    assert not_failed.returncode == 1 and "unknown job 999" in not_failed.stderr
    shutil.move(hidden, the_store.root / path)
    assert "pending again" in run_cli("job", "retry", str(job["id"]), env=pipeline.env()).stdout
    assert run_cli("worker", "--once", env=pipeline.env()).returncode == 0
    again = run_cli("job", "retry", str(job["id"]), env=pipeline.env(), check=False)
    assert again.returncode == 1 and "is done: only a failed job is retried" in again.stderr


def test_a_job_that_fails_once_then_runs_exits_zero(pipeline: Pipeline, tmp_path: Path) -> None:
    names = _family(pipeline, tmp_path, (32, 96))
    the_store = store.Store.under(pipeline.config.home)
    path = pipeline.sql("SELECT activations_path FROM sae WHERE name = :n", n=names[1])[0][0]
    hidden = tmp_path / "hidden"
    shutil.move(the_store.root / path, hidden)

    def put_back(result: object) -> None:  # the entry comes back after the first failure
        if isinstance(result, worker.Failure) and hidden.exists():
            shutil.move(hidden, the_store.root / path)

    config = settings.Settings(**{**pipeline.config.model_dump(), "max_attempts": 3})
    results = worker.Worker(pipeline.engine, config, put_back).drain()
    assert [type(r).__name__ for r in results] == ["Failure", "Outcome"]
    assert results[0].state == "pending"  # type: ignore[union-attr]
    assert worker.exit_code(results) == 0
    assert worker.exit_code([results[0].__class__(1, "failed", 3, "x")]) == 1
    assert np.all(pipeline.sql("SELECT state FROM job")[0][0] == "done")


def test_skipped_polls_are_not_logged_but_other_warnings_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker.quiet_skipped_polls()
    log = logging.getLogger("apscheduler.scheduler")
    with caplog.at_level(logging.WARNING, logger="apscheduler.scheduler"):
        log.warning(
            'Execution of job "Worker.drain" skipped: maximum number of running instances'
            " reached (1)"
        )
        log.warning("Run time of job was missed by 0:00:05")
    assert [r.getMessage() for r in caplog.records] == ["Run time of job was missed by 0:00:05"]
