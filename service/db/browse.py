"""Reads for dashboards (the JSON API and the exports): latent cards, edge pages, DAGs, search.

Every function takes a Connection, never commits, and returns plain JSON-able values. Labels
and names are checked here, before any SQL runs, so a malformed one is a BadInput, an unknown
one a NotFound.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service import errors
from service.db import queries, tables

_PART = tables.NAME_PATTERN.strip("^$")
LABEL = re.compile(rf"^{_PART}/{_PART}/[0-9]{{1,9}}$")
SAE_NAME = re.compile(rf"^{_PART}/{_PART}$")
AFTER = re.compile(r"^([0-9]{1,10})-([0-9]{1,10})$")

# Every score part of an edge, from `edge e` joined to its latents `p`, `c` and the parent's
# sae level `ps` (the columns of the latent_edges view).
EDGE_PARTS = """
    e.masked_cos, e.masked_cos_parent, GREATEST(e.masked_cos, e.masked_cos_parent) AS mcs,
    e.max_ratio, e.score, e.n_coactive, COALESCE(ps.next_id = c.sae_id, false) AS adjacent,
    e.dec_cos
"""
SCORE_PARTS = (
    "masked_cos",
    "masked_cos_parent",
    "mcs",
    "max_ratio",
    "score",
    "n_coactive",
    "adjacent",
    "dec_cos",
    "qualifies",
)
QUALIFIES = """
    (COALESCE(ps.next_id = c.sae_id, false)
     AND edge_qualifies(e.score, p.n_active, c.n_active, CAST(:threshold AS real), :min_active))
    AS qualifies
