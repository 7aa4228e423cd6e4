"""edge_qualifies(), the one definition of "qualifies"; latent_tree() linear in its size

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Scores are compared as real everywhere (latent_tree() compared real to real, tree_edges double
to double: a score stored as real(0.6) qualified in the forest and not in the rooted tree).
latent_tree() looks reached parents up in one jsonb object and aggregates each node's parents
once (its self-join and its per-node subqueries were quadratic in the size of the tree).
EDGE_QUALIFIES, TREE_EDGES, TREE_NODES and LATENT_TREE are frozen copies of
service/db/views/00_edge_qualifies.sql, 03_tree_edges.sql, 04_tree_nodes.sql and
05_latent_tree.sql as of this revision; the OLD_ ones are revision 0002's, for downgrade.
tree_nodes is unchanged but reads tree_edges, so it is dropped and created again with it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EDGE_QUALIFIES = """
-- Whether an edge qualifies (SPEC.md section 2): the one definition that the forest, the rooted
-- tree, cards, DAGs and exports use. Its score exceeds the threshold and both latents are active
-- on at least min_active_tokens tokens. Compared as real, the precision scores are stored in, so
-- that a threshold means the same everywhere (a score stored as real(0.6) does not exceed 0.6).
CREATE FUNCTION edge_qualifies(
    score real,
    parent_active bigint,
    child_active bigint,
    threshold real DEFAULT 0.6,
    min_active_tokens integer DEFAULT 10
)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT score > threshold AND parent_active >= min_active_tokens
       AND child_active >= min_active_tokens
$fn$;
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
      AND edge_qualifies(e.score, p.n_active, c.n_active)
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
    WHERE edge_qualifies(
        e.score, p.n_active, c.n_active, latent_tree.threshold, latent_tree.min_active_tokens
    )
), seen AS (
    -- The reached set as one lookup (id -> depth): a CTE joined to itself is planned as if it
    -- held ten rows, and that join went quadratic in the size of the tree.
    SELECT jsonb_object_agg(id::text, depth) AS depth_of FROM reach
), ranked AS (
    -- Every qualifying edge into a reached node from a reached node one level up.
    SELECT e.child_id,
           rc.depth,
           p.label AS parent_label,
           e.score,
           row_number() OVER (PARTITION BY e.child_id ORDER BY e.score DESC, p.idx) AS rank
    FROM reach rc
    CROSS JOIN seen
    JOIN edge e ON e.child_id = rc.id
    JOIN latent p ON p.id = e.parent_id
    JOIN latent c ON c.id = e.child_id
    WHERE (seen.depth_of ->> e.parent_id::text)::integer = rc.depth - 1
      AND edge_qualifies(
        e.score, p.n_active, c.n_active, latent_tree.threshold, latent_tree.min_active_tokens
    )
), parents AS (
    SELECT child_id,
           depth,
           (array_agg(parent_label ORDER BY rank))[1] AS parent_label,
           (array_agg(score ORDER BY rank))[1] AS score,
           (array_agg(parent_label ORDER BY rank))[2:] AS other_parents
    FROM ranked
    GROUP BY child_id, depth
)
-- The root, then every other reached node (each has at least one reached parent).
SELECT l.label, NULL::text, 0, NULL::real, '{}'::text[]
FROM latent l
WHERE l.label = latent_tree.root
UNION ALL
SELECT n.label, b.parent_label, b.depth, b.score, b.other_parents
FROM parents b
JOIN latent n ON n.id = b.child_id
ORDER BY 3, 1;
$fn$;
"""

OLD_TREE_EDGES = """
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

OLD_LATENT_TREE = """
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


def _drop_forest() -> None:
    op.execute("DROP FUNCTION latent_tree(text, real, integer)")
    op.execute("DROP MATERIALIZED VIEW tree_nodes")
    op.execute("DROP MATERIALIZED VIEW tree_edges")


def upgrade() -> None:
    _drop_forest()
    for statement in (EDGE_QUALIFIES, TREE_EDGES, TREE_NODES, LATENT_TREE):
        op.execute(statement)


def downgrade() -> None:
    _drop_forest()
    op.execute("DROP FUNCTION edge_qualifies(real, bigint, bigint, real, integer)")
    for statement in (OLD_TREE_EDGES, TREE_NODES, OLD_LATENT_TREE):
        op.execute(statement)
