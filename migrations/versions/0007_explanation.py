"""table explanation: Neuronpedia explanations of latents

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "explanation",
        sa.Column("latent_id", sa.Integer, nullable=False),
        sa.Column("rank", sa.SmallInteger, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("type_name", sa.Text, nullable=True),
        sa.Column("explanation_model_name", sa.Text, nullable=True),
        sa.ForeignKeyConstraint(
            ["latent_id"],
            ["latent.id"],
            name=op.f("fk_explanation_latent_id_latent"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("latent_id", "rank", name=op.f("pk_explanation")),
        sa.CheckConstraint("rank >= 1", name=op.f("ck_explanation_rank_positive")),
    )


def downgrade() -> None:
    op.drop_table("explanation")
