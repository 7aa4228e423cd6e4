"""edge partitioned by job; the forest in tables kept up to date per family

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

`edge` becomes a table partitioned by LIST (job_id), one partition per job (`edge_job_<id>`),
so that publishing a job loads, indexes and attaches its partition whole and removing it drops
it (service/db/edges.py); its indexes are one column each (`ix_edge_parent_id`,
`ix_edge_child_id`), with no primary key (see service/db/tables.py). The materialized views
`tree_edges` and `tree_nodes` become tables of the same names and columns, kept up to date per
family by service/db/forest.py; their rows are carried over as they were. `latent_edges` reads
`edge` and is dropped and created again unchanged. `latent_tree()` now aggregates the new
`latent_reach()`, which walks the tree level by level and reads each level's edges from its job's
partition only (LATENT_REACH and LATENT_TREE: frozen copies of service/db/views/03_latent_reach.sql
and 04_latent_tree.sql as of this revision). Downgrade restores revision 0004's objects from its
own frozen copies. `job.forest_at` records when the forest took in a job's edges (the forest
update follows publishing in a transaction of its own); jobs done before are in the forest.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINITE_SCORES = (
    "masked_cos >= 0 AND masked_cos_parent >= 0 AND max_ratio >= 0 AND score >= 0"
    " AND score < 'Infinity'::real AND max_ratio < 'Infinity'::real"
)

EDGE_COLUMNS = f"""
    parent_id integer NOT NULL,
    child_id integer NOT NULL,
    job_id integer NOT NULL,
    masked_cos real NOT NULL,
    masked_cos_parent real NOT NULL,
    max_ratio real NOT NULL,
    score real NOT NULL,
    n_coactive integer NOT NULL,
    CONSTRAINT ck_edge_coactive CHECK (n_coactive > 0),
    CONSTRAINT ck_edge_finite_scores CHECK ({FINITE_SCORES})
"""

EDGE = f"""
CREATE TABLE edge ({EDGE_COLUMNS}) PARTITION BY LIST (job_id);
CREATE INDEX ix_edge_parent_id ON edge (parent_id);
CREATE INDEX ix_edge_child_id ON edge (child_id);
"""

OLD_EDGE = f"""
CREATE TABLE edge (
    {EDGE_COLUMNS},
    CONSTRAINT pk_edge PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX ix_edge_child_score ON edge (child_id, score DESC, parent_id);
CREATE INDEX ix_edge_job_id ON edge (job_id);
"""

FOREST = """
CREATE TABLE tree_edges (
    child text NOT NULL,
    parent text NOT NULL,
    score real NOT NULL,
    depth integer NOT NULL,
    CONSTRAINT pk_tree_edges PRIMARY KEY (child)
);
CREATE INDEX ix_tree_edges_parent ON tree_edges (parent);
CREATE TABLE tree_nodes (
    root text NOT NULL,
    node text NOT NULL,
    depth integer NOT NULL,
    path text[] NOT NULL,
    CONSTRAINT pk_tree_nodes PRIMARY KEY (node)
);
CREATE INDEX ix_tree_nodes_root ON tree_nodes (root);
"""

LATENT_REACH = """
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
"""

LATENT_TREE = """
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
"""


def _revision(file_name: str) -> ModuleType:
    """An earlier revision's module, for its frozen definitions."""
    path = Path(__file__).with_name(file_name)
    spec = importlib.util.spec_from_file_location(f"latent_trees_revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _partition(job_id: int, rows: str) -> None:
    """Job `job_id`'s partition, filled by `rows`, indexed, then attached."""
    name = f"edge_job_{int(job_id)}"
    op.execute(f"CREATE TABLE {name} (LIKE edge INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"INSERT INTO {name} {rows}")
    for column in ("parent_id", "child_id"):
        op.execute(f"CREATE INDEX {name}_{column} ON {name} ({column})")
    op.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_job CHECK (job_id = {int(job_id)})")
    op.execute(f"ALTER TABLE edge ATTACH PARTITION {name} FOR VALUES IN ({int(job_id)})")


def upgrade() -> None:
    views = _revision("0002_views.py")
    # The forest as the database shows it now, kept aside while its views are replaced.
    for name in ("tree_edges", "tree_nodes"):
        op.execute(f"REFRESH MATERIALIZED VIEW {name}")
        op.execute(f"CREATE TEMP TABLE {name}_0004 ON COMMIT DROP AS SELECT * FROM {name}")
    op.execute("DROP FUNCTION latent_tree(text, real, integer)")
    op.execute("DROP MATERIALIZED VIEW tree_nodes")
    op.execute("DROP MATERIALIZED VIEW tree_edges")
    op.execute("DROP VIEW latent_edges")
    op.execute("ALTER TABLE edge RENAME TO edge_0004")
    for index in ("pk_edge", "ix_edge_child_score", "ix_edge_job_id"):
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_0004")
    op.execute(EDGE)
    job_ids = op.get_bind().execute(sa.text("SELECT DISTINCT job_id FROM edge_0004 ORDER BY 1"))
    for job_id in job_ids.scalars().all():
        _partition(job_id, f"SELECT * FROM edge_0004 WHERE job_id = {int(job_id)}")
    op.execute("DROP TABLE edge_0004")
    op.execute(FOREST)
    for name in ("tree_edges", "tree_nodes"):
        op.execute(f"INSERT INTO {name} SELECT * FROM {name}_0004")
    for statement in (views.LATENT_EDGES, LATENT_REACH, LATENT_TREE):
        op.execute(statement)
    op.add_column("job", sa.Column("forest_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE job SET forest_at = finished_at WHERE state = 'done'")
    op.create_index(
        "ix_job_forest_pending",
        "job",
        ["id"],
        postgresql_where=sa.text("state = 'done' AND forest_at IS NULL"),
    )


def downgrade() -> None:
    views, forest = _revision("0002_views.py"), _revision("0004_edge_qualifies.py")
    op.drop_index("ix_job_forest_pending", "job")
    op.drop_column("job", "forest_at")
    op.execute("DROP FUNCTION latent_tree(text, real, integer)")
    op.execute("DROP FUNCTION latent_reach(text, real, integer)")
    op.execute("DROP VIEW latent_edges")
    op.execute("DROP TABLE tree_nodes")
    op.execute("DROP TABLE tree_edges")
    op.execute("ALTER TABLE edge RENAME TO edge_0005")
    for index in ("ix_edge_parent_id", "ix_edge_child_id"):
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_0005")
    op.execute(OLD_EDGE)
    op.execute("INSERT INTO edge SELECT * FROM edge_0005")
    op.execute("DROP TABLE edge_0005")
    for statement in (views.LATENT_EDGES, forest.TREE_EDGES, forest.TREE_NODES, forest.LATENT_TREE):
        op.execute(statement)
