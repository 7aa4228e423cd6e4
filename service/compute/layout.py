"""The two layouts of activations the engine walks: token-major (CSR) and latent-major (CSC).

For one block of latents of one sae (the rows: the child's on the CPU, the parent's on a GPU)
the engine walks each latent's active tokens (latent-major) and, for each, the other sae's
latents active on that token (token-major). The store already holds every sae token-major, so
the other sae is read in place (memory-mapped); the block is gathered latent-major by one
counting pass over its sae's entries.

The four sums of a pair (p, c), over the tokens where both are active, follow from these walks:

    ab = sum a*b,   aa = sum a^2 [b>0],   bb = sum b^2 [a>0],   n = #co-active tokens
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numba
import numpy as np
import torch

from service.compute import chunks as chunks_


@dataclass(frozen=True)
class TokenMajor:
    """CSR over tokens: the entries of token t are [indptr[t], indptr[t+1])."""

    indptr: np.ndarray  # int64 [T+1]
    indices: np.ndarray  # int32 [nnz], latent index
    values: np.ndarray  # float32 [nnz], > 0
    d_sae: int

    @property
    def n_tokens(self) -> int:
        return len(self.indptr) - 1


@dataclass(frozen=True)
class LatentMajor:
    """CSC for latents [lo, hi): the entries of latent lo + i are [indptr[i], indptr[i+1])."""

    lo: int
    hi: int
    indptr: np.ndarray  # int64 [hi - lo + 1]
    tokens: np.ndarray  # int32 [nnz], sorted within each latent
    values: np.ndarray  # float32 [nnz]


@dataclass(frozen=True)
class DeviceBlock:
    """One block, or its part over a range of tokens, as the device paths take it (tensors on
    the device): its rows' entries latent-major, pointers from 0, and the child's entries of
    the same tokens token-major (tokens numbered from the range's first)."""

    p_indptr: torch.Tensor  # int64 [rows + 1]
    p_tokens: torch.Tensor  # int32 [entries]
    p_values: torch.Tensor  # float32 [entries]
    c_indptr: torch.Tensor  # int64 [tokens + 1]
    c_indices: torch.Tensor  # int32 [nnz]
    c_values: torch.Tensor  # float32 [nnz]

    @property
    def n_rows(self) -> int:
        return len(self.p_indptr) - 1


class DenseRows(abc.ABC):
    """A block's dense sums on the device, as both device paths keep them (`torch_kernel.Rows`,
    `gpu_kernel.Rows`): `sums` [4, rows x d_child] (ab, aa, bb, n; float64; part k of pair
    row * d_child + child is sums[k, key]), allocated once for the widest block and reused;
    a block's parts are added in by `_accumulate`, then read back whole or by the pairs it
    touched."""

    sums: torch.Tensor
    d_child: int

    @abc.abstractmethod
    def _accumulate(self, part: DeviceBlock, track: bool) -> object:
        """Add one part's co-activations (`track`: and note the pairs they touch)."""

    @abc.abstractmethod
    def block_sums(
        self, parts: Iterable[DeviceBlock], n_coactivations: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, children, sums [4, n] as ab, aa, bb, n) of the pairs a block's parts touched
        (`n_coactivations` in all), ordered by row, then child; reset for the next block."""

    def dense_sums(self, parts: Iterable[DeviceBlock]) -> torch.Tensor:
        """A block's sums over its parts as dense rows [4, rows, d_child] (0 where a pair
        never co-activates): a view that the caller zeroes once it has read it."""
        n_rows = 0
        for part in parts:
            self._accumulate(part, False)
            n_rows = part.n_rows
        return self.sums[:, : n_rows * self.d_child].view(4, n_rows, self.d_child)

    def _take(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, children, sums) of the pairs `keys` (ascending), reset for the next block."""
        sums = self.sums[:, keys]
        self.sums[:, keys] = 0
        return keys // self.d_child, keys % self.d_child, sums


@runtime_checkable
class HasTokenMajor(Protocol):
    """A source that holds its activations token-major already (the store, in-memory CSR)."""

    def token_major(self) -> TokenMajor: ...


@dataclass(frozen=True)
class Laid:
    """Activations already token-major, as a chunk source (what a block runner is handed)."""

    rows: TokenMajor

    @property
    def n_tokens(self) -> int:
        return self.rows.n_tokens

    @property
    def d_sae(self) -> int:
        return self.rows.d_sae

    def token_major(self) -> TokenMajor:
        return self.rows

    def chunks(self, chunk_tokens: int) -> Iterator[chunks_.SparseChunk]:
        r = self.rows
        for start in range(0, r.n_tokens, chunk_tokens):
            stop = min(start + chunk_tokens, r.n_tokens)
            lo, hi = int(r.indptr[start]), int(r.indptr[stop])
            rows = np.repeat(np.arange(stop - start), np.diff(r.indptr[start : stop + 1]))
            yield chunks_.SparseChunk(
                start,
                stop - start,
                torch.from_numpy(rows),
                torch.from_numpy(r.indices[lo:hi].astype(np.int64)),
                torch.from_numpy(r.values[lo:hi].copy()),
            )


