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
