"""One definition of "qualifies" (edge_qualifies), the same at the boundary in every reader of
the product: the forest, the rooted tree, the DAG, the latent card and the export query."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.db import browse, edges, forest, queries

AT = float(np.float32(0.6))  # what a score of 0.6 is once stored as real
ABOVE = float(np.nextafter(np.float32(0.6), np.float32(1)))


def _family(conn: Connection, score: float, n_active: int = 20) -> None:
    """Family Q: one parent latent, three children; child 0 at `score`, 1 well above, 2 below."""
    queries.create_family(conn, "Q")
    for name, d in (("Q/1", 1), ("Q/2", 3)):
        conn.execute(
            sa.text("INSERT INTO sae (family_id, name, d_sae) SELECT id, :n, :d FROM family"),
            {"n": name, "d": d},
        )
        conn.execute(
            sa.text(
                "INSERT INTO latent (sae_id, idx, label, max_act, n_active, frequency, sum_sq)"
                " SELECT s.id, i, s.name || '/' || i, 1, :a, 0.1, 1"
                " FROM sae s, generate_series(0, s.d_sae - 1) i WHERE s.name = :n"
            ),
            {"n": name, "a": n_active},
        )
    job_id = conn.execute(
        sa.text(
            "INSERT INTO job (parent_sae_id, child_sae_id, state) SELECT p.id, c.id, 'done'"
            " FROM sae p, sae c WHERE p.name = 'Q/1' AND c.name = 'Q/2' RETURNING id"
        )
    ).scalar_one()
    conn.exec_driver_sql(
        f"CREATE TABLE {edges.partition(job_id)} PARTITION OF edge FOR VALUES IN ({job_id})"
    )
    for child, value in ((0, score), (1, 0.9), (2, 0.5)):
        conn.execute(
            sa.text(
                "INSERT INTO edge SELECT p.id, c.id, j.id, :s, :s, 1, :s, 5"
                " FROM latent p, latent c, job j WHERE p.label = 'Q/1/0' AND c.label = :c"
            ),
            {"s": value, "c": f"Q/2/{child}"},
        )
    forest.rebuild(conn)


def _readers(conn: Connection) -> dict[str, set[str]]:
    """The qualifying children of Q/1/0 at 0.6 as each reader sees them."""
    forest = {r[0] for r in conn.execute(sa.text("SELECT child FROM tree_edges")).all()}
    rooted = {r["node"] for r in queries.rooted_tree(conn, "Q/1/0", 0.6, 10).rows[1:]}
    dag = {link["target"] for link in browse.dag(conn, "Q/1/0", 0.6, 10)["links"]}
    card = browse.latent_card(conn, "Q/1/0", 0.6, 10)
    cards = {c["label"] for c in card["children"] if c["qualifies"]}
    query = browse.edges_query(["p.label = 'Q/1/0'"], qualifies=True)
    exported = {
        r.child
        for r in conn.execute(sa.text(query), {"threshold": 0.6, "min_active": 10}).all()
        if r.qualifies
    }
    return {"forest": forest, "rooted": rooted, "dag": dag, "card": cards, "export": exported}


@pytest.mark.parametrize(("score", "qualifies"), [(AT, False), (ABOVE, True)])
def test_a_score_at_the_threshold_is_read_alike_everywhere(
    conn: Connection, score: float, qualifies: bool
) -> None:
    _family(conn, score)
    want = {"Q/2/1"} | ({"Q/2/0"} if qualifies else set())
    assert _readers(conn) == dict.fromkeys(("forest", "rooted", "dag", "card", "export"), want)


def test_min_active_tokens_is_read_alike_everywhere(conn: Connection) -> None:
    _family(conn, 0.9, n_active=9)  # both latents too rare: nothing qualifies anywhere
    assert all(found == set() for found in _readers(conn).values())


def test_the_rule_itself(conn: Connection) -> None:
    def q(*args: object) -> bool:
        call = "SELECT edge_qualifies(CAST(:s AS real), :p, :c" + ", CAST(:t AS real), :m" * (
            len(args) > 3
        )
        names = ("s", "p", "c", "t", "m")
        return bool(
            conn.execute(sa.text(call + ")"), dict(zip(names, args, strict=False))).scalar_one()
        )

    assert not q(AT, 10, 10) and q(ABOVE, 10, 10)
    assert not q(0.9, 9, 10) and not q(0.9, 10, 9) and q(0.9, 10, 10)
    assert q(0.5, 1, 1, 0.4, 1) and not q(0.5, 1, 1, 0.5, 1)
