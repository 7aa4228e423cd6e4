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
SELECT r.node,
       (array_agg(r.parent ORDER BY r.rank))[1],
       r.depth,
       (array_agg(r.score ORDER BY r.rank))[1],
       (array_agg(r.parent ORDER BY r.rank))[2:]
FROM latent_reach(latent_tree.root, latent_tree.threshold, latent_tree.min_active_tokens) r
GROUP BY r.node, r.depth
ORDER BY 3, 1;
$fn$;
