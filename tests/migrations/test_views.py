"""`upgrade head` yields exactly the view definitions in service/db/views/."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from service.db import engine as db_engine
from service.db import migrate, views

DEFINITIONS = """
SELECT c.relname, pg_get_viewdef(c.oid, true) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
UNION ALL
SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
"""


def _definitions(url: str) -> dict[str, str]:
    engine = db_engine.create(url)
    with engine.connect() as conn:
        found = dict(conn.execute(sa.text(DEFINITIONS)).all())
    engine.dispose()
    return found


def test_head_matches_the_view_files(migrated_url: str, fresh_url: str) -> None:
    engine = db_engine.create(fresh_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        views.drop_all(conn)
        assert _count_views(conn) == 0
        views.create_all(conn)
    engine.dispose()
    from_files = _definitions(fresh_url)
    from_migrations = _definitions(migrated_url)
    assert set(from_files) >= {
        "sae_level",
        "latent_edges",
        "latent_tree",
        "latent_contexts",
    }
    assert from_files == from_migrations


def test_drift_in_a_view_file_would_be_caught(
    fresh_url: str, migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A view file edited without a migration: the same path as the test above, from the files.
    for path in views.files():
        (tmp_path / path.name).write_text(path.read_text())
    edited = tmp_path / "02_latent_edges.sql"
    edited.write_text(edited.read_text().replace("e.n_coactive", "e.n_coactive + 0"))
    monkeypatch.setattr(views, "FOLDER", tmp_path)
    engine = db_engine.create(fresh_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        views.drop_all(conn)
        views.create_all(conn)
    engine.dispose()
    from_files, from_migrations = _definitions(fresh_url), _definitions(migrated_url)
    assert from_files["latent_edges"] != from_migrations["latent_edges"]
    assert {k: v for k, v in from_files.items() if k != "latent_edges"} == {
        k: v for k, v in from_migrations.items() if k != "latent_edges"
    }


def _count_views(conn: sa.Connection) -> int:
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')"
            )
        ).scalar_one()
    )
