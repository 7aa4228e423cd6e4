-- A latent's top activations, each in context: up to `width` tokens either side within its
-- sequence (NULL texts when the family's token texts are not known).
CREATE FUNCTION latent_contexts(label text, width integer DEFAULT 8)
RETURNS TABLE (
    rank smallint,
    "position" bigint,
    value real,
    context_before text,
    token text,
    context_after text
)
LANGUAGE sql STABLE AS $$
SELECT a.rank,
       a.position,
       a.value,
       (SELECT string_agg(t.text, '' ORDER BY t.position) FROM token t
         WHERE t.family_id = s.family_id AND t.sequence = c.sequence
           AND t.position >= a.position - width AND t.position < a.position),
       c.text,
       (SELECT string_agg(t.text, '' ORDER BY t.position) FROM token t
         WHERE t.family_id = s.family_id AND t.sequence = c.sequence
           AND t.position > a.position AND t.position <= a.position + width)
FROM latent l
JOIN sae s ON s.id = l.sae_id
JOIN top_activation a ON a.latent_id = l.id
LEFT JOIN token c ON c.family_id = s.family_id AND c.position = a.position
WHERE l.label = latent_contexts.label
ORDER BY a.rank;
$$;