def token_major(source: chunks_.ChunkSource, chunk_tokens: int = 1 << 16) -> TokenMajor:
    """The source token-major: in place when it is stored so, else gathered chunk by chunk."""
    if isinstance(source, HasTokenMajor):
        return source.token_major()
    if source.n_tokens >= 1 << 31:
        raise ValueError(f"{source.n_tokens} tokens: at most 2**31 - 1 are supported")
    if isinstance(source, chunks_.CsrSource) and _all_active(source.values.cpu().numpy()):
        return TokenMajor(  # already token-major, every entry active: no copy on the CPU
            source.indptr.cpu().numpy().astype(np.int64, copy=False),
            source.indices.cpu().numpy().astype(np.int32, copy=False),
            source.values.cpu().numpy().astype(np.float32, copy=False),
            source.d_sae,
        )
    counts, indices, values = [], [], []
    for chunk in source.chunks(chunk_tokens):
        counts.append(np.bincount(chunk.rows.cpu().numpy(), minlength=chunk.n_tokens))
        indices.append(chunk.cols.cpu().numpy().astype(np.int32))
        values.append(chunk.values.cpu().numpy().astype(np.float32))
    indptr = np.zeros(source.n_tokens + 1, np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    return TokenMajor(
        indptr,
        np.concatenate(indices) if indices else np.zeros(0, np.int32),
        np.concatenate(values) if values else np.zeros(0, np.float32),
        source.d_sae,
    )


def token_slice(rows: TokenMajor, t0: int, t1: int) -> TokenMajor:
    """Tokens [t0, t1) of `rows` without a copy, numbered from t0: their pointers still index
    the whole arrays of entries (what `latent_major` and `coactivations` read; not for
    `as_tensors`, which copies the arrays as they are)."""
    return TokenMajor(rows.indptr[t0 : t1 + 1], rows.indices, rows.values, rows.d_sae)


def latent_major(rows: TokenMajor, lo: int, hi: int) -> LatentMajor:
    """The entries of latents [lo, hi), latent-major, tokens ascending within each latent.

    Threads take consecutive ranges of tokens: each counts its range's entries per latent, then
    writes them from its own start within each latent (after the ranges before it)."""
    parts = max(1, min(numba.get_num_threads(), rows.n_tokens))
    counts = _counts(rows.indptr, rows.indices, lo, hi, parts)
    indptr = np.zeros(hi - lo + 1, np.int64)
    np.cumsum(counts.sum(axis=0), out=indptr[1:])
    starts = np.cumsum(counts, axis=0)
    starts -= counts
    starts += indptr[:-1]
    tokens = np.empty(int(indptr[-1]), np.int32)
    values = np.empty(int(indptr[-1]), np.float32)
    _scatter(rows.indptr, rows.indices, rows.values, lo, hi, starts, tokens, values)
    return LatentMajor(lo, hi, indptr, tokens, values)


def plan_blocks(
    cost_per_latent: np.ndarray, max_cost: int, max_rows: int | None = None
) -> list[tuple[int, int]]:
    """Consecutive ranges of latents, each costing at most `max_cost` (a latent that costs
    more gets a range of its own) and holding at most `max_rows` latents."""
    d = len(cost_per_latent)
    max_rows = d if max_rows is None else max(1, max_rows)
    ends = np.cumsum(cost_per_latent)
    blocks, lo = [], 0
    while lo < d:
        base = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, base + max_cost, side="right"))
        hi = min(max(hi, lo + 1), lo + max_rows, d)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def coactivations(block: LatentMajor, child: TokenMajor) -> np.ndarray:
    """Co-activations of each latent of the block with the child (int64 [hi - lo])."""
    per_token = np.diff(child.indptr)
    out = np.zeros(block.hi - block.lo, np.int64)
    _row_sums(block.indptr, block.tokens, per_token, out)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _all_active(values: np.ndarray) -> bool:
    """Whether every value is > 0 (NaN is not), without a mask as large as the values."""
    n_inactive = 0
    for i in numba.prange(len(values)):
        if not values[i] > 0:
            n_inactive += 1
    return n_inactive == 0


