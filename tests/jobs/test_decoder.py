"""Decoder cosines (SPEC.md section 2) on saes ingested from checkpoints, against numpy: every
stored edge's dec_cos, each child's max_dec_cos, each child's 3 best parents by dec_cos stored
(when they co-activate, with exact score parts), and none of it without decoder weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service import families, ingest
from service.compute import chunks, decoder, engine, stats
from service.sources import checkpoints
from tests.conftest import Pipeline, run_cli
from tests.jobs.test_checkpoints import _inputs, _topk_sae
from tests.reference import all_pairs


def _unit(folder: Path) -> np.ndarray:
    w = checkpoints.load(folder).W_dec.double().numpy()
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def _acts(folder: Path, inputs: Path) -> np.ndarray:
    x = torch.from_numpy(np.load(inputs)["inputs"]).double()
    return checkpoints.load(folder).to(torch.device("cpu"), torch.float64).encode(x).numpy()


def test_decoder_cosines_equal_numpy(pipeline: Pipeline, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    families.create_from_inputs(pipeline.engine, pipeline.config, "S", inputs, "float32")
    folders = [_topk_sae(tmp_path / f"sae{d}", d, seed=d) for d in (24, 72)]
    for folder in folders:
        ingest.ingest_checkpoint(pipeline.engine, pipeline.config, "S", folder)
    pipeline.drain()
    cos = _unit(folders[0]) @ _unit(folders[1]).T  # [parent, child]
    rows = pipeline.sql(
        "SELECT p.idx, c.idx, e.dec_cos, e.score, e.masked_cos, e.n_coactive FROM edge e"
        " JOIN latent p ON p.id = e.parent_id JOIN latent c ON c.id = e.child_id"
    )
    assert rows and all(r[2] is not None for r in rows)
    got = np.array([r[2] for r in rows])
    np.testing.assert_allclose(got, [cos[r[0], r[1]] for r in rows], atol=1e-6)
    stored = {(r[0], r[1]) for r in rows}
    # Each child's 3 best parents by dec_cos are stored when they co-activate, scored exactly.
    pairs = all_pairs(_acts(folders[0], inputs), _acts(folders[1], inputs))
    added = 0
    for c in range(72):
        for p in np.argsort(-cos[:, c], kind="stable")[:3]:
            assert ((int(p), c) in stored) == ((int(p), c) in pairs)
            added += (int(p), c) in pairs
    assert added > 0
    for p, c, _d, score, masked_cos, n in rows:
        want = pairs[(p, c)]
        assert (score, masked_cos, n) == pytest.approx(
            (want.score, want.masked_cos, want.n_coactive), rel=1e-5
        )
    levels = pipeline.sql(
        "SELECT s.name, l.idx, l.max_dec_cos FROM latent l JOIN sae s ON s.id = l.sae_id"
    )
    assert all(m is None for name, _i, m in levels if name == "S/1")
    child = sorted((i, m) for name, i, m in levels if name == "S/2")
    np.testing.assert_allclose([m for _i, m in child], cos.max(axis=0), atol=1e-6)
    # Shown in latent_edges, the card, the tree JSON and the edge export.
    assert pipeline.sql("SELECT count(*) FROM latent_edges WHERE dec_cos IS NULL")[0][0] == 0
    edges_csv = run_cli("export", "edges", "--format", "csv", "--output", "-", env=pipeline.env())
    assert "dec_cos" in edges_csv.stdout


def test_no_decoder_weights_no_decoder_cosines(pipeline: Pipeline, tmp_path: Path) -> None:
    from service.db import queries
    from tests.jobs.test_faults import random_topk

    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "A")
    for i, d in enumerate((16, 48)):
        pipeline.ingest("A", random_topk(tmp_path / f"a{d}.npz", 2000, d, 4, i))
    pipeline.drain()
    assert pipeline.sql("SELECT count(*), count(dec_cos) FROM edge")[0] == (
        pipeline.sql("SELECT count(*) FROM edge")[0][0],
        0,
    )
    assert pipeline.sql("SELECT count(max_dec_cos) FROM latent")[0][0] == 0


def test_listed_pairs_are_scored_exactly() -> None:
    rng = np.random.default_rng(1)
    parent = rng.uniform(0.5, 2, (500, 12)) * (rng.random((500, 12)) < 0.2)
    child = rng.uniform(0.5, 2, (500, 30)) * (rng.random((500, 30)) < 0.1)
    p_src = chunks.DenseSource(torch.from_numpy(parent.astype(np.float32)))
    c_src = chunks.DenseSource(torch.from_numpy(child.astype(np.float32)))
    p_stats, c_stats = stats.latent_stats(p_src), stats.latent_stats(c_src)
    pp = rng.integers(0, 12, 200)
    cc = rng.integers(0, 30, 200)
    got = engine.score_listed(p_src, c_src, pp, cc, p_stats, c_stats)
    want = all_pairs(parent.astype(np.float32), child.astype(np.float32))
    listed = list(zip(pp.tolist(), cc.tolist(), strict=True))
    assert [(int(p), int(c)) for p, c in zip(got.parent, got.child, strict=True)] == [
        pair for pair in listed if pair in want
    ]
    for i in range(len(got)):
        ref = want[(int(got.parent[i]), int(got.child[i]))]
        assert float(got.score[i]) == pytest.approx(ref.score, rel=1e-6)
        assert float(got.masked_cos_parent[i]) == pytest.approx(ref.masked_cos_parent, rel=1e-6)
        assert int(got.n_coactive[i]) == ref.n_coactive


def test_blocked_cosines_equal_one_matmul() -> None:
    rng = np.random.default_rng(2)
    p, c = rng.normal(size=(50, 8)), rng.normal(size=(130, 8))
    pu, cu = decoder.unit_rows(torch.from_numpy(p)), decoder.unit_rows(torch.from_numpy(c))
    cos = pu.astype(np.float64) @ cu.astype(np.float64).T
    ep, ec = rng.integers(0, 50, 400), rng.integers(0, 130, 400)
    for block_bytes in (4 * 50 * 7, 1 << 20):  # 7 child rows per block, and all at once
        found = decoder.cosines(pu, cu, ep, ec, block_bytes=block_bytes)
        np.testing.assert_allclose(found.of_edges, cos[ep, ec], atol=1e-6)
        np.testing.assert_allclose(found.max_dec_cos, cos.max(axis=0), atol=1e-6)
        assert (found.top_parent == np.argsort(-cos.T, axis=1, kind="stable")[:, :3]).all()
