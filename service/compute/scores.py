"""Score parts of SPEC.md section 2, from pair sums and per-latent statistics.

    masked_cos        = ab / sqrt(aa * sum b^2)               mask on the child (b > 0)
    masked_cos_parent = ab / sqrt(sum a^2 * bb)               mask on the parent (a > 0)
    mcs               = max(masked_cos, masked_cos_parent)
    max_ratio         = max b / max a
    score             = masked_cos * max_ratio

Because inactive means exactly 0, sum_{b>0} b^2 is the child's whole sum of squares, and the
sums over masked tokens only see co-active tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numba
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from service.compute import stats as stats_


@dataclass(frozen=True)
class EdgeParams:
    """Which pairs are stored (SPEC.md section 2): score or mcs above `store_floor`, plus each
    child's `top_parents` best parents and each parent's `top_children` best children."""

    store_floor: float = 0.4
    top_parents: int = 3
    top_children: int = 3


def parts(
    ab: Any, aa: Any, bb: Any, p_sum_sq: Any, c_sum_sq: Any, p_max: Any, c_max: Any
) -> tuple[Any, Any, Any, Any]:
    """(masked_cos, masked_cos_parent, max_ratio, score) of co-active pairs from their sums.

    Arithmetic only, so that one definition serves numpy arrays, torch tensors and the compiled
    kernels' scalars. Every denominator is > 0 for a co-active pair (both latents were active
    on a token), so nothing here can divide by zero."""
    masked_cos = ab / (aa * c_sum_sq) ** 0.5
    masked_cos_parent = ab / (p_sum_sq * bb) ** 0.5
    max_ratio = c_max / p_max
    return masked_cos, masked_cos_parent, max_ratio, masked_cos * max_ratio


def above_floor(score: Any, mcs: Any, floor: float) -> Any:
    """Stored whatever the ranks: score or mcs above the store floor."""
    return (score > floor) | (mcs > floor)


# Compact columns (tens of millions of candidates): the parts are stored as float4 anyway; the
# score stays float64 because ranks and the floor are decided on it.
DTYPES = {
    "parent": torch.int32,
    "child": torch.int32,
    "masked_cos": torch.float32,
    "masked_cos_parent": torch.float32,
    "max_ratio": torch.float32,
    "score": torch.float64,
    "n_coactive": torch.int32,
}


@dataclass(frozen=True)
class Edges:
    """Scored pairs (CPU tensors): parent and child are latent indices within their saes.
    Build with `Edges.of`, which gives every column its dtype (`DTYPES`)."""

    parent: Int[Tensor, " n"]
    child: Int[Tensor, " n"]
    masked_cos: Float[Tensor, " n"]
    masked_cos_parent: Float[Tensor, " n"]
    max_ratio: Float[Tensor, " n"]
    score: Float[Tensor, " n"]
    n_coactive: Int[Tensor, " n"]

    @staticmethod
    def of(*columns: Tensor | np.ndarray) -> Edges:
        """Edges from its seven columns, in field order, converted to their dtypes."""
        return Edges(
            *(
                torch.as_tensor(c).to(DTYPES[f.name])
                for c, f in zip(columns, fields(Edges), strict=True)
            )
        )

    def __len__(self) -> int:
        return int(self.parent.shape[0])

    @property
    def mcs(self) -> Float[Tensor, " n"]:
        """The original MCS: the larger of both masked cosines."""
        return torch.maximum(self.masked_cos, self.masked_cos_parent)

    def select(self, keep: Tensor) -> Edges:
        """The edges at `keep` (a mask or an index tensor). A mask becomes indices once, not
        once per column (on a GPU, each mask is a synchronising nonzero)."""
        at = keep.nonzero().squeeze(1) if keep.dtype == torch.bool else keep
        return Edges(*(getattr(self, f.name)[at] for f in fields(self)))

    @staticmethod
    def concat(parts: list[Edges]) -> Edges:
        """All edges of `parts`, in order."""
        if not parts:
            return empty()
        if len(parts) == 1:
            return parts[0]
        return Edges(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Edges)))

    def sorted(self) -> Edges:
        """Ordered by child, then score descending, then parent: best parents first."""
        return self.select(_order(self.child, self.score, self.parent))

    def compact(self, keep: Tensor) -> Edges:
        """The edges at mask `keep`, moved to the front of these very columns (no copy: the
        candidates are consumed; tens of millions of rows)."""
        mask = keep.numpy()
        n = 0
        for f in fields(self):
            n = _compact(getattr(self, f.name).numpy(), mask)
        return Edges(*(getattr(self, f.name)[:n] for f in fields(self)))

    @staticmethod
    def from_sums(
        parent: Tensor,
        child: Tensor,
        sums: Float[Tensor, "4 n"],
        parent_stats: stats_.LatentStats,
        child_stats: stats_.LatentStats,
    ) -> Edges:
        """Co-active pairs (latent indices) scored from their sums ab, aa, bb, n, on the
        device of the sums (the statistics are moved there)."""
        dev = sums.device

        def stat(x: Tensor, at: Tensor) -> Tensor:
            return x.to(dev, torch.float64)[at]

        ab, aa, bb, n = sums.to(torch.float64)
        mc, mcp, ratio, score = parts(
            ab,
            aa,
            bb,
            stat(parent_stats.sum_sq, parent),
            stat(child_stats.sum_sq, child),
            stat(parent_stats.max_act, parent),
            stat(child_stats.max_act, child),
        )
        return Edges.of(parent, child, mc, mcp, ratio, score, n)

    def cpu(self) -> Edges:
        """The same edges as CPU tensors."""
        return Edges(*(getattr(self, f.name).cpu() for f in fields(self)))


@numba.njit(cache=True, nogil=True)
def _compact(column: np.ndarray, keep: np.ndarray) -> int:
    n = 0
    for i in range(len(keep)):
        if keep[i]:
            column[n] = column[i]
            n += 1
    return n


def empty() -> Edges:
    return Edges.of(*(torch.zeros(0) for _ in fields(Edges)))


def candidates(
    edges: Edges,
    params: EdgeParams,
    child_best: Tensor | None = None,
    parents_grouped: bool = False,
) -> Edges:
    """A block's candidates among its scored pairs, on their device: a superset of its stored
    edges (finite; above the floor, or scoring at least the k-th best distinct score of their
    parent or child in the block: each group's k best and their ties). No sort: k rounds of a
    per-group maximum (`finalize` ranks the few survivors exactly).

    `child_best` ([d_child, top_parents], on the device): scores of the earlier blocks' pairs,
    the best of each child (-inf where fewer), raised here with this block's. A child's
    threshold is then its k-th best over every block so far, not this block's alone: where a
    block holds few parents, nearly every pair is among its child's best in the block.

    `parents_grouped`: the pairs come ordered by parent, so that a parent's maxima are
    reductions over its own stretch (`_best_distinct`), not atomics into one place that all of
    its thousands of pairs contend for."""
    finite = torch.isfinite(edges.score)
    score = torch.where(finite, edges.score, -torch.inf)
    keep = above_floor(edges.score, edges.mcs, params.store_floor)
    keep |= score >= _kth_best(edges.parent, score, params.top_children, parents_grouped)
    if child_best is None or params.top_parents <= 0:
        keep |= score >= _kth_best(edges.child, score, params.top_parents)
    else:  # raised where this block has pairs
        block = _best_distinct(edges.child, score, params.top_parents, len(child_best))
        touched = torch.nonzero(block[:, 0] > -torch.inf).squeeze(1)
        child_best[touched] = _merged(child_best[touched], block[touched])
        keep |= score >= child_best[edges.child.long(), -1]
    return edges.select(keep & finite)


def dense_candidates(
    sums: Float[Tensor, "4 rows d_child"],
    lo: int,
    parent_stats: stats_.LatentStats,
    child_stats: stats_.LatentStats,
    params: EdgeParams,
    child_best: Tensor | None = None,
    chunk_rows: int = 1024,
) -> Edges:
    """`candidates` of a block read whole: `sums` (ab, aa, bb, n) of parents lo, lo + 1, ...
    against every child, 0 where a pair never co-activates. Where most of a block's pairs
    co-activate, this is cheaper than listing them: each row's and each column's k best are
    one top-k along it (no atomics), and the survivors come out by one pass (`nonzero`).
    The k-th best counts ties, so the bound is at least `candidates`'s (distinct scores), and
    still a superset of the stored edges. `chunk_rows` rows at a time bound the memory of the
    temporaries (a dozen of [chunk_rows, d_child] float64); a chunk's columns are bounded by
    the chunks and blocks before it, so more chunks may keep a few more candidates."""
    dev = sums.device

    def stat(x: Tensor) -> Tensor:
        return x.to(dev, torch.float64)

    p_sum_sq, p_max = stat(parent_stats.sum_sq), stat(parent_stats.max_act)
    c_sum_sq, c_max = stat(child_stats.sum_sq)[None, :], stat(child_stats.max_act)[None, :]
    n_rows, d_child = sums.shape[1], sums.shape[2]
    k_p, k_c = params.top_parents, params.top_children
    if k_p <= 0:
        child_best = None  # no child keeps its best parents
    elif child_best is None:  # the block's own best: a bound all the same
        child_best = torch.full((d_child, k_p), -torch.inf, dtype=torch.float64, device=dev)
    found = []
    for r0 in range(0, n_rows, chunk_rows):
        r1 = min(r0 + chunk_rows, n_rows)
        ab, aa, bb, n = sums[:, r0:r1].to(torch.float64)
        at = slice(lo + r0, lo + r1)
        mc, mcp, ratio, score = parts(
            ab, aa, bb, p_sum_sq[at, None], c_sum_sq, p_max[at, None], c_max
        )
        ratio = ratio.expand_as(score)
        valid = (n > 0) & torch.isfinite(score)  # a pair without a co-active token: 0/0
        ranked = torch.where(valid, score, -torch.inf)
        keep = above_floor(score, torch.maximum(mc, mcp), params.store_floor)
        if 0 < k_c <= d_child:
            keep |= ranked >= ranked.topk(k_c, dim=1).values[:, -1:]
        elif k_c > 0:
            keep[:] = True  # fewer children than k: every pair is among its parent's best
        if child_best is not None:
            block = ranked.topk(min(k_p, r1 - r0), dim=0).values.T
            child_best.copy_(_merged(child_best, block))
            keep |= ranked >= child_best[None, :, -1]
        r, c = torch.nonzero(keep & valid, as_tuple=True)
        found.append(
            Edges.of(r + (lo + r0), c, mc[r, c], mcp[r, c], ratio[r, c], score[r, c], n[r, c])
        )
    return Edges.concat(found)


def _merged(best: Tensor, more: Tensor) -> Tensor:
    """Each row's k best of both lists ([n, k] and [n, j], descending), k = best's width."""
    return torch.cat([best, more], dim=1).topk(best.shape[1], dim=1).values


def _kth_best(group: Tensor, score: Tensor, k: int, grouped: bool = False) -> Tensor:
    """Per pair, the k-th best distinct score of its group (-inf where the group has fewer):
    every pair at or above it is among the group's k best or tied with them. `grouped`: the
    pairs come ordered by group."""
    if len(group) == 0 or k <= 0:
        return torch.full_like(score, torch.inf)
    return _best_distinct(group, score, k, int(group.max()) + 1, grouped)[group.long(), -1]


def _best_distinct(
    group: Tensor, score: Tensor, k: int, n_groups: int, grouped: bool = False
) -> Tensor:
    """Each group's k best distinct scores ([n_groups, k], descending; -inf where fewer):
    the best, then each next below it, by k rounds of a per-group maximum. Of pairs ordered
    by group (`grouped`), each maximum is over the group's stretch (`segment_reduce`; an empty
    stretch gives -inf), where a scatter's atomics on a GPU would serialise on the group's one
    place (a CAS loop per float64 maximum)."""
    g = group.long()
    if grouped:
        if not bool((g[1:] >= g[:-1]).all()):  # a stretch per group, or wrong maxima
            raise ValueError("pairs are not ordered by group")
        lengths = torch.bincount(g, minlength=n_groups)

    def maximum(values: Tensor, out: Tensor) -> None:
        if grouped:
            out.copy_(torch.segment_reduce(values, "max", lengths=lengths))
        else:
            out.scatter_reduce_(0, g, values, "amax")

    best = torch.full((n_groups, k), -torch.inf, dtype=score.dtype, device=score.device)
    maximum(score, best[:, 0])
    for j in range(1, k):
        maximum(torch.where(score < best[g, j - 1], score, -torch.inf), best[:, j])
    return best


def finalize(
    candidates: Edges,
    params: EdgeParams,
    parent_top: Tensor | None = None,
    child_top: Tensor | None = None,
    parent_best: np.ndarray | None = None,
) -> Edges:
    """The stored edges among candidates (a superset of them, each pair at most once): above
    the floor, or among a child's `top_parents` best by score (ties: lowest parent index), or
    among a parent's `top_children` best (ties: lowest child index); in the candidates' order
    (`Edges.sorted` orders them). What the blocks knew already: `parent_top` / `child_top`,
    which candidates are among their latent's best (a block holds all the pairs of its rows'
    latents); `parent_best`, each parent's `top_children` best scores over all its pairs
    (`best_scores`; the CPU kernel keeps them as it goes). On the CPU, compiled: candidates
    number tens of millions; the columns are consumed (the edges are compacted into them)."""
    c = candidates.cpu()
    keep = above_floor(c.score, c.mcs, params.store_floor).numpy()
    top = np.zeros(len(c), np.uint8)
    score = c.score.numpy()
    for known, best, group, tie, k in (
        (parent_top, parent_best, c.parent, c.child, params.top_children),
        (child_top, None, c.child, c.parent, params.top_parents),
    ):
        if known is not None:
            top |= known.numpy()
        else:
            _mark_top(group.numpy(), score, tie.numpy(), k, best, top)
    # A pair whose score is not finite is no edge (nor is an unused place of the CPU kernel's,
    # score NaN); it takes no rank either. Dropped here, last: no copy of tens of millions of rows.
    _keep_finite(keep, top, score)
    return c.compact(torch.from_numpy(keep))


def best_scores(lists: np.ndarray, k: int) -> np.ndarray:
    """Each group's k best scores (float64 [n_groups, k], descending, -inf where it has fewer)
    from several lists of them ([m, n_groups, width]: e.g. one per thread or block)."""
    best = np.full((lists.shape[1], k), -np.inf)
    if k > 0:
        _merge_best(np.ascontiguousarray(lists, dtype=np.float64), best)
    return best


@numba.njit(cache=True, nogil=True)
def push_best(best: np.ndarray, s: float) -> None:
    """Put score s into a group's k best scores (descending), dropping the last: the caller
    knows s belongs there."""
    pos = len(best) - 1
    while pos > 0 and s > best[pos - 1]:
        best[pos] = best[pos - 1]
        pos -= 1
    best[pos] = s


@numba.njit(cache=True, nogil=True, parallel=True)
def _merge_best(lists: np.ndarray, best: np.ndarray) -> None:
    k = best.shape[1]
    for g in numba.prange(lists.shape[1]):
        for m in range(lists.shape[0]):
            for j in range(lists.shape[2]):
                s = lists[m, g, j]
                if s > best[g, k - 1]:
                    push_best(best[g], s)


def _mark_top(
    group: np.ndarray,
    score: np.ndarray,
    tie: np.ndarray,
    k: int,
    best: np.ndarray | None,
    top: np.ndarray,
) -> None:
    """Set bit 1 of `top` where a pair is among its group's k best (score desc, then `tie`
    asc; a score that is not finite takes no rank), from each group's k best scores (`best`;
    found here, in one pass, where not given): above the k-th best score, or at it and among
    the lowest `tie` of those that make up the k (few: one sort of them)."""
    if len(group) == 0 or k <= 0:
        return
    n_groups = int(group.max()) + 1
    if best is None:
        best = _best(group, score, n_groups, k, numba.get_num_threads())
    kth = np.ascontiguousarray(best[:n_groups, k - 1])
    n_tied = _above_kth(group, score, kth, top)
    if n_tied == 0:
        return
    tied = np.flatnonzero(top & _TIED)
    top[tied] &= ~_TIED
    g = group[tied]
    order = np.lexsort((tie[tied], g))
    tied, g = tied[order], g[order]
    # Rank among a group's tied pairs; the group needs k minus those strictly above its k-th.
    at = np.arange(len(tied))
    starts = np.maximum.accumulate(np.where(np.r_[True, g[1:] != g[:-1]], at, 0))
    need = k - (best[:n_groups] > kth[:, None]).sum(axis=1)
    top[tied[at - starts < need[g]]] |= _TOP


_TOP, _TIED = np.uint8(1), np.uint8(2)


def _order(group: Tensor, score: Tensor, tie: Tensor) -> Tensor:
    """The order by group, then score descending, then `tie` ascending (the ranking rule of
    every top-k here; `_mark_top` is the same rule compiled, for the CPU's tens of millions)."""
    order = torch.argsort(tie, stable=True)
    order = order[torch.argsort(-score[order], stable=True)]
    return order[torch.argsort(group[order], stable=True)]


@numba.njit(cache=True, nogil=True, parallel=True)
def _best(group: np.ndarray, score: np.ndarray, n_groups: int, k: int, shards: int) -> np.ndarray:
    best = np.full((n_groups, k), -np.inf)
    for shard in numba.prange(shards):  # each thread keeps the groups g with g % shards == shard
        for i in range(len(group)):
            g = group[i]
            s = score[i]
            if g % shards == shard and np.isfinite(s) and s > best[g, k - 1]:
                push_best(best[g], s)
    return best


@numba.njit(cache=True, nogil=True, parallel=True)
def _above_kth(group: np.ndarray, score: np.ndarray, kth: np.ndarray, top: np.ndarray) -> int:
    """Mark pairs above their group's k-th best score _TOP, those at it _TIED; how many tied."""
    n_tied = 0
    for i in numba.prange(len(group)):
        s, at = score[i], kth[group[i]]
        if not np.isfinite(s):
            continue
        if s > at:
            top[i] |= _TOP
        elif s == at:
            top[i] |= _TIED
            n_tied += 1
    return n_tied


@numba.njit(cache=True, nogil=True, parallel=True)
def _keep_finite(keep: np.ndarray, top: np.ndarray, score: np.ndarray) -> None:
    for i in numba.prange(len(keep)):
        keep[i] = np.isfinite(score[i]) and (keep[i] or (top[i] & _TOP) != 0)
