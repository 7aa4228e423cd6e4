"""Families with model inputs and saes ingested from checkpoints, against a real PostgreSQL:
the stored activations and top activations equal a brute-force encode, and every bad input
leaves the database and the store exactly as they were."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from service import errors, families, ingest
from service.sources import checkpoints, store
from service.training import save_saelens
from tests.conftest import Pipeline, run_cli, table_snapshot

D_IN, T = 16, 3000


def _inputs(tmp_path: Path, n: int = T, d_in: int = D_IN, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path = tmp_path / f"inputs-{n}-{d_in}-{seed}.npz"
    np.savez(
        path,
        inputs=rng.normal(size=(n, d_in)).astype(np.float32),
        token_ids=rng.integers(0, 500, n),
    )
    return path


def _topk_sae(folder: Path, d_sae: int, k: int = 4, d_in: int = D_IN, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    weights = {
        "W_enc": w_dec.T.clone(),
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1,
        "W_dec": w_dec / w_dec.norm(dim=-1, keepdim=True),
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
    }
    save_saelens(folder, weights, k, {"hook_name": "test"})
    return folder


def _store_files(home: Path) -> set[str]:
    root = home / "store"
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def test_checkpoint_ingest_equals_brute_force(pipeline: Pipeline, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    created = families.create_from_inputs(pipeline.engine, pipeline.config, "S", inputs, "float32")
    assert created.n_tokens == T and created.d_in == D_IN
    folder = _topk_sae(tmp_path / "sae", 64)
    added = ingest.ingest_checkpoint(pipeline.engine, pipeline.config, "S", folder)
    assert (added.name, added.d_sae, added.n_tokens) == ("S/1", 64, T)
    assert added.source["format"] == "saelens" and added.source["fvu"] > 0
    assert added.source["l0"] == pytest.approx(4, abs=0.01)

    x = torch.from_numpy(np.load(inputs)["inputs"]).double()
    encoder = checkpoints.load(folder)
    acts = encoder.to(torch.device("cpu"), torch.float64).encode(x).numpy()
    rows = pipeline.sql("SELECT idx, max_act, n_active FROM latent ORDER BY idx")
    np.testing.assert_allclose([r.max_act for r in rows], acts.max(axis=0), rtol=1e-5)
    assert [r.n_active for r in rows] == list((acts > 0).sum(axis=0))
    top = pipeline.sql(
        "SELECT l.idx, t.rank, t.position, t.value FROM top_activation t"
        " JOIN latent l ON l.id = t.latent_id ORDER BY l.idx, t.rank"
    )
    got: dict[int, list[int]] = {}
    for row in top:
        got.setdefault(row.idx, []).append(row.position)
    for j in range(64):
        col = acts[:, j]
        want = sorted(np.nonzero(col)[0], key=lambda t: (-col[t], t))[:10]
        assert got.get(j, []) == [int(t) for t in want]
    # The family's fingerprint is the sha256 of its token ids (little-endian int64).
    fingerprint = pipeline.sql("SELECT token_fingerprint FROM family")[0][0]
    ids = np.asarray(
        store.Store.under(pipeline.config.home)
        .open_inputs(pipeline.sql("SELECT inputs ->> 'path' FROM family")[0][0])
        .token_ids
    )
    assert fingerprint == hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()


def test_contexts_come_from_the_token_texts(pipeline: Pipeline) -> None:
    with pipeline.engine.begin() as conn:
        from service.db import queries

        family_id = queries.create_family(conn, "C", {"kind": "test"}, 6)
        ids = np.array([5, 6, 7, 8, 9, 10])
        queries.add_tokens(conn, family_id, ids, np.array([0, 0, 0, 1, 1, 1]), list("abcdef"))
        for statement in (
            "INSERT INTO sae (family_id, name, d_sae) VALUES (:f, 'C/1', 1)",
            "INSERT INTO latent (sae_id, idx, label, max_act, n_active, frequency, sum_sq)"
            " SELECT id, 0, 'C/1/0', 2, 2, 0.3, 5 FROM sae",
            "INSERT INTO top_activation SELECT id, 1, 2, 2.0 FROM latent",
            "INSERT INTO top_activation SELECT id, 2, 4, 1.0 FROM latent",
        ):
            conn.execute(sa.text(statement), {"f": family_id})
        rows = conn.execute(sa.text("SELECT * FROM latent_contexts('C/1/0', 1)")).all()
    # The window stops at the sequence boundary (positions 0-2 | 3-5).
    assert [(r.rank, r.context_before, r.token, r.context_after) for r in rows] == [
        (1, "b", "c", None),
        (2, "d", "e", "f"),
    ]


def test_cli_family_inputs_ingest_sae_and_tree_json(pipeline: Pipeline, tmp_path: Path) -> None:
    env = pipeline.env()
    inputs = _inputs(tmp_path)
    proc = run_cli("family", "create", "S", "--inputs", str(inputs), "--dtype", "bfloat16", env=env)
    assert f"{T:,} model inputs of d_in {D_IN}" in proc.stdout
    for width in (32, 128):
        proc = run_cli(
            "ingest", "S", "--sae", str(_topk_sae(tmp_path / str(width), width)), env=env
        )
        assert "FVU" in proc.stdout
    run_cli("worker", "--once", env=env)
    proc = run_cli("tree", "S/1/0", "--format", "json", "--threshold", "0", env=env)
    tree = json.loads(proc.stdout)
    assert tree["node"] == "S/1/0" and len(tree["contexts"]) == 10
    assert tree["contexts"][0]["token"] is None  # no token texts: positions and values only
    assert pipeline.sql("SELECT inputs->>'dtype' FROM family")[0][0] == "bfloat16"


def _fails(pipeline: Pipeline, args: list[str], *needles: str) -> None:
    env = pipeline.env()
    with pipeline.engine.connect() as conn:
        before = table_snapshot(conn)
    files = _store_files(pipeline.config.home)
    proc = run_cli(*args, env=env, check=False)
    assert proc.returncode == 1, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latent-trees: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    with pipeline.engine.connect() as conn:
        assert table_snapshot(conn) == before
    assert _store_files(pipeline.config.home) == files


def test_bad_inputs_and_checkpoints_change_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    families.create_from_inputs(pipeline.engine, pipeline.config, "S", inputs, "float32")
    families.create(pipeline.engine, "A")
    ok = str(_topk_sae(tmp_path / "ok", 32))
    ingest.ingest_checkpoint(pipeline.engine, pipeline.config, "S", Path(ok))

    _fails(
        pipeline,
        ["ingest", "S", "--sae", str(_topk_sae(tmp_path / "d", 48, d_in=8))],
        "d_in: expected 16",
        "got 8",
    )
    _fails(pipeline, ["ingest", "A", "--sae", ok], "family 'A' has no model inputs")
    _fails(pipeline, ["ingest", "S", "--sae", ok], "d_sae 32 is taken")
    _fails(pipeline, ["ingest", "S", "--sae", ok, "--activations", str(inputs)], "exactly one of")
    _fails(pipeline, ["ingest", "Z", "--sae", ok], "unknown family 'Z'")
    _fails(pipeline, ["ingest", "S", "--sae", str(tmp_path)], "holds saes for several sites")
    (tmp_path / "empty").mkdir()
    _fails(
        pipeline, ["ingest", "S", "--sae", str(tmp_path / "empty")], "expected an sae checkpoint"
    )
    _fails(pipeline, ["family", "create", "S", "--inputs", str(inputs)], "already exists")
    nan = tmp_path / "nan.npy"
    bad = np.ones((10, 4), np.float32)
    bad[3, 1] = np.nan
    np.save(nan, bad)
    _fails(pipeline, ["family", "create", "N", "--inputs", str(nan)], "expected finite values")
    ints = tmp_path / "ints.npy"
    np.save(ints, np.ones((10, 4), np.int32))
    _fails(pipeline, ["family", "create", "N", "--inputs", str(ints)], "expected a float dtype")
    short = tmp_path / "short.npz"
    np.savez(short, inputs=np.ones((10, 4), np.float32), token_ids=np.arange(9))
    _fails(pipeline, ["family", "create", "N", "--inputs", str(short)], "'token_ids'")
    _fails(pipeline, ["family", "create", "N", "--model", "m", "--hook", "3"], "expected also")
    _fails(
        pipeline,
        [
            "family",
            "create",
            "N",
            "--model",
            str(tmp_path / "x.gguf"),
            "--hook",
            "blocks.3.mlp",
            "--corpus",
            str(nan),
            "--tokens",
            "10",
        ],
        "--hook 'blocks.3.mlp'",
    )
    _fails(
        pipeline,
        [
            "family",
            "create",
            "N",
            "--model",
            str(tmp_path / "x.gguf"),
            "--hook",
            "3",
            "--corpus",
            str(nan),
            "--tokens",
            "10",
        ],
        "no such GGUF file",
    )


def test_store_keeps_inputs_once_and_reads_them_back(tmp_path: Path) -> None:
    the_store = store.Store.under(tmp_path)
    x = torch.randn(100, 8)
    batch = store.InputsBatch(x, np.arange(100), np.repeat(np.arange(10), 10))
    first = the_store.place(the_store.write_inputs([batch], 8, "bfloat16", {1: "a"}, {"k": 1}))
    again = the_store.place(the_store.write_inputs([batch], 8, "bfloat16", {1: "a"}, {"k": 1}))
    assert first.path == again.path and the_store.entries() == [first.path]
    assert not any((the_store.root / "tmp").iterdir())
    source = the_store.open_inputs(first.path)
    back = torch.cat([b for _s, b in source.batches(33)])
    assert back.dtype == torch.bfloat16
    torch.testing.assert_close(back.float(), x.bfloat16().float())
    with pytest.raises(errors.BadInput, match="--dtype int8"):
        the_store.write_inputs([batch], 8, "int8", None, {})
