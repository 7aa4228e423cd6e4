-- The links of a rooted tree (the sparselatents.com procedure), one row per qualifying edge:
-- from a root, its qualifying children in the next sae, then theirs, level by level. Each
-- reached node's links from reached parents are ranked: rank 1 is the highest score (ties:
-- the lowest parent index), the link it hangs under. The root is a row of its own (no parent).
-- Level by level, each level reads the edges of one job, named as a value: the planner reads
-- that job's partition of edge only, and the function's plans are kept for the session.
CREATE FUNCTION latent_reach(
    root text,
    threshold real DEFAULT 0.6,
    min_active_tokens integer DEFAULT 10
)
RETURNS TABLE (node text, depth integer, parent text, score real, rank integer)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    frontier integer[];
    from_sae integer;
    pair_job integer;
    level integer := 0;
    ids integer[];
    nodes text[];
    parents text[];
    scores real[];
    ranks integer[];
BEGIN
    SELECT ARRAY[l.id], l.sae_id INTO frontier, from_sae
    FROM latent l WHERE l.label = latent_reach.root;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT latent_reach.root, 0, NULL::text, NULL::real, 1;
    LOOP
        -- The job of the pair (this sae, the next one).
        SELECT j.id, j.child_sae_id INTO pair_job, from_sae
        FROM sae_level s
        JOIN job j ON j.parent_sae_id = s.id AND j.child_sae_id = s.next_id
        WHERE s.id = from_sae;
        EXIT WHEN NOT FOUND;
        level := level + 1;
        SELECT array_agg(r.child_id), array_agg(r.child), array_agg(r.parent),
               array_agg(r.score), array_agg(r.rank)
        INTO ids, nodes, parents, scores, ranks
        FROM (
            SELECT e.child_id,
                   c.label AS child,
                   p.label AS parent,
                   e.score,
                   row_number() OVER (PARTITION BY e.child_id ORDER BY e.score DESC, p.idx)::integer
                       AS rank
            FROM edge e
            JOIN latent p ON p.id = e.parent_id
            JOIN latent c ON c.id = e.child_id
            WHERE e.job_id = pair_job
              AND e.parent_id = ANY(frontier)
              AND edge_qualifies(
                  e.score, p.n_active, c.n_active, latent_reach.threshold,
                  latent_reach.min_active_tokens
              )
        ) r;
        EXIT WHEN ids IS NULL;
        RETURN QUERY SELECT u.node, level, u.parent, u.score, u.rank
                     FROM unnest(nodes, parents, scores, ranks) AS u(node, parent, score, rank);
        frontier := ARRAY(SELECT DISTINCT unnest(ids));
    END LOOP;
END;
$fn$;
