"""Queries shared by the CLI, the jobs and the API. Functions take a Connection and never commit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from service import errors
from service.db import copy, edges, forest, tables

_NAME = re.compile(tables.NAME_PATTERN)


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid family name or sae name part, else a BadInput error."""
    if not _NAME.match(name):
        raise errors.BadInput(
            f"{kind} name {name!r}: expected letters, digits and '_.:+-', no '/' or spaces"
        )
    return name


def create_family(
    conn: Connection,
    name: str,
    inputs: dict[str, Any] | None = None,
    n_tokens: int | None = None,
    token_fingerprint: str | None = None,
) -> int:
    """Register a family (with its stored model inputs, if any); DuplicateFamily if the name
    is taken."""
    check_name("family", name)
    inserted = conn.execute(
        pg.insert(tables.Family)
        .values(
            name=name,
            inputs=inputs or {},
            n_tokens=n_tokens,
            token_fingerprint=token_fingerprint,
        )
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(tables.Family.id)
    ).scalar_one_or_none()
    if inserted is None:
        raise errors.DuplicateFamily(f"family {name!r} already exists")
    return int(inserted)


def add_tokens(
    conn: Connection, family_id: int, token_ids: np.ndarray, sequence: np.ndarray, texts: list[str]
) -> int:
    """The texts of a family's token set, one row per position."""
    positions = np.arange(len(token_ids))
    rows = zip(positions.tolist(), token_ids.tolist(), sequence.tolist(), texts, strict=True)
    return copy.copy_rows(
        conn,
        "token",
        ("family_id", "position", "token_id", "sequence", "text"),
        ((family_id, *row) for row in rows),
    )


def family_id(conn: Connection, name: str) -> int:
    """The id of family `name`; UnknownFamily if there is none."""
    return _id_by_name(conn, tables.Family, name, errors.UnknownFamily)


def sae_id(conn: Connection, name: str) -> int:
    """The id of sae `name` (e.g. S/2); UnknownSae if there is none."""
    return _id_by_name(conn, tables.Sae, name, errors.UnknownSae)


def _id_by_name(
    conn: Connection,
    table: type[tables.Family] | type[tables.Sae],
    name: str,
    unknown: type[errors.NotFound],
) -> int:
    found = conn.execute(sa.select(table.id).where(table.name == name)).scalar_one_or_none()
    if found is None:
        raise unknown(f"unknown {table.__tablename__} {name!r}")
    return int(found)


def families(conn: Connection) -> list[dict[str, Any]]:
    """Families by name with their saes by level (name, d_sae, level, state, n_latents,
    neuronpedia_id)."""
    f, s = tables.Family, tables.Sae
    level = sa.func.rank().over(partition_by=s.family_id, order_by=s.d_sae).label("level")
    # Every index below d_sae is a latent (ingest stores them all): no count over `latent`.
    n_latents = s.d_sae.label("n_latents")
    neuronpedia_id = s.source["neuronpedia_id"].astext.label("neuronpedia_id")
    sae_rows = conn.execute(
        sa.select(s.family_id, s.name, s.d_sae, level, s.state, n_latents, neuronpedia_id).order_by(
            s.family_id, s.d_sae
        )
    ).mappings()
    saes: dict[int, list[dict[str, Any]]] = {}
    for row in sae_rows:
        saes.setdefault(row["family_id"], []).append(
            {k: v for k, v in row.items() if k != "family_id"}
        )
    return [
        {
            "name": row.name,
            "n_tokens": row.n_tokens,
            "saes": saes.get(row.id, []),
            "suggested_root": suggested_root(conn, row.id),
            # The highest floor its jobs stored with: the lowest threshold that is exact.
            "store_floor": max(store_floors(conn, row.name), default=None),
        }
        for row in conn.execute(sa.select(f.id, f.name, f.n_tokens).order_by(f.name))
    ]


# A tree a person can read on one screen: 4 to 25 nodes, the deepest, then the largest, among
# the trees of the first 2,000 latents of the first level (a bounded read at any width).
SUGGESTED_ROOT = sa.text(
    """
    SELECT n.root FROM sae_level s
    CROSS JOIN LATERAL (
        SELECT l.label FROM latent l WHERE l.sae_id = s.id ORDER BY l.idx LIMIT 2000
    ) l
    JOIN tree_nodes n ON n.root = l.label
    WHERE s.family_id = :family AND s.level = 1
    GROUP BY n.root
    ORDER BY count(*) BETWEEN 4 AND 25 DESC, max(n.depth) DESC, count(*) DESC, n.root
    LIMIT 1
    """
)


def store_floors(conn: Connection, family: str | None) -> list[float]:
    """The store floors the jobs (of one family) ran with."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT CAST(j.params ->> 'store_floor' AS float8) FROM job j"
            " JOIN sae s ON s.id = j.parent_sae_id JOIN family f ON f.id = s.family_id"
            " WHERE j.state = 'done' AND (CAST(:family AS text) IS NULL OR f.name = :family)"
        ),
        {"family": family},
    ).scalars()
    return sorted(float(x) for x in rows if x is not None)


def suggested_root(conn: Connection, family_id: int) -> str | None:
    """A root of the family's forest to open first (a mid-sized tree), None before any tree."""
    return conn.execute(SUGGESTED_ROOT, {"family": family_id}).scalar_one_or_none()


