"""The CPU kernel: every pair of a block of child latents with the parent, in one compiled pass.

Sparse Gustavson, one child latent (a row) at a time, rows spread over threads: walk the row's
active tokens (latent-major), and for each the parent latents active on that token (token-major,
read in place; a few tokens ahead prefetched), accumulating the four sums of each parent the row
meets in the thread's compact accumulator (float64), found through a parent-wide slot map (in
a sparse row, where a co-activation is often the row's first with its parent, without a
branch). Then only those pairs are scored: their sums and parents' statistics gathered by
column, their parts (`scores.parts`) computed in vector registers, the row's candidates
counted, room taken for exactly that many, and they are written, once, into the block's
columns: each thread fills stretches of its own (taken by an atomic add), so that no two threads
fault in the same fresh pages. Work follows the co-activations; memory is the block's entries
and candidates plus, per thread, a few arrays of d_sae(parent).

Rows are the child's latents because a family's parent is the narrower sae: the random accesses
of every co-activation then land in a map a quarter the size (256 KB at 65k -> 262k: the core's
L2), not in a d_child-wide one.

Candidates (a superset of the stored edges; `scores.finalize` picks them exactly): pairs above
the floor; the row's `top_parents` best (exact: a row is whole in a block); and a pair whose
score reaches its parent's running `top_children`-th best score among the pairs this thread
scored in this block (a pair of a parent's final top children always does: fewer than that many
pairs beat it anywhere). The threads' running lists, merged, are each parent's exact best scores
in the block, so `finalize` need not rank the parents again.

Ceilings, for the benchmark case 65k -> 262k, 200k tokens, L0 64 (4.8e8 co-activations from
1.3e7 token visits, 1.4e8 distinct pairs, 2.3e7 candidates, 2 cores): operations: 4
multiply-adds per co-activation, 2 square roots and 3 divisions per pair, ~1e9 simple
operations/s per core -> ~0.5 s; bytes: each token visit reads a parent token row (512 bytes at
a random place: DRAM, prefetched), each co-activation a 4-byte slot (L2) and 32 bytes of
accumulator (L1), each pair its parent's statistics and running threshold, each candidate
writes 33 bytes once (fresh pages: 780 MB, ~0.45 s of faults here): the latency of the token
rows and of the slot loads is the limit. Measured (`python -m bench.engine --cases scale`): 2.1 s
of kernel, 1.1e8 co-activations/s per core; 1k -> 4k at the same tokens, where pairs and
candidates are 33x and 140x fewer, 0.8 s. In one process, memory reused: 2.1 s, of which
accumulating 1.2 s, scoring and deciding 0.7 s, writing 0.2 s. Each of these took 4-7% off
65k -> 262k: the parts in vector registers (AVX-512: 1.0 ns a pair, 6.6 scalar; the pass before
hid most of it under memory latency), sparse rows without the first-touch branch, the prefetch
past a row's end; unsigned indices 11% (at 1k -> 4k too); and writing the accumulator's reset
as a slice (`sums[i, :] = 0.0`) cost 20%. Tried and slower or within noise here: a hash table in
L1 in place of the slot map, a row in three passes (mark, place, add), products-only tests that
skip the square roots of pairs far below every threshold, a 16-bit slot map (3%; a dense row may
touch all 65,536 parents), a list of the pairs to write in place of a test of each pair's mark,
the ranks looked at only where a pair reaches a gathered threshold (one loop or three).

`score_rows.py_func` is the same function uncompiled: the plain reference the tests compare the
compiled kernel to.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from service.compute import cpu_ops, layout, scores

_parts = numba.njit(error_model="numpy", cache=True)(scores.parts)
_above_floor = numba.njit(cache=True)(scores.above_floor)

# Tokens ahead whose parent entries are prefetched (each a likely DRAM miss; where they start,
# three times as far ahead), and touched pairs ahead whose parent's lines are prefetched before
# scoring (random places in arrays of d_sae(parent): L2 or L3). Each ~3-4% at 65k -> 262k.
AHEAD = 4
AHEAD_PAIRS = 8

# The hot loops index with unsigned integers (np.uint64(...)): numba tests every signed index
# for a negative one (counted from the end), an add and a select per access; 9-12% of the
# kernel at 1k -> 4k and 65k -> 262k.

# A row is sparse where its co-activations are expected to be under SPARSE x d_sae(parent): many
# are then its first with their parent (29% at 65k -> 262k, 1% at 1k -> 4k), a branch the core
# mispredicts, so they are added without one (`_add`; 7% faster there, within noise for
# dense rows, which keep the branch).
SPARSE = 4

# The most candidates a block's columns are allocated for at first (virtual memory: only the
# pages written are used). A block needs at most the sum over its rows of min(co-activations,
# d_parent), and a stretch per thread, but writes far fewer; rows that find no room wait for
# the next call, which goes on in the same columns once the candidates that can no longer be
# stored are dropped (they grow, by a copy, only where that frees too little).
CALL_CANDIDATES = 1 << 27

# What a touched pair's mark says to write: a candidate (KEEP), which also raises its parent's
# running best scores (RAISE); one of its child's best parents (TOP).
_KEEP, _RAISE, _TOP = 1, 2, 4

# Candidates in the stretch of the columns a thread takes at a time (2 MB of scores: a huge page).
STRETCH = 1 << 18

# A block's candidates, column by column, in the dtypes of `scores.DTYPES`, and whether each is
# among its child's top_parents (exact: a row is whole in a block).
COLUMNS = {
    **{name: torch.empty(0, dtype=dtype).numpy().dtype for name, dtype in scores.DTYPES.items()},
    "child_top": np.dtype(np.bool_),
}


@dataclass
class Scratch:
    """Per-thread working memory, reused across blocks: the slot map and accumulator of a row,
    the parents' running best scores and the row's best parents."""

    slot: np.ndarray  # [threads, d_parent] int32: a parent's place in the accumulator, or -1
    sums: np.ndarray  # [threads, d_parent, 4]: ab, aa, bb, n of the row's touched parents (else 0)
    parts: np.ndarray  # [threads, 5, d_parent]: the touched pairs' sums and statistics, by column
    touched: np.ndarray  # [threads, d_parent] int32
    best: np.ndarray  # [threads, d_parent, top_children]: each parent's running best scores
    reach: np.ndarray  # [threads, d_parent] float32: at most its running top_children-th best
    row_top: np.ndarray  # [threads, top_parents, 3]: score, parent, pair (see the kernel)
    mark: np.ndarray  # [threads, d_parent] int64: a touched pair's count * 8 + what to write

    @classmethod
    def new(cls, n_threads: int, d_parent: int, params: scores.EdgeParams) -> Scratch:
        return cls(
            np.full((n_threads, d_parent), -1, np.int32),
            np.zeros((n_threads, d_parent, 4)),
            np.zeros((n_threads, 5, d_parent)),
            np.zeros((n_threads, d_parent), np.int32),
            np.zeros((n_threads, d_parent, max(params.top_children, 1))),
            np.zeros((n_threads, d_parent), np.float32),
            np.zeros((n_threads, max(params.top_parents, 1), 3)),
            np.zeros((n_threads, d_parent), np.int64),
        )


@dataclass
class Candidates:
    """A block's candidate pairs (latent indices, score parts, counts) and what they cost. The
    rests of the threads' stretches are unused places (score NaN, parent and child 0, not top),
    which `scores.finalize` drops with the pairs it does not keep: each shorter than the
    candidates of the row that found no room there."""

    columns: dict[str, np.ndarray]
    n_coactivations: int = 0
    n_pairs: int = 0  # distinct co-active pairs scored
    n_candidates: int = 0  # places that hold a candidate (the others are unused)
    # Each parent's top_children best scores over the block's pairs (`scores.best_scores`).
    parent_best: np.ndarray | None = None
    calls: int = 0  # kernel calls the block took
    grown: int = 0  # of them, those for which the columns grew (a copy)

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]


def score_block(
    block: layout.LatentMajor,
    parent: layout.TokenMajor,
    p_sum_sq: np.ndarray,
    p_max: np.ndarray,
    c_sum_sq: np.ndarray,
    c_max: np.ndarray,
    params: scores.EdgeParams,
    scratch: Scratch,
    kernel: Callable[..., None] | None = None,
    call_candidates: int = CALL_CANDIDATES,
    stretch_candidates: int = STRETCH,
) -> Candidates:
    """The candidates of a block of child latents: one kernel call, or more where the columns
    (`call_candidates` places at first) fill up: rows that find no room wait for the next call,
    which writes after the candidates that may still be stored (`_prune`); a thread takes
    `stretch_candidates` places at a time. `kernel`: `score_rows` (default) or its uncompiled
    `score_rows.py_func`."""
    run: Callable[..., None] = kernel or score_rows
    scratch.best[:] = -np.inf  # running best scores start afresh in each block
    scratch.reach[:] = -np.inf
    bound = np.minimum(layout.coactivations(block, parent), parent.d_sae)
    threads = scratch.slot.shape[0]
    coacts = np.zeros((threads, 3), np.int64)  # co-activations, pairs, candidates written
    floor = float(params.store_floor)
    args = (
        block.lo,
        block.indptr,
        block.tokens,
        block.values,
        np.asarray(parent.indptr),
        np.asarray(parent.indices),
        np.asarray(parent.values),
        np.stack([p_sum_sq, p_max], axis=1).astype(np.float64),  # a pair reads one line
        c_sum_sq[block.lo : block.hi].astype(np.float64),
        c_max[block.lo : block.hi].astype(np.float64),
        floor,
        params.top_parents,
        params.top_children,
        scratch.slot,
        scratch.sums,
        scratch.parts,
        scratch.touched,
        scratch.best,
        scratch.reach,
        scratch.row_top,
        scratch.mark,
    )
    rows = np.arange(block.hi - block.lo, dtype=np.int64)
    columns = {name: np.empty(0, dt) for name, dt in COLUMNS.items()}
    filled = calls = grown = 0  # candidates at the front of the columns; calls; copies
    valid = 0  # of the filled places, those that hold a candidate (not unused)
    while len(rows):
        need = int(bound[rows].sum()) + threads * (stretch_candidates + parent.d_sae)
        size = min(need, max(call_candidates, stretch_candidates, parent.d_sae))
        if calls:  # rows waited: drop what can no longer be stored, go on after the rest
            c = columns
            filled = _prune(
                c["parent"], c["child"], c["masked_cos"], c["masked_cos_parent"],
                c["max_ratio"], c["score"], c["n_coactive"], c["child_top"],
                filled, _parents_kth_so_far(scratch, params), floor,
            )  # fmt: skip
            valid = filled  # what `_prune` keeps are candidates only
        if len(columns["parent"]) - filled < max(size // 8, stretch_candidates + parent.d_sae):
            columns = {name: _grown(col, filled, filled + size) for name, col in columns.items()}
            grown += calls > 0
        cursor = np.full(1, filled, np.int64)
        stretch = np.zeros((threads, 2), np.int64)  # each thread's next place and end
        waits = np.full(len(rows), -1, np.int64)  # where a row found no room, else -1
        written = int(coacts[:, 2].sum())
        run(rows, *args, *columns.values(), stretch_candidates, cursor, stretch, waits, coacts)
        valid += int(coacts[:, 2].sum()) - written
        c = columns
        for at, end in stretch.tolist():  # the rest of each thread's last stretch
            _mark_unused(c["parent"], c["child"], c["score"], c["child_top"], at, end)
        waited = waits >= 0
        filled = int(waits[waited].min()) if waited.any() else int(cursor[0])
        rows = rows[waited]
        calls += 1
    return Candidates(
        {name: col[:filled] for name, col in columns.items()},
        n_coactivations=int(coacts[:, 0].sum()),
        n_pairs=int(coacts[:, 1].sum()),
        n_candidates=valid,
        parent_best=scores.best_scores(scratch.best, params.top_children),
        calls=calls,
        grown=grown,
    )


def _grown(column: np.ndarray, filled: int, size: int) -> np.ndarray:
    """A column of `size` places that starts with the `filled` first of `column`."""
    out = unhinted_empty(size, column.dtype)
    out[:filled] = column[:filled]
    return out


def unhinted_empty(size: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in memory mapped for it alone, without the transparent-huge-page
    hint numpy gives large arrays: where THP is in `madvise` mode (as here, and on many Linux
    distributions), a hinted fault may stall in direct compaction, and a block's columns are
    hundreds of MB written once. Measured at 65k -> 262k (780 MB of candidates), a first block
    in a fresh process: 2.7-3.2 s with the hint, 2.5-2.8 s without; later blocks alike."""
    return np.frombuffer(mmap.mmap(-1, max(size * dtype.itemsize, 1)), dtype, size)


