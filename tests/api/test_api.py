"""The JSON API over a real PostgreSQL: every route against SQL, pagination, errors, read-only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.db import engine as db_engine
from tests.conftest import Planted, read_only_app


@pytest.fixture(scope="module")
def client(planted_family: Planted) -> Iterator[TestClient]:
    """The app on a read-only engine with a statement timeout, as `serve` builds it."""
    with (
        read_only_app(planted_family.url, planted_family.config) as app,
        TestClient(app) as test_client,
    ):
        yield test_client


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    return dict(body)


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"ok", "error"} and body["ok"] is False
    assert "\n" not in body["error"]
    return str(body["error"])


def test_families_list_saes_by_level(client: TestClient, planted_family: Planted) -> None:
    (family,) = ok(client.get("/api/families"))["families"]
    assert family["name"] == "P" and family["n_tokens"] == 8000
    assert [(s["label"], s["d_sae"], s["level"]) for s in family["saes"]] == [
        ("P/1", 16, 1),
        ("P/3", 48, 2),
        ("P/2", 144, 3),
    ]
    assert all(s["state"] == "ready" and s["n_latents"] == s["d_sae"] for s in family["saes"])


def test_latent_card_lists_every_stored_parent_and_child(
    client: TestClient, planted_family: Planted
) -> None:
    label = "P/3/5"
    card = ok(client.get(f"/api/latents/{label}", params={"limit": 1000}))
    stats = planted_family.sql(
        "SELECT max_act, n_active, frequency FROM latent WHERE label = :l", l=label
    )
    assert (card["max_act"], card["n_active"], card["frequency"]) == pytest.approx(tuple(stats[0]))
    assert (card["sae"], card["level"], card["idx"]) == ("P/3", 2, 5)
    for side, mine, theirs in (("parents", "child", "parent"), ("children", "parent", "child")):
        want = planted_family.sql(
            f"SELECT {theirs}, score, masked_cos, masked_cos_parent, mcs, max_ratio, n_coactive,"
            f" adjacent FROM latent_edges WHERE {mine} = :l",
            l=label,
        )
        got = card[side]
        assert {r["label"] for r in got} == {w[0] for w in want}
        by_label = {w[0]: w for w in want}
        for row in got:
            w = by_label[row["label"]]
            parts = ("score", "masked_cos", "masked_cos_parent", "mcs", "max_ratio")
            assert [row[p] for p in parts] == pytest.approx(list(w[1:6]))
            assert row["mcs"] == pytest.approx(max(row["masked_cos"], row["masked_cos_parent"]))
            assert row["n_coactive"] == w[6] and row["adjacent"] == w[7]
        assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    assert any(r["qualifies"] for r in card["parents"])
    # The forest place agrees with the materialized views.
    root, depth = planted_family.sql("SELECT root, depth FROM tree_nodes WHERE node = :l", l=label)[
        0
    ]
    assert card["forest"]["root"] == root and card["forest"]["depth"] == depth
    assert len(card["contexts"]) == 10 and card["contexts"][0]["value"] == pytest.approx(
        card["max_act"]
    )


def test_labels_may_be_url_encoded(client: TestClient) -> None:
    plain = ok(client.get("/api/latents/P/1/2"))
    encoded = ok(client.get("/api/latents/P%2F1%2F2"))
    assert plain == encoded
    assert ok(client.get("/api/trees/P%2F1%2F2")) == ok(client.get("/api/trees/P/1/2"))


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from _walk(child)


@pytest.mark.parametrize("threshold", [0.6, 0.9, 1.5])
def test_trees_nested_and_flat_match_latent_tree(
    client: TestClient, planted_family: Planted, threshold: float
) -> None:
    want = planted_family.sql(
        "SELECT node, parent, depth, other_parents FROM latent_tree('P/1/3', CAST(:t AS real))",
        t=threshold,
    )
    flat = ok(client.get("/api/trees/P/1/3", params={"threshold": threshold, "shape": "flat"}))
    assert flat["root"] is None and flat["threshold"] == threshold
    got = {(n["node"], n["parent"], n["depth"], tuple(n["other_parents"])) for n in flat["nodes"]}
    assert got == {(r[0], r[1], r[2], tuple(r[3])) for r in want}
    nested = ok(client.get("/api/trees/P/1/3", params={"threshold": threshold}))
    assert nested["nodes"] is None
    walked = list(_walk(nested["root"]))
    assert {n["node"] for n in walked} == {r[0] for r in want}
    for node in walked:
        assert all(child["parent"] == node["node"] for child in node["children"])
    assert len(flat["nodes"]) >= (2 if threshold < 1 else 1)


def test_a_higher_threshold_prunes_the_tree(client: TestClient) -> None:
    sizes = [
        len(ok(client.get("/api/trees/P/1/3", params={"threshold": t, "shape": "flat"}))["nodes"])
        for t in (0.2, 0.6, 0.99, 5)
    ]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1 and sizes[1] > 1


def test_a_large_tree_is_capped_with_its_size(client: TestClient) -> None:
    full = ok(client.get("/api/trees/P/1/3", params={"threshold": 0.2, "shape": "flat"}))
    n = len(full["nodes"])
    assert n > 3 and full["n_nodes"] == n and full["left_out"] == 0
    capped = ok(
        client.get("/api/trees/P/1/3", params={"threshold": 0.2, "shape": "flat", "max_nodes": 3})
    )
    assert capped["nodes"] == full["nodes"][:3] and (capped["n_nodes"], capped["left_out"]) == (
        n,
        n - 3,
    )
    nested = ok(client.get("/api/trees/P/1/3", params={"threshold": 0.2, "max_nodes": 3}))
    assert len(list(_walk(nested["root"]))) == 3
    dag = ok(client.get("/api/dags/P/1/3", params={"threshold": 0.2, "max_nodes": 3}))
    shown = {node["id"] for node in dag["nodes"]}
    assert len(shown) == 3 and dag["left_out"] == n - 3
    assert all(link["source"] in shown and link["target"] in shown for link in dag["links"])
    too_many = client.get("/api/trees/P/1/3", params={"max_nodes": 0})
    assert too_many.status_code == 400 and "max_nodes" in too_many.json()["error"]


def test_family_summary_route(client: TestClient, planted_family: Planted) -> None:
    body = ok(client.get("/api/families/P/summary", params={"threshold": 0.7}))
    want = planted_family.sql("SELECT parent_sae, split, merge, new FROM family_summary('P', 0.7)")
    assert [(r["parent_sae"], r["split"], r["merge"], r["new"]) for r in body["levels"]] == [
        tuple(r) for r in want
    ]
    assert body["threshold"] == 0.7 and body["levels"][0]["largest_splits"]
    missing = client.get("/api/families/Nope/summary")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown family 'Nope'"
    bad = client.get("/api/families/a b/summary")
    assert bad.status_code == 400 and "name" in bad.json()["error"]


def test_tree_contexts_on_request(client: TestClient) -> None:
    none = ok(client.get("/api/trees/P/1/3", params={"shape": "flat"}))
    two = ok(client.get("/api/trees/P/1/3", params={"shape": "flat", "contexts": 2}))
    assert all(n["contexts"] == [] for n in none["nodes"])
    assert all(len(n["contexts"]) == 2 for n in two["nodes"])


def test_dag_links_are_the_qualifying_edges_between_reached_nodes(
    client: TestClient, planted_family: Planted
) -> None:
    found = {}
    for root in (f"P/1/{i}" for i in range(16)):
        dag = ok(client.get(f"/api/dags/{root}"))
        ids = {n["id"] for n in dag["nodes"]}
        want = planted_family.sql(
            "SELECT parent, child, score FROM latent_edges WHERE adjacent AND score > 0.6"
            " AND parent = ANY(:ids) AND child = ANY(:ids)",
            ids=list(ids),
        )
        got = {(link["source"], link["target"]): link for link in dag["links"]}
        assert set(got) == {(p, c) for p, c, _s in want}
        for p, c, s in want:
            assert got[(p, c)]["weight"] == pytest.approx(s)
        best = [link["target"] for link in dag["links"] if link["best"]]
        assert sorted(best) == sorted(ids - {root})
        found[root] = sum(not link["best"] for link in dag["links"])
    # The planted family merges siblings: some rooted DAG has a node with two reached parents.
    assert sum(found.values()) > 0


def test_edges_pages_walk_every_edge_once_in_order(
    client: TestClient, planted_family: Planted
) -> None:
    want = planted_family.sql("SELECT parent, child FROM latent_edges")
    seen: list[tuple[str, str]] = []
    after = None
    pages = 0
    while True:
        params: dict[str, Any] = {"family": "P", "limit": 97}
        if after is not None:
            params["after"] = after
        page = ok(client.get("/api/edges", params=params))
        seen += [(r["parent"], r["child"]) for r in page["rows"]]
        pages += 1
        after = page["next"]
        if after is None:
            assert len(page["rows"]) <= 97
            break
        assert len(page["rows"]) == 97
    assert len(seen) == len(set(seen)) == len(want) and set(seen) == set(want)
    assert pages == -(-len(want) // 97)


def test_edge_filters(client: TestClient, planted_family: Planted) -> None:
    rows = ok(
        client.get(
            "/api/edges",
            params={"parent_sae": "P/3", "child_sae": "P/2", "min_score": 0.9, "limit": 10_000},
        )
    )["rows"]
    want = planted_family.sql(
        "SELECT count(*) FROM latent_edges WHERE parent LIKE 'P/3/%' AND child LIKE 'P/2/%'"
        " AND score >= CAST(0.9 AS real)",
    )[0][0]
    assert len(rows) == want > 0
    assert all(r["parent_sae"] == "P/3" and r["child_sae"] == "P/2" and r["adjacent"] for r in rows)
    assert all(r["score"] >= 0.9 - 1e-6 for r in rows)
    skipped = ok(client.get("/api/edges", params={"parent_sae": "P/1", "child_sae": "P/2"}))
    assert skipped["rows"] and not any(r["adjacent"] for r in skipped["rows"])


def test_search_by_label_prefix(client: TestClient) -> None:
    rows = ok(client.get("/api/search", params={"q": "P/3/1", "limit": 50}))["rows"]
    assert [r["label"] for r in rows] == ["P/3/1"] + [f"P/3/{i}" for i in range(10, 20)]
    assert all(r["root"] is not None for r in rows)
    assert ok(client.get("/api/search", params={"q": "P/3/1_"}))["rows"] == []
    assert ok(client.get("/api/search", params={"q": "%"}))["rows"] == []


@pytest.mark.parametrize(
    ("path", "status", "pattern"),
    [
        ("/api/latents/P/9/1", 404, r"unknown label 'P/9/1'"),
        ("/api/latents/nonsense", 400, r"label 'nonsense': expected FAMILY/SAE/INDEX"),
        ("/api/trees/P/1/3?threshold=-1", 400, r"threshold: .*greater than or equal to 0"),
        ("/api/trees/P/1/3?threshold=nan", 400, r"threshold"),
        ("/api/trees/P/1/3?threshold=inf", 400, r"threshold"),
        ("/api/trees/P/1/3?shape=round", 400, r"shape"),
        ("/api/dags/P/1/999999", 404, r"unknown label"),
        ("/api/edges?after=12", 400, r"after '12': expected the `next` token"),
        ("/api/edges?after=99999999999-1", 400, r"after"),
        ("/api/search?family=-x", 400, r"family '-x'"),
        ("/api/edges?limit=0", 400, r"limit"),
        ("/api/edges?family=Q", 404, r"unknown family 'Q'"),
        ("/api/edges?family=a%2Fb", 400, r"family 'a/b': expected a family name"),
        ("/api/edges?child_sae=P", 400, r"sae 'P': expected FAMILY/SAE"),
        ("/api/edges?child_sae=P/7", 404, r"unknown sae 'P/7'"),
        ("/api/search?q=%00", 400, r"NUL"),
        ("/api/nowhere", 404, r"GET /api/nowhere"),
    ],
)
def test_bad_requests_get_one_error_shape(
    client: TestClient, path: str, status: int, pattern: str
) -> None:
    assert re.search(pattern, error(client.get(path), status))


def test_a_post_is_refused_with_the_error_shape(client: TestClient) -> None:
    error(client.post("/api/families"), 405)


def test_the_api_engine_is_read_only_and_times_out(planted_family: Planted) -> None:
    engine = db_engine.create(planted_family.url, read_only_timeout=0.2)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.InternalError, match="read-only"):
            conn.execute(sa.text("DELETE FROM edge"))
        with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="timeout"):
            conn.execute(sa.text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()
    assert planted_family.sql("SELECT count(*) FROM edge")[0][0] > 0


def test_a_timed_out_query_is_a_503(planted_family: Planted) -> None:
    import psycopg

    # The edge table held by another transaction: the edge query waits until its statement
    # timeout (0.3 s) cancels it, every time (a tiny timeout would also cancel set-up queries).
    with (
        psycopg.connect(planted_family.url) as holder,
        read_only_app(planted_family.url, planted_family.config, 0.3) as app,
        TestClient(app) as slow,
    ):
        holder.execute("LOCK TABLE edge IN ACCESS EXCLUSIVE MODE")
        response = slow.get("/api/edges", params={"limit": 10})
        holder.rollback()
        assert re.search("statement timeout", error(response, 503))


def test_viewer_page_and_its_files_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith(("/static/", "data:")) for a in assets)
    external = re.compile(r"""(src=|href=|url\(|fetch\(|import\s)\s*["']?(https?:)?//""")
    for asset in assets:
        if asset.startswith("/static/"):
            response = client.get(asset)
            assert response.status_code == 200 and not external.search(response.text)


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/api/families",
        "/api/latents/{label}",
        "/api/trees/{label}",
        "/api/dags/{label}",
        "/api/edges",
        "/api/search",
    }
    assert spec["paths"]["/api/edges"]["get"]["responses"]["400"]


def test_head_answers_as_get_without_a_body(client: TestClient) -> None:
    get, head = client.get("/api/families"), client.head("/api/families")
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["etag"] == get.headers["etag"]
    assert client.head("/api/trees/P/9/9").status_code == 404