def family_summary(
    conn: Connection, family: str, threshold: float, min_active_tokens: int
) -> list[dict[str, Any]]:
    """Per pair of neighbouring levels of `family`: latents that split, merge, persist, are new,
    vanish, and the largest splits (service/db/views/06_family_summary.sql); UnknownFamily if
    there is no such family."""
    family_id(conn, family)  # UnknownFamily before an empty summary
    rows = conn.execute(
        sa.text(
            "SELECT * FROM family_summary(CAST(:family AS text), CAST(:threshold AS real),"
            " CAST(:min_active AS integer))"
        ),
        {"family": family, "threshold": threshold, "min_active": min_active_tokens},
    ).mappings()
    return [dict(row) for row in rows]


def status(conn: Connection) -> dict[str, Any]:
    """Families with their saes (by level) and the number of jobs in each state."""
    jobs = {state: 0 for state in tables.JOB_STATES}
    for state, count in conn.execute(
        sa.select(tables.Job.state, sa.func.count()).group_by(tables.Job.state)
    ):
        jobs[state] = count
    found = families(conn)
    # Each sae's source too: its format, path and, for checkpoints, L0 and FVU.
    sources: dict[str, Any] = dict(
        conn.execute(sa.select(tables.Sae.name, tables.Sae.source)).all()
    )
    for family in found:
        for sae in family["saes"]:
            sae["source"] = sources.get(sae["name"], {})
    return {"families": found, "jobs": jobs}


def latent(conn: Connection, label: str) -> sa.Row[Any]:
    """The latent with `label`; UnknownLabel if there is none."""
    row = conn.execute(sa.select(tables.Latent).where(tables.Latent.label == label)).first()
    if row is None:
        raise errors.UnknownLabel(f"unknown label {label!r}")
    return row


def explanation_of(latent: str) -> str:
    """SQL: the first explanation of the latent row `latent` (an alias), NULL without one."""
    return (
        f"(SELECT x.description FROM explanation x WHERE x.latent_id = {latent}.id"
        " ORDER BY x.rank LIMIT 1)"
    )


def neuronpedia_ids(conn: Connection, family: str) -> dict[str, str]:
    """The Neuronpedia ids (MODEL/SOURCE) of the family's linked saes, by sae name."""
    rows = conn.execute(
        sa.text(
            "SELECT s.name, s.source ->> 'neuronpedia_id' FROM sae s"
            " JOIN family f ON f.id = s.family_id"
            " WHERE f.name = :family AND s.source ? 'neuronpedia_id'"
        ),
        {"family": family},
    ).all()
    return {name: np_id for name, np_id in rows}


# The rooted tree of :root at :threshold and :min_active (service/db/views/04_latent_tree.sql):
# its first :max_nodes nodes by depth, then label (all when NULL; a node's parents are always
# among them), each with the number of nodes reached in all.
_ARGS = "CAST(:root AS text), CAST(:threshold AS real), CAST(:min_active AS integer)"
LATENT_TREE = (
    f"(SELECT f.*, count(*) OVER () AS n_reached FROM latent_tree({_ARGS}) f"
    " ORDER BY f.depth, f.node LIMIT CAST(:max_nodes AS integer))"
)
# Its links (service/db/views/03_latent_reach.sql), one row per qualifying edge between reached
# nodes, for the same first :max_nodes nodes, with the same count.
LATENT_REACH = (
    "(SELECT * FROM (SELECT r.*, max(r.position) OVER () AS n_reached FROM"
    f" (SELECT f.*, dense_rank() OVER (ORDER BY f.depth, f.node) AS position"
    f" FROM latent_reach({_ARGS}) f) r) r WHERE r.position <= CAST(:max_nodes AS integer)"
    " OR CAST(:max_nodes AS integer) IS NULL)"
)


@dataclass(frozen=True)
class Reached:
    """Rows read from a rooted tree, and how many nodes the tree has in all."""

    rows: list[dict[str, Any]]
    n_nodes: int

    @property
    def left_out(self) -> int:
        """Nodes beyond the cap on the number shown."""
        return self.n_nodes - len({row["node"] for row in self.rows})


