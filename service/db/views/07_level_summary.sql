-- Every family's summary (family_summary) at the defaults: threshold 0.6, 10 active tokens.
CREATE VIEW level_summary AS
SELECT f.name AS family, s.*
FROM family f
CROSS JOIN LATERAL family_summary(f.name) s;
