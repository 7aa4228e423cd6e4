"""`explanations import`: a Neuronpedia export's explanations attached to an sae's latents.

The sae must be linked to Neuronpedia (`sae link S/2 --neuronpedia MODEL/SOURCE`): every line
must name that model and source. All lines are read and checked first; then, in one
transaction, the sae's explanations are replaced by them (re-importing never duplicates).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service import errors
from service.db import copy
from service.db import engine as db_engine
from service.sources import neuronpedia


@dataclass(frozen=True)
class Imported:
    sae: str
    n_explanations: int
    n_latents: int
    n_files: int
    n_replaced: int


def import_(engine: Engine, sae: str, path: Path) -> Imported:
    """Replace the explanations of sae `sae` (S/2) by those of the export at `path`."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT id, d_sae, source ->> 'neuronpedia_id' AS np FROM sae WHERE name = :n"),
            {"n": sae},
        ).first()
    if row is None:
        raise errors.UnknownSae(f"unknown sae {sae!r}")
    if row.np is None:
        raise errors.BadInput(
            f"sae {sae} is not linked to Neuronpedia: run `latent-trees sae link {sae}"
            " --neuronpedia MODEL/SOURCE` first"
        )
    found = neuronpedia.files(path)
    explanations = neuronpedia.read(found, row.np, row.d_sae)
    # Rank within each latent, in file order (1: shown first).
    seen: Counter[int] = Counter()
    ranks = []
    for explanation in explanations:
        seen[explanation.index] += 1
        ranks.append(seen[explanation.index])

    def write(conn: sa.Connection) -> int:
        conn.execute(sa.text("SELECT id FROM sae WHERE id = :s FOR UPDATE"), {"s": row.id})
        replaced = conn.execute(
            sa.text(
                "DELETE FROM explanation WHERE latent_id IN"
                " (SELECT id FROM latent WHERE sae_id = :s)"
            ),
            {"s": row.id},
        ).rowcount
        conn.exec_driver_sql(
            "CREATE TEMP TABLE explanation_stage (idx integer, rank smallint,"
            " description text, type_name text, explanation_model_name text) ON COMMIT DROP"
        )
        copy.copy_rows(
            conn,
            "explanation_stage",
            ("idx", "rank", "description", "type_name", "explanation_model_name"),
            (
                (e.index, r, e.description, e.type_name, e.explanation_model_name)
                for e, r in zip(explanations, ranks, strict=True)
            ),
        )
        conn.execute(
            sa.text(
                "INSERT INTO explanation (latent_id, rank, description, type_name,"
                " explanation_model_name) SELECT l.id, x.rank, x.description, x.type_name,"
                " x.explanation_model_name FROM explanation_stage x"
                " JOIN latent l ON l.sae_id = :s AND l.idx = x.idx"
            ),
            {"s": row.id},
        )
        return int(replaced)

    replaced = db_engine.transaction(engine, write)
    return Imported(sae, len(explanations), len(seen), len(found), replaced)
