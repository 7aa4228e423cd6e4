"""views: sae_level, latent_edges, tree_edges, tree_nodes and latent_tree()

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Frozen copies of service/db/views/*.sql as of this revision: migrations never read those files.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SAE_LEVEL = """
-- Each sae's level (rank by d_sae within its family) and its neighbours by level.
CREATE VIEW sae_level AS
SELECT s.id,
       s.family_id,
       s.name,
       s.d_sae,
       rank() OVER w AS level,
       lead(s.id) OVER w AS next_id,
       lag(s.id) OVER w AS prev_id
FROM sae s
WINDOW w AS (PARTITION BY s.family_id ORDER BY s.d_sae);
"""

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
       COALESCE(ps.next_id = c.sae_id, false) AS adjacent
FROM edge e
JOIN latent p ON p.id = e.parent_id
JOIN latent c ON c.id = e.child_id
JOIN sae_level ps ON ps.id = p.sae_id
JOIN sae_level cs ON cs.id = c.sae_id;
"""

TREE_EDGES = """
-- The forest at the default threshold (0.6, min_active_tokens 10): each latent's best parent,
-- the qualifying parent in the next smaller sae with the highest score (ties: lowest index).
CREATE MATERIALIZED VIEW tree_edges AS
WITH RECURSIVE best AS (
    SELECT DISTINCT ON (e.child_id) e.child_id, e.parent_id, e.score
    FROM edge e
    JOIN latent p ON p.id = e.parent_id
    JOIN latent c ON c.id = e.child_id
    JOIN sae_level ps ON ps.id = p.sae_id
    WHERE ps.next_id = c.sae_id
      AND e.score > 0.6
      AND p.n_active >= 10
      AND c.n_active >= 10
    ORDER BY e.child_id, e.score DESC, p.idx
), walk AS (
    SELECT b.child_id, b.parent_id, b.score, 1 AS depth
    FROM best b
    WHERE NOT EXISTS (SELECT 1 FROM best r WHERE r.child_id = b.parent_id)
    UNION ALL
    SELECT b.child_id, b.parent_id, b.score, w.depth + 1
    FROM walk w
    JOIN best b ON b.parent_id = w.child_id
)
SELECT c.label AS child, p.label AS parent, w.score, w.depth
FROM walk w
JOIN latent c ON c.id = w.child_id
JOIN latent p ON p.id = w.parent_id;

CREATE UNIQUE INDEX ix_tree_edges_child ON tree_edges (child);
CREATE INDEX ix_tree_edges_parent ON tree_edges (parent);
"""

TREE_NODES = """
-- Every latent of the forest with its root, depth and the path of labels from the root.
CREATE MATERIALIZED VIEW tree_nodes AS
WITH RECURSIVE walk AS (
    SELECT l.label AS root, l.label AS node, 0 AS depth, ARRAY[l.label] AS path
    FROM latent l
    WHERE NOT EXISTS (SELECT 1 FROM tree_edges t WHERE t.child = l.label)
    UNION ALL
    SELECT w.root, t.child, w.depth + 1, w.path || t.child
    FROM walk w
    JOIN tree_edges t ON t.parent = w.node
)
SELECT root, node, depth, path FROM walk;

CREATE UNIQUE INDEX ix_tree_nodes_node ON tree_nodes (node);
CREATE INDEX ix_tree_nodes_root ON tree_nodes (root);
"""

LATENT_TREE = """
-- The rooted tree (the sparselatents.com procedure): from a root, its qualifying children in the
-- next sae, then theirs; each reached node hangs under its reached parent with the highest score
-- (ties: lowest index) and keeps the other reached parents, best first, in other_parents.
CREATE FUNCTION latent_tree(
    root text,
    threshold real DEFAULT 0.6,
    min_active_tokens integer DEFAULT 10
)
RETURNS TABLE (node text, parent text, depth integer, score real, other_parents text[])
LANGUAGE sql STABLE AS $fn$
WITH RECURSIVE reach (id, sae_id, depth) AS (
    SELECT l.id, l.sae_id, 0
    FROM latent l
    WHERE l.label = latent_tree.root
    UNION
    SELECT e.child_id, c.sae_id, r.depth + 1
    FROM reach r
    JOIN latent p ON p.id = r.id
    JOIN sae_level s ON s.id = r.sae_id
    JOIN edge e ON e.parent_id = r.id
    JOIN latent c ON c.id = e.child_id AND c.sae_id = s.next_id
    WHERE e.score > latent_tree.threshold
      AND p.n_active >= latent_tree.min_active_tokens
      AND c.n_active >= latent_tree.min_active_tokens
), ranked AS (
    SELECT e.child_id,
           p.label AS parent_label,
           e.score,
           row_number() OVER (PARTITION BY e.child_id ORDER BY e.score DESC, p.idx) AS rank
    FROM reach rc
    JOIN edge e ON e.child_id = rc.id
    JOIN reach rp ON rp.id = e.parent_id AND rp.depth = rc.depth - 1
    JOIN latent p ON p.id = e.parent_id
    WHERE e.score > latent_tree.threshold
      AND p.n_active >= latent_tree.min_active_tokens
)
SELECT n.label,
       b.parent_label,
       r.depth,
       b.score,
       COALESCE(
           (SELECT array_agg(o.parent_label ORDER BY o.rank)
            FROM ranked o WHERE o.child_id = r.id AND o.rank > 1),
           '{}'::text[])
FROM reach r
JOIN latent n ON n.id = r.id
LEFT JOIN ranked b ON b.child_id = r.id AND b.rank = 1
ORDER BY r.depth, n.label;
$fn$;
"""


def upgrade() -> None:
    for statement in (SAE_LEVEL, LATENT_EDGES, TREE_EDGES, TREE_NODES, LATENT_TREE):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION latent_tree(text, real, integer)")
    op.execute("DROP MATERIALIZED VIEW tree_nodes")
    op.execute("DROP MATERIALIZED VIEW tree_edges")
    op.execute("DROP VIEW latent_edges")
    op.execute("DROP VIEW sae_level")