def _parents_kth_so_far(scratch: Scratch, params: scores.EdgeParams) -> np.ndarray:
    """Each parent's top_children-th best score among the pairs scored so far in the block
    (-inf while it has fewer; +inf where no parent keeps its best children): a pair below it
    is not among its parent's best at the end either."""
    if params.top_children <= 0:
        return np.full(scratch.best.shape[1], np.inf)
    return np.ascontiguousarray(scores.best_scores(scratch.best, params.top_children)[:, -1])


@numba.njit(cache=True, nogil=True)
def _prune(
    parent: np.ndarray,
    child: np.ndarray,
    mc: np.ndarray,
    mcp: np.ndarray,
    ratio: np.ndarray,
    score: np.ndarray,
    n: np.ndarray,
    top: np.ndarray,
    filled: int,
    kth: np.ndarray,
    floor: float,
) -> int:
    """Move to the front of the columns the candidates of [0, filled) that `scores.finalize`
    may still store (a superset: finite, and above the floor, among their child's best, or at
    least their parent's k-th best so far); how many there are."""
    kept = 0
    for i in range(filled):
        s = score[i]
        if not np.isfinite(s):  # an unused place, or no edge
            continue
        if not (top[i] or _above_floor(s, max(mc[i], mcp[i]), floor) or s >= kth[parent[i]]):
            continue
        parent[kept] = parent[i]
        child[kept] = child[i]
        mc[kept] = mc[i]
        mcp[kept] = mcp[i]
        ratio[kept] = ratio[i]
        score[kept] = s
        n[kept] = n[i]
        top[kept] = top[i]
        kept += 1
    return kept


