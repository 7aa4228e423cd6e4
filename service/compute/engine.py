"""Score every edge between a parent sae and a child sae, within a memory budget.

The pair space is cut into tiles (parent block x child block) small enough for the budget; each
tile streams all tokens once and is independent of the others, so tiles could go to several
devices or machines and their candidates merge with `scores.finalize`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from service.compute import chunks as chunks_
from service.compute import device as device_
from service.compute import pairs as pairs_
from service.compute import scores as scores_
from service.compute import stats as stats_

log = logging.getLogger(__name__)

GiB = 1 << 30
# Per pair of a tile: four sums plus the temporaries of scoring it (float64 each, and masks).
_TILE_BYTES_PER_PAIR_PER_DTYPE_BYTE = 10


@dataclass(frozen=True)
class PairResult:
    """Edges between two saes, both saes' latent statistics, and what the work cost."""

    edges: scores_.Edges
    parent_stats: stats_.LatentStats
    child_stats: stats_.LatentStats
    n_coactivations: int
    tiles: list[pairs_.Tile]
    seconds: float


def plan_tiles(
    d_parent: int,
    d_child: int,
    memory_budget: int,
    dtype: torch.dtype = torch.float64,
    max_coactivations: int = pairs_.MAX_COACTIVATIONS,
) -> list[pairs_.Tile]:
    """Tiles covering every pair, each fitting `memory_budget` bytes with its chunk expansion."""
    per_pair = _TILE_BYTES_PER_PAIR_PER_DTYPE_BYTE * torch.finfo(dtype).bits // 8
    room = memory_budget - max_coactivations * pairs_.BYTES_PER_COACTIVATION
    max_pairs = room // per_pair
    if max_pairs < 1:
        raise ValueError(f"memory budget of {memory_budget} bytes is too small for one tile")
    if d_parent * d_child <= max_pairs:
        return [pairs_.Tile(0, d_parent, 0, d_child)]
    # Whole child rows when they fit (each pass then reads every child entry once).
    tile_c = min(d_child, max_pairs)
    tile_p = max(1, min(d_parent, max_pairs // tile_c))
    # Balance the blocks so the last one is not a sliver.
    tile_p = math.ceil(d_parent / math.ceil(d_parent / tile_p))
    tile_c = math.ceil(d_child / math.ceil(d_child / tile_c))
    return [
        pairs_.Tile(p0, min(p0 + tile_p, d_parent), c0, min(c0 + tile_c, d_child))
        for p0 in range(0, d_parent, tile_p)
        for c0 in range(0, d_child, tile_c)
    ]


def default_budget(device: torch.device) -> int:
    """16 GiB, or 80% of what is free on the GPU / 25% of host memory if that is less."""
    free = device_.free_memory(device)
    if free is None:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(min(16 * GiB, pages // 4))
    return int(min(16 * GiB, free * 0.8))


def _aligned(
    parent: chunks_.ChunkSource, child: chunks_.ChunkSource, chunk_tokens: int
) -> Iterator[tuple[chunks_.SparseChunk, chunks_.SparseChunk]]:
    for p, c in zip(parent.chunks(chunk_tokens), child.chunks(chunk_tokens), strict=True):
        if (p.start, p.n_tokens) != (c.start, c.n_tokens):
            raise ValueError("parent and child sources yield chunks of different tokens")
        yield p, c


def score_pair(
    parent: chunks_.ChunkSource,
    child: chunks_.ChunkSource,
    params: scores_.EdgeParams | None = None,
    *,
    device: str | torch.device = "auto",
    memory_budget: int | None = None,
    chunk_tokens: int = 32768,
    dtype: torch.dtype = torch.float64,
    max_coactivations: int = pairs_.MAX_COACTIVATIONS,
    parent_stats: stats_.LatentStats | None = None,
    child_stats: stats_.LatentStats | None = None,
) -> PairResult:
    """Every stored edge between `parent` and `child` (SPEC.md section 2), with statistics."""
    if parent.n_tokens != child.n_tokens:
        raise ValueError(
            f"parent has {parent.n_tokens} tokens but child has {child.n_tokens}: "
            "saes of a family share one token set"
        )
    params = params or scores_.EdgeParams()
    dev = device_.resolve(device)
    budget = memory_budget if memory_budget is not None else default_budget(dev)
    tiles = plan_tiles(parent.d_sae, child.d_sae, budget, dtype, max_coactivations)
    started = time.perf_counter()

    if parent_stats is None or child_stats is None:
        p_acc = stats_.StatsAccumulator(parent.d_sae, dev)
        c_acc = stats_.StatsAccumulator(child.d_sae, dev)
        for p, c in _aligned(parent, child, chunk_tokens):
            p_acc.add(p.to(dev))
            c_acc.add(c.to(dev))
        parent_stats, child_stats = p_acc.result(), c_acc.result()

    candidates: list[scores_.Edges] = []
    n_coactivations = 0
    for tile in tiles:
        sums = pairs_.PairSums(tile, dev, dtype, max_coactivations)
        whole_p = (tile.p0, tile.p1) == (0, parent.d_sae)
        whole_c = (tile.c0, tile.c1) == (0, child.d_sae)
        for p, c in _aligned(parent, child, chunk_tokens):
            p = p.to(dev) if whole_p else p.to(dev).restrict(tile.p0, tile.p1)
            c = c.to(dev) if whole_c else c.to(dev).restrict(tile.c0, tile.c1)
            sums.add(p, c)
        n_coactivations += sums.n_coactivations
        candidates.append(scores_.tile_edges(sums, parent_stats, child_stats, params))
        del sums
        log.debug("tile %s: %d candidates", tile, len(candidates[-1]))

    edges = scores_.finalize(scores_.Edges.concat(candidates), params)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return PairResult(
        edges,
        parent_stats,
        child_stats,
        n_coactivations,
        tiles,
        time.perf_counter() - started,
    )
