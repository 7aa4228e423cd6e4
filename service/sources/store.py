"""The activation store: content-addressed CSR files under `LATENT_TREES_HOME/store`.

Each sae's activations are kept as `indptr.i64` [T+1], `indices.i32` [nnz], `values.f32` [nnz]
and `meta.json` in `activations/<sha256>/`, so jobs can re-read them in token chunks through
memory maps. Writes go to a temporary folder first and are renamed into place: a reader never
sees a half-written entry, and identical content is stored once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service import errors
from service.compute import chunks as chunks_

FILES = {
    "indptr": ("indptr.i64", np.int64),
    "indices": ("indices.i32", np.int32),
    "values": ("values.f32", np.float32),
}


@dataclass(frozen=True)
class Stored:
    """Where one sae's activations were stored."""

    path: str  # relative to the store root: activations/<sha256>
    sha256: str
    n_tokens: int
    d_sae: int
    nnz: int
    created: bool  # False when identical content was already there


class ActivationStore:
    """The store under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, home: Path) -> ActivationStore:
        """The store of a LATENT_TREES_HOME."""
        return cls(home / "store")

    def write(self, blocks: Iterable[chunks_.SparseChunk], n_tokens: int, d_sae: int) -> Stored:
        """Store consecutive blocks covering tokens [0, n_tokens) (sorted by token)."""
        tmp = self.root / "tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        try:
            hashes = {name: hashlib.sha256() for name in FILES}
            handles = {name: (tmp / fn).open("wb") for name, (fn, _dt) in FILES.items()}
            nnz, next_token = 0, 0
            try:
                self._put(handles, hashes, "indptr", np.zeros(1, np.int64))
                for block in blocks:
                    if block.start != next_token:
                        raise ValueError("blocks must be consecutive")
                    counts = np.bincount(block.rows.numpy(), minlength=block.n_tokens)
                    self._put(handles, hashes, "indptr", nnz + np.cumsum(counts))
                    self._put(handles, hashes, "indices", block.cols.numpy())
                    self._put(handles, hashes, "values", block.values.numpy())
                    nnz += int(block.rows.numel())
                    next_token += block.n_tokens
            finally:
                for fh in handles.values():
                    fh.close()
            if next_token != n_tokens:
                raise ValueError(f"blocks cover {next_token} tokens, expected {n_tokens}")
            digest = hashlib.sha256(
                f"csr:{n_tokens}:{d_sae}:".encode()
                + b"".join(hashes[name].digest() for name in FILES)
            ).hexdigest()
            meta = {"n_tokens": n_tokens, "d_sae": d_sae, "nnz": nnz, "sha256": digest}
            (tmp / "meta.json").write_text(json.dumps(meta))
            rel = f"activations/{digest}"
            final = self.root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
                created = True
            except OSError:
                if not (final / "meta.json").exists():
                    raise
                created = False  # same content stored before
            return Stored(rel, digest, n_tokens, d_sae, nnz, created)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _put(handles: dict[str, Any], hashes: dict[str, Any], name: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=FILES[name][1]).tobytes()
        handles[name].write(data)
        hashes[name].update(data)

    def remove(self, stored: Stored) -> None:
        """Undo a write that created a new entry (used when the ingest transaction fails)."""
        if stored.created:
            shutil.rmtree(self.root / stored.path, ignore_errors=True)

    def open(self, rel_path: str) -> StoreSource:
        """The stored activations at `rel_path` as a chunk source."""
        return StoreSource(self.root / rel_path)


class StoreSource:
    """A stored entry read through memory maps; implements compute.chunks.ChunkSource."""

    def __init__(self, folder: Path) -> None:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            self._n_tokens, self._d_sae = int(meta["n_tokens"]), int(meta["d_sae"])
            self.sha256 = str(meta["sha256"])
            nnz = int(meta["nnz"])
            self.indptr = np.memmap(
                folder / FILES["indptr"][0], np.int64, "r", shape=(self._n_tokens + 1,)
            )
            shape = (nnz,)
            self.indices = _map(folder / FILES["indices"][0], np.int32, shape)
            self.values = _map(folder / FILES["values"][0], np.float32, shape)
        except (OSError, ValueError, KeyError) as exc:
            raise errors.ServiceError(
                f"activation store entry {folder} is missing or damaged"
            ) from exc

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    @property
    def d_sae(self) -> int:
        return self._d_sae

    def chunks(self, chunk_tokens: int) -> Iterator[chunks_.SparseChunk]:
        for start in range(0, self._n_tokens, chunk_tokens):
            stop = min(start + chunk_tokens, self._n_tokens)
            ptr = np.asarray(self.indptr[start : stop + 1])
            lo, hi = int(ptr[0]), int(ptr[-1])
            rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(ptr))
            yield chunks_.SparseChunk(
                start,
                stop - start,
                torch.from_numpy(rows),
                torch.from_numpy(np.asarray(self.indices[lo:hi], dtype=np.int64)),
                torch.from_numpy(np.array(self.values[lo:hi])),
            )


def _map(path: Path, dtype: type, shape: tuple[int]) -> np.ndarray:
    if shape[0] == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", shape=shape)