@numba.njit(cache=True, nogil=True)
def _mark_unused(
    parent: np.ndarray, child: np.ndarray, score: np.ndarray, top: np.ndarray, at: int, end: int
) -> None:
    """Mark places [at, end) of a block's columns unused (see `Candidates`)."""
    for k in range(at, end):
        parent[k] = 0
        child[k] = 0
        score[k] = np.nan
        top[k] = False


@numba.njit(cache=True, nogil=True)
def _float32_below(x: float) -> np.float32:
    """The float32 nearest x from below: a threshold that keeps every pair the exact one does."""
    t = np.float32(x)
    if t > x:
        t = np.nextafter(t, np.float32(-np.inf))
    return t


@numba.njit(inline="always", nogil=True)
def _add(
    p_indices: np.ndarray,
    p_values: np.ndarray,
    lo: int,
    hi: int,
    b: float,
    slot: np.ndarray,
    sums: np.ndarray,
    touched: np.ndarray,
    n_touched: int,
    sparse: bool,
) -> int:
    """Add a token's co-activations (parent entries lo..hi, child value b) to a row's sums
    (which start at 0); the row's touched parents after. In a `sparse` row, without a branch:
    every co-activation writes its slot and touched place (a first one at n_touched)."""
    b2 = b * b
    for e in range(np.uint64(lo), np.uint64(hi)):
        p = np.uint64(p_indices[e])
        a = np.float64(p_values[e])
        s = slot[p]
        if sparse:
            fresh = s < 0
            s = n_touched if fresh else s
            slot[p] = s
            touched[np.uint64(s)] = p
            n_touched += fresh
        elif s < 0:  # the row's first co-activation with this parent
            s = n_touched
            slot[p] = s
            touched[np.uint64(s)] = p
            n_touched += 1
        u = np.uint64(s)
        sums[u, 0] += a * b
        sums[u, 1] += a * a
        sums[u, 2] += b2
        sums[u, 3] += 1.0
    return n_touched


