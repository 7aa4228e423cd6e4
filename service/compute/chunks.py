"""Sparse activations, streamed in token chunks.

A chunk holds the active entries of consecutive tokens in coordinate form, sorted by token:
`rows` (token within the chunk), `cols` (latent index) and `values` (> 0). Every source, in
memory or on disk, yields chunks through `ChunkSource.chunks`, so the engine never needs more
than one chunk of tokens at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class SparseChunk:
    """The active entries of tokens [start, start + n_tokens), sorted by token."""

    start: int
    n_tokens: int
    rows: Int[Tensor, " nnz"]
    cols: Int[Tensor, " nnz"]
    values: Float[Tensor, " nnz"]

    def to(self, device: torch.device) -> SparseChunk:
        """The same chunk on `device`."""
        nb = device.type == "cuda"
        return SparseChunk(
            self.start,
            self.n_tokens,
            self.rows.to(device, non_blocking=nb),
            self.cols.to(device, non_blocking=nb),
            self.values.to(device, non_blocking=nb),
        )


class ChunkSource(Protocol):
    """Activations of one sae over a token set, readable again and again in token chunks."""

    @property
    def n_tokens(self) -> int: ...

    @property
    def d_sae(self) -> int: ...

    def chunks(self, chunk_tokens: int) -> Iterator[SparseChunk]:
        """Consecutive chunks of `chunk_tokens` tokens (the last may be shorter)."""
        ...


def _coo(start: int, n_tokens: int, rows: Tensor, cols: Tensor, values: Tensor) -> SparseChunk:
    active = values > 0  # a value of 0 is padding or inactive
    return SparseChunk(
        start,
        n_tokens,
        rows[active].to(torch.int64),
        cols[active].to(torch.int64),
        values[active].to(torch.float32),
    )


@dataclass(frozen=True)
class TopKSource:
    """In-memory top-k activations: `indices` and `values` [T, k]; a value of 0 is padding."""

    indices: Int[Tensor, "n_tokens k"]
    values: Float[Tensor, "n_tokens k"]
    d_sae: int

    @property
    def n_tokens(self) -> int:
        return int(self.indices.shape[0])

    def chunks(self, chunk_tokens: int) -> Iterator[SparseChunk]:
        k = self.indices.shape[1]
        for start in range(0, self.n_tokens, chunk_tokens):
            stop = min(start + chunk_tokens, self.n_tokens)
            n = stop - start
            rows = torch.arange(n, device=self.indices.device).repeat_interleave(k)
            yield _coo(
                start,
                n,
                rows,
                self.indices[start:stop].reshape(-1),
                self.values[start:stop].reshape(-1),
            )


@dataclass(frozen=True)
class CsrSource:
    """In-memory CSR activations: `indptr` [T+1], `indices` and `values` [nnz]."""

    indptr: Int[Tensor, " n_tokens_plus_1"]
    indices: Int[Tensor, " nnz"]
    values: Float[Tensor, " nnz"]
    d_sae: int

    @property
    def n_tokens(self) -> int:
        return int(self.indptr.shape[0]) - 1

    def chunks(self, chunk_tokens: int) -> Iterator[SparseChunk]:
        for start in range(0, self.n_tokens, chunk_tokens):
            stop = min(start + chunk_tokens, self.n_tokens)
            lo, hi = int(self.indptr[start]), int(self.indptr[stop])
            counts = (self.indptr[start + 1 : stop + 1] - self.indptr[start:stop]).to(torch.int64)
            rows = torch.arange(stop - start, device=counts.device).repeat_interleave(counts)
            yield _coo(start, stop - start, rows, self.indices[lo:hi], self.values[lo:hi])


@dataclass(frozen=True)
class DenseSource:
    """In-memory dense activations [T, d_sae] (small cases and tests)."""

    dense: Float[Tensor, "n_tokens d_sae"]

    @property
    def n_tokens(self) -> int:
        return int(self.dense.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.dense.shape[1])

    def chunks(self, chunk_tokens: int) -> Iterator[SparseChunk]:
        for start in range(0, self.n_tokens, chunk_tokens):
            block = self.dense[start : start + chunk_tokens]
            rows, cols = torch.nonzero(block > 0, as_tuple=True)
            yield _coo(start, int(block.shape[0]), rows, cols, block[rows, cols])
