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
), ranked AS (
    SELECT e.child_id,
           p.label AS parent_label,
           e.score,
           row_number() OVER (PARTITION BY e.child_id ORDER BY e.score DESC, p.idx) AS rank
    FROM reach rc
    JOIN edge e ON e.child_id = rc.id
    JOIN reach rp ON rp.id = e.parent_id AND rp.depth = rc.depth - 1
    JOIN latent p ON p.id = e.parent_id
    JOIN latent c ON c.id = e.child_id
    WHERE edge_qualifies(
        e.score, p.n_active, c.n_active, latent_tree.threshold, latent_tree.min_active_tokens
    )
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