@numba.njit(parallel=True, error_model="numpy", cache=True, nogil=True)
def score_rows(
    rows: np.ndarray,
    row_offset: int,
    c_indptr: np.ndarray,
    c_tokens: np.ndarray,
    c_values: np.ndarray,
    p_indptr: np.ndarray,
    p_indices: np.ndarray,
    p_values: np.ndarray,
    p_stats: np.ndarray,
    c_sum_sq: np.ndarray,
    c_max: np.ndarray,
    floor: float,
    top_parents: int,
    top_children: int,
    slot_all: np.ndarray,
    sums_all: np.ndarray,
    parts_all: np.ndarray,
    touched_all: np.ndarray,
    best_all: np.ndarray,
    reach_all: np.ndarray,
    row_top_all: np.ndarray,
    mark_all: np.ndarray,
    out_parent: np.ndarray,
    out_child: np.ndarray,
    out_mc: np.ndarray,
    out_mcp: np.ndarray,
    out_ratio: np.ndarray,
    out_score: np.ndarray,
    out_n: np.ndarray,
    out_top: np.ndarray,
    stretch_size: int,
    cursor: np.ndarray,
    stretch: np.ndarray,
    waits: np.ndarray,
    coacts: np.ndarray,
) -> None:
    """Score the block's rows `rows` (see the module docstring) into the out_* columns: each
    thread fills its stretch [stretch[tid, 0], stretch[tid, 1]) and takes the next at cursor[0];
    a row that finds no room marks where in `waits` and is left, with no effect, for the next
    call."""
    room = len(out_parent)
    n_entries = len(c_tokens)
    per_token = len(p_indices) / max(len(p_indptr) - 1, 1)  # parent entries per token
    for q in numba.prange(len(rows)):
        r = rows[q]
        tid = numba.get_thread_id()
        slot = slot_all[tid]
        sums = sums_all[tid]
        touched = touched_all[tid]
        n_touched = 0
        row_coacts = 0
        first, last = c_indptr[r], c_indptr[r + 1]
        sparse = (last - first) * per_token < SPARSE * len(slot)
        for j in range(np.uint64(first), np.uint64(last)):
            # Prefetched past the row's end too: the next row's first tokens are the thread's
            # next (a row of a wide child has few tokens: ~50 at 262k).
            if j + 3 * AHEAD < n_entries:  # where that token's entries start (prefetched below)
                cpu_ops.prefetch(p_indptr, c_tokens[j + 3 * AHEAD])
            if j + AHEAD < n_entries:
                ahead = p_indptr[c_tokens[j + AHEAD]]
                cpu_ops.prefetch(p_indices, ahead)
                cpu_ops.prefetch(p_values, ahead)
            t = np.uint64(c_tokens[j])
            b = np.float64(c_values[j])
            lo, hi = p_indptr[t], p_indptr[t + 1]
            row_coacts += hi - lo
            n_touched = _add(p_indices, p_values, lo, hi, b, slot, sums, touched, n_touched, sparse)
        # Score every pair the row touched, deciding which to write, with no effect beyond the
        # row (a row that then finds no room waits and is scored again): each pair's parts go
        # in the row's columns (`parts`), its count and flags into `mark` (0: not written). A
        # row meets each parent once, so deciding on the parents' running lists before any of
        # its own pairs are put in them decides as putting them in one by one would.
        top = row_top_all[tid]  # the row's best parents so far: score, parent, pair (desc, asc)
        top[:, 0] = -np.inf
        top[:, 1] = -1.0
        best = best_all[tid]
        reach = reach_all[tid]
        mark = mark_all[tid]
        cs, cm = c_sum_sq[r], c_max[r]
        n_write = 0
        # Each pair's sums and its parent's statistics, gathered by column (and the sums and
        # slot map reset for the next row), so that the parts are computed in vector registers.
        cols = parts_all[tid]
        ab, aa, bb, ps, pm = cols[0], cols[1], cols[2], cols[3], cols[4]
        for i in range(np.uint64(n_touched)):
            if i + AHEAD_PAIRS < n_touched:  # the statistics and threshold of a pair ahead
                ahead = np.uint64(touched[i + AHEAD_PAIRS])
                cpu_ops.prefetch(p_stats, 2 * ahead)
                cpu_ops.prefetch(reach, ahead)
                cpu_ops.prefetch(slot, ahead)
            p = np.uint64(touched[i])
            slot[p] = -1
            ab[i] = sums[i, 0]
            aa[i] = sums[i, 1]
            bb[i] = sums[i, 2]
            mark[i] = np.int64(sums[i, 3]) * 8
            sums[i, 0] = sums[i, 1] = sums[i, 2] = sums[i, 3] = 0.0
            ps[i] = p_stats[p, 0]
            pm[i] = p_stats[p, 1]
        # In place: ab, aa, bb, ps become mc, mcp, ratio, score.
        for i in range(np.uint64(n_touched)):
            m, mp, ratio, score = _parts(ab[i], aa[i], bb[i], ps[i], cs, pm[i], cm)
            ab[i] = m
            aa[i] = mp
            bb[i] = ratio
            ps[i] = score
        mc, mcp, ratio, pair_score = ab, aa, bb, ps
        for i in range(np.uint64(n_touched)):
            p = np.uint64(touched[i])
            score = pair_score[i]
            flags = 0
            if np.isfinite(score):
                if _above_floor(score, max(mc[i], mcp[i]), floor):  # max(...): mcs (Edges.mcs)
                    flags = _KEEP
                # Among the parent's best children this thread has seen? `reach` (small: mostly
                # in cache) says when to look at the exact list.
                if top_children > 0 and score >= reach[p] and score >= best[p, top_children - 1]:
                    flags = _KEEP | _RAISE
                if top_parents > 0:
                    pos = top_parents
                    while pos > 0 and (
                        score > top[pos - 1, 0]
                        or (score == top[pos - 1, 0] and p < top[pos - 1, 1])
                    ):
                        pos -= 1
                    if pos < top_parents:
                        for k in range(top_parents - 1, pos, -1):
                            top[k] = top[k - 1]
                        top[pos, 0] = score
                        top[pos, 1] = p
                        top[pos, 2] = i
            n_write += flags != 0
            mark[i] += flags
        for k in range(top_parents):  # the row's best parents are written, flagged
            if top[k, 1] >= 0:
                i = int(top[k, 2])
                n_write += mark[i] % 8 == 0
                mark[i] |= _TOP
        # Room in the thread's stretch for exactly those (a new stretch where the rest of this
        # one is too short: that rest stays unused).
        at, end = stretch[tid, 0], stretch[tid, 1]
        if at + n_write > end:
            size = max(stretch_size, n_write)
            taken = cpu_ops.fetch_add(cursor, 0, size)
            if taken + size > room:  # no room in this call: the row waits, with no effect
                waits[q] = taken
                continue
            _mark_unused(out_parent, out_child, out_score, out_top, at, end)
            at = taken
            stretch[tid, 1] = taken + size
        child = r + row_offset
        for i in range(n_touched):
            flags = mark[i] % 8
            if flags == 0:
                continue
            p = touched[i]
            score = pair_score[i]
            if flags & _RAISE:
                scores.push_best(best[p], score)
                reach[p] = _float32_below(best[p, top_children - 1])
            out_parent[at] = p
            out_child[at] = child
            out_mc[at] = mc[i]
            out_mcp[at] = mcp[i]
            out_ratio[at] = ratio[i]
            out_score[at] = score
            out_n[at] = mark[i] // 8
            out_top[at] = (flags & _TOP) != 0
            at += 1
        stretch[tid, 0] = at
        coacts[tid, 0] += row_coacts  # once per row: the threads' counters share a cache line
        coacts[tid, 1] += n_touched
        coacts[tid, 2] += n_write


