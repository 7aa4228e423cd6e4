-- Every latent of the forest with its root, depth and the path of labels from the root.
CREATE MATERIALIZED VIEW tree_nodes AS
WITH RECURSIVE walk AS (
    SELECT l.label AS root, l.label AS node, 0 AS depth, ARRAY[l.label] AS path
    FROM latent l
    WHERE NOT EXISTS (SELECT 1 FROM tree_edges t WHERE t.child = l.label)
    UNION ALL
    SELECT w.root, t.child, w.depth + 1, w.path || t.child
    FROM walk w
    JOIN tree_edges t ON t.parent = w.node
)
SELECT root, node, depth, path FROM walk;

CREATE UNIQUE INDEX ix_tree_nodes_node ON tree_nodes (node);
CREATE INDEX ix_tree_nodes_root ON tree_nodes (root);
