"""Exports read back equal to the database, in every format, with their parameters recorded."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from service import errors, exports
from service.db import browse, queries
from tests.conftest import Pipeline, Planted, cli_env, run_cli
from tests.jobs.test_faults import random_topk


def read_back(path: Path, fmt: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, rows) of an export file, whatever its format."""
    if fmt == "jsonl":
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return lines[0]["latent_trees_export"], lines[1:]
    if fmt == "csv":
        text = path.read_text()
        comments = [line[2:] for line in text.splitlines() if line.startswith("# ")]
        meta = {k: json.loads(v) for k, v in (c.split(": ", 1) for c in comments)}
        body = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
        return meta, list(csv.DictReader(io.StringIO(body)))
    table = pq.read_table(path)
    return json.loads(table.schema.metadata[b"latent_trees_export"]), table.to_pylist()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_edges_export_equals_latent_edges(
    planted_family: Planted, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exports, "BATCH", 100)  # many batches, many Parquet row groups
    path = tmp_path / f"edges.{fmt}"
    written = exports.export(
        planted_family.engine, exports.Request("edges", str(path), family="P", threshold=0.7)
    )
    meta, rows = read_back(path, fmt)
    want = planted_family.sql(
        "SELECT e.parent, e.child, e.score, e.adjacent AND e.score > 0.7 AND p.n_active >= 10"
        " AND c.n_active >= 10 FROM latent_edges e JOIN latent p ON p.label = e.parent"
        " JOIN latent c ON c.label = e.child",
    )
    assert written.n_rows == len(rows) == len(want) > 300
    by_pair = {(r["parent"], r["child"]): r for r in rows}
    for parent, child, score, qualifies in want:
        row = by_pair[(parent, child)]
        assert float(row["score"]) == pytest.approx(score, rel=1e-6)
        assert str(row["qualifies"]) in (str(qualifies), str(qualifies).lower())
    assert meta["kind"] == "edges" and meta["threshold"] == 0.7 and meta["min_active_tokens"] == 10
    assert meta["store_floor"] == [0.4] and meta["family"] == "P"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_latents_and_forest_exports(planted_family: Planted, tmp_path: Path, fmt: str) -> None:
    latents = tmp_path / f"latents.{fmt}"
    exports.export(planted_family.engine, exports.Request("latents", str(latents)))
    _meta, rows = read_back(latents, fmt)
    assert sorted(r["label"] for r in rows) == sorted(
        r[0] for r in planted_family.sql("SELECT label FROM latent")
    )
    forest = tmp_path / f"trees.{fmt}"
    exports.export(planted_family.engine, exports.Request("trees", str(forest), family="P"))
    meta, rows = read_back(forest, fmt)
    want = {tuple(r) for r in planted_family.sql("SELECT root, node, depth FROM tree_nodes")}
    assert {(r["root"], r["node"], int(r["depth"])) for r in rows} == want
    assert meta["forest_threshold"] == 0.6
    with_parent = [r for r in rows if r["parent"] not in (None, "")]
    assert len(with_parent) == planted_family.sql("SELECT count(*) FROM tree_edges")[0][0]


def test_parquet_through_copy_equals_the_row_by_row_writer(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # Edges and latents go to Parquet through COPY's CSV; the same rows through the cursor
    # and the row-by-row writer must read back equal, text that CSV quotes or Arrow might take
    # for NULL included (and real NULLs: latents without explanation, edges without dec_cos).
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "X")
    for i, d in enumerate((32, 96)):
        pipeline.ingest("X", random_topk(tmp_path / f"x{d}.npz", 2000, d, 8, i))
    pipeline.drain()
    texts = ['a, "quoted" word', "two\nlines", "", "ünïcode ✓", "NULL", "NaN", "t"]
    with pipeline.engine.begin() as conn:
        for i, text in enumerate(texts):
            conn.execute(
                sa.text(
                    "INSERT INTO explanation (latent_id, rank, description)"
                    " SELECT id, 1, :text FROM latent WHERE label = :label"
                ),
                {"text": text, "label": f"X/1/{i}"},
            )
    for kind in ("edges", "latents"):
        request = exports.Request(kind, str(tmp_path / f"{kind}.parquet"))
        exports.export(pipeline.engine, request)
        got = pq.read_table(request.output)
        with pipeline.engine.connect() as conn:
            query, params = exports._query(conn, request)
            names = [name for name, _ in exports.COLUMNS[kind]]
            rows = io.BytesIO()
            exports._write_parquet(rows, kind, {}, browse.stream(conn, query, params, names))
        want = pq.read_table(io.BytesIO(rows.getvalue()))
        assert got.num_rows == want.num_rows > 0
        assert got.equals(want), kind
    described = pq.read_table(tmp_path / "latents.parquet").column("explanation").to_pylist()
    assert set(texts) < set(described) and None in described


def test_edge_filters_apply_to_exports(planted_family: Planted, tmp_path: Path) -> None:
    path = tmp_path / "some.jsonl"
    exports.export(
        planted_family.engine,
        exports.Request("edges", str(path), parent_sae="P/3", child_sae="P/2", min_score=0.9),
    )
    meta, rows = read_back(path, "jsonl")
    assert rows and all(r["parent_sae"] == "P/3" and r["score"] >= 0.9 - 1e-6 for r in rows)
    assert meta["filters"] == {"parent_sae": "P/3", "child_sae": "P/2", "min_score": 0.9}


def test_bad_exports_leave_no_file(planted_family: Planted, tmp_path: Path) -> None:
    target = tmp_path / "edges.csv"
    with pytest.raises(errors.UnknownFamily, match="unknown family 'Q'"):
        exports.export(planted_family.engine, exports.Request("edges", str(target), family="Q"))
    with pytest.raises(errors.NotFound, match="unknown sae 'P/9'"):
        exports.export(
            planted_family.engine, exports.Request("edges", str(target), parent_sae="P/9")
        )
    with pytest.raises(errors.BadInput, match=r"expected a suffix \.jsonl, \.csv or \.parquet"):
        exports.export(planted_family.engine, exports.Request("edges", str(tmp_path / "x.txt")))
    with pytest.raises(errors.BadInput, match="Parquet needs a file"):
        exports.format_of(exports.Request("edges", "-", format="parquet"))
    assert list(tmp_path.iterdir()) == []


def test_cli_export_to_stdout(planted_family: Planted, tmp_path: Path) -> None:
    env = cli_env(tmp_path, database_url=planted_family.url)
    proc = run_cli("export", "trees", "--output", "-", "--family", "P", env=env)
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0])["latent_trees_export"]["kind"] == "trees"
    assert len(lines) - 1 == planted_family.sql("SELECT count(*) FROM tree_nodes")[0][0]
    bad = run_cli("export", "edges", "-o", str(tmp_path / "e.xlsx"), env=env, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("expected a suffix .jsonl, .csv or .parquet, or --format")
