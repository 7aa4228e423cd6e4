"""Store entries and the rows that reference them: placing, releasing and collecting.

An ingest or a family registration writes its entry to a temporary folder, then, in the
transaction that inserts the rows pointing at it, places the entry under its shared lock
(`referencing`). When that transaction fails, or an sae is deleted, the entry is released: it
is deleted only if no committed row references it, under its exclusive lock. `collect` releases
every entry and sweeps the temporary folders of killed writers (`latent-trees store gc`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from service.db import store_refs
from service.sources import store

log = logging.getLogger(__name__)


@contextlib.contextmanager
def referencing(
    engine: Engine, the_store: store.Store, pending: store.Pending[store.E]
) -> Iterator[tuple[Connection, store.E]]:
    """A transaction in which the pending entry is in place and may be referenced; if it
    fails, the entry is released (kept if another committed row references it)."""
    try:
        try:
            with engine.begin() as conn:
                store_refs.lock(conn, pending.entry.path, shared=True)
                entry = the_store.place(pending)
                yield conn, entry
        except BaseException:
            with contextlib.suppress(Exception):  # unreachable database: `store gc` later
                release(engine, the_store, pending.entry.path)
            raise
    finally:
        the_store.discard(pending)


def release(engine: Engine, the_store: store.Store, rel_path: str) -> bool:
    """Delete the entry at `rel_path` unless a committed row references it; True if deleted."""
    with engine.begin() as conn:
        store_refs.lock(conn, rel_path, shared=False)
        if store_refs.referenced(conn, rel_path) or not (the_store.root / rel_path).exists():
            return False
        the_store.delete(rel_path)
    log.info("store entry %s removed: nothing references it", rel_path)
    return True


@dataclass(frozen=True)
class Collected:
    """What `collect` removed: unreferenced entries and abandoned temporary folders."""

    entries: int
    entry_bytes: int
    tmp_folders: int
    tmp_bytes: int
    kept: int


def collect(engine: Engine, the_store: store.Store) -> Collected:
    """Remove every entry no sae or family references, and killed writers' temporary folders."""
    removed = n_bytes = kept = 0
    for rel in the_store.entries():
        size = the_store.size(rel)
        if release(engine, the_store, rel):
            removed += 1
            n_bytes += size
        else:
            kept += 1
    tmp_folders, tmp_bytes = the_store.sweep_tmp()
    return Collected(removed, n_bytes, tmp_folders, tmp_bytes, kept)
