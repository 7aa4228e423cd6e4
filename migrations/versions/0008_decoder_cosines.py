"""decoder cosines: edge.dec_cos, latent.max_dec_cos, and dec_cos in latent_edges

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25

LATENT_EDGES is a frozen copy of service/db/views/02_latent_edges.sql as of this revision
(revision 0002's, with `dec_cos` appended). Adding a column to the partitioned `edge` adds it to
every job's partition without rewriting them (NULL: no decoder weights).
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LATENT_EDGES = """
-- Every stored edge with labels, levels, all score parts, and whether its saes are neighbours.
CREATE VIEW latent_edges AS
SELECT p.label AS parent,
       c.label AS child,
       ps.level AS parent_level,
       cs.level AS child_level,
       e.masked_cos,
       e.masked_cos_parent,
       GREATEST(e.masked_cos, e.masked_cos_parent) AS mcs,
       e.max_ratio,
       e.score,
       e.n_coactive,
       COALESCE(ps.next_id = c.sae_id, false) AS adjacent,
       e.dec_cos
FROM edge e
JOIN latent p ON p.id = e.parent_id
JOIN latent c ON c.id = e.child_id
JOIN sae_level ps ON ps.id = p.sae_id
JOIN sae_level cs ON cs.id = c.sae_id;
"""


def _old_latent_edges() -> str:
    path = Path(__file__).with_name("0002_views.py")
    spec = importlib.util.spec_from_file_location("latent_trees_revision_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.LATENT_EDGES)


def upgrade() -> None:
    op.add_column("edge", sa.Column("dec_cos", sa.REAL, nullable=True))
    op.add_column("latent", sa.Column("max_dec_cos", sa.REAL, nullable=True))
    op.execute("DROP VIEW latent_edges")
    op.execute(LATENT_EDGES)


def downgrade() -> None:
    op.execute("DROP VIEW latent_edges")
    op.execute(_old_latent_edges())
    op.drop_column("latent", "max_dec_cos")
    op.drop_column("edge", "dec_cos")
