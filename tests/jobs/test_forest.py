"""The forest kept up to date per family (service/db/forest.py) equals the forest computed from
scratch (tests/reference.py) after every change: ingests in any order, a width inserted between
two others, an sae deleted, a family deleted, jobs of two families published in turn."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from service import saes
from service.db import forest, jobs, queries
from service.jobs import edges
from service.sources import planted, store
from tests.conftest import Pipeline
from tests.reference import forest_of


def _stored(
    pipeline: Pipeline,
) -> tuple[set[tuple[str, str, float, int]], set[tuple[str, str, int]]]:
    edges = {tuple(r) for r in pipeline.sql("SELECT child, parent, score, depth FROM tree_edges")}
    nodes = {tuple(r) for r in pipeline.sql("SELECT root, node, depth FROM tree_nodes")}
    paths = pipeline.sql("SELECT root, node, depth, path FROM tree_nodes")
    assert all(p[0] == root and p[-1] == node and len(p) == d + 1 for root, node, d, p in paths)
    return edges, nodes  # type: ignore[return-value]


def _check(pipeline: Pipeline) -> int:
    """The forest as stored equals the reference; returns its number of edges."""
    with pipeline.engine.connect() as conn:
        want = forest_of(conn)
    assert _stored(pipeline) == want
    return len(want[0])


def test_the_forest_follows_every_change(pipeline: Pipeline, tmp_path: Path) -> None:
    fams = {
        name: planted.generate(
            planted.PlantedSpec(widths=(12, 36, 108, 216), n_tokens=6000, seed=s)
        )
        for name, s in (("A", 3), ("B", 4))
    }
    with pipeline.engine.begin() as conn:
        for name in fams:
            queries.create_family(conn, name)
    sizes = []
    # A: levels 1 and 3, scored; then 2 between them; B alongside; then 4 at the end.
    for family, level in (("A", 0), ("A", 2), ("B", 0), ("B", 1), ("A", 1), ("B", 2), ("A", 3)):
        pipeline.ingest(family, fams[family].write(tmp_path / family, level))
        _check(pipeline)  # new latents are roots at once; an inserted width takes parents
        pipeline.drain()
        sizes.append(_check(pipeline))
    assert sizes[-1] > sizes[1] > 0 == sizes[0]
    a_trees = pipeline.sql("SELECT count(*) FROM tree_edges WHERE child LIKE 'A/%'")[0][0]
    assert _top_activations(pipeline, "A/3") > 0 and _top_activations(pipeline, "B/%") > 0
    saes.delete(pipeline.engine, pipeline.config, "A/3")  # A's second level
    assert _orphans(pipeline) == (0, 0)  # deleted with their latents, and those with it
    assert pipeline.sql("SELECT count(*) FROM tree_edges WHERE child LIKE 'A/%'")[0][0] < a_trees
    _check(pipeline)
    pipeline.drain()  # the job between A/1 and A/2 its removal planned
    _check(pipeline)
    with pipeline.engine.begin() as conn:
        assert queries.delete_family(conn, "B")
    assert _orphans(pipeline) == (0, 0) and _top_activations(pipeline, "A/%") > 0
    _check(pipeline)
    assert pipeline.sql("SELECT count(*) FROM tree_nodes WHERE node LIKE 'B/%'")[0][0] == 0
    # A rebuild from scratch changes nothing.
    before = _stored(pipeline)
    with pipeline.engine.begin() as conn:
        forest.rebuild(conn)
    assert _stored(pipeline) == before


def _top_activations(pipeline: Pipeline, sae: str) -> int:
    return int(
        pipeline.sql(
            "SELECT count(*) FROM top_activation t JOIN latent l ON l.id = t.latent_id"
            " JOIN sae s ON s.id = l.sae_id WHERE s.name LIKE :n",
            n=sae,
        )[0][0]
    )


def _orphans(pipeline: Pipeline) -> tuple[int, int]:
    """Top activations whose latent is gone, latents whose sae is gone (no foreign key
    removes either)."""
    row = pipeline.sql(
        "SELECT (SELECT count(*) FROM top_activation t"
        "        WHERE NOT EXISTS (SELECT FROM latent l WHERE l.id = t.latent_id)),"
        "       (SELECT count(*) FROM latent l"
        "        WHERE NOT EXISTS (SELECT FROM sae s WHERE s.id = l.sae_id))"
    )[0]
    return int(row[0]), int(row[1])


def test_a_job_rewrites_only_its_family_from_its_child_level(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(12, 36, 108), n_tokens=6000, seed=7))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "A")
        queries.create_family(conn, "B")
    for family in ("A", "B"):
        for level in (0, 1, 2):
            pipeline.ingest(family, fam.write(tmp_path / family, level))
    pipeline.drain()
    # Rows of other families and of levels above the change keep their physical place.
    where = "ctid, node FROM tree_nodes WHERE node LIKE :p"
    untouched = {p: pipeline.sql(f"SELECT {where}", p=p) for p in ("B/%", "A/1/%")}
    moved = pipeline.sql(f"SELECT {where}", p="A/3/%")
    with pipeline.engine.begin() as conn:
        (sae_id,) = conn.execute(sa.text("SELECT id FROM sae WHERE name = 'A/3'")).one()
        assert forest.update_from_sae(conn, sae_id) == 1
    assert {p: pipeline.sql(f"SELECT {where}", p=p) for p in untouched} == untouched
    assert pipeline.sql(f"SELECT {where}", p="A/3/%") != moved
    _check(pipeline)


def test_a_forest_update_a_dead_worker_left_is_caught_up(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(12, 36), n_tokens=6000, seed=8))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "A")
    for level in (0, 1):
        pipeline.ingest("A", fam.write(tmp_path, level))
    # A worker publishes the job's edges, then dies before its forest update.
    with pipeline.engine.begin() as conn:
        claim = jobs.claim(conn, "doomed", 60)
    assert claim is not None
    outcome = edges.run(
        pipeline.engine, pipeline.config, store.Store.under(pipeline.config.home), claim
    )
    assert outcome.n_edges > 0
    assert pipeline.sql("SELECT state, forest_at FROM job")[0] == ("done", None)
    assert pipeline.sql("SELECT count(*) FROM tree_edges")[0][0] == 0  # not yet
    assert pipeline.drain() == []  # no job to run; the forest is caught up first
    assert pipeline.sql("SELECT forest_at IS NOT NULL FROM job")[0][0]
    assert _check(pipeline) > 0
