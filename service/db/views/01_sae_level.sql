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