@numba.njit(parallel=True, cache=True)
def listed_pair_sums(  # pragma: no cover - compiled
    p_indptr: np.ndarray,
    p_tokens: np.ndarray,
    p_values: np.ndarray,
    c_indptr: np.ndarray,
    c_tokens: np.ndarray,
    c_values: np.ndarray,
    pair_parent: np.ndarray,
    pair_child: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four sums (ab, aa over b > 0, bb over a > 0, co-active count) of listed pairs, from
    both saes latent-major: a merge of the two latents' sorted token lists per pair."""
    n = len(pair_parent)
    ab = np.zeros(n, np.float64)
    aa = np.zeros(n, np.float64)
    bb = np.zeros(n, np.float64)
    count = np.zeros(n, np.int64)
    for k in numba.prange(n):
        i, i_end = p_indptr[pair_parent[k]], p_indptr[pair_parent[k] + 1]
        j, j_end = c_indptr[pair_child[k]], c_indptr[pair_child[k] + 1]
        while i < i_end and j < j_end:
            if p_tokens[i] < c_tokens[j]:
                i += 1
            elif p_tokens[i] > c_tokens[j]:
                j += 1
            else:
                a, b = np.float64(p_values[i]), np.float64(c_values[j])
                ab[k] += a * b
                aa[k] += a * a
                bb[k] += b * b
                count[k] += 1
                i += 1
                j += 1
    return ab, aa, bb, count
