"""top activations and token texts: tables token, top_activation; function latent_contexts()

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

LATENT_CONTEXTS is a frozen copy of service/db/views/06_latent_contexts.sql as of this revision.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LATENT_CONTEXTS = """
-- A latent's top activations, each in context: up to `width` tokens either side within its
-- sequence (NULL texts when the family's token texts are not known).
CREATE FUNCTION latent_contexts(label text, width integer DEFAULT 8)
RETURNS TABLE (
    rank smallint,
    "position" bigint,
    value real,
    context_before text,
    token text,
    context_after text
)
LANGUAGE sql STABLE AS $$
SELECT a.rank,
       a.position,
       a.value,
       (SELECT string_agg(t.text, '' ORDER BY t.position) FROM token t
         WHERE t.family_id = s.family_id AND t.sequence = c.sequence
           AND t.position >= a.position - width AND t.position < a.position),
       c.text,
       (SELECT string_agg(t.text, '' ORDER BY t.position) FROM token t
         WHERE t.family_id = s.family_id AND t.sequence = c.sequence
           AND t.position > a.position AND t.position <= a.position + width)
FROM latent l
JOIN sae s ON s.id = l.sae_id
JOIN top_activation a ON a.latent_id = l.id
LEFT JOIN token c ON c.family_id = s.family_id AND c.position = a.position
WHERE l.label = latent_contexts.label
ORDER BY a.rank;
$$;
"""


def upgrade() -> None:
    op.create_table(
        "token",
        sa.Column("family_id", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("token_id", sa.Integer, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["family_id"], ["family.id"], name="fk_token_family_id_family", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("family_id", "position", name="pk_token"),
    )
    op.create_table(
        "top_activation",
        sa.Column("latent_id", sa.Integer, nullable=False),
        sa.Column("rank", sa.SmallInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("value", sa.REAL, nullable=False),
        sa.ForeignKeyConstraint(
            ["latent_id"],
            ["latent.id"],
            name="fk_top_activation_latent_id_latent",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("latent_id", "rank", name="pk_top_activation"),
        sa.CheckConstraint(
            "rank >= 1 AND position >= 0 AND value > 0", name=op.f("ck_top_activation_valid")
        ),
    )
    op.execute(LATENT_CONTEXTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION latent_contexts(text, integer)")
    op.drop_table("top_activation")
    op.drop_table("token")