"""


def check_label(label: str) -> str:
    """`label` if it has the form FAMILY/SAE/INDEX, else a BadInput error."""
    if not LABEL.match(label):
        raise errors.BadInput(f"label {label!r}: expected FAMILY/SAE/INDEX, e.g. S/2/65")
    return label


def check_sae_name(name: str) -> str:
    """`name` if it has the form FAMILY/SAE, else a BadInput error."""
    if not SAE_NAME.match(name):
        raise errors.BadInput(f"sae {name!r}: expected FAMILY/SAE, e.g. S/2")
    return name


def latent_card(
    conn: Connection, label: str, threshold: float, min_active_tokens: int, limit: int = 100
) -> dict[str, Any]:
    """A latent's statistics, top activations in context, its place in the forest, and its
    stored parents and children (best first, up to `limit` each) with every score part."""
    check_label(label)
    row = (
        conn.execute(
            sa.text(
                "SELECT l.id, l.label, f.name AS family, s.name AS sae, s.level, s.d_sae, l.idx,"
                " l.max_act, l.n_active, l.frequency, l.max_dec_cos,"
                " t.source ->> 'neuronpedia_id' AS neuronpedia_id"
                " FROM latent l JOIN sae_level s ON s.id = l.sae_id JOIN sae t ON t.id = s.id"
                " JOIN family f ON f.id = s.family_id WHERE l.label = :label"
            ),
            {"label": label},
        )
        .mappings()
        .first()
    )
    if row is None:
        raise errors.UnknownLabel(f"unknown label {label!r}")
    card = {k: v for k, v in row.items() if k != "id"}
    forest = (
        conn.execute(
            sa.text(
                "SELECT n.root, n.depth, e.parent, e.score FROM tree_nodes n"
                " LEFT JOIN tree_edges e ON e.child = n.node WHERE n.node = :label"
            ),
            {"label": label},
        )
        .mappings()
        .first()
    )
    card["forest"] = dict(forest) if forest is not None else None
    card["contexts"] = queries.contexts(conn, [label])[label]
    card["explanations"] = [
        dict(r)
        for r in conn.execute(
            sa.text(
                "SELECT description, type_name, explanation_model_name FROM explanation"
                " WHERE latent_id = :id ORDER BY rank"
            ),
            {"id": row["id"]},
        ).mappings()
    ]
    params = {"id": row["id"], "threshold": threshold, "min_active": min_active_tokens}
    for side, mine, theirs in (("parents", "child", "parent"), ("children", "parent", "child")):
        query = edges_query(
            [f"e.{mine}_id = :id"], qualifies=True, order=f"e.score DESC, {theirs[0]}.idx"
        )
        card[side] = [
            {"label": r[theirs]} | {k: r[k] for k in SCORE_PARTS}
            for r in conn.execute(
                sa.text(query + " LIMIT :limit"), params | {"limit": limit}
            ).mappings()
        ]
        card[f"n_{side}"] = conn.execute(
            sa.text(f"SELECT count(*) FROM edge WHERE {mine}_id = :id"), params
        ).scalar_one()
    return card


@dataclass(frozen=True)
class EdgeFilter:
    """Which edges a page or an export holds; the names are sae names (FAMILY/SAE)."""

    family: str | None = None
    parent_sae: str | None = None
    child_sae: str | None = None
    min_score: float | None = None

    def where(self, conn: Connection) -> tuple[list[str], dict[str, Any]]:
        """SQL conditions on `e`, `p`, `c` and their bound values; NotFound for unknown names."""
        conditions: list[str] = []
        params: dict[str, Any] = {}
        if self.family is not None:
            queries.check_name("family", self.family)
            params["family_id"] = queries.family_id(conn, self.family)
            conditions.append("p.sae_id IN (SELECT id FROM sae WHERE family_id = :family_id)")
        for side, name in (("parent", self.parent_sae), ("child", self.child_sae)):
            if name is not None:
                params[f"{side}_sae"] = queries.sae_id(conn, check_sae_name(name))
                conditions.append(f"{side[0]}.sae_id = :{side}_sae")
        if self.min_score is not None:
            conditions.append("e.score >= :min_score")
            params["min_score"] = self.min_score
        return conditions, params


def parse_after(token: str) -> tuple[int, int]:
    """The (parent id, child id) a page token stands for; BadInput if it is not one."""
    match = AFTER.match(token)
    if match is None:
        raise errors.BadInput(f"after {token!r}: expected the `next` token of an earlier page")
    return int(match[1]), int(match[2])


def edges_query(
    where: list[str], *, qualifies: bool = False, order: str = "e.parent_id, e.child_id"
) -> str:
    """Edges with labels, sae names and every score part, in (parent id, child id) order
    unless told; with `qualifies`, also whether each qualifies (binds :threshold and
    :min_active)."""
    conditions = " AND ".join(where) if where else "true"
    return (
        "SELECT e.parent_id, e.child_id, p.label AS parent, c.label AS child,"
        " ps.name AS parent_sae, cs.name AS child_sae, ps.level AS parent_level,"
        f" cs.level AS child_level, {EDGE_PARTS}{', ' + QUALIFIES if qualifies else ''}"
        " FROM edge e JOIN latent p ON p.id = e.parent_id JOIN latent c ON c.id = e.child_id"
        " JOIN sae_level ps ON ps.id = p.sae_id JOIN sae_level cs ON cs.id = c.sae_id"
        f" WHERE {conditions} ORDER BY {order}"
    )


def edges_page(
    conn: Connection, which: EdgeFilter, limit: int, after: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of edges and the token of the next page (None on the last): keyset pagination
    over the edge primary key, so every page costs the same however deep."""
    where, params = which.where(conn)
    if after is not None:
        params["after_parent"], params["after_child"] = parse_after(after)
        where.append("(e.parent_id, e.child_id) > (:after_parent, :after_child)")
        # Implied, but the planner does not carry a bound across the join: without it a merge
        # join walks every parent latent before the page (linear in the page's depth).
        where.append("p.id >= :after_parent")
    rows = conn.execute(
        sa.text(edges_query(where) + " LIMIT :limit"), params | {"limit": limit + 1}
    ).mappings()
    page = [dict(row) for row in rows]
    next_token = None
    if len(page) > limit:
        page = page[:limit]
        next_token = f"{page[-1]['parent_id']}-{page[-1]['child_id']}"
    for row in page:
        del row["parent_id"], row["child_id"]
    return page, next_token


def dag(
    conn: Connection,
    root: str,
    threshold: float,
    min_active_tokens: int,
    max_nodes: int | None = None,
) -> dict[str, Any]:
    """The rooted DAG of `root`: reached nodes (the first `max_nodes` by depth, all when None)
    and every qualifying link between them, `best` marking the link each node is drawn under
    in the rooted tree; `n_nodes` counts every node reached, `left_out` those not shown."""
    check_label(root)
    # One row per link into a node (the root once, without a link), then each node once.
    reached = queries.tree_rows(
        conn,
        "SELECT r.node, r.depth, r.parent, r.score, r.rank, r.n_reached FROM {reach} r"
        " ORDER BY r.depth, r.node, r.rank",
        root,
        threshold,
        min_active_tokens,
        max_nodes,
    )
    labels = list(dict.fromkeys(row["node"] for row in reached.rows))
    found = conn.execute(
        sa.text(
            "SELECT l.label, s.name AS sae, s.level, l.max_act, l.frequency,"
            f" {queries.explanation_of('l')} AS explanation"
            " FROM latent l JOIN sae_level s ON s.id = l.sae_id"
            " WHERE l.label = ANY(CAST(:labels AS text[]))"
        ),
        {"labels": labels},
    ).mappings()
    about = {row["label"]: row for row in found}
    depth = {row["node"]: row["depth"] for row in reached.rows}
    nodes = {
        label: {
            "id": label,
            "depth": depth[label],
            **{k: about[label][k] for k in ("sae", "level", "max_act", "frequency", "explanation")},
        }
        for label in labels
    }
    links = [
        {
            "source": row["parent"],
            "target": row["node"],
            "weight": row["score"],
            "best": row["rank"] == 1,
        }
        for row in reached.rows
        if row["parent"] is not None
    ]
    return {
        "nodes": list(nodes.values()),
        "links": links,
        "n_nodes": reached.n_nodes,
        "left_out": reached.left_out,
    }


