"""The forest (SPEC.md section 2), kept in tables `tree_edges` and `tree_nodes`, brought up to
date per family from the level that changed.

Each latent hangs under its best parent: the qualifying parent in the next smaller sae with the
highest score (ties: lowest index), at the default threshold. A job between levels k and k+1
changes the best parents of level k+1 only, and through their roots and depths the rows of the
levels below it in the family; nothing else. So an update rewrites one sae at a time, from the
level that changed down, reading the edges of one job (one partition) and the rows just written
for the level above: its cost follows that family's latents and that job's edges, never the rest
of the database. Updates of one family are serialised (an advisory lock); readers see the
forest before or after, never between.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# pg_advisory_xact_lock(FOREST_LOCK, family id): one forest update of a family at a time.
FOREST_LOCK = 0x6C74_0F0E

# The saes of the family from the given one down, in level order, each with its next smaller
# sae and the done job between them (NULL for the first level or a pair not scored yet).
_SAES_FROM = """
SELECT s.id, s.prev_id, j.id AS job_id
FROM sae_level s
LEFT JOIN job j ON j.parent_sae_id = s.prev_id AND j.child_sae_id = s.id AND j.state = 'done'
WHERE s.family_id = :family AND s.d_sae >= :d_sae
ORDER BY s.d_sae
"""

# Every statement below reads latents by sae (an index), edges by job (one partition) and rows
# of the forest by label (their keys), never a whole table: the cost follows the sae's latents
# and the job's edges, whatever else the database holds.
_FORGET = """
DELETE FROM {table} WHERE {key} = ANY(ARRAY(SELECT label FROM latent WHERE sae_id = :sae))
"""

# Each latent's best parent by the job's edges (none without a job): a statement of its own,
# where a scan of the job's edges (all of them; tens of millions) may run in parallel, which
# PostgreSQL never does inside a statement that writes. A temporary table, dropped at once.
_BEST = """
CREATE TEMP TABLE forest_best ON COMMIT DROP AS
SELECT DISTINCT ON (e.child_id) e.child_id, p.label AS parent, e.score
FROM edge e
JOIN latent p ON p.id = e.parent_id AND p.sae_id = :parent_sae
JOIN latent c ON c.id = e.child_id AND c.sae_id = :sae
WHERE e.job_id = :job AND edge_qualifies(e.score, p.n_active, c.n_active)
ORDER BY e.child_id, e.score DESC, p.idx
"""

# The sae's latents placed in the forest: under their best parent (if any), whose row the
# previous level (or an earlier update) wrote; a latent without one is a root.
_PLACE = """
WITH placed AS (
    SELECT l.label AS node, b.parent, b.score, n.root, n.depth, n.path
    FROM latent l
    LEFT JOIN forest_best b ON b.child_id = l.id
    -- OFFSET 0 keeps this a lookup by key per latent (never a scan of the whole forest).
    LEFT JOIN LATERAL (
        SELECT t.root, t.depth, t.path FROM tree_nodes t WHERE t.node = b.parent OFFSET 0
    ) n ON true
    WHERE l.sae_id = :sae
), edges AS (
    INSERT INTO tree_edges (child, parent, score, depth)
    SELECT node, parent, score, depth + 1 FROM placed WHERE parent IS NOT NULL
)
INSERT INTO tree_nodes (root, node, depth, path)
SELECT coalesce(root, node), node, coalesce(depth + 1, 0), coalesce(path || node, ARRAY[node])
FROM placed
"""


def update(
    conn: Connection, family_id: int, from_d_sae: int = 0, new_sae_id: int | None = None
) -> int:
    """Rewrite the forest rows of the family's saes with d_sae >= `from_d_sae` (all by default),
    in the caller's transaction; returns the number of saes rewritten. `new_sae_id`: an sae
    added in this transaction, which has no rows to remove (at 1M latents, looking them up
    by label costs 1.5 s)."""
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(:k, :f)"), {"k": FOREST_LOCK, "f": family_id}
    )
    saes = conn.execute(sa.text(_SAES_FROM), {"family": family_id, "d_sae": from_d_sae}).all()
    for sae_id, parent_sae_id, job_id in saes:
        if sae_id != new_sae_id:
            forget(conn, [sae_id])
        level = {"sae": sae_id, "parent_sae": parent_sae_id, "job": job_id}
        conn.execute(sa.text(_BEST), level)
        conn.exec_driver_sql("ANALYZE forest_best")  # its size, for the plan that reads it
        conn.execute(sa.text(_PLACE), level)
        conn.exec_driver_sql("DROP TABLE forest_best")
    return len(saes)


def forget(conn: Connection, sae_ids: list[int]) -> None:
    """Remove the forest rows of these saes' latents (before the saes themselves go)."""
    for sae_id in sae_ids:
        for table, key in (("tree_edges", "child"), ("tree_nodes", "node")):
            conn.execute(sa.text(_FORGET.format(table=table, key=key)), {"sae": sae_id})


def update_from_sae(conn: Connection, sae_id: int, new: bool = False) -> int:
    """Rewrite the forest of an sae's family from that sae's level down (`new`: the sae was
    added in this transaction)."""
    family_id, d_sae = conn.execute(
        sa.text("SELECT family_id, d_sae FROM sae WHERE id = :s"), {"s": sae_id}
    ).one()
    return update(conn, family_id, d_sae, sae_id if new else None)


def rebuild(conn: Connection) -> None:
    """Rewrite the whole forest of every family (after rows were changed by hand)."""
    conn.exec_driver_sql("TRUNCATE tree_edges, tree_nodes")
    for family_id in conn.execute(sa.text("SELECT id FROM family ORDER BY id")).scalars().all():
        update(conn, family_id)
