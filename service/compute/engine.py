"""Score every edge between a parent sae and a child sae, in work proportional to their
co-activations and memory proportional to a block of latents times d_sae.

One sae's latents (the rows) are cut into consecutive blocks. A block is gathered latent-major
(one counting pass over that sae's entries), then each of its latents walks its active tokens
and, for each, the other sae's latents active there (read token-major, in place from the
store): sparse Gustavson. Blocks never share an output row, so they are the unit that goes to
threads, devices and Ray tasks; each emits candidates, and `scores.finalize` picks the stored
edges among all of them exactly.

Backends, one algorithm: `numba` (the compiled CPU kernel, all cores; rows are the child's
latents, so that its per-thread scratch is as wide as the narrower parent), `triton` (the fused
GPU kernel; on the CPU only under TRITON_INTERPRET=1, for tests) and `torch` (plain torch on any
device, the fallback); both GPU paths keep dense rows of the parent's latents.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numba
import numpy as np
import torch

from service.compute import chunks as chunks_
from service.compute import cpu_kernel, layout, placement, torch_kernel
from service.compute import device as device_
from service.compute import scores as scores_
from service.compute import stats as stats_

log = logging.getLogger(__name__)

GiB = 1 << 30
BACKENDS = ("auto", "numba", "triton", "torch")
# How the device paths read a block's dense rows: as `DENSE_BLOCK` says, whole, or by the list
# of the pairs it touched.
READS = ("auto", "whole", "listed")
# Whose latents a backend's blocks cut: its rows.
ROWS = {"numba": "child", "triton": "parent", "torch": "parent"}
# Bytes per entry of a block gathered latent-major (token int32 + value float32), with slack.
_BYTES_PER_BLOCK_ENTRY = 16
# Bytes per pair of the dense rows of the torch and triton paths (ab, aa, bb, n).
_BYTES_PER_ROW_PAIR = 32
# Bytes per pair of the temporaries while a block's dense rows are scored whole (a dozen
# float64 arrays of [rows, d_child]: the parts, the ranks, the masks).
_BYTES_PER_DENSE_PAIR = 96
# A block is read whole (`scores.dense_candidates`) where its co-activations are at least this
# many times its pairs (rows x d_child), else by the pairs it touched. On this project's CPU
# (torch path) reading a block whole costs ~35 ns a pair, listing it ~35 ns a touched one
# (4k -> 16k, 50k tokens, co-activations 1.6x the pairs: whole 9.5-10.6 s, listed 13.9-14.7 s;
# 16k -> 65k, 30k tokens, blocks of 64 rows, 0.11x: whole 40.5 s, listed 7.8 s). On an H100,
# ~0.36 ns a pair whole against ~1.25 ns a touched pair listed (make bench-gpu, 2026-11-26):
# 64k -> 256k at 1M tokens, 0.14x: whole 8.75 s, listed 2.26 s; 16k -> 65k at 1M, 2.1x:
# 0.68 s, 0.60 s; at 10M, 21x: 2.42 s, 2.78 s (bench/results/2026-11-26-h100-*.log).
DENSE_BLOCK = {"cpu": 1.0, "cuda": 4.0}


@dataclass(frozen=True)
class PairResult:
    """Edges between two saes, both saes' latent statistics, and what the work cost."""

    edges: scores_.Edges
    parent_stats: stats_.LatentStats
    child_stats: stats_.LatentStats
    n_coactivations: int
    n_pairs: int  # distinct co-active pairs, each scored once
    n_candidates: int  # the blocks' candidates, which `finalize` chose the edges among
    blocks: list[tuple[int, int]]  # of the rows' latents (`ROWS`: the child's on the CPU)
    seconds: float
    backend: str
    phases: dict[str, float]  # seconds per phase (`Clock`)
    n_ranges: int = 1  # ranges of tokens a device path was handed each block in (`placement`)


