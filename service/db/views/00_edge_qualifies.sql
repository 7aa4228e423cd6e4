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
