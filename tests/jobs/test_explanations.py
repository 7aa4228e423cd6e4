"""Neuronpedia explanations: imported from an export laid out as Neuronpedia's
(`explanations/batch-N.jsonl.gz`), shown in trees, cards, DAGs and exports; re-imports replace;
bad lines write nothing; trees open as Neuronpedia quick lists."""

from __future__ import annotations

import csv
import gzip
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from service import explanations
from service.db import browse, queries
from service.sources import planted
from tests.conftest import Pipeline, run_cli, table_snapshot

NP_ID = "gpt2-small/8-res-jb"


def write_export(folder: Path, batches: list[list[dict[str, Any]]]) -> Path:
    """An export as Neuronpedia lays it out: explanations/batch-N.jsonl.gz."""
    (folder / "explanations").mkdir(parents=True)
    for n, lines in enumerate(batches):
        with gzip.open(folder / "explanations" / f"batch-{n}.jsonl.gz", "wt") as f:
            for line in lines:
                f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return folder


def line(index: int, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "modelId": "gpt2-small",
        "layer": "8-res-jb",
        "index": str(index),
        "description": description,
        "typeName": "oai_token-act-pair",
        "explanationModelName": "gpt-4o-mini",
        "authorId": "clt9x",  # fields we do not read are ignored
        **extra,
    }


@pytest.fixture
def family(pipeline: Pipeline, tmp_path: Path) -> Pipeline:
    fam = planted.generate(planted.PlantedSpec(widths=(16, 48), n_tokens=8000, seed=6))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "P")
    for level in (0, 1):
        pipeline.ingest("P", fam.write(tmp_path / "files", level))
    pipeline.drain()
    run_cli("sae", "link", "P/1", "--neuronpedia", NP_ID, env=pipeline.env())
    return pipeline


def test_import_shows_explanations_everywhere(family: Pipeline, tmp_path: Path) -> None:
    export = write_export(
        tmp_path / "export",
        [
            [line(0, "the word 'cat'"), line(1, "numbers in lists")],
            [
                line(0, "cats and kittens", explanationModelName="claude"),
                line(15, "closing brackets"),
            ],
        ],
    )
    out = run_cli("explanations", "import", "P/1", str(export), env=family.env()).stdout
    assert out.strip() == "sae P/1: 4 explanations of 3 latents from 2 file(s)"
    cards = {}
    with family.engine.connect() as conn:
        for i in (0, 1, 2):
            cards[i] = browse.latent_card(conn, f"P/1/{i}", 0.6, 10)["explanations"]
        tree = queries.rooted_tree(conn, "P/1/0", 0.6, 10, 0).rows
        dag = browse.dag(conn, "P/1/0", 0.6, 10)
    assert [x["description"] for x in cards[0]] == ["the word 'cat'", "cats and kittens"]
    assert cards[0][1]["explanation_model_name"] == "claude"
    assert cards[0][0]["type_name"] == "oai_token-act-pair" and cards[2] == []
    assert tree[0]["explanation"] == "the word 'cat'" and len(tree) > 1
    assert all(row["explanation"] is None for row in tree[1:])  # P/2 has none
    assert dag["nodes"][0]["explanation"] == "the word 'cat'"
    text = run_cli("tree", "P/1/0", env=family.env()).stdout
    assert text.splitlines()[0].startswith("P/1/0  “the word 'cat'”")
    tree_json = json.loads(run_cli("tree", "P/1/0", "--format", "json", env=family.env()).stdout)
    assert tree_json["explanation"] == "the word 'cat'"
    for kind, key in (("latents", "label"), ("trees", "node")):
        text = run_cli("export", kind, "--format", "csv", "--output", "-", env=family.env()).stdout
        rows = csv.DictReader(x for x in text.splitlines() if not x.startswith("#"))
        exported = {row[key]: row["explanation"] for row in rows}
        assert exported["P/1/1"] == "numbers in lists" and exported["P/1/2"] == ""
    # Re-importing replaces: one explanation now, the others gone.
    again = write_export(tmp_path / "again", [[line(0, "felines")]])
    out = run_cli("explanations", "import", "P/1", str(again), env=family.env()).stdout
    assert "replacing 4" in out
    assert family.sql("SELECT description FROM explanation") == [("felines",)]


