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

# The saes of the family from the given one down, in level order, with the done job into each
# from its next smaller sae (NULL for the first level or a pair not scored yet).
_SAES_FROM = """
SELECT s.id, j.id AS job_id
FROM sae_level s
LEFT JOIN job j ON j.parent_sae_id = s.prev_id AND j.child_sae_id = s.id AND j.state = 'done'
WHERE s.family_id = :family AND s.d_sae >= :d_sae
ORDER BY s.d_sae
"""

_DELETE = """
DELETE FROM {table} t USING latent l WHERE l.sae_id = :sae AND t.{key} = l.label
"""

# Each latent of the sae with its best parent through the job (if any), placed below the
# parent's forest row, which the previous step (or an earlier update) wrote.
_BEST = """
INSERT INTO tree_edges (child, parent, score, depth)
SELECT c.label, p.label, b.score, n.depth + 1
FROM (
    SELECT DISTINCT ON (e.child_id) e.child_id, e.parent_id, e.score
    FROM edge e
    JOIN latent p ON p.id = e.parent_id
    JOIN latent c ON c.id = e.child_id
    WHERE e.job_id = :job AND edge_qualifies(e.score, p.n_active, c.n_active)
    ORDER BY e.child_id, e.score DESC, p.idx
) b
JOIN latent c ON c.id = b.child_id
JOIN latent p ON p.id = b.parent_id
JOIN tree_nodes n ON n.node = p.label
"""

_NODES = """
INSERT INTO tree_nodes (root, node, depth, path)
SELECT coalesce(n.root, l.label),
       l.label,
       coalesce(n.depth + 1, 0),
       coalesce(n.path || l.label, ARRAY[l.label])
FROM latent l
LEFT JOIN tree_edges t ON t.child = l.label
LEFT JOIN tree_nodes n ON n.node = t.parent
WHERE l.sae_id = :sae
"""


def update(conn: Connection, family_id: int, from_d_sae: int = 0) -> int:
    """Rewrite the forest rows of the family's saes with d_sae >= `from_d_sae` (all by default),
    in the caller's transaction; returns the number of saes rewritten."""
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(:k, :f)"), {"k": FOREST_LOCK, "f": family_id}
    )
    saes = conn.execute(sa.text(_SAES_FROM), {"family": family_id, "d_sae": from_d_sae}).all()
    for sae_id, job_id in saes:
        forget(conn, [sae_id])
        if job_id is not None:
            conn.execute(sa.text(_BEST), {"job": job_id})
        conn.execute(sa.text(_NODES), {"sae": sae_id})
    return len(saes)


def forget(conn: Connection, sae_ids: list[int]) -> None:
    """Remove the forest rows of these saes' latents (before the saes themselves go)."""
    for sae_id in sae_ids:
        for table, key in (("tree_edges", "child"), ("tree_nodes", "node")):
            conn.execute(sa.text(_DELETE.format(table=table, key=key)), {"sae": sae_id})


def update_from_sae(conn: Connection, sae_id: int) -> int:
    """Rewrite the forest of an sae's family from that sae's level down."""
    family_id, d_sae = conn.execute(
        sa.text("SELECT family_id, d_sae FROM sae WHERE id = :s"), {"s": sae_id}
    ).one()
    return update(conn, family_id, d_sae)


def rebuild(conn: Connection) -> None:
    """Rewrite the whole forest of every family (after rows were changed by hand)."""
    conn.exec_driver_sql("TRUNCATE tree_edges, tree_nodes")
    for family_id in conn.execute(sa.text("SELECT id FROM family ORDER BY id")).scalars().all():
        update(conn, family_id)
