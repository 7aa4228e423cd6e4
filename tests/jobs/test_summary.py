"""A family at a glance (family_summary, level_summary, status --summary, the API route) against
counts made by brute force from every stored edge."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from service.db import queries
from service.sources import planted
from tests.conftest import Pipeline, run_cli


def brute_force(pipeline: Pipeline, threshold: float) -> dict[tuple[str, str], dict[str, object]]:
    """Per adjacent pair of saes: the summary counted in Python from the stored edges."""
    n_active = dict(pipeline.sql("SELECT label, n_active FROM latent"))
    d_sae = dict(pipeline.sql("SELECT name, d_sae FROM sae"))
    edges = pipeline.sql(
        "SELECT parent, child, score, masked_cos, masked_cos_parent FROM latent_edges"
        " WHERE adjacent"
    )
    pairs = pipeline.sql("SELECT name, (SELECT name FROM sae WHERE id = next_id) FROM sae_level")
    found = {}
    for parent_sae, child_sae in pairs:
        if child_sae is None:
            continue
        links = [
            e
            for e in edges
            if e[0].rsplit("/", 1)[0] == parent_sae
            and e[1].rsplit("/", 1)[0] == child_sae
            and np.float32(e[2]) > np.float32(threshold)
            and n_active[e[0]] >= 10
            and n_active[e[1]] >= 10
        ]
        children = Counter(e[0] for e in links)
        parents = Counter(e[1] for e in links)
        largest = sorted(
            ((p, n) for p, n in children.items() if n >= 2),
            key=lambda pn: (-pn[1], int(pn[0].rsplit("/", 1)[1])),
        )[:5]
        found[(parent_sae, child_sae)] = {
            "n_edges": len(links),
            "split": sum(n >= 2 for n in children.values()),
            "merge": sum(n >= 2 for n in parents.values()),
            "persist": sum(
                children[e[0]] == 1 and parents[e[1]] == 1 and e[3] >= 0.9 and e[4] >= 0.9
                for e in links
            ),
            "new": d_sae[child_sae] - len(parents),
            "vanish": d_sae[parent_sae] - len(children),
            "largest_splits": [{"parent": p, "n_children": n} for p, n in largest],
        }
    return found


def _summary(pipeline: Pipeline, threshold: float) -> dict[tuple[str, str], dict[str, object]]:
    with pipeline.engine.connect() as conn:
        rows = queries.family_summary(conn, "P", threshold, 10)
    return {
        (r["parent_sae"], r["child_sae"]): {
            k: r[k]
            for k in r
            if k not in ("parent_sae", "child_sae", "parent_level", "child_level", "scored")
        }
        for r in rows
    }


@pytest.mark.parametrize("threshold", [0.4, 0.6, 0.9])
def test_the_summary_counts_what_brute_force_counts(
    pipeline: Pipeline, tmp_path: Path, threshold: float
) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(16, 48, 144), n_tokens=8000, seed=3))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "P")
    for level in (0, 1, 2):
        pipeline.ingest("P", fam.write(tmp_path, level))
    pipeline.drain()
    got = _summary(pipeline, threshold)
    want = brute_force(pipeline, threshold)
    assert got == want
    counts = [v for row in got.values() for k, v in row.items() if k != "largest_splits"]
    assert sum(counts) > 0
    if threshold == 0.6:  # the planted family splits and merges at the default threshold
        assert all(row["split"] > 0 for row in got.values())
        assert any(row["merge"] > 0 for row in got.values())
        view = pipeline.sql("SELECT family, parent_sae, split FROM level_summary")
        assert {(p, s) for _f, p, s in view} == {(k[0], v["split"]) for k, v in got.items()}


def test_summary_in_status_and_before_a_pair_is_scored(pipeline: Pipeline, tmp_path: Path) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(16, 48), n_tokens=8000, seed=4))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "P")
    for level in (0, 1):
        pipeline.ingest("P", fam.write(tmp_path, level))
    (row,) = pipeline.sql("SELECT scored, new, vanish FROM family_summary('P')")
    assert tuple(row) == (False, 48, 16)  # nothing scored yet: every latent new or vanishing
    pipeline.drain()
    report = json.loads(run_cli("status", "--json", "--summary", env=pipeline.env()).stdout)
    (levels,) = [f["summary"] for f in report["families"] if f["name"] == "P"]
    assert (
        levels[0]["scored"]
        and levels[0]["split"] == brute_force(pipeline, 0.6)[("P/1", "P/2")]["split"]
    )
    text = run_cli("status", "--summary", "--threshold", "0.9", env=pipeline.env()).stdout
    assert "1 -> 2" in text and "threshold 0.9" in text
    bad = run_cli("status", "--summary", "--threshold", "-1", env=pipeline.env(), check=False)
    assert bad.returncode != 0 and "--threshold -1" in bad.stderr


def test_a_width_that_repeats_its_parents_persists(pipeline: Pipeline, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parent = rng.uniform(0.5, 2, (4000, 8)) * (rng.random((4000, 8)) < 0.05)
    extra = rng.uniform(0.5, 2, (4000, 1)) * (rng.random((4000, 1)) < 0.05)
    child = np.concatenate([parent[:, ::-1], extra], axis=1)  # the same 8, reordered, and 1 new
    for name, values in (("a", parent), ("b", child)):
        np.save(tmp_path / f"{name}.npy", values.astype(np.float32))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "P")
    for name in ("a", "b"):
        pipeline.ingest("P", tmp_path / f"{name}.npy")
    pipeline.drain()
    (row,) = _summary(pipeline, 0.6).values()
    assert row == brute_force(pipeline, 0.6)[("P/1", "P/2")]
    assert (row["persist"], row["split"], row["merge"], row["new"], row["vanish"]) == (
        8,
        0,
        0,
        1,
        0,
    )
