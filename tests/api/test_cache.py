"""Responses kept while the data is unchanged: never stale after a commit; ETags and 304s."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.api import cache
from service.db import queries
from service.sources import planted
from tests.conftest import Pipeline, Planted, read_only_app


def test_a_new_width_changes_the_served_tree_at_once(pipeline: Pipeline, tmp_path: Path) -> None:
    fam = planted.generate(planted.PlantedSpec(widths=(16, 48, 144), n_tokens=8000, seed=5))
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "P")
    pipeline.ingest("P", fam.write(tmp_path, 0))
    pipeline.ingest("P", fam.write(tmp_path, 2))
    pipeline.drain()
    with read_only_app(pipeline.url, pipeline.config) as app, TestClient(app) as client:

        def depths() -> list[int]:
            body = client.get("/api/trees/P/1/0", params={"shape": "flat"}).json()
            return sorted({n["depth"] for n in body["nodes"]})

        assert depths() == [0, 1]
        assert depths() == [0, 1]  # served again, unchanged
        pipeline.ingest("P", fam.write(tmp_path, 1))  # inserted between the two
        assert depths() == [0]  # the old pair is no longer adjacent; no job has run yet
        pipeline.drain()
        assert depths() == [0, 1, 2]
        want = pipeline.sql("SELECT count(*) FROM latent_tree('P/1/0')")[0][0]
        got = client.get("/api/trees/P/1/0", params={"shape": "flat"}).json()["nodes"]
        assert len(got) == want


def test_etag_answers_if_none_match_until_the_data_changes(planted_family: Planted) -> None:
    with read_only_app(planted_family.url, planted_family.config) as app, TestClient(app) as client:
        first = client.get("/api/trees/P/1/2")
        tag = first.headers["etag"]
        assert client.get("/api/trees/P/1/2").headers["etag"] == tag
        again = client.get("/api/trees/P/1/2", headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""
        other = client.get("/api/trees/P/1/2", params={"threshold": 0.7})
        assert other.headers["etag"] != tag
        # Any commit, here one that changes nothing visible, is a new snapshot.
        with planted_family.engine.begin() as conn:
            conn.execute(sa.text("UPDATE family SET inputs = inputs WHERE name = 'P'"))
        fresh = client.get("/api/trees/P/1/2", headers={"If-None-Match": tag})
        assert fresh.status_code == 200 and fresh.json() == first.json()
        assert fresh.headers["etag"] != tag


def test_the_cache_is_bounded_in_bytes() -> None:
    store = cache.ResponseCache(max_bytes=1600)
    for i in range(100):
        store.put(f"k{i}", "s1", b"x" * 100)
    assert len(store) == 16
    assert store.get("k99", "s1") == b"x" * 100 and store.get("k0", "s1") is None
    assert store.get("k99", "s2") is None  # another snapshot: a miss
    store.put("big", "s1", b"x" * 101)  # over 1/16 of the budget: not kept
    assert store.get("big", "s1") is None


def test_a_connection_lost_to_a_restart_is_retried(planted_family: Planted) -> None:
    with read_only_app(planted_family.url, planted_family.config) as app, TestClient(app) as client:
        before = client.get("/api/trees/P/1/4").json()
        with planted_family.engine.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'"
                )
            ).scalar_one()
        assert killed >= 1
        after = client.get("/api/trees/P/1/4")
        assert after.status_code == 200 and after.json() == before
