"""Removing an sae: its rows in one transaction (latents, edges, jobs; the job its removal makes
adjacent is planned; the forest brought up to date), then its store entry released (kept if
another sae references the same content)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from service import entries, ingest, settings
from service.db import saes
from service.sources import store


def delete(engine: Engine, config: settings.Settings, name: str) -> saes.Deleted:
    """Delete sae `name` (S/2) and everything that hangs from it."""
    with engine.begin() as conn:
        deleted = saes.delete(conn, name, ingest.job_params(config))
    if deleted.activations_path:
        entries.release(engine, store.Store.under(config.home), deleted.activations_path)
    return deleted
