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
       COALESCE(ps.next_id = c.sae_id, false) AS adjacent,
       e.dec_cos
FROM edge e
JOIN latent p ON p.id = e.parent_id
JOIN latent c ON c.id = e.child_id
JOIN sae_level ps ON ps.id = p.sae_id
JOIN sae_level cs ON cs.id = c.sae_id;
