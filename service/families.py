"""Registering a family: by name only (activation files), or with its model inputs, captured
from a model or read from a precomputed file, stored once and encoded by every sae checkpoint
ingested later. Inputs go to the store first; the family row and its token texts are then
written in one transaction, and a failure releases what was stored (`service.entries`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.engine import Engine

from service import entries, errors, settings
from service.db import queries
from service.sources import arrays, store
from service.sources import model as model_

BATCH_ROWS = 65536


@dataclass(frozen=True)
class Created:
    """A family and, when it has them, its stored model inputs."""

    name: str
    n_tokens: int | None = None
    d_in: int | None = None
    inputs: dict[str, Any] | None = None


def create(engine: Engine, name: str) -> Created:
    """A family for activation files: its token set is fixed by the first ingest."""
    with engine.begin() as conn:
        queries.create_family(conn, name)
    return Created(name)


def create_from_model(
    engine: Engine,
    config: settings.Settings,
    name: str,
    spec: model_.Capture,
    dtype: str,
    progress: Callable[[str], None] | None = None,
) -> Created:
    """Capture `spec.n_tokens` inputs at `spec.hook` of `spec.model` over `spec.corpus`;
    `progress` gets a line at each tenth of the tokens."""
    _check_free(engine, name)
    batches, d_in, vocab, meta = model_.capture(spec)
    if progress is not None:
        batches = _reported(batches, spec.n_tokens, progress)
    # `vocab` fills up as the batches stream in; the store writes it after the last batch.
    return _store_and_register(engine, config, name, batches, d_in, dtype, vocab, meta)


def create_from_inputs(
    engine: Engine, config: settings.Settings, name: str, path: Path, dtype: str
) -> Created:
    """Register a family whose model inputs are a [T, d_in] array in `path`."""
    _check_free(engine, name)
    with _inputs_file(path) as (x, token_ids):
        n_tokens, d_in = x.shape

        def batches() -> Iterator[store.InputsBatch]:
            for start in range(0, n_tokens, BATCH_ROWS):
                block = np.array(x[start : start + BATCH_ROWS])  # a writable copy for torch
                if not np.isfinite(block).all():
                    raise errors.BadInput(f"{path}: field 'inputs': expected finite values")
                ids = (
                    np.full(len(block), -1, np.int64)
                    if token_ids is None
                    else np.asarray(token_ids[start : start + BATCH_ROWS], np.int64)
                )
                yield store.InputsBatch(
                    torch.from_numpy(block), ids, np.zeros(len(block), np.int64)
                )

        meta = {
            "kind": "inputs",
            "path": str(path.resolve()),
            "has_token_ids": token_ids is not None,
        }
        return _store_and_register(engine, config, name, batches(), d_in, dtype, None, meta)


def _reported(
    batches: Iterator[store.InputsBatch], total: int, progress: Callable[[str], None]
) -> Iterator[store.InputsBatch]:
    done, started, mark = 0, time.perf_counter(), total / 10
    for batch in batches:
        yield batch
        done += int(batch.x.shape[0])
        if done >= mark or done >= total:
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress(f"  captured {done:,} / {total:,} tokens ({rate:,.0f} tokens/s)")
            mark = done + total / 10


def _check_free(engine: Engine, name: str) -> None:
    queries.check_name("family", name)
    with engine.connect() as conn:
        try:
            queries.family_id(conn, name)
        except errors.UnknownFamily:
            return
    raise errors.DuplicateFamily(f"family {name!r} already exists")


def _store_and_register(
    engine: Engine,
    config: settings.Settings,
    name: str,
    batches: Iterator[store.InputsBatch],
    d_in: int,
    dtype: str,
    vocab: dict[int, str] | None,
    meta: dict[str, Any],
) -> Created:
    the_store = store.Store.under(config.home)
    the_store.sweep_tmp()  # what killed registrations left behind
    pending = the_store.write_inputs(batches, d_in, dtype, vocab, meta)
    has_ids = meta.get("has_token_ids", True)
    with entries.referencing(engine, the_store, pending) as (conn, stored):
        inputs = {**meta, "path": stored.path, "d_in": d_in, "dtype": dtype}
        family_id = queries.create_family(
            conn,
            name,
            inputs,
            stored.n_tokens,
            stored.token_fingerprint if has_ids else None,
        )
        if vocab is not None:
            source = the_store.open_inputs(stored.path)
            ids = np.asarray(source.token_ids)
            queries.add_tokens(
                conn,
                family_id,
                ids,
                np.asarray(source.sequence),
                [vocab.get(int(i), "") for i in ids],
            )
    return Created(name, stored.n_tokens, d_in, inputs)


@contextlib.contextmanager
def _inputs_file(path: Path) -> Iterator[tuple[arrays.LazyArray, arrays.LazyArray | None]]:
    """(inputs [T, d_in], token_ids [T] or None) of a .npy, .npz or .safetensors file."""
    with arrays.open_arrays(path) as named:
        matrices = [n for n, a in named.items() if len(a.shape) == 2]
        key = next(
            (n for n in ("inputs", arrays.DENSE_NPY) if n in named),
            matrices[0] if len(matrices) == 1 else None,
        )
        if key is None:
            raise errors.BadInput(
                f"{path}: field 'inputs': expected one [T, d_in] float array, found"
                f" {sorted(named) or 'none'}"
            )
        x = named[key]
        if len(x.shape) != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise errors.BadInput(f"{path}: field {key!r}: expected shape [T, d_in], got {x.shape}")
        if x.dtype.kind != "f":
            raise errors.BadInput(f"{path}: field {key!r}: expected a float dtype, got {x.dtype}")
        ids = named.get("token_ids")
        if ids is not None and (
            len(ids.shape) != 1 or ids.shape[0] != x.shape[0] or ids.dtype.kind not in "iu"
        ):
            raise errors.BadInput(
                f"{path}: field 'token_ids': expected [{x.shape[0]}] integers,"
                f" got {list(ids.shape)} {ids.dtype}"
            )
        yield x, ids
