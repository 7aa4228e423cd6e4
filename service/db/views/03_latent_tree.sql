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
    SELECT e.child_id, j.child_sae_id, r.depth + 1
    FROM reach r
    JOIN latent p ON p.id = r.id
    JOIN sae_level s ON s.id = r.sae_id
    -- The job of the pair (this sae, the next one): its edges are one partition of edge, and
    -- naming it lets the executor skip every other partition.
    JOIN job j ON j.parent_sae_id = r.sae_id AND j.child_sae_id = s.next_id
    JOIN edge e ON e.job_id = j.id AND e.parent_id = r.id
    JOIN latent c ON c.id = e.child_id
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
    JOIN sae_level s ON s.id = rc.sae_id
    JOIN job j ON j.parent_sae_id = s.prev_id AND j.child_sae_id = rc.sae_id
    JOIN edge e ON e.job_id = j.id AND e.child_id = rc.id
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
