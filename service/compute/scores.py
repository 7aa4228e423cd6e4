"""Score parts of SPEC.md section 2, from pair sums and per-latent statistics.

    masked_cos        = ab / (sqrt(aa) * sqrt(sum b^2))       mask on the child (b > 0)
    masked_cos_parent = ab / (sqrt(sum a^2) * sqrt(bb))       mask on the parent (a > 0)
    mcs               = max(masked_cos, masked_cos_parent)
    max_ratio         = max b / max a
    score             = masked_cos * max_ratio

Because inactive means exactly 0, sum_{b>0} b^2 is the child's whole sum of squares, and the
sums over masked tokens only see co-active tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from service.compute import pairs as pairs_
from service.compute import stats as stats_


@dataclass(frozen=True)
class EdgeParams:
    """Which pairs are kept: score or mcs above `store_floor`, plus each child's best parents."""

    store_floor: float = 0.2
    top_parents: int = 3


@dataclass(frozen=True)
class Edges:
    """Scored pairs (CPU tensors): parent and child are latent indices within their saes."""

    parent: Int[Tensor, " n"]
    child: Int[Tensor, " n"]
    masked_cos: Float[Tensor, " n"]
    masked_cos_parent: Float[Tensor, " n"]
    max_ratio: Float[Tensor, " n"]
    score: Float[Tensor, " n"]
    n_coactive: Int[Tensor, " n"]

    def __len__(self) -> int:
        return int(self.parent.shape[0])

    @property
    def mcs(self) -> Float[Tensor, " n"]:
        """The original MCS: the larger of both masked cosines."""
        return torch.maximum(self.masked_cos, self.masked_cos_parent)

    def select(self, keep: Tensor) -> Edges:
        """The edges at `keep` (a mask or an index tensor)."""
        return Edges(*(getattr(self, f.name)[keep] for f in fields(self)))

    @staticmethod
    def concat(parts: list[Edges]) -> Edges:
        """All edges of `parts`, in order."""
        if not parts:
            return empty()
        return Edges(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Edges)))

    def sorted(self) -> Edges:
        """Ordered by child, then score descending, then parent: best parents first."""
        order = torch.argsort(self.parent, stable=True)
        order = order[torch.argsort(-self.score[order], stable=True)]
        order = order[torch.argsort(self.child[order], stable=True)]
        return self.select(order)


def empty() -> Edges:
    i, f = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    return Edges(i, i, f, f, f, f, i)


def tile_edges(
    sums: pairs_.PairSums,
    parent: stats_.LatentStats,
    child: stats_.LatentStats,
    params: EdgeParams,
) -> Edges:
    """The candidate edges of one tile: above the floor, or among a child's top parents."""
    tile = sums.tile
    n_p, n_c = tile.shape
    dev, dt = sums.sums.device, sums.sums.dtype
    ab, aa, bb, n = (s.view(n_p, n_c) for s in sums.sums)
    p_sum_sq = parent.sum_sq[tile.p0 : tile.p1].to(dev, dt)[:, None]
    c_sum_sq = child.sum_sq[tile.c0 : tile.c1].to(dev, dt)[None, :]
    p_max = parent.max_act[tile.p0 : tile.p1].to(dev, dt)[:, None]
    c_max = child.max_act[tile.c0 : tile.c1].to(dev, dt)[None, :]

    coactive = n > 0
    masked_cos = _ratio(ab, torch.sqrt(aa) * torch.sqrt(c_sum_sq), coactive)
    masked_cos_parent = _ratio(ab, torch.sqrt(p_sum_sq) * torch.sqrt(bb), coactive)
    max_ratio = _ratio(c_max.expand(n_p, n_c), p_max.expand(n_p, n_c), coactive)
    score = masked_cos * max_ratio
    valid = coactive & torch.isfinite(score)

    floor = params.store_floor
    keep = valid & ((score > floor) | (torch.maximum(masked_cos, masked_cos_parent) > floor))
    keep |= _top_parents(torch.where(valid, score, -torch.inf), params.top_parents) & valid

    p_idx, c_idx = torch.nonzero(keep, as_tuple=True)
    return Edges(
        (p_idx + tile.p0).cpu(),
        (c_idx + tile.c0).cpu(),
        masked_cos[p_idx, c_idx].to(torch.float64).cpu(),
        masked_cos_parent[p_idx, c_idx].to(torch.float64).cpu(),
        max_ratio[p_idx, c_idx].to(torch.float64).cpu(),
        score[p_idx, c_idx].to(torch.float64).cpu(),
        n[p_idx, c_idx].to(torch.int64).cpu(),
    )


def _ratio(num: Tensor, den: Tensor, where: Tensor) -> Tensor:
    # Zero wherever undefined, so that no NaN or Inf can leave this module.
    safe = where & (den > 0)
    return torch.where(safe, num / torch.where(safe, den, torch.ones_like(den)), 0.0)


def _top_parents(score: Float[Tensor, "p c"], k: int) -> Bool[Tensor, "p c"]:
    """Pairs scoring at least each child's k-th best score (ties kept: merging breaks them)."""
    if k <= 0 or score.shape[0] == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    kth = torch.topk(score, min(k, score.shape[0]), dim=0).values[-1:]
    return (score >= kth) & torch.isfinite(kth)


def finalize(candidates: Edges, params: EdgeParams) -> Edges:
    """Merge tile candidates: keep floor edges plus each child's top parents (ties: lowest
    parent index), sorted by child then score."""
    ordered = candidates.sorted()
    if len(ordered) == 0:
        return ordered
    # Rank within each child's run (ordered by score desc, parent asc).
    child = ordered.child
    new_run = torch.ones_like(child, dtype=torch.bool)
    new_run[1:] = child[1:] != child[:-1]
    run_start = torch.cummax(torch.where(new_run, torch.arange(len(child)), 0), 0).values
    rank = torch.arange(len(child)) - run_start
    floor = params.store_floor
    keep = (rank < params.top_parents) | (ordered.score > floor) | (ordered.mcs > floor)
    return ordered.select(keep)


def qualifies(
    edges: Edges,
    parent: stats_.LatentStats,
    child: stats_.LatentStats,
    threshold: float = 0.6,
    min_active_tokens: int = 10,
) -> Bool[Tensor, " n"]:
    """Which edges qualify: score above the threshold, both latents active often enough."""
    return (
        (edges.score > threshold)
        & (parent.n_active[edges.parent] >= min_active_tokens)
        & (child.n_active[edges.child] >= min_active_tokens)
    )