def search(conn: Connection, prefix: str, family: str | None, limit: int) -> list[dict[str, Any]]:
    """Latents whose label starts with `prefix` (in label order), with their forest root."""
    if "\x00" in prefix:
        raise errors.BadInput("q: expected text without NUL characters")
    params: dict[str, Any] = {"pattern": like_escape(prefix) + "%", "limit": limit}
    condition = ""
    if family is not None:
        queries.check_name("family", family)
        params["family_id"] = queries.family_id(conn, family)
        condition = " AND s.family_id = :family_id"
    rows = conn.execute(
        sa.text(
            "SELECT l.label, s.name AS sae, l.max_act, l.frequency, n.root, n.depth"
            " FROM latent l JOIN sae s ON s.id = l.sae_id"
            " LEFT JOIN tree_nodes n ON n.node = l.label"
            f" WHERE l.label LIKE :pattern{condition} ORDER BY s.d_sae, l.idx LIMIT :limit"
        ),
        params,
    ).mappings()
    return [dict(row) for row in rows]


def like_escape(text: str) -> str:
    """`text` with the LIKE wildcards escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def stream(
    conn: Connection, query: str, params: dict[str, Any], names: list[str], batch: int = 50_000
) -> Iterator[list[list[Any]]]:
    """The columns `names` of `query`'s rows, `batch` rows at a time (a list of columns each),
    read through a server-side cursor: exports never hold a table in memory."""
    # psycopg's own named cursor: SQLAlchemy's streaming fetched ~50 rows a round trip.
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    statement = str(sa.text(query).compile(dialect=conn.dialect))
    # The planner plans a cursor for its first 10% of rows by default; every row is read here.
    conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1")
    with raw.cursor(name=f"stream_{uuid.uuid4().hex}") as cursor:
        cursor.execute(statement, params)
        assert cursor.description is not None
        where = [[column.name for column in cursor.description].index(n) for n in names]
        while rows := cursor.fetchmany(batch):
            columns = list(zip(*rows, strict=True))
            yield [list(columns[i]) for i in where]


def copy_csv(
    conn: Connection, query: str, params: dict[str, Any], chunk_bytes: int = 1 << 20
) -> Iterator[bytes]:
    """`query`'s rows as CSV with a header row (`COPY ... TO STDOUT`), in chunks of about
    `chunk_bytes`, in the query's order: Arrow parses it several times faster than rows are
    built one by one."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    statement = str(sa.text(query).compile(dialect=conn.dialect))
    chunk = bytearray()
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY ({statement}) TO STDOUT (FORMAT csv, HEADER true)", params) as copy,
    ):
        # COPY hands over one row at a time: joined here, not passed on row by row (21% of
        # an export's time went to handing 1.66M rows on).
        while row := copy.read():
            chunk += row
            if len(chunk) >= chunk_bytes:
                yield bytes(chunk)
                chunk.clear()
    if chunk:
        yield bytes(chunk)


def latents_query(family: str | None) -> str:
    """Every latent (of one family) with its statistics and place in the forest."""
    condition = "WHERE f.name = :family" if family is not None else ""
    return (
        "SELECT l.label, f.name AS family, s.name AS sae, s.level, s.d_sae, l.idx, l.max_act,"
        " l.n_active, l.frequency, n.root, n.depth, e.parent, e.score AS parent_score,"
        " l.max_dec_cos,"
        f" {queries.explanation_of('l')} AS explanation"
        " FROM latent l JOIN sae_level s ON s.id = l.sae_id JOIN family f ON f.id = s.family_id"
        " LEFT JOIN tree_nodes n ON n.node = l.label LEFT JOIN tree_edges e ON e.child = l.label"
        f" {condition} ORDER BY f.name, s.level, l.idx"
    )


def forest_query(family: str | None) -> str:
    """The forest (tree_nodes with each node's best parent), root by root, depth first."""
    condition = "WHERE n.root LIKE :family_prefix" if family is not None else ""
    return (
        "SELECT n.root, n.node, e.parent, n.depth, e.score, n.path,"
        f" {queries.explanation_of('l')} AS explanation"
        " FROM tree_nodes n LEFT JOIN tree_edges e ON e.child = n.node"
        " JOIN latent l ON l.label = n.node"
        f" {condition} ORDER BY n.root, n.path"
    )
