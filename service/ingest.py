"""Ingest an sae, from an activation file or from a checkpoint that encodes the family's stored
model inputs: validate everything, store the activations, then write in one transaction (sae,
latents, top activations, jobs). A bad input leaves the database exactly as it was."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.engine import Engine

from service import entries, errors, settings
from service.compute import chunks as chunks_
from service.compute import decoder as decoder_
from service.compute import device as device_
from service.compute import encode as encode_
from service.compute import scores
from service.compute import stats as stats_
from service.db import queries, saes
from service.sources import activations, checkpoints, releases, store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    """What an ingest added."""

    name: str
    d_sae: int
    n_tokens: int
    nnz: int
    job_ids: list[int]
    source: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know (one line each)


def job_params(config: settings.Settings) -> dict[str, object]:
    """The parameters recorded on each new job."""
    rule = scores.EdgeParams(store_floor=config.store_floor)
    return {
        "store_floor": rule.store_floor,
        "top_parents": rule.top_parents,
        "top_children": rule.top_children,
        "max_attempts": config.max_attempts,
    }


@dataclass
class _Staged:
    """Activations written to a temporary folder, with their statistics, awaiting the
    transaction that places them in the store."""

    pending: store.Pending[store.Stored]
    stats: stats_.LatentStats
    top: stats_.Top


def _stage(
    config: settings.Settings,
    blocks: Iterable[chunks_.SparseChunk],
    n_tokens: int,
    d_sae: int,
    decoder: np.ndarray | None = None,
) -> _Staged:
    """Stream blocks into the store while folding them into the per-latent statistics."""
    cpu = torch.device("cpu")
    acc = stats_.StatsAccumulator(d_sae, cpu)
    top = stats_.TopAccumulator(d_sae, config.top_activations)

    def counted() -> Iterable[chunks_.SparseChunk]:
        for block in blocks:
            acc.add(block)
            top.add(block)
            yield block

    the_store = store.Store.under(config.home)
    the_store.sweep_tmp()  # what killed ingests left behind
    pending = the_store.write_activations(counted(), n_tokens, d_sae, decoder)
    return _Staged(pending, acc.result(), top.result())


def _commit(
    engine: Engine,
    config: settings.Settings,
    family: str,
    name: str | None,
    what: str,
    fingerprint: str | None,
    source: dict[str, Any],
    staged: _Staged,
) -> Ingested:
    stats = staged.stats
    the_store = store.Store.under(config.home)
    with entries.referencing(engine, the_store, staged.pending) as (conn, stored):
        family_row = saes.lock_family(conn, family)
        # Re-check under the lock: another ingest may have landed meanwhile.
        saes.check_token_set(family_row, what, stats.n_tokens, fingerprint)
        final_name = name or saes.default_name(conn, family, family_row.id)
        _, job_ids = saes.add(
            conn,
            family_row,
            final_name,
            stats.d_sae,
            saes.LatentColumns(
                stats.max_act.numpy(),
                stats.n_active.numpy(),
                stats.sum_sq.numpy(),
                stats.n_tokens,
                staged.top.positions.numpy(),
                staged.top.values.numpy(),
            ),
            fingerprint,
            source,
            stored.path,
            stored.sha256,
            job_params(config),
        )
    log.info(
        "ingested %s: %d tokens, %d latents, jobs %s",
        final_name,
        stats.n_tokens,
        stats.d_sae,
        job_ids,
    )
    return Ingested(final_name, stats.d_sae, stats.n_tokens, stored.nnz, job_ids, source)


MAX_D_SAE = 2**31 - 1  # latent indices are int4 in the database
# Memory an ingest holds per latent: statistics and the latent row it writes, rounded up, and
# per kept top activation (a position and a value).
_BYTES_PER_LATENT = 64
_BYTES_PER_TOP_ACTIVATION = 12


def check_width(config: settings.Settings, what: str, d_sae: int) -> None:
    """Refuse a width the database or this machine's memory cannot hold, saying why."""
    if d_sae > MAX_D_SAE:
        raise errors.BadInput(f"{what}: d_sae {d_sae:,}: at most {MAX_D_SAE:,} latents")
    need = d_sae * (_BYTES_PER_LATENT + _BYTES_PER_TOP_ACTIVATION * config.top_activations)
    memory = device_.host_memory()
    if need > memory // 2:
        raise errors.BadInput(
            f"{what}: d_sae {d_sae:,}: its per-latent statistics and top activations need"
            f" {need / 2**30:,.1f} GiB, more than half of this machine's {memory / 2**30:,.1f} GiB"
        )


def _check_name(engine: Engine, family: str, name: str | None, d_sae: int | None) -> None:
    with engine.connect() as conn:
        family_id = queries.family_id(conn, family)
        if name is not None:
            saes.check_name(family, name)
        saes.check_free(conn, family_id, name, d_sae)


