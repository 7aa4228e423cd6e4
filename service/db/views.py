"""The SQL views and functions of SPEC.md section 4: current definitions in `views/*.sql`.

The forest (`tree_edges`, `tree_nodes`) is two tables kept up to date by service/db/forest.py.

Migrations carry frozen copies of these files and never read them; a test checks that
`upgrade head` yields exactly the definitions found here.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection

FOLDER = Path(__file__).with_name("views")
# Dropped in this order (dependents first).
OBJECTS = (
    ("VIEW", "level_summary"),
    ("FUNCTION", "family_summary(text, real, integer)"),
    ("FUNCTION", "latent_contexts(text, integer)"),
    ("FUNCTION", "latent_tree(text, real, integer)"),
    ("FUNCTION", "latent_reach(text, real, integer)"),
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
