"""Typed tables. Rows stay narrow (integer ids, float4 scores): edges number tens of millions."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATES = ("pending", "running", "done", "failed")
SAE_STATES = ("ready", "retired")
# A family or sae name part: no slash (labels are family/sae/index) and no spaces.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$"


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar = {dict[str, Any]: pg.JSONB}


def _now() -> sa.TextClause:
    return sa.text("now()")


class Family(Base):
    """A named series of saes on one model site, compared on one shared token set."""

    __tablename__ = "family"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    n_tokens: Mapped[int | None] = mapped_column(sa.BigInteger)
    token_fingerprint: Mapped[str | None] = mapped_column(sa.Text)
    inputs: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=_now()
    )

    __table_args__ = (
        sa.CheckConstraint(f"name ~ '{NAME_PATTERN}'", name="name_format"),
        sa.CheckConstraint("n_tokens IS NULL OR n_tokens > 0", name="n_tokens_positive"),
    )


class Sae(Base):
    """One dictionary of a family; its level is its rank by d_sae and is never stored."""

    __tablename__ = "sae"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    family_id: Mapped[int] = mapped_column(sa.ForeignKey("family.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    d_sae: Mapped[int] = mapped_column(sa.Integer)
    state: Mapped[str] = mapped_column(sa.Text, server_default="ready")
    source: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    activations_path: Mapped[str | None] = mapped_column(sa.Text)
    activations_sha256: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=_now()
    )

    __table_args__ = (
        sa.UniqueConstraint("family_id", "d_sae"),
        sa.CheckConstraint("d_sae > 0", name="d_sae_positive"),
        sa.CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in SAE_STATES) + ")", name="state_known"
        ),
    )


class Latent(Base):
    """One dictionary element with its statistics over the family's token set.

    No foreign key to `sae` (revision 0010): checking it per row was half of inserting an sae's
    latents, which are written in the sae's own transaction; deleting an sae or a family
    deletes its latents explicitly (`queries.delete_latents`)."""

    __tablename__ = "latent"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    sae_id: Mapped[int] = mapped_column(sa.Integer)
    idx: Mapped[int] = mapped_column(sa.Integer)
    label: Mapped[str] = mapped_column(sa.Text, unique=True)
    max_act: Mapped[float] = mapped_column(sa.REAL)
    n_active: Mapped[int] = mapped_column(sa.BigInteger)
    frequency: Mapped[float] = mapped_column(sa.REAL)
    sum_sq: Mapped[float] = mapped_column(sa.Double)
    # Its largest decoder cosine to a latent of the next smaller sae (checkpoints only).
    max_dec_cos: Mapped[float | None] = mapped_column(sa.REAL)

    __table_args__ = (
        sa.UniqueConstraint("sae_id", "idx"),
        sa.CheckConstraint("idx >= 0", name="idx_nonnegative"),
        sa.CheckConstraint("max_act >= 0 AND sum_sq >= 0 AND n_active >= 0", name="stats_valid"),
    )


class Job(Base):
    """One unit of scheduled work: scoring every edge between two saes."""

    __tablename__ = "job"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.Text, server_default="edges")
    parent_sae_id: Mapped[int] = mapped_column(sa.ForeignKey("sae.id", ondelete="CASCADE"))
    child_sae_id: Mapped[int] = mapped_column(sa.ForeignKey("sae.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(sa.Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(sa.Integer, server_default="3")
    lease_until: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(sa.Text)
    n_edges: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=_now()
    )
    started_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When the family's forest was brought up to date with this job's edges (NULL: not yet).
    forest_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        sa.UniqueConstraint("kind", "parent_sae_id", "child_sae_id"),
        sa.CheckConstraint("kind IN ('edges')", name="kind_known"),
        sa.CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in JOB_STATES) + ")", name="state_known"
        ),
        sa.CheckConstraint("parent_sae_id <> child_sae_id", name="distinct_saes"),
        sa.Index(
            "ix_job_claimable", "id", postgresql_where=sa.text("state IN ('pending', 'running')")
        ),
        sa.Index(
            "ix_job_forest_pending",
            "id",
            postgresql_where=sa.text("state = 'done' AND forest_at IS NULL"),
        ),
    )


class Edge(Base):
    """A scored pair: parent latent in a smaller sae, child latent in the next larger one.

    Partitioned by job: each job's edges are one table (`edge_job_<id>`), loaded, indexed and
    attached whole when the job is published, dropped whole when they go (service/db/edges.py).
    Two one-column indexes serve every lookup (a parent's children, a child's parents, about 20
    rows each); no unique index: a pair belongs to one job (one job per pair of saes) and a job
    writes each pair once (the engine's output, tested), and building one took 40% of the time
    of publishing (bench/pipeline.py). No foreign keys either (3.5x slower): a job writes only
    latent ids it read from the same database, and deleting an sae or a family drops its jobs'
    partitions explicitly."""

    __tablename__ = "edge"

    parent_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    child_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    job_id: Mapped[int] = mapped_column(sa.Integer)
    masked_cos: Mapped[float] = mapped_column(sa.REAL)
    masked_cos_parent: Mapped[float] = mapped_column(sa.REAL)
    max_ratio: Mapped[float] = mapped_column(sa.REAL)
    score: Mapped[float] = mapped_column(sa.REAL)
    n_coactive: Mapped[int] = mapped_column(sa.Integer)
    # The cosine of both latents' decoder vectors, when both saes came from checkpoints.
    dec_cos: Mapped[float | None] = mapped_column(sa.REAL)

    __table_args__ = (
        sa.CheckConstraint("n_coactive > 0", name="coactive"),
        sa.CheckConstraint(
            "masked_cos >= 0 AND masked_cos_parent >= 0 AND max_ratio >= 0 AND score >= 0"
            " AND score < 'Infinity'::real AND max_ratio < 'Infinity'::real",
            name="finite_scores",
        ),
        {"postgresql_partition_by": "LIST (job_id)"},
    )
    # The ORM's identity of a row (no such constraint in the database, see above).
    __mapper_args__ = {"primary_key": [parent_id, child_id]}  # noqa: RUF012


class TreeEdge(Base):
    """The forest at the default threshold: each latent with a qualifying parent, its best one
    (service/db/forest.py keeps it up to date, per family, from the level a change touched)."""

    __tablename__ = "tree_edges"

    child: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    parent: Mapped[str] = mapped_column(sa.Text, index=True)
    score: Mapped[float] = mapped_column(sa.REAL)
    depth: Mapped[int] = mapped_column(sa.Integer)


class TreeNode(Base):
    """Every latent of the forest with its root, depth and the path of labels from the root."""

    __tablename__ = "tree_nodes"

    root: Mapped[str] = mapped_column(sa.Text, index=True)
    node: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    depth: Mapped[int] = mapped_column(sa.Integer)
    path: Mapped[list[str]] = mapped_column(pg.ARRAY(sa.Text))


class Token(Base):
    """One token of a family's token set, when its text is known (inputs captured from a model):
    read around a latent's top activations to show them in context."""

    __tablename__ = "token"

    family_id: Mapped[int] = mapped_column(
        sa.ForeignKey("family.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    token_id: Mapped[int] = mapped_column(sa.Integer)
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    text: Mapped[str] = mapped_column(sa.Text)


class TopActivation(Base):
    """One of a latent's largest activations (rank 1 = largest; ties to the earliest token).

    No foreign key to `latent` (as `edge`): checking it took two thirds of loading an sae's
    top activations (tens of millions of rows at 1M latents); they are written with their
    latents in one transaction, and deleting an sae or a family deletes them explicitly
    (`queries.delete_top_activations`)."""

    __tablename__ = "top_activation"

    latent_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    position: Mapped[int] = mapped_column(sa.BigInteger)
    value: Mapped[float] = mapped_column(sa.REAL)

    __table_args__ = (
        sa.CheckConstraint("rank >= 1 AND position >= 0 AND value > 0", name="valid"),
    )


class Explanation(Base):
    """An explanation of a latent, imported from a Neuronpedia export (rank 1: shown first)."""

    __tablename__ = "explanation"

    latent_id: Mapped[int] = mapped_column(
        sa.ForeignKey("latent.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    description: Mapped[str] = mapped_column(sa.Text)
    type_name: Mapped[str | None] = mapped_column(sa.Text)
    explanation_model_name: Mapped[str | None] = mapped_column(sa.Text)

    __table_args__ = (sa.CheckConstraint("rank >= 1", name="rank_positive"),)
