"""The planted hierarchy is recovered exactly through ingest, the worker, SQL and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.db import queries
from service.sources import planted
from tests.conftest import Pipeline, run_cli

QUALIFYING = """
    SELECT e.parent, e.child FROM latent_edges e
    JOIN latent p ON p.label = e.parent JOIN latent c ON c.label = e.child
    WHERE e.adjacent AND e.score > 0.6 AND p.n_active >= 10 AND c.n_active >= 10
"""


def planted_labels(
    fam: planted.PlantedFamily, names: dict[int, str], pairs: list[tuple[int, int]]
) -> set[tuple[str, str]]:
    """The planted qualifying edges of width pairs, as (parent label, child label)."""
    return {
        (f"{names[k]}/{p}", f"{names[j]}/{c}") for k, j in pairs for p, c in fam.planted[(k, j)]
    }


def ingest_levels(
    pipeline: Pipeline, fam: planted.PlantedFamily, folder: Path, order: list[int]
) -> dict[int, str]:
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "P")
    names = {}
    for level in order:
        names[level] = pipeline.ingest("P", fam.write(folder, level)).name
        pipeline.drain()
    return names


@pytest.mark.parametrize("widths", [(16, 48, 144), (16, 48, 144, 432)])
def test_planted_hierarchy_is_recovered_exactly(
    pipeline: Pipeline, tmp_path: Path, widths: tuple[int, ...]
) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=widths, n_tokens=8000, seed=1))
    names = ingest_levels(pipeline, fam, tmp_path / "files", list(range(len(widths))))
    adjacent = [(k, k + 1) for k in range(len(widths) - 1)]
    got = {tuple(row) for row in pipeline.sql(QUALIFYING)}
    assert got == planted_labels(fam, names, adjacent)
    jobs = pipeline.sql("SELECT state, attempts FROM job")
    assert sorted(jobs) == [("done", 1)] * (len(widths) - 1)
    # The forest: every best parent is a planted parent, and every planted child has one.
    forest = {tuple(row) for row in pipeline.sql("SELECT parent, child FROM tree_edges")}
    assert forest <= got
    assert {c for _p, c in forest} == {c for _p, c in got}


def test_inserted_width_replaces_the_pair_it_splits(pipeline: Pipeline, tmp_path: Path) -> None:
    widths = (16, 48, 144)
    fam = planted.generate(planted.PlantedSpec(widths=widths, n_tokens=8000, seed=2))
    names = ingest_levels(pipeline, fam, tmp_path / "files", [0, 2])
    (old_job,) = pipeline.sql("SELECT id, finished_at, attempts FROM job")
    skip = {tuple(row) for row in pipeline.sql(QUALIFYING)}
    assert skip == planted_labels(fam, names, [(0, 2)])

    names[1] = pipeline.ingest("P", fam.write(tmp_path / "files", 1)).name
    assert names == {0: "P/1", 2: "P/2", 1: "P/3"}  # names never change, levels do
    pipeline.drain()

    jobs = pipeline.sql(
        "SELECT p.name, c.name, j.state, j.attempts, j.finished_at FROM job j"
        " JOIN sae p ON p.id = j.parent_sae_id JOIN sae c ON c.id = j.child_sae_id ORDER BY j.id"
    )
    assert [(p, c, s, a) for p, c, s, a, _f in jobs] == [
        ("P/1", "P/2", "done", 1),
        ("P/1", "P/3", "done", 1),
        ("P/3", "P/2", "done", 1),
    ]
    assert jobs[0][4] == old_job.finished_at, "the old pair was not recomputed"
    got = {tuple(row) for row in pipeline.sql(QUALIFYING)}
    assert got == planted_labels(fam, names, [(0, 1), (1, 2)])
    # The old pair's edges are kept but are no longer adjacent.
    kept = pipeline.sql(
        "SELECT count(*), bool_or(adjacent), min(parent_level), max(child_level)"
        " FROM latent_edges WHERE parent LIKE 'P/1/%' AND child LIKE 'P/2/%'"
    )[0]
    assert kept[0] > 0 and kept[1] is False and (kept[2], kept[3]) == (1, 3)
    levels = dict(pipeline.sql("SELECT name, level FROM sae_level"))
    assert levels == {"P/1": 1, "P/3": 2, "P/2": 3}


def test_adding_a_width_computes_only_new_pairs(pipeline: Pipeline, tmp_path: Path) -> None:
    widths = (16, 48, 144, 432)
    fam = planted.generate(planted.PlantedSpec(widths=widths, n_tokens=6000, seed=3))
    ingest_levels(pipeline, fam, tmp_path / "files", [0, 1, 2])
    before = pipeline.sql("SELECT id, finished_at, n_edges FROM job ORDER BY id")
    added = pipeline.ingest("P", fam.write(tmp_path / "files", 3))
    assert len(added.job_ids) == 1
    pipeline.drain()
    after = pipeline.sql("SELECT id, finished_at, n_edges FROM job ORDER BY id")
    assert after[: len(before)] == before
    assert len(after) == len(before) + 1


def test_forest_and_rooted_trees_differ_only_at_merges(pipeline: Pipeline, tmp_path: Path) -> None:
    spec = planted.PlantedSpec(widths=(16, 48, 144), n_tokens=8000, seed=4)
    fam = planted.generate(spec)
    names = ingest_levels(pipeline, fam, tmp_path / "files", [0, 1, 2])
    first_merge = spec.widths[-1] - spec.noise_per_sae - 2
    siblings, apart = (f"{names[2]}/{first_merge + m}" for m in (0, 1))

    def forest_root(label: str) -> str:
        return str(pipeline.sql("SELECT root FROM tree_nodes WHERE node = :n", n=label)[0][0])

    def forest_parent(label: str) -> str:
        return str(pipeline.sql("SELECT parent FROM tree_edges WHERE child = :c", c=label)[0][0])

    with pipeline.engine.connect() as conn:
        rows = {
            r["node"]: r for r in queries.rooted_tree(conn, forest_root(siblings), 0.6, 10).rows
        }
    # Siblings' merge: drawn under its forest parent, the other parent in other_parents.
    assert rows[siblings]["parent"] == forest_parent(siblings)
    assert len(rows[siblings]["other_parents"]) == 1

    # Merge across trees: the rooted tree of the other root draws it under the other parent.
    parents = {
        row[0]
        for row in pipeline.sql(
            "SELECT parent FROM latent_edges WHERE child = :c AND adjacent AND score > 0.6",
            c=apart,
        )
    }
    assert len(parents) == 2
    (other,) = parents - {forest_parent(apart)}
    other_root = forest_root(other)
    assert other_root != forest_root(apart)
    with pipeline.engine.connect() as conn:
        rows = {r["node"]: r for r in queries.rooted_tree(conn, other_root, 0.6, 10).rows}
    assert rows[apart]["parent"] == other
    assert rows[apart]["other_parents"] == []
    # Everywhere else the rooted tree is the forest's subtree.
    forest = dict(pipeline.sql("SELECT child, parent FROM tree_edges"))
    for node, row in rows.items():
        if node != apart and row["parent"] is not None:
            assert forest[node] == row["parent"], node


def test_cli_ingest_worker_tree(pipeline: Pipeline, tmp_path: Path) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(16, 48, 144), n_tokens=5000, seed=5))
    env = pipeline.env()
    run_cli("family", "create", "P", env=env)
    for level in range(3):
        out = run_cli("ingest", "P", "--activations", str(fam.write(tmp_path, level)), env=env)
        assert f"sae P/{level + 1}: d_sae {fam.spec.widths[level]}" in out.stdout
    drained = run_cli("worker", "--once", env=env).stdout
    assert drained.count(" edges,") == 2
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert status["jobs"]["done"] == 2
    assert [s["level"] for s in status["families"][0]["saes"]] == [1, 2, 3]
    tree = json.loads(run_cli("tree", "P/1/0", "--format", "json", env=env).stdout)
    level2 = {c["node"] for c in tree["children"]}
    planted_children = {f"P/2/{c}" for p, c in fam.planted[(0, 1)] if p == 0}
    assert level2 == planted_children
    text = run_cli("tree", "P/1/0", env=env).stdout
    assert text.splitlines()[0].startswith("P/1/0  max ")
    assert all(child in text for child in planted_children)
