"""Co-activation sums for one tile of (parent, child) latent pairs.

For every token, each active parent latent meets each active child latent once. The work is
proportional to the number of such co-activations (tokens x parent L0 x child L0), never to
d_sae(parent) x d_sae(child). Four sums per pair suffice for every score part, and they merge
by addition across chunks, tiles of tokens, or machines:

    ab = sum a*b,   aa = sum a^2 [b>0],   bb = sum b^2 [a>0],   n = #co-active tokens
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from service.compute import chunks as chunks_

# Bytes of working memory per co-activation while a chunk is expanded (indices and values).
BYTES_PER_COACTIVATION = 64
# Co-activations expanded at once (a chunk with more is expanded in token batches).
MAX_COACTIVATIONS = 1 << 22


@dataclass(frozen=True)
class Tile:
    """Parent latents [p0, p1) x child latents [c0, c1): one independently computable unit."""

    p0: int
    p1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.p1 - self.p0, self.c1 - self.c0)


class PairSums:
    """The four sums of every pair of a tile, dense over the tile, streamed chunk by chunk."""

    def __init__(
        self,
        tile: Tile,
        device: torch.device,
        dtype: torch.dtype = torch.float64,
        max_coactivations: int = MAX_COACTIVATIONS,
    ) -> None:
        self.tile = tile
        self.device = device
        self.max_coactivations = max_coactivations
        n_pairs = tile.shape[0] * tile.shape[1]
        # Rows: ab, aa, bb, n. Counts are exact in float64 up to 2**53.
        self.sums: Float[Tensor, "4 n_pairs"] = torch.zeros(4, n_pairs, dtype=dtype, device=device)
        self.n_coactivations = 0

    def add(self, parent: chunks_.SparseChunk, child: chunks_.SparseChunk) -> None:
        """Fold in one chunk pair covering the same tokens (on this device, tile-restricted)."""
        if parent.start != child.start or parent.n_tokens != child.n_tokens:
            raise ValueError("parent and child chunks cover different tokens")
        n_tokens = parent.n_tokens
        child_count = torch.bincount(child.rows, minlength=n_tokens)
        # Co-activations per token, then split tokens into batches of bounded expansion.
        per_token = torch.bincount(parent.rows, minlength=n_tokens) * child_count
        total = int(per_token.sum())
        if total == 0:
            return
        self.n_coactivations += total
        if total <= self.max_coactivations:
            self._expand(parent, child, child_count)
            return
        ends = torch.cumsum(per_token, 0)
        bounds = torch.searchsorted(
            ends,
            torch.arange(self.max_coactivations, total, self.max_coactivations, device=ends.device),
        )
        cuts = [0, *sorted({int(b) for b in bounds.tolist()}), n_tokens]
        for lo, hi in itertools.pairwise(cuts):
            if hi > lo:
                self._expand(_rows(parent, lo, hi), _rows(child, lo, hi), child_count[lo:hi])

    def _expand(
        self, parent: chunks_.SparseChunk, child: chunks_.SparseChunk, child_count: Tensor
    ) -> None:
        # For each parent entry, enumerate the child entries of its token (CSR offsets).
        child_start = torch.cumsum(child_count, 0) - child_count
        reps = child_count[parent.rows]
        total = int(reps.sum())
        if total == 0:
            return
        pe = torch.repeat_interleave(
            torch.arange(reps.numel(), device=reps.device), reps, output_size=total
        )
        first = torch.cumsum(reps, 0) - reps
        offset = torch.arange(total, device=reps.device) - torch.repeat_interleave(
            first, reps, output_size=total
        )
        ce = child_start[parent.rows[pe]] + offset
        key = parent.cols[pe] * self.tile.shape[1] + child.cols[ce]
        a = parent.values[pe].to(self.sums.dtype)
        b = child.values[ce].to(self.sums.dtype)
        self.sums[0].index_add_(0, key, a * b)
        self.sums[1].index_add_(0, key, a * a)
        self.sums[2].index_add_(0, key, b * b)
        self.sums[3].index_add_(0, key, torch.ones_like(a))


def _rows(chunk: chunks_.SparseChunk, lo: int, hi: int) -> chunks_.SparseChunk:
    """Tokens [lo, hi) of a chunk, re-based to start at 0."""
    first, last = torch.searchsorted(
        chunk.rows, torch.tensor([lo, hi], device=chunk.rows.device)
    ).tolist()
    return chunks_.SparseChunk(
        chunk.start + lo,
        hi - lo,
        chunk.rows[first:last] - lo,
        chunk.cols[first:last],
        chunk.values[first:last],
    )