class Clock:
    """Seconds spent per phase of a job, the device synchronised at each phase's end."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def score_listed(
    parent: chunks_.ChunkSource,
    child: chunks_.ChunkSource,
    pair_parent: np.ndarray,
    pair_child: np.ndarray,
    parent_stats: stats_.LatentStats,
    child_stats: stats_.LatentStats,
    chunk_tokens: int = 1 << 16,
) -> scores_.Edges:
    """The listed pairs scored exactly (on the CPU), those that co-activate: a pair without a
    co-active token is no edge (SPEC.md section 2). For a few pairs per child, picked by
    something other than their score (decoder cosines)."""
    p = layout.latent_major(layout.token_major(parent, chunk_tokens), 0, parent.d_sae)
    c = layout.latent_major(layout.token_major(child, chunk_tokens), 0, child.d_sae)
    pair_parent = np.ascontiguousarray(pair_parent, np.int64)
    pair_child = np.ascontiguousarray(pair_child, np.int64)
    ab, aa, bb, n = cpu_kernel.listed_pair_sums(
        p.indptr, p.tokens, p.values, c.indptr, c.tokens, c.values, pair_parent, pair_child
    )
    keep = n > 0
    pp, cc = pair_parent[keep], pair_child[keep]
    masked_cos, masked_cos_parent, max_ratio, score = scores_.parts(
        ab[keep],
        aa[keep],
        bb[keep],
        parent_stats.sum_sq.numpy()[pp],
        child_stats.sum_sq.numpy()[cc],
        parent_stats.max_act.numpy().astype(np.float64)[pp],
        child_stats.max_act.numpy().astype(np.float64)[cc],
    )
    return scores_.Edges.of(pp, cc, masked_cos, masked_cos_parent, max_ratio, score, n[keep])


def default_budget(device: torch.device) -> int:
    """16 GiB, or 80% of what is free on the GPU / 25% of host memory if that is less."""
    free = device_.free_memory(device)
    if free is None:
        return int(min(16 * GiB, device_.host_memory() // 4))
    return int(min(16 * GiB, free * 0.8))


def resolve_backend(backend: str, device: torch.device, here: bool = True) -> str:
    """The backend for `auto` on a device: the compiled kernel of that device (on a GPU of
    this process, Triton where it is installed; `here=False`: on another machine's)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        from service.compute import gpu_kernel

        return "triton" if not here or gpu_kernel.available() else "torch"
    return "numba"


def score_pair(
    parent: chunks_.ChunkSource,
    child: chunks_.ChunkSource,
    params: scores_.EdgeParams | None = None,
    *,
    device: str | torch.device = "auto",
    backend: str = "auto",
    memory_budget: int | None = None,
    chunk_tokens: int = 1 << 16,
    parent_stats: stats_.LatentStats | None = None,
    child_stats: stats_.LatentStats | None = None,
    max_block_entries: int | None = None,
    max_block_rows: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
    runner: Runner | None = None,
    read: str = "auto",
    activation_memory: int | None = None,
) -> PairResult:
    """Every stored edge between `parent` and `child` (SPEC.md section 2), with statistics.

    `on_block(done, total)` is called after each block (progress). `runner` scores the blocks
    elsewhere (`cluster.RayRunner`: Ray tasks, on its devices); by default they run here.
    `read` (`READS`): how the torch and Triton paths read a block (the same edges either way;
    the CPU kernel has one way). `activation_memory`: bytes of the device those paths may
    hold activations in (`placement`; default: what a GPU has free beyond the budget, with
    slack; unbounded on the CPU)."""
    if read not in READS:
        raise ValueError(f"unknown read {read!r}: expected one of {', '.join(READS)}")
    if parent.n_tokens != child.n_tokens:
        raise ValueError(
            f"parent has {parent.n_tokens} tokens but child has {child.n_tokens}: "
            "saes of a family share one token set"
        )
    params = params or scores_.EdgeParams()
    if runner is None:
        dev = device_.resolve(device)
        kind = resolve_backend(backend, dev)
        budget = memory_budget if memory_budget is not None else default_budget(dev)
    else:  # the tasks' device, which this process may not have
        dev = torch.device(runner.device)
        kind = resolve_backend(backend, dev, here=False)
        budget = memory_budget if memory_budget is not None else 16 * GiB
    started = time.perf_counter()
    clock = Clock(dev if runner is None else torch.device("cpu"))
    with clock.phase("statistics"):
        stats_device = str(dev) if runner is None else "cpu"
        if parent_stats is None:
            parent_stats = stats_.latent_stats(
                parent, device=stats_device, chunk_tokens=chunk_tokens
            )
        if child_stats is None:
            child_stats = stats_.latent_stats(child, device=stats_device, chunk_tokens=chunk_tokens)
    with clock.phase("layout"):
        parent_rows = layout.token_major(parent, chunk_tokens)
        child_rows = layout.token_major(child, chunk_tokens)
    # A latent's entries are its active tokens: what a block of them costs to gather, known
    # from the statistics without a pass over the activations.
    row_stats = child_stats if ROWS[kind] == "child" else parent_stats
    row_nnz = row_stats.n_active.cpu().numpy().astype(np.int64)

    max_entries = max_block_entries or max(1, budget // (4 * _BYTES_PER_BLOCK_ENTRY))
    if runner is not None:  # enough blocks to keep every task slot busy
        max_entries = min(max_entries, max(1, -(-int(row_nnz.sum()) // (2 * runner.slots()))))
    rows_cap = max_block_rows
    if kind != "numba":
        dense_rows = budget // (2 * _BYTES_PER_ROW_PAIR * max(child.d_sae, 1))
        if dense_rows < 1:
            raise ValueError(f"memory budget of {budget} bytes is too small for one row")
        rows_cap = min(rows_cap or dense_rows, dense_rows)
    blocks = layout.plan_blocks(row_nnz, max_entries, rows_cap)

    pair = Pair(
        _as_laid(parent, parent_rows),
        _as_laid(child, child_rows),
        parent_stats,
        child_stats,
        params,
        str(dev),
        kind,
        budget,
        chunk_tokens,
        read,
        activation_memory,
    )
    results: list[BlockResult | None] = [None] * len(blocks)
    done = enumerate(score_blocks(pair, blocks, clock)) if runner is None else runner(pair, blocks)
    for n_done, (i, result) in enumerate(done, 1):
        results[i] = result
        if on_block is not None:
            on_block(n_done, len(blocks))
    found = [r for r in results if r is not None]
    if len(found) != len(blocks):
        raise RuntimeError(f"{len(blocks) - len(found)} of {len(blocks)} blocks were not scored")
    with clock.phase("finalize"):
        rows = ROWS[kind]  # a row's pairs are all in its block: its top is known
        row_tops = [r.row_top for r in found if r.row_top is not None]
        top = torch.cat(row_tops) if len(row_tops) == len(found) else None
        bests = [r.column_best for r in found if r.column_best is not None]
        column_best = None
        if rows == "child" and len(bests) == len(found):  # folded two at a time: little memory
            column_best = functools.reduce(
                lambda a, b: scores_.best_scores(np.stack([a, b]), params.top_children), bests
            )
        edges = scores_.finalize(
            scores_.Edges.concat([r.candidates for r in found]),
            params,
            parent_top=top if rows == "parent" else None,
            child_top=top if rows == "child" else None,
            parent_best=column_best,
        )
    return PairResult(
        edges,
        parent_stats,
        child_stats,
        sum(r.n_coactivations for r in found),
        sum(r.n_pairs for r in found),
        sum(r.n_candidates for r in found),
        blocks,
        time.perf_counter() - started,
        kind,
        clock.seconds,
        max(r.n_ranges for r in found) if found else 1,
    )


@dataclass(frozen=True)
class Pair:
    """A job's inputs as a block runner takes them, resolved (device, kernel, budget). It
    pickles small where its sources are stored entries (they pickle as their paths), so that a
    Ray task opens the activations where it runs."""

    parent: chunks_.ChunkSource
    child: chunks_.ChunkSource
    parent_stats: stats_.LatentStats
    child_stats: stats_.LatentStats
    params: scores_.EdgeParams
    device: str
    backend: str
    budget: int
    chunk_tokens: int
    read: str = "auto"  # `READS`
    activation_memory: int | None = None  # `score_pair`'s


@dataclass(frozen=True)
class BlockResult:
    """A block's candidate edges, what it knows of their ranks (None: `finalize` ranks them),
    and what it cost."""

    candidates: scores_.Edges
    row_top: torch.Tensor | None  # which are among their row latent's best (all its pairs)
    column_best: np.ndarray | None  # each column latent's best scores in the block [d, k]
    n_coactivations: int
    n_pairs: int  # distinct co-active pairs
    n_candidates: int  # in `candidates` (the CPU kernel's unused places not counted)
    n_ranges: int = 1  # ranges of tokens the device was handed the block in (`placement`)


class Runner(Protocol):
    """Scores a pair's blocks elsewhere, yielding (block index, result) in any order."""

    device: str  # where its tasks run: cpu or cuda

    def slots(self) -> int:
        """How many blocks it scores at once."""
        ...

    def __call__(
        self, pair: Pair, blocks: list[tuple[int, int]]
    ) -> Iterator[tuple[int, BlockResult]]: ...


def score_blocks(
    pair: Pair, blocks: list[tuple[int, int]], clock: Clock | None = None
) -> Iterator[BlockResult]:
    """Score `blocks` of `pair` in this process, in order: the unit of work that a Ray task
    runs (a block never shares an output row with another)."""
    dev = device_.resolve(pair.device)
    clock = clock or Clock(dev)
    parent_rows = layout.token_major(pair.parent, pair.chunk_tokens)
    child_rows = layout.token_major(pair.child, pair.chunk_tokens)
    run = {"numba": _numba_blocks, "torch": _torch_blocks, "triton": _triton_blocks}[pair.backend]
    work = Work(
        parent_rows,
        child_rows,
        blocks,
        pair.parent_stats,
        pair.child_stats,
        pair.params,
        dev,
        pair.budget,
        clock,
        pair.read,
        pair.activation_memory,
    )
    yield from run(work)


def _as_laid(source: chunks_.ChunkSource, rows: layout.TokenMajor) -> chunks_.ChunkSource:
    """A source as the blocks read it: itself where it is stored token-major (a store entry
    pickles as its path), else its token-major arrays (gathered once, here)."""
    return source if isinstance(source, layout.HasTokenMajor) else layout.Laid(rows)


BlockResults = Iterator[BlockResult]


@dataclass(frozen=True)
class Work:
    """One job's work as the kernels' runners take it."""

    parent: layout.TokenMajor
    child: layout.TokenMajor
    blocks: list[tuple[int, int]]
    parent_stats: stats_.LatentStats
    child_stats: stats_.LatentStats
    params: scores_.EdgeParams
    dev: torch.device
    budget: int
    clock: Clock
    read: str = "auto"  # `READS`
    activation_memory: int | None = None  # `score_pair`'s


def _numba_blocks(w: Work) -> BlockResults:
    if w.dev.type != "cpu":
        raise ValueError(f"the numba backend runs on the CPU, not {w.dev}")
    scratch = cpu_kernel.Scratch.new(numba.get_num_threads(), w.parent.d_sae, w.params)
    p_sum_sq, p_max = w.parent_stats.sum_sq.numpy(), w.parent_stats.max_act.numpy()
    c_sum_sq, c_max = w.child_stats.sum_sq.numpy(), w.child_stats.max_act.numpy()
    for lo, hi in w.blocks:
        with w.clock.phase("gather"):
            block = layout.latent_major(w.child, lo, hi)
        # Rows differ in cost: numba hands them out dynamically.
        with w.clock.phase("sums"), numba.parallel_chunksize(8):
            found = cpu_kernel.score_block(
                block, w.parent, p_sum_sq, p_max, c_sum_sq, c_max, w.params, scratch
            )
        edges = scores_.Edges.of(*(found.column(f) for f in scores_.DTYPES))
        top = torch.from_numpy(found.column("child_top"))
        yield BlockResult(
            edges, top, found.parent_best, found.n_coactivations, found.n_pairs, found.n_candidates
        )


def _device_blocks(w: Work, rows: layout.DenseRows) -> BlockResults:
    """The torch and Triton paths: the activations placed on the device (`placement`: whole,
    or streamed in ranges of tokens where they do not fit), then each block's pairs summed,
    scored and filtered there: read whole where its co-activations are at least `DENSE_BLOCK`
    of its pairs, else by the list of the pairs it touched (unless `w.read` says which)."""
    with w.clock.phase("to device"):
        memory = w.activation_memory
        if memory is None:
            memory = placement.available(w.dev, w.budget)
        acts = placement.place(w.parent, w.child, w.dev, memory)
        p_stats, c_stats = (_on(w.parent_stats, w.dev), _on(w.child_stats, w.dev))
    # Each child's best scores over the blocks so far: its candidates' threshold.
    child_best = None
    if w.params.top_parents > 0:
        child_best = torch.full(
            (w.child.d_sae, w.params.top_parents), -torch.inf, dtype=torch.float64, device=w.dev
        )
    chunk_rows = max(1, w.budget // (4 * _BYTES_PER_DENSE_PAIR * max(w.child.d_sae, 1)))
    # The least co-activations per pair at which a block is read whole.
    if w.read == "auto":
        fraction = DENSE_BLOCK.get(w.dev.type, DENSE_BLOCK["cuda"])  # any accelerator as a GPU
    else:
        fraction = 0.0 if w.read == "whole" else float("inf")
    # Closed on any exit: a streamed block being gathered ahead is waited for, its thread ended.
    with contextlib.closing(acts.blocks(w.blocks)) as blocks:
        for lo, hi in w.blocks:
            # Streamed: the wait for the block's gathering on the host, ahead of the device's work.
            with w.clock.phase("gather" if isinstance(acts, placement.Streamed) else "sums"):
                coacts, parts = next(blocks)
            with w.clock.phase("sums"):  # streamed: with the parts' copies to the device
                dense = coacts >= fraction * (hi - lo) * w.child.d_sae
                if dense:
                    sums = rows.dense_sums(parts)
                else:
                    r, c, sums = rows.block_sums(parts, coacts)
            # Phases synchronised on a GPU, so that a block's fixed costs show where they lie:
            # scoring the pairs, choosing the candidates, copying them to the host.
            if dense:
                with w.clock.phase("candidates"):
                    cands = scores_.dense_candidates(
                        sums, lo, p_stats, c_stats, w.params, child_best, chunk_rows
                    )
                    n_pairs = int(torch.count_nonzero(sums[3]))
                    sums.zero_()  # the rows are reused by the next block
            else:
                with w.clock.phase("score"):
                    scored = scores_.Edges.from_sums(r + lo, c, sums, p_stats, c_stats)
                with w.clock.phase("candidates"):
                    cands = scores_.candidates(scored, w.params, child_best, parents_grouped=True)
                    n_pairs = len(scored)
            with w.clock.phase("to host"):
                cands = cands.cpu()
            yield BlockResult(cands, None, None, coacts, n_pairs, len(cands), acts.n_ranges)


def _on(s: stats_.LatentStats, dev: torch.device) -> stats_.LatentStats:
    """The statistics that scoring reads, moved to `dev` once per job (float64)."""
    return stats_.LatentStats(
        s.n_tokens, s.max_act.to(dev, torch.float64), s.n_active, s.sum_sq.to(dev, torch.float64)
    )


def _torch_blocks(w: Work) -> BlockResults:
    rows = torch_kernel.Rows(
        max(hi - lo for lo, hi in w.blocks),
        w.child.d_sae,
        w.dev,
        max(1024, w.budget // (4 * torch_kernel.BYTES_PER_COACTIVATION)),
    )
    yield from _device_blocks(w, rows)


def _triton_blocks(w: Work) -> BlockResults:
    from service.compute import gpu_kernel

    rows = gpu_kernel.Rows(max(hi - lo for lo, hi in w.blocks), w.child.d_sae, w.dev)
    yield from _device_blocks(w, rows)
