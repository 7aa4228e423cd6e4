"""Ingest an sae from an activation file: validate everything, store, then write in one
transaction (sae, latents, jobs). A bad input leaves the database exactly as it was."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy.engine import Engine

from service import settings
from service.compute import stats as stats_
from service.db import queries, saes
from service.sources import activations, store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    """What an ingest added."""

    name: str
    d_sae: int
    n_tokens: int
    nnz: int
    job_ids: list[int]


def job_params(config: settings.Settings) -> dict[str, object]:
    """The parameters recorded on each new job."""
    return {
        "store_floor": config.store_floor,
        "top_parents": 3,
        "max_attempts": config.max_attempts,
    }


def ingest_activations(
    engine: Engine,
    config: settings.Settings,
    family: str,
    path: Path,
    d_sae: int | None = None,
    name: str | None = None,
) -> Ingested:
    """Add an sae to `family` from the activation file or directory at `path`."""
    with engine.connect() as conn:
        family_id = queries.family_id(conn, family)
        if name is not None:
            saes.check_name(family, name)
            saes.check_free(conn, family_id, name, d_sae)

    with activations.ActivationFile(path, d_sae) as source:
        fingerprint = _fingerprint(source) if source.has_token_ids else None
        with engine.connect() as conn:
            family_row = saes.lock_family(conn, family)
            saes.check_token_set(family_row, str(path), source.n_tokens, fingerprint)
            saes.check_free(conn, family_id, name, source.d_sae)
        acc = stats_.StatsAccumulator(source.d_sae, torch.device("cpu"))

        def blocks():  # type: ignore[no-untyped-def]
            for block in source.blocks():
                acc.add(block)
                yield block

        activation_store = store.ActivationStore.under(config.home)
        stored = activation_store.write(blocks(), source.n_tokens, source.d_sae)
        kind, n_tokens, width = source.kind, source.n_tokens, source.d_sae
    stats = acc.result()
    try:
        with engine.begin() as conn:
            family_row = saes.lock_family(conn, family)
            # Re-check under the lock: another ingest may have landed meanwhile.
            saes.check_token_set(family_row, str(path), n_tokens, fingerprint)
            final_name = name or saes.default_name(conn, family, family_row.id)
            _, job_ids = saes.add(
                conn,
                family_row,
                final_name,
                width,
                saes.LatentColumns(
                    stats.max_act.numpy(), stats.n_active.numpy(), stats.sum_sq.numpy(), n_tokens
                ),
                fingerprint,
                {"kind": "activations", "path": str(path.resolve()), "format": kind},
                stored.path,
                stored.sha256,
                job_params(config),
            )
    except BaseException:
        activation_store.remove(stored)
        raise
    log.info("ingested %s: %d tokens, %d latents, jobs %s", final_name, n_tokens, width, job_ids)
    return Ingested(final_name, width, n_tokens, stored.nnz, job_ids)


def _fingerprint(source: activations.ActivationFile) -> str:
    digest = hashlib.sha256()
    for block in source.token_ids():
        digest.update(block.astype("<i8").tobytes())
    return digest.hexdigest()