def tree_rows(
    conn: Connection,
    query: str,
    root: str,
    threshold: float,
    min_active_tokens: int,
    max_nodes: int | None = None,
) -> Reached:
    """The rows of `query`, which reads the rooted tree of `root` as `{tree}` or its links as
    `{reach}` (capped at `max_nodes` nodes) and selects their `n_reached`; UnknownLabel if `root`
    is no latent (a known root is always its own first row)."""
    result = conn.execute(
        sa.text(query.replace("{tree}", LATENT_TREE).replace("{reach}", LATENT_REACH)),
        {
            "root": root,
            "threshold": threshold,
            "min_active": min_active_tokens,
            "max_nodes": max_nodes,
        },
    )
    keys = list(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
    if not rows:
        latent(conn, root)
        raise AssertionError(f"latent_tree({root!r}) returned no root")
    n_nodes = int(rows[0]["n_reached"])
    for row in rows:
        del row["n_reached"]
    return Reached(rows, n_nodes)


def rooted_tree(
    conn: Connection,
    root: str,
    threshold: float,
    min_active_tokens: int,
    n_contexts: int | None = None,
    max_nodes: int | None = None,
) -> Reached:
    """Flat rows of `latent_tree(root, threshold)` (its first `max_nodes` nodes, all when None)
    with each node's max_act, frequency and top `n_contexts` activations in context (all when
    None)."""
    reached = tree_rows(
        conn,
        "SELECT t.node, t.parent, t.depth, t.score, t.other_parents, l.max_act, l.frequency,"
        " l.max_dec_cos,"
        f" {explanation_of('l')} AS explanation,"
        " t.n_reached FROM {tree} t JOIN latent l ON l.label = t.node"
        " ORDER BY t.depth, t.node",
        root,
        threshold,
        min_active_tokens,
        max_nodes,
    )
    nodes = reached.rows
    found = (
        contexts(conn, [node["node"] for node in nodes], n_contexts=n_contexts)
        if n_contexts != 0
        else {}
    )
    for node in nodes:
        node["contexts"] = found.get(node["node"], [])
    return reached


def contexts(
    conn: Connection, labels: list[str], width: int = 8, n_contexts: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Each latent's top `n_contexts` activations (all when None) in context, by label."""
    rows = conn.execute(
        sa.text(
            "SELECT l.label, c.rank, c.position, c.value, c.context_before, c.token,"
            " c.context_after FROM unnest(CAST(:labels AS text[])) AS l(label),"
            " LATERAL latent_contexts(l.label, :width) c"
            " WHERE c.rank <= :n ORDER BY l.label, c.rank"
        ),
        {"labels": labels, "width": width, "n": 100 if n_contexts is None else n_contexts},
    ).mappings()
    found: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for row in rows:
        found[row["label"]].append({k: v for k, v in row.items() if k != "label"})
    return found


def delete_family(conn: Connection, name: str) -> bool:
    """Delete a family with its saes, latents, jobs, edges and forest; False if there was none."""
    job_ids = conn.execute(
        sa.text(
            "DELETE FROM job WHERE id IN (SELECT j.id FROM job j JOIN sae s"
            " ON s.id = j.parent_sae_id JOIN family f ON f.id = s.family_id WHERE f.name = :n)"
            " RETURNING id"
        ),
        {"n": name},
    ).scalars()
    edges.drop(conn, list(job_ids))
    sae_ids = list(
        conn.execute(
            sa.text("SELECT s.id FROM sae s JOIN family f ON f.id = s.family_id WHERE f.name = :n"),
            {"n": name},
        ).scalars()
    )
    forest.forget(conn, sae_ids)
    delete_top_activations(conn, sae_ids)
    delete_latents(conn, sae_ids)
    deleted = conn.execute(sa.delete(tables.Family).where(tables.Family.name == name))
    return deleted.rowcount == 1


def delete_latents(conn: Connection, sae_ids: list[int]) -> None:
    """Delete the latents of saes `sae_ids` (no foreign key cascades to them: see
    `tables.Latent`), after their top activations and forest rows, which are found by them."""
    conn.execute(sa.text("DELETE FROM latent WHERE sae_id = ANY(:ids)"), {"ids": sae_ids})


def delete_top_activations(conn: Connection, sae_ids: list[int]) -> None:
    """Delete the top activations of the latents of saes `sae_ids` (no foreign key cascades
    to them: see `tables.TopActivation`)."""
    conn.execute(
        sa.text(
            "DELETE FROM top_activation t USING latent l"
            " WHERE t.latent_id = l.id AND l.sae_id = ANY(:ids)"
        ),
        {"ids": sae_ids},
    )


NEURONPEDIA_ID = re.compile(r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")


def link_neuronpedia(conn: Connection, sae: str, neuronpedia_id: str | None) -> None:
    """Store (or with None, forget) the Neuronpedia id of sae `sae` (MODEL/SOURCE, e.g.
    gemma-2-2b/12-gemmascope-res-16k), for linking latents out."""
    if neuronpedia_id is not None and not NEURONPEDIA_ID.match(neuronpedia_id):
        raise errors.BadInput(
            f"neuronpedia id {neuronpedia_id!r}: expected MODEL/SOURCE, e.g. gpt2-small/8-res-jb"
        )
    value = sa.func.jsonb_build_object("neuronpedia_id", neuronpedia_id)
    source = (
        tables.Sae.source.op("||")(value)
        if neuronpedia_id
        else tables.Sae.source.op("-")("neuronpedia_id")
    )
    updated = conn.execute(
        sa.update(tables.Sae).where(tables.Sae.name == sae).values(source=source)
    )
    if updated.rowcount != 1:
        raise errors.UnknownSae(f"unknown sae {sae!r}")
