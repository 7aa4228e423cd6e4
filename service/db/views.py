"""The SQL views of SPEC.md section 4: current definitions in `views/*.sql`, refreshed here.

Migrations carry frozen copies of these files and never read them; a test checks that
`upgrade head` yields exactly the definitions found here.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

FOLDER = Path(__file__).with_name("views")
# Refreshed after each job, in this order (tree_nodes reads tree_edges).
MATERIALIZED = ("tree_edges", "tree_nodes")
# Dropped in this order (dependents first).
OBJECTS = (
    ("FUNCTION", "latent_contexts(text, integer)"),
    ("FUNCTION", "latent_tree(text, real, integer)"),
    ("MATERIALIZED VIEW", "tree_nodes"),
    ("MATERIALIZED VIEW", "tree_edges"),
    ("VIEW", "latent_edges"),
    ("VIEW", "sae_level"),
    ("FUNCTION", "edge_qualifies(real, bigint, bigint, real, integer)"),
)


def files() -> list[Path]:
    """The view files in creation order."""
    return sorted(FOLDER.glob("*.sql"))


def create_all(conn: Connection) -> None:
    """Create every view and function from the current files."""
    for path in files():
        conn.exec_driver_sql(path.read_text())


def drop_all(conn: Connection) -> None:
    """Drop every view and function (tables stay)."""
    for kind, name in OBJECTS:
        conn.exec_driver_sql(f"DROP {kind} IF EXISTS {name}")


def refresh(conn: Connection) -> None:
    """Refresh the materialized forest without blocking readers."""
    for name in MATERIALIZED:
        conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {name}"))
