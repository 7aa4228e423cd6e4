"""family_summary(): a family's splits, merges, persisting, new and vanishing latents per pair
of neighbouring levels; the view level_summary (every family at the defaults)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

FAMILY_SUMMARY and LEVEL_SUMMARY are frozen copies of service/db/views/06_family_summary.sql and
07_level_summary.sql as of this revision.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAMILY_SUMMARY = """
-- A family at a glance: per pair of neighbouring levels, at a threshold, how many latents
-- split (a parent with 2+ qualifying children), merge (a child with 2+ qualifying parents),
-- persist (a parent with one qualifying child whose one qualifying parent it is, masked cosine
-- >= 0.9 both ways), are new (a child with no qualifying parent) and vanish (a parent with no
-- qualifying child); `scored` is false until the pair's job is done. `largest_splits`: the
-- parents with the most qualifying children, up to five, most first. Each pair's edges are read
-- from its job's partition, once.
CREATE FUNCTION family_summary(
    family text,
    threshold real DEFAULT 0.6,
    min_active_tokens integer DEFAULT 10
)
RETURNS TABLE (
    parent_sae text,
    child_sae text,
    parent_level integer,
    child_level integer,
    scored boolean,
    n_edges bigint,
    split bigint,
    merge bigint,
    persist bigint,
    new bigint,
    vanish bigint,
    largest_splits jsonb
)
LANGUAGE sql STABLE AS $fn$
WITH pairs AS (
    SELECT p.name AS parent_sae,
           c.name AS child_sae,
           p.level::integer AS parent_level,
           c.level::integer AS child_level,
           p.d_sae AS n_parents,
           c.d_sae AS n_children,
           j.id AS job_id
    FROM sae_level p
    JOIN family f ON f.id = p.family_id
    JOIN sae_level c ON c.id = p.next_id
    LEFT JOIN job j ON j.parent_sae_id = p.id AND j.child_sae_id = c.id AND j.state = 'done'
    WHERE f.name = family_summary.family
), links AS (
    SELECT q.job_id,
           e.parent_id,
           e.child_id,
           e.masked_cos,
           e.masked_cos_parent,
           count(*) OVER (PARTITION BY q.job_id, e.parent_id) AS children,
           count(*) OVER (PARTITION BY q.job_id, e.child_id) AS parents
    FROM pairs q
    -- A subquery given the job's id (OFFSET 0 keeps it one): it reads that partition only.
    CROSS JOIN LATERAL (
        SELECT x.parent_id, x.child_id, x.score, x.masked_cos, x.masked_cos_parent
        FROM edge x WHERE x.job_id = q.job_id OFFSET 0
    ) e
    JOIN latent p ON p.id = e.parent_id
    JOIN latent c ON c.id = e.child_id
    WHERE edge_qualifies(
        e.score, p.n_active, c.n_active, family_summary.threshold, family_summary.min_active_tokens
    )
), counts AS (
    SELECT job_id,
           count(*) AS n_edges,
           count(DISTINCT parent_id) FILTER (WHERE children >= 2) AS split,
           count(DISTINCT child_id) FILTER (WHERE parents >= 2) AS merge,
           count(*) FILTER (
               WHERE children = 1 AND parents = 1 AND masked_cos >= 0.9 AND masked_cos_parent >= 0.9
           ) AS persist,
           count(DISTINCT child_id) AS with_parent,
           count(DISTINCT parent_id) AS with_child
    FROM links
    GROUP BY job_id
), splits AS (
    SELECT DISTINCT ON (job_id, parent_id) job_id, parent_id, children
    FROM links
    WHERE children >= 2
), ranked AS (
    SELECT s.job_id,
           l.label,
           s.children,
           row_number() OVER (PARTITION BY s.job_id ORDER BY s.children DESC, l.idx) AS rank
    FROM splits s
    JOIN latent l ON l.id = s.parent_id
), largest AS (
    SELECT job_id,
           jsonb_agg(jsonb_build_object('parent', label, 'n_children', children) ORDER BY rank)
               AS largest_splits
    FROM ranked
    WHERE rank <= 5
    GROUP BY job_id
)
SELECT q.parent_sae,
       q.child_sae,
       q.parent_level,
       q.child_level,
       q.job_id IS NOT NULL,
       coalesce(k.n_edges, 0),
       coalesce(k.split, 0),
       coalesce(k.merge, 0),
       coalesce(k.persist, 0),
       q.n_children - coalesce(k.with_parent, 0),
       q.n_parents - coalesce(k.with_child, 0),
       coalesce(g.largest_splits, '[]'::jsonb)
FROM pairs q
LEFT JOIN counts k ON k.job_id = q.job_id
LEFT JOIN largest g ON g.job_id = q.job_id
ORDER BY q.parent_level;
$fn$;
"""

LEVEL_SUMMARY = """
-- Every family's summary (family_summary) at the defaults: threshold 0.6, 10 active tokens.
CREATE VIEW level_summary AS
SELECT f.name AS family, s.*
FROM family f
CROSS JOIN LATERAL family_summary(f.name) s;
"""


def upgrade() -> None:
    op.execute(FAMILY_SUMMARY)
    op.execute(LEVEL_SUMMARY)


def downgrade() -> None:
    op.execute("DROP VIEW level_summary")
    op.execute("DROP FUNCTION family_summary(text, real, integer)")