@numba.njit(cache=True, nogil=True)
def _token_range(n_tokens: int, parts: int, q: int) -> tuple[int, int]:
    return n_tokens * q // parts, n_tokens * (q + 1) // parts


@numba.njit(cache=True, nogil=True, parallel=True)
def _counts(indptr: np.ndarray, indices: np.ndarray, lo: int, hi: int, parts: int) -> np.ndarray:
    """Entries per latent of [lo, hi) in each of `parts` consecutive ranges of tokens."""
    counts = np.zeros((parts, hi - lo), np.int64)
    for q in numba.prange(parts):
        first, stop = _token_range(len(indptr) - 1, parts, q)
        for e in range(indptr[first], indptr[stop]):
            c = indices[e]
            if lo <= c < hi:
                counts[q, c - lo] += 1
    return counts


@numba.njit(cache=True, nogil=True, parallel=True)
def _scatter(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    lo: int,
    hi: int,
    starts: np.ndarray,
    out_tokens: np.ndarray,
    out_values: np.ndarray,
) -> None:
    parts = starts.shape[0]
    for q in numba.prange(parts):
        fill = starts[q].copy()
        first, stop = _token_range(len(indptr) - 1, parts, q)
        for t in range(first, stop):  # tokens in order: each latent's tokens come out sorted
            for e in range(indptr[t], indptr[t + 1]):
                c = indices[e]
                if lo <= c < hi:
                    k = fill[c - lo]
                    out_tokens[k] = t
                    out_values[k] = values[e]
                    fill[c - lo] = k + 1


@numba.njit(cache=True, nogil=True)
def _row_sums(
    indptr: np.ndarray, tokens: np.ndarray, per_token: np.ndarray, out: np.ndarray
) -> None:
    for r in range(len(indptr) - 1):
        total = 0
        for j in range(indptr[r], indptr[r + 1]):
            total += per_token[tokens[j]]
        out[r] = total


def latent_major_on(rows: TokenMajor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every latent's entries latent-major on `device` (indptr [d+1], tokens, values), by one
    stable sort there: a block of latents [lo, hi) is then the slice indptr[lo]:indptr[hi]."""
    indptr, indices, values = as_tensors(rows, device)
    token_of = torch.repeat_interleave(
        torch.arange(rows.n_tokens, device=device, dtype=torch.int32),
        indptr.diff(),
        output_size=len(indices),
    )
    order = torch.sort(indices, stable=True).indices  # tokens stay ascending within a latent
    counts = torch.bincount(indices.long(), minlength=rows.d_sae)
    latent_ptr = torch.zeros(rows.d_sae + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=latent_ptr[1:])
    return latent_ptr, token_of[order], values[order]


def as_tensors(x: LatentMajor | TokenMajor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The layout's arrays as tensors on `device` (int64 pointers, int32 indices, float32)."""
    if isinstance(x, LatentMajor):
        arrays = (x.indptr, x.tokens, x.values)
    else:
        arrays = (x.indptr, x.indices, x.values)
    return tuple(to_device(a, device) for a in arrays)


# Bytes of each of the two pinned buffers a large host-to-GPU copy goes through.
STAGE_BYTES = 1 << 28


def to_device(a: np.ndarray, device: torch.device, stage_bytes: int = STAGE_BYTES) -> torch.Tensor:
    """`a` as a tensor on `device`. To a GPU, an array larger than `stage_bytes` goes through
    two pinned buffers in turn: the host fills one (a parallel copy) while the other's copy to
    the device runs. From pageable memory the driver copies synchronously through its own small
    staging buffers, at a fraction of the link's speed (the 10 GB of 16k -> 65k at 10M tokens
    took ~1 s on an H200)."""
    src = torch.from_numpy(np.ascontiguousarray(a))
    if device.type != "cuda" or src.nbytes <= stage_bytes:
        return src.to(device)
    out = torch.empty(src.shape, dtype=src.dtype, device=device)
    src_bytes, out_bytes = src.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)
    stream = torch.cuda.current_stream(device)
    buffers = [torch.empty(stage_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]  # each buffer's last copy out
    for i, lo in enumerate(range(0, len(src_bytes), stage_bytes)):
        hi, b = min(lo + stage_bytes, len(src_bytes)), i % 2
        event = copied[b]
        if event is not None:
            event.synchronize()
        buffers[b][: hi - lo].copy_(src_bytes[lo:hi])
        out_bytes[lo:hi].copy_(buffers[b][: hi - lo], non_blocking=True)
        copied[b] = event = torch.cuda.Event()
        event.record(stream)
    stream.synchronize()  # the buffers go back to the pinned pool only once emptied
    return out
