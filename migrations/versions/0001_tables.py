"""tables: family, sae, latent, job, edge

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$"


def _created_at() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "family",
        sa.Column("id", sa.Integer, sa.Identity(), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("n_tokens", sa.BigInteger, nullable=True),
        sa.Column("token_fingerprint", sa.Text, nullable=True),
        sa.Column("inputs", pg.JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_family"),
        sa.UniqueConstraint("name", name="uq_family_name"),
        sa.CheckConstraint(f"name ~ '{NAME_PATTERN}'", name=op.f("ck_family_name_format")),
        sa.CheckConstraint(
            "n_tokens IS NULL OR n_tokens > 0", name=op.f("ck_family_n_tokens_positive")
        ),
    )
    op.create_table(
        "sae",
        sa.Column("id", sa.Integer, sa.Identity(), nullable=False),
        sa.Column("family_id", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("d_sae", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, server_default="ready", nullable=False),
        sa.Column("source", pg.JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("activations_path", sa.Text, nullable=True),
        sa.Column("activations_sha256", sa.Text, nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_sae"),
        sa.ForeignKeyConstraint(
            ["family_id"], ["family.id"], name="fk_sae_family_id_family", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("name", name="uq_sae_name"),
        sa.UniqueConstraint("family_id", "d_sae", name="uq_sae_family_id_d_sae"),
        sa.CheckConstraint("d_sae > 0", name=op.f("ck_sae_d_sae_positive")),
        sa.CheckConstraint("state IN ('ready', 'retired')", name=op.f("ck_sae_state_known")),
    )
    op.create_table(
        "latent",
        sa.Column("id", sa.Integer, sa.Identity(), nullable=False),
        sa.Column("sae_id", sa.Integer, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("max_act", sa.REAL, nullable=False),
        sa.Column("n_active", sa.BigInteger, nullable=False),
        sa.Column("frequency", sa.REAL, nullable=False),
        sa.Column("sum_sq", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_latent"),
        sa.ForeignKeyConstraint(
            ["sae_id"], ["sae.id"], name="fk_latent_sae_id_sae", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("label", name="uq_latent_label"),
        sa.UniqueConstraint("sae_id", "idx", name="uq_latent_sae_id_idx"),
        sa.CheckConstraint("idx >= 0", name=op.f("ck_latent_idx_nonnegative")),
        sa.CheckConstraint(
            "max_act >= 0 AND sum_sq >= 0 AND n_active >= 0", name=op.f("ck_latent_stats_valid")
        ),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.Integer, sa.Identity(), nullable=False),
        sa.Column("kind", sa.Text, server_default="edges", nullable=False),
        sa.Column("parent_sae_id", sa.Integer, nullable=False),
        sa.Column("child_sae_id", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer, server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer, server_default="3", nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.Text, nullable=True),
        sa.Column("params", pg.JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("n_edges", sa.BigInteger, nullable=True),
        _created_at(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job"),
        sa.ForeignKeyConstraint(
            ["parent_sae_id"], ["sae.id"], name="fk_job_parent_sae_id_sae", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["child_sae_id"], ["sae.id"], name="fk_job_child_sae_id_sae", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "kind", "parent_sae_id", "child_sae_id", name="uq_job_kind_parent_sae_id_child_sae_id"
        ),
        sa.CheckConstraint("kind IN ('edges')", name=op.f("ck_job_kind_known")),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'done', 'failed')", name=op.f("ck_job_state_known")
        ),
        sa.CheckConstraint("parent_sae_id <> child_sae_id", name=op.f("ck_job_distinct_saes")),
    )
    op.create_index(
        "ix_job_claimable",
        "job",
        ["id"],
        postgresql_where=sa.text("state IN ('pending', 'running')"),
    )
    op.create_table(
        "edge",
        sa.Column("parent_id", sa.Integer, nullable=False),
        sa.Column("child_id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("masked_cos", sa.REAL, nullable=False),
        sa.Column("masked_cos_parent", sa.REAL, nullable=False),
        sa.Column("max_ratio", sa.REAL, nullable=False),
        sa.Column("score", sa.REAL, nullable=False),
        sa.Column("n_coactive", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("parent_id", "child_id", name="pk_edge"),
        # No foreign keys on edge: see service/db/tables.py (publishing speed).
        sa.CheckConstraint("n_coactive > 0", name=op.f("ck_edge_coactive")),
        sa.CheckConstraint(
            "masked_cos >= 0 AND masked_cos_parent >= 0 AND max_ratio >= 0 AND score >= 0"
            " AND score < 'Infinity'::real AND max_ratio < 'Infinity'::real",
            name=op.f("ck_edge_finite_scores"),
        ),
    )
    op.create_index("ix_edge_child_score", "edge", ["child_id", sa.text("score DESC"), "parent_id"])
    op.create_index("ix_edge_job_id", "edge", ["job_id"])


def downgrade() -> None:
    op.drop_table("edge")
    op.drop_table("job")
    op.drop_table("latent")
    op.drop_table("sae")
    op.drop_table("family")