def test_trees_open_as_a_neuronpedia_quick_list(family: Pipeline) -> None:
    link = run_cli("tree", "P/1/0", "--format", "quick-list", env=family.env()).stdout.strip()
    query = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)
    assert link.startswith("https://www.neuronpedia.org/quick-list/?")
    assert query["name"] == ["latent-trees P/1/0"]
    # Only P/1 is linked: the root is listed, its children in P/2 are not.
    assert json.loads(query["features"][0]) == [
        {"modelId": "gpt2-small", "layer": "8-res-jb", "index": "0"}
    ]
    run_cli("sae", "link", "P/2", "--neuronpedia", "gpt2-small/9-res-jb", env=family.env())
    link = run_cli("tree", "P/1/0", "--format", "quick-list", env=family.env()).stdout.strip()
    features = json.loads(urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["features"][0])
    with family.engine.connect() as conn:
        nodes = [r["node"] for r in queries.rooted_tree(conn, "P/1/0", 0.6, 10, 0).rows]
    assert [f"P/{1 if f['layer'] == '8-res-jb' else 2}/{f['index']}" for f in features] == nodes


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (
            [line(0, "ok"), line(1, "x", modelId="gemma-2-2b")],
            r"batch-0.jsonl.gz:2: field 'modelId': expected 'gpt2-small'",
        ),
        (
            [line(0, "ok"), line(16, "x")],
            r"batch-0.jsonl.gz:2: field 'index': expected a latent index 0..15, got '16'",
        ),
        ([line(0, "ok"), line(-1, "x")], r"field 'index': expected a latent index 0..15, got '-1'"),
        ([line(0, "ok"), "{not json"], r"batch-0.jsonl.gz:2: not a JSON object"),
        (
            [line(0, "ok"), line(1, "")],
            r"batch-0.jsonl.gz:2: field 'description': expected a string",
        ),
        ([line(0, "ok"), line(1, "x", layer="9-res-jb")], r"field 'layer': expected '8-res-jb'"),
    ],
)
def test_a_bad_line_is_one_line_and_writes_nothing(
    family: Pipeline, tmp_path: Path, lines: list[Any], error: str
) -> None:
    import re

    run_cli(
        "explanations",
        "import",
        "P/1",
        str(write_export(tmp_path / "good", [[line(3, "kept")]])),
        env=family.env(),
    )
    with family.engine.connect() as conn:
        before = table_snapshot(conn)
    bad = run_cli(
        "explanations",
        "import",
        "P/1",
        str(write_export(tmp_path / "bad", [lines])),
        env=family.env(),
        check=False,
    )
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert re.search(error, bad.stderr), bad.stderr
    with family.engine.connect() as conn:
        assert table_snapshot(conn) == before


def test_unlinked_sae_truncated_file_and_missing_folder(family: Pipeline, tmp_path: Path) -> None:
    export = write_export(tmp_path / "e", [[line(0, "x")]])
    unlinked = run_cli("explanations", "import", "P/2", str(export), env=family.env(), check=False)
    assert unlinked.returncode == 1
    assert "sae P/2 is not linked to Neuronpedia: run `latent-trees sae link P/2" in unlinked.stderr
    data = (export / "explanations" / "batch-0.jsonl.gz").read_bytes()
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="unreadable or truncated"):
        explanations.import_(family.engine, "P/1", truncated)
    missing = run_cli(
        "explanations", "import", "P/1", str(tmp_path / "nope"), env=family.env(), check=False
    )
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    unknown = run_cli("explanations", "import", "P/9", str(export), env=family.env(), check=False)
    assert unknown.returncode == 1 and "unknown sae 'P/9'" in unknown.stderr
