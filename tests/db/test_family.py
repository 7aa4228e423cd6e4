"""Families through queries and the CLI; bad input leaves the data as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from service import errors
from service.db import queries
from tests.conftest import cli_env, run_cli, table_snapshot


def test_create_family_and_status(conn: Connection) -> None:
    queries.create_family(conn, "S")
    report = queries.status(conn)
    assert [f["name"] for f in report["families"]] == ["S"]
    assert report["families"][0]["saes"] == []
    assert report["jobs"] == {"pending": 0, "running": 0, "done": 0, "failed": 0}


def test_duplicate_family_is_refused_and_changes_nothing(conn: Connection) -> None:
    queries.create_family(conn, "S")
    before = table_snapshot(conn)
    with pytest.raises(errors.DuplicateFamily, match="family 'S' already exists"):
        queries.create_family(conn, "S")
    assert table_snapshot(conn) == before


@pytest.mark.parametrize("name", ["a/b", "", "has space", "-lead"])
def test_bad_family_names(conn: Connection, name: str) -> None:
    with pytest.raises(errors.BadInput, match="family name"):
        queries.create_family(conn, name)


def test_unknown_family(conn: Connection) -> None:
    with pytest.raises(errors.UnknownFamily, match="unknown family 'nope'"):
        queries.family_id(conn, "nope")


def test_cli_family_and_status(fresh_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, database_url=fresh_url)
    unmigrated = run_cli("status", env=env, check=False)
    assert unmigrated.returncode == 1
    assert "run `latent-trees db upgrade`" in unmigrated.stderr
    run_cli("db", "upgrade", env=env)
    run_cli("family", "create", "S", env=env)
    dup = run_cli("family", "create", "S", env=env, check=False)
    assert dup.returncode == 1
    assert dup.stderr.strip() == "latent-trees: error: family 'S' already exists"
    import json

    report = json.loads(run_cli("status", "--json", env=env).stdout)
    assert report["families"] == [
        {"name": "S", "n_tokens": None, "saes": [], "suggested_root": None, "store_floor": None}
    ]


def test_neuronpedia_link(conn: Connection) -> None:
    fid = queries.create_family(conn, "N")
    conn.exec_driver_sql(f"INSERT INTO sae (family_id, name, d_sae) VALUES ({fid}, 'N/1', 4)")
    queries.link_neuronpedia(conn, "N/1", "gpt2-small/8-res-jb")
    source = conn.exec_driver_sql("SELECT source FROM sae WHERE name = 'N/1'").scalar_one()
    assert source == {"neuronpedia_id": "gpt2-small/8-res-jb"}
    queries.link_neuronpedia(conn, "N/1", None)
    assert conn.exec_driver_sql("SELECT source FROM sae WHERE name = 'N/1'").scalar_one() == {}
    before = table_snapshot(conn)
    with pytest.raises(errors.BadInput, match="expected MODEL/SOURCE"):
        queries.link_neuronpedia(conn, "N/1", "https://evil/x")
    with pytest.raises(errors.NotFound, match="unknown sae 'N/2'"):
        queries.link_neuronpedia(conn, "N/2", "gpt2-small/8-res-jb")
    assert table_snapshot(conn) == before
