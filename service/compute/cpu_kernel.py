"""The CPU kernel: every pair of a block of parent latents with the child, in one compiled pass.

Sparse Gustavson, one parent latent (a row) at a time, rows spread over threads: walk the row's
active tokens (latent-major), and for each the child latents active on that token (token-major),
accumulating the four sums in the thread's dense row (float64) while listing the children the
row touched. Then only the touched children are scored (`scores.parts`), the candidates are
emitted, and the touched entries are reset. Work follows the co-activations; memory is the
block's entries plus, per thread, a few arrays of d_sae(child).

Candidates (a superset of the stored edges; `scores.finalize` picks them exactly): pairs above
the floor; the row's `top_children` best; and a pair whose score reaches its child's running
`top_parents`-th best score among the pairs this thread scored in this block (a pair of a
child's final top parents always does: fewer than that many pairs beat it anywhere).

Ceilings, for the benchmark case 4k -> 16k, 200k tokens, L0 64 (8.4e8 co-activations, 2 cores):
operations: 4 multiply-adds and a compare per co-activation, ~1e9/s per core at best -> ~0.5 s;
bytes: each co-activation reads 8 bytes of the child's entry and updates 28 bytes of a row held
in cache (16k x 28 B = 460 KB fits L2), so the core's latency of dependent loads is the limit,
not DRAM bandwidth. Measured: see the README (`python -m bench.engine`).

`score_rows.py_func` is the same function uncompiled: the plain reference the tests compare the
compiled kernel to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from service.compute import layout, scores

_parts = numba.njit(error_model="numpy", cache=True)(scores.parts)
_above_floor = numba.njit(cache=True)(scores.above_floor)


# One cache line per child latent in each thread's row: ab, aa, bb, n, then the child's running
# best scores (up to MAX_TOP_PARENTS), so that a co-activation and a pair's scoring touch one line.
LINE = 8
MAX_TOP_PARENTS = LINE - 4


# Candidates a thread can hold per kernel call, all threads together (a row always fits).
CALL_CANDIDATES = 1 << 23


@dataclass
class Scratch:
    """Per-thread working memory, reused across blocks: a row of lines, candidates."""

    lines: np.ndarray  # [threads, d_child, LINE], each line 64-byte aligned
    touched: np.ndarray  # [threads, d_child]
    out_row: np.ndarray
    out_child: np.ndarray
    out_parts: np.ndarray  # masked_cos, masked_cos_parent, max_ratio, score
    out_n: np.ndarray
    out_top: np.ndarray  # among its parent's top_children (exact: a row is whole in a call)

    @classmethod
    def new(cls, n_threads: int, d_child: int, capacity: int | None = None) -> Scratch:
        cap = capacity or max(d_child, CALL_CANDIDATES // n_threads)
        z = np.zeros
        return cls(
            _aligned_lines(n_threads, d_child),
            z((n_threads, d_child), np.int32),
            z((n_threads, cap), np.int32),
            z((n_threads, cap), np.int32),
            z((n_threads, cap, 4)),
            z((n_threads, cap), np.int32),
            z((n_threads, cap), np.bool_),
        )

    @property
    def capacity(self) -> int:
        return int(self.out_row.shape[1])


def _aligned_lines(n_threads: int, d_child: int) -> np.ndarray:
    raw = np.zeros(n_threads * d_child * LINE + LINE, np.float64)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip : skip + n_threads * d_child * LINE].reshape(n_threads, d_child, LINE)


# A block's candidates, column by column, in the dtypes of `scores.DTYPES`, and whether each is
# among its parent's top_children (exact: a row is whole in a call).
COLUMNS = {
    **{name: torch.empty(0, dtype=dtype).numpy().dtype for name, dtype in scores.DTYPES.items()},
    "parent_top": np.dtype(np.bool_),
}


@dataclass
class Candidates:
    """A block's candidate pairs (latent indices, score parts, counts) and what they cost."""

    columns: dict[str, np.ndarray]
    n_coactivations: int = 0
    n_pairs: int = 0  # distinct co-active pairs scored
    size: int = 0

    @classmethod
    def empty(cls, capacity: int) -> Candidates:
        return cls({k: np.empty(capacity, dt) for k, dt in COLUMNS.items()})

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` candidates (copies what is there when it grows)."""
        if capacity <= len(self.columns["parent"]):
            return
        for k, col in self.columns.items():
            new = np.empty(capacity, col.dtype)
            new[: self.size] = col[: self.size]
            self.columns[k] = new

    def take(self, scratch: Scratch, thread: int, n: int, row_offset: int) -> None:
        """Append a thread's n candidates from the scratch (one copy, into the final dtypes)."""
        if self.size + n > len(self.columns["parent"]):
            self.reserve(max(2 * len(self.columns["parent"]), self.size + n))
        at = slice(self.size, self.size + n)
        c = self.columns
        np.add(scratch.out_row[thread, :n], row_offset, out=c["parent"][at])
        c["child"][at] = scratch.out_child[thread, :n]
        for i, name in enumerate(("masked_cos", "masked_cos_parent", "max_ratio", "score")):
            c[name][at] = scratch.out_parts[thread, :n, i]
        c["n_coactive"][at] = scratch.out_n[thread, :n]
        c["parent_top"][at] = scratch.out_top[thread, :n]
        self.size += n

    def column(self, name: str) -> np.ndarray:
        return self.columns[name][: self.size]


def score_block(
    block: layout.LatentMajor,
    child: layout.TokenMajor,
    p_sum_sq: np.ndarray,
    p_max: np.ndarray,
    c_sum_sq: np.ndarray,
    c_max: np.ndarray,
    floor: float,
    top_parents: int,
    top_children: int,
    scratch: Scratch,
    kernel: Callable[..., None] | None = None,
) -> Candidates:
    """The candidates of one block, in calls over runs of rows whose candidates cannot exceed
    a thread's room (a row emits at most the pairs it touched). `kernel`: `score_rows`
    (default) or its uncompiled `score_rows.py_func`."""
    if top_parents > MAX_TOP_PARENTS:
        raise ValueError(
            f"top_parents {top_parents}: the CPU kernel keeps at most {MAX_TOP_PARENTS}"
        )
    if scratch.capacity < child.d_sae:
        raise ValueError("the scratch must hold at least one row's candidates")
    kernel = kernel or score_rows
    scratch.lines[:, :, 4:] = -np.inf  # running best scores start afresh in each block
    bound = np.minimum(layout.coactivations(block, child), child.d_sae)
    calls = layout.plan_blocks(bound, scratch.capacity)
    threads = scratch.out_row.shape[0]
    coacts = np.zeros((threads, 2), np.int64)  # co-activations, pairs
    args = (
        np.asarray(child.indptr),
        np.asarray(child.indices),
        np.asarray(child.values),
        p_sum_sq[block.lo : block.hi].astype(np.float64),
        p_max[block.lo : block.hi].astype(np.float64),
        c_sum_sq.astype(np.float64),
        c_max.astype(np.float64),
        float(floor),
        top_parents,
        top_children,
    )
    found = Candidates.empty(scratch.capacity)
    for r0, r1 in calls:
        counts = np.zeros(threads, np.int64)
        kernel(
            block.indptr[r0 : r1 + 1],
            block.tokens,
            block.values,
            r0,
            *args,
            scratch.lines,
            scratch.touched,
            scratch.out_row,
            scratch.out_child,
            scratch.out_parts,
            scratch.out_n,
            scratch.out_top,
            counts,
            coacts,
        )
        # Grow once to what the block will need at this rate, not by doubling.
        done = bound[:r1].sum()
        found.reserve(int((found.size + counts.sum()) * bound.sum() / max(done, 1) * 1.05))
        for t, n in enumerate(counts.tolist()):
            found.take(scratch, t, n, block.lo)
    found.n_coactivations = int(coacts[:, 0].sum())
    found.n_pairs = int(coacts[:, 1].sum())
    return found


@numba.njit(error_model="numpy", cache=True, nogil=True)
def _emit(
    tid: int,
    r: int,
    c: int,
    mc: float,
    mcp: float,
    ratio: float,
    s: float,
    count: float,
    out_row: np.ndarray,
    out_child: np.ndarray,
    out_parts: np.ndarray,
    out_n: np.ndarray,
    out_top: np.ndarray,
    top: bool,
    counts: np.ndarray,
) -> int:
    slot = counts[tid]
    out_row[tid, slot] = r
    out_child[tid, slot] = c
    out_parts[tid, slot, 0] = mc
    out_parts[tid, slot, 1] = mcp
    out_parts[tid, slot, 2] = ratio
    out_parts[tid, slot, 3] = s
    out_n[tid, slot] = np.int32(count)
    out_top[tid, slot] = top
    counts[tid] = slot + 1
    return slot


@numba.njit(parallel=True, error_model="numpy", cache=True, nogil=True)
def score_rows(
    p_indptr: np.ndarray,
    p_tokens: np.ndarray,
    p_values: np.ndarray,
    row_offset: int,
    c_indptr: np.ndarray,
    c_indices: np.ndarray,
    c_values: np.ndarray,
    p_sum_sq: np.ndarray,
    p_max: np.ndarray,
    c_sum_sq: np.ndarray,
    c_max: np.ndarray,
    floor: float,
    top_parents: int,
    top_children: int,
    lines_all: np.ndarray,
    touched_all: np.ndarray,
    out_row: np.ndarray,
    out_child: np.ndarray,
    out_parts: np.ndarray,
    out_n: np.ndarray,
    out_top: np.ndarray,
    counts: np.ndarray,
    coacts: np.ndarray,
) -> None:
    """Score rows row_offset + [0, len(p_indptr) - 1) of the block (see the module docstring);
    candidates go to each thread's out_* arrays, counted in `counts`."""
    n_rows = len(p_indptr) - 1
    k_row = max(top_children, 1)
    for i_row in numba.prange(n_rows):
        r = i_row + row_offset
        tid = numba.get_thread_id()
        lines = lines_all[tid]
        touched = touched_all[tid]
        n_touched = 0
        row_coacts = 0
        for j in range(p_indptr[i_row], p_indptr[i_row + 1]):
            t = p_tokens[j]
            a = np.float64(p_values[j])
            a2 = a * a
            lo, hi = c_indptr[t], c_indptr[t + 1]
            row_coacts += hi - lo
            for e in range(lo, hi):
                c = c_indices[e]
                b = np.float64(c_values[e])
                line = lines[c]
                if line[3] == 0.0:
                    touched[n_touched] = c
                    n_touched += 1
                line[0] += a * b
                line[1] += a2
                line[2] += b * b
                line[3] += 1.0
        coacts[tid, 0] += row_coacts  # once per row: the threads' counters share a cache line
        coacts[tid, 1] += n_touched
        # The row's best children so far (score desc, child asc) with their parts; a pair that
        # enters and is not emitted for another reason is emitted after the row.
        top_s = np.full(k_row, -np.inf)
        top_c = np.full(k_row, -1, np.int64)
        top_p = np.zeros((k_row, 5))
        top_slot = np.full(k_row, -1, np.int64)  # where it was emitted, -1: not yet
        for i in range(n_touched):
            c = touched[i]
            line = lines[c]
            mc, mcp, ratio, s = _parts(
                line[0], line[1], line[2], p_sum_sq[r], c_sum_sq[c], p_max[r], c_max[c]
            )
            count = line[3]
            line[0] = 0.0
            line[1] = 0.0
            line[2] = 0.0
            line[3] = 0.0
            if not np.isfinite(s):
                continue
            keep = _above_floor(s, max(mc, mcp), floor)  # max(...): mcs, as in Edges.mcs
            if top_parents > 0 and s >= line[3 + top_parents]:
                keep = True  # among the child's best parents this thread has seen
                pos = top_parents - 1
                while pos > 0 and s > line[3 + pos]:
                    line[4 + pos] = line[3 + pos]
                    pos -= 1
                line[4 + pos] = s
            slot = -1
            if keep:
                slot = _emit(
                    tid,
                    r,
                    c,
                    mc,
                    mcp,
                    ratio,
                    s,
                    count,
                    out_row,
                    out_child,
                    out_parts,
                    out_n,
                    out_top,
                    False,
                    counts,
                )
            if top_children > 0:
                pos = k_row
                while pos > 0 and (
                    s > top_s[pos - 1] or (s == top_s[pos - 1] and c < top_c[pos - 1])
                ):
                    pos -= 1
                if pos < k_row:
                    for q in range(k_row - 1, pos, -1):
                        top_s[q] = top_s[q - 1]
                        top_c[q] = top_c[q - 1]
                        top_p[q] = top_p[q - 1]
                        top_slot[q] = top_slot[q - 1]
                    top_s[pos] = s
                    top_c[pos] = c
                    top_p[pos, 0] = mc
                    top_p[pos, 1] = mcp
                    top_p[pos, 2] = ratio
                    top_p[pos, 3] = s
                    top_p[pos, 4] = count
                    top_slot[pos] = slot
        if top_children > 0:
            for q in range(k_row):
                if top_c[q] < 0:
                    continue
                if top_slot[q] >= 0:
                    out_top[tid, top_slot[q]] = True
                else:
                    _emit(
                        tid,
                        r,
                        top_c[q],
                        top_p[q, 0],
                        top_p[q, 1],
                        top_p[q, 2],
                        top_p[q, 3],
                        top_p[q, 4],
                        out_row,
                        out_child,
                        out_parts,
                        out_n,
                        out_top,
                        True,
                        counts,
                    )


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