def ingest_activations(
    engine: Engine,
    config: settings.Settings,
    family: str,
    path: Path,
    d_sae: int | None = None,
    name: str | None = None,
) -> Ingested:
    """Add an sae to `family` from the activation file or directory at `path`."""
    if d_sae is not None:
        check_width(config, "--d-sae", d_sae)
    _check_name(engine, family, name, d_sae)
    with activations.ActivationFile(path, d_sae) as source:
        check_width(config, str(path), source.d_sae)
        fingerprint = _fingerprint(source) if source.has_token_ids else None
        # Checked early without a lock (re-checked under it at commit), so a bad file is
        # refused before it is streamed.
        with engine.connect() as conn:
            family_row = saes.family_row(conn, family)
            saes.check_token_set(family_row, str(path), source.n_tokens, fingerprint)
            saes.check_free(conn, family_row.id, name, source.d_sae)
        staged = _stage(config, source.blocks(), source.n_tokens, source.d_sae)
        meta = {"kind": "activations", "path": str(path.resolve()), "format": source.kind}
    added = _commit(engine, config, family, name, str(path), fingerprint, meta, staged)
    if fingerprint is None and family_row.token_fingerprint:
        added.notes.append(
            f"{path}: no 'token_ids', so its tokens were not checked against the token set of"
            f" family {family!r} (only their number)"
        )
    return added


def ingest_release(
    engine: Engine,
    config: settings.Settings,
    family: str,
    release: str,
    sae_id: str,
    name: str | None = None,
) -> Ingested:
    """Add an sae of a pretrained release (SAELens's directory), read from the local Hugging
    Face cache; its Neuronpedia id becomes the sae's link."""
    _check_name(engine, family, name, None)
    found = releases.resolve(release, sae_id, releases.directory_file(config.releases))
    folder = releases.fetch(found)
    extra: dict[str, Any] = {"release": release, "sae_id": sae_id, "repo_id": found.repo_id}
    if found.neuronpedia_id:
        extra["neuronpedia_id"] = found.neuronpedia_id
    return ingest_checkpoint(
        engine, config, family, folder, name, releases.load(found, folder), extra
    )


def ingest_checkpoint(
    engine: Engine,
    config: settings.Settings,
    family: str,
    folder: Path,
    name: str | None = None,
    encoder: encode_.Encoder | None = None,
    source: dict[str, Any] | None = None,
) -> Ingested:
    """Add an sae to `family` from a checkpoint (read from `folder` unless `encoder` is given),
    encoding the family's stored model inputs; `source` adds to what its row records."""
    _check_name(engine, family, name, None)
    encoder = encoder or checkpoints.load(folder)
    check_width(config, str(folder), encoder.d_sae)
    with engine.connect() as conn:
        family_row = saes.family_row(conn, family)
        saes.check_free(conn, family_row.id, name, encoder.d_sae)
    path = (family_row.inputs or {}).get("path")
    if not path:
        raise errors.BadInput(
            f"family {family!r} has no model inputs to encode: create it with"
            " `family create NAME --model ...` or `--inputs FILE`"
        )
    inputs = store.Store.under(config.home).open_inputs(path)
    if encoder.d_in != inputs.d_in:
        raise errors.BadInput(
            f"{folder}: d_in: expected {inputs.d_in} (the model inputs of family {family!r}),"
            f" got {encoder.d_in}"
        )
    if encoder.normalisation is encode_.Normalisation.scale and math.isnan(encoder.input_scale):
        encoder.input_scale = _expected_average_scale(inputs, config.encode_tokens)
    dtype = getattr(torch, config.encode_dtype)
    quality = encode_.Reconstruction()
    started = time.perf_counter()
    blocks: Iterable[chunks_.SparseChunk]
    if config.ray is not None:  # token shards encoded by Ray tasks, streamed back in order
        from service.compute import cluster

        device = torch.device("cuda" if config.ray_gpus_per_task > 0 else "cpu")
        blocks = cluster.encode_shards(
            config.ray,
            encoder,
            inputs,
            config.encode_tokens,
            dtype,
            quality,
            cpus=config.ray_cpus_per_task,
            gpus=config.ray_gpus_per_task,
        )
    else:
        device = device_.resolve(config.device)
        blocks = encode_.encode_batches(
            encoder, inputs.batches(config.encode_tokens), device, dtype, quality
        )
    staged = _stage(
        config, blocks, inputs.n_tokens, encoder.d_sae, decoder_.unit_rows(encoder.W_dec)
    )
    seconds = time.perf_counter() - started
    meta = {
        "kind": "checkpoint",
        "path": str(folder.resolve()),
        **encoder.metadata,
        "d_in": encoder.d_in,
        "k": encoder.k,
        "device": str(device),
        **({"ray": config.ray} if config.ray is not None else {}),
        "dtype": config.encode_dtype,
        "fvu": round(quality.fvu, 6),
        "l0": round(quality.l0, 3),
        "encode_seconds": round(seconds, 3),
        **(source or {}),
    }
    return _commit(
        engine, config, family, name, str(folder), family_row.token_fingerprint, meta, staged
    )


def _expected_average_scale(inputs: store.InputsSource, batch_tokens: int) -> float:
    """SAELens `expected_average_only_in` without a stored factor: scale so that the mean input
    norm is sqrt(d_in), measured on the family's inputs."""
    total, count = 0.0, 0
    for _start, x in inputs.batches(batch_tokens):
        total += float(x.float().norm(dim=-1).sum())
        count += int(x.shape[0])
    return (inputs.d_in**0.5) / (total / count) if total > 0 else 1.0


def _fingerprint(source: activations.ActivationFile) -> str:
    digest = hashlib.sha256()
    for block in source.token_ids():
        digest.update(block.astype("<i8").tobytes())
    return digest.hexdigest()
