"""Per-latent statistics over a token set: max, active count, sum of squares."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from service.compute import chunks as chunks_
from service.compute import device as device_


@dataclass(frozen=True)
class LatentStats:
    """Statistics of every latent of one sae (CPU tensors, float64 sums)."""

    n_tokens: int
    max_act: Float[Tensor, " d_sae"]
    n_active: Int[Tensor, " d_sae"]
    sum_sq: Float[Tensor, " d_sae"]

    @property
    def d_sae(self) -> int:
        return int(self.max_act.shape[0])

    @property
    def frequency(self) -> Float[Tensor, " d_sae"]:
        """Fraction of tokens on which each latent is active."""
        return self.n_active.to(torch.float64) / max(self.n_tokens, 1)

    def merge(self, other: LatentStats) -> LatentStats:
        """Statistics of the concatenated token sets (sums add, maxima take the max)."""
        return LatentStats(
            self.n_tokens + other.n_tokens,
            torch.maximum(self.max_act, other.max_act),
            self.n_active + other.n_active,
            self.sum_sq + other.sum_sq,
        )


class StatsAccumulator:
    """Streams chunks into per-latent max, active count and float64 sum of squares."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.n_tokens = 0
        self.max_act = torch.zeros(d_sae, dtype=torch.float32, device=device)
        self.n_active = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sum_sq = torch.zeros(d_sae, dtype=torch.float64, device=device)

    def add(self, chunk: chunks_.SparseChunk) -> None:
        """Fold one chunk in (already on the accumulator's device)."""
        self.n_tokens += chunk.n_tokens
        self.max_act.scatter_reduce_(0, chunk.cols, chunk.values, reduce="amax")
        self.n_active.index_add_(0, chunk.cols, torch.ones_like(chunk.cols))
        v = chunk.values.to(torch.float64)
        self.sum_sq.index_add_(0, chunk.cols, v * v)

    def result(self) -> LatentStats:
        return LatentStats(
            self.n_tokens, self.max_act.cpu(), self.n_active.cpu(), self.sum_sq.cpu()
        )


def latent_stats(
    source: chunks_.ChunkSource, *, device: str = "auto", chunk_tokens: int = 65536
) -> LatentStats:
    """Statistics of every latent of `source`, in one streaming pass."""
    dev = device_.resolve(device)
    acc = StatsAccumulator(source.d_sae, dev)
    for chunk in source.chunks(chunk_tokens):
        acc.add(chunk.to(dev))
    return acc.result()


@dataclass(frozen=True)
class Top:
    """The largest activations of each latent: positions [d_sae, k] (token index, -1 = none)
    and values [d_sae, k], largest first; ties go to the earliest token."""

    positions: Int[Tensor, "d_sae k"]
    values: Float[Tensor, "d_sae k"]


class TopAccumulator:
    """Streams chunks into each latent's `k` largest activations and their token positions,
    on the CPU: one compiled pass over each chunk's entries (most fall below their latent's
    k-th value at once)."""

    def __init__(self, d_sae: int, k: int) -> None:
        self.values = np.full((d_sae, k), -1.0, np.float32)  # -1: an empty place
        self.positions = np.full((d_sae, k), -1, np.int64)

    def add(self, chunk: chunks_.SparseChunk) -> None:
        _fold_top(
            chunk.cols.cpu().numpy(),
            chunk.values.cpu().to(torch.float32).numpy(),
            chunk.rows.cpu().numpy(),
            chunk.start,
            self.values,
            self.positions,
        )

    def result(self) -> Top:
        values = torch.from_numpy(self.values)
        positions = torch.where(values > 0, torch.from_numpy(self.positions), -1)
        return Top(positions, values.clamp(min=0))


@numba.njit(cache=True, nogil=True)
def _fold_top(
    cols: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    start: int,
    top_values: np.ndarray,
    top_positions: np.ndarray,
) -> None:
    """Put each entry (latent, value, token start + row) in its latent's list, kept in order:
    value descending, then token ascending (whatever order the entries come in)."""
    k = top_values.shape[1]
    for i in range(len(cols)):
        c, v, t = cols[i], values[i], start + rows[i]
        at = k
        while at > 0 and (
            v > top_values[c, at - 1]
            or (v == top_values[c, at - 1] and t < top_positions[c, at - 1])
        ):
            at -= 1
        if at == k:
            continue
        for j in range(k - 1, at, -1):
            top_values[c, j] = top_values[c, j - 1]
            top_positions[c, j] = top_positions[c, j - 1]
        top_values[c, at] = v
        top_positions[c, at] = t
