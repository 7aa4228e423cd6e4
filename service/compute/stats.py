"""Per-latent statistics over a token set: max, active count, sum of squares."""

from __future__ import annotations

from dataclasses import dataclass

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
    """Streams chunks into each latent's `k` largest activations and their token positions."""

    def __init__(self, d_sae: int, k: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.full((d_sae, k), -1.0, dtype=torch.float32, device=device)
        self.positions = torch.full((d_sae, k), -1, dtype=torch.int64, device=device)

    def add(self, chunk: chunks_.SparseChunk) -> None:
        """Fold one chunk in: only entries above their latent's current k-th value compete."""
        beats = chunk.values > self.values[chunk.cols, -1]
        if not bool(beats.any()):
            return
        cols, values = chunk.cols[beats], chunk.values[beats]
        positions = chunk.start + chunk.rows[beats]
        touched = torch.unique(cols)
        k = self.k
        lat = torch.cat([touched.repeat_interleave(k), cols])
        val = torch.cat([self.values[touched].flatten(), values])
        pos = torch.cat([self.positions[touched].flatten(), positions])
        # Order by latent, then value (largest first), then position (earliest first):
        # three stable sorts, least significant key first.
        order = torch.sort(pos, stable=True).indices
        order = order[torch.sort(val[order], descending=True, stable=True).indices]
        order = order[torch.sort(lat[order], stable=True).indices]
        lat, val, pos = lat[order], val[order], pos[order]
        group_start = torch.searchsorted(lat, touched)
        slot = (
            torch.arange(lat.numel(), device=lat.device)
            - group_start[torch.searchsorted(touched, lat)]
        )
        keep = slot < k
        self.values[lat[keep], slot[keep]] = val[keep]
        self.positions[lat[keep], slot[keep]] = pos[keep]

    def result(self) -> Top:
        positions = torch.where(self.values > 0, self.positions, -1)
        return Top(positions.cpu(), self.values.clamp(min=0).cpu())
