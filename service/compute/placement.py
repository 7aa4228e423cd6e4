"""Where a job's activations lie while the device paths score it: whole on the device, or
streamed to it by ranges of tokens, so that a GPU scores token sets larger than its memory.

Each block of parent latents is handed to a kernel as parts (`layout.DeviceBlock`): the block's
entries over a range of tokens and the child's entries of the same tokens. The sums of a pair
add up over tokens, so a kernel adds part after part into the block's dense rows and reads
them once.

- `Resident`: both saes on the device for the whole job, the parent made latent-major there by
  one sort; a block is one part, sliced from them. The fastest, and what a job uses whenever it
  fits: the child's entries, the parent's and the sort's temporaries (`resident_bytes`).
- `Streamed`: each block gathered latent-major on the host (as the CPU kernel gathers its
  blocks), the next one in a thread of its own while the device works on this one; the child
  cut into ranges of tokens of at most `range_bytes`; the device holds one range of the child
  (kept across blocks when one range covers every token) and one block's entries of that
  range. At 100M tokens and L0 64 each sae holds 6.4e9 entries (51 GB): more than both fit on
  an 80 GB GPU beside a block's dense rows.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from service.compute import device as device_
from service.compute import layout

# Bytes of the device per entry: its latent index (or token) int32 and its value float32.
_BYTES_PER_ENTRY = 8
# Bytes per parent entry while it is made latent-major on the device (`layout.latent_major_on`):
# the entry, its token, the sort's keys, order and temporaries, the gathered tokens and values.
_BYTES_PER_SORTED_ENTRY = 40


def resident_bytes(parent: layout.TokenMajor, child: layout.TokenMajor) -> int:
    """Bytes of the device that `Resident` takes at its peak."""
    n_tokens = parent.n_tokens + 1
    return (
        _BYTES_PER_ENTRY * len(child.indices)
        + _BYTES_PER_SORTED_ENTRY * len(parent.indices)
        + 16 * n_tokens  # both saes' token pointers (int64)
    )


# A block's co-activations and the block as its parts.
Block = tuple[int, Iterator[layout.DeviceBlock]]


class Resident:
    """Both saes whole on the device; each block one part."""

    def __init__(
        self, parent: layout.TokenMajor, child: layout.TokenMajor, device: torch.device
    ) -> None:
        self.c_indptr, self.c_indices, self.c_values = layout.as_tensors(child, device)
        self.per_token = self.c_indptr.diff()
        self.p_indptr, self.p_tokens, self.p_values = layout.latent_major_on(parent, device)
        self.n_ranges = 1

    def blocks(self, plan: Sequence[tuple[int, int]]) -> Generator[Block, None, None]:
        """Each block of parent latents [lo, hi) of `plan` in turn: its co-activations and the
        block as its one part, sliced from what lies on the device."""
        for lo, hi in plan:
            first, last = int(self.p_indptr[lo]), int(self.p_indptr[hi])
            tokens = self.p_tokens[first:last]
            coacts = int(self.per_token[tokens.long()].sum())
            part = layout.DeviceBlock(
                self.p_indptr[lo : hi + 1] - first,
                tokens,
                self.p_values[first:last],
                self.c_indptr,
                self.c_indices,
                self.c_values,
            )
            yield coacts, iter([part])


class Streamed:
    """Blocks gathered on the host, the child streamed in ranges of tokens."""

    def __init__(
        self,
        parent: layout.TokenMajor,
        child: layout.TokenMajor,
        device: torch.device,
        range_bytes: int,
    ) -> None:
        self.parent, self.child, self.device = parent, child, device
        self.ranges = token_ranges(child.indptr, range_bytes)
        self.n_ranges = len(self.ranges)
        self._kept: tuple[torch.Tensor, ...] | None = None  # the child, when one range holds it

    def blocks(self, plan: Sequence[tuple[int, int]]) -> Generator[Block, None, None]:
        """Each block of parent latents [lo, hi) of `plan` in turn: its co-activations and the
        block as its parts (one per range of tokens, copied to the device as the kernel asks
        for it). The next block is gathered on the host while the caller works on this one:
        two blocks' entries on the host at most (a block's are within a quarter of the engine's
        working budget). Only the gathering thread runs compiled parallel code meanwhile
        (numba's default thread pool takes one caller at a time)."""
        with ThreadPoolExecutor(1, thread_name_prefix="gather") as pool:
            ahead: Future[tuple[int, list[layout.LatentMajor]]] | None = None
            for i, (lo, hi) in enumerate(plan):
                coacts, parts = ahead.result() if ahead is not None else self._gather(lo, hi)
                ahead = pool.submit(self._gather, *plan[i + 1]) if i + 1 < len(plan) else None
                yield coacts, self._on_device(parts)

    def _gather(self, lo: int, hi: int) -> tuple[int, list[layout.LatentMajor]]:
        """Parent latents [lo, hi) latent-major on the host, one part per range of tokens (each
        gathered from its own tokens: one pass over the parent's entries in all, as for the
        block whole), and their co-activations."""
        parts, coacts = [], 0
        for t0, t1 in self.ranges:
            part = layout.latent_major(layout.token_slice(self.parent, t0, t1), lo, hi)
            coacts += int(layout.coactivations(part, layout.token_slice(self.child, t0, t1)).sum())
            parts.append(part)
        return coacts, parts

    def _on_device(self, parts: list[layout.LatentMajor]) -> Iterator[layout.DeviceBlock]:
        for part, (t0, t1) in zip(parts, self.ranges, strict=True):
            yield layout.DeviceBlock(*layout.as_tensors(part, self.device), *self._child(t0, t1))

    def _child(self, t0: int, t1: int) -> tuple[torch.Tensor, ...]:
        """The child's entries of tokens [t0, t1) on the device, tokens from t0."""
        if self._kept is not None:
            return self._kept
        c = self.child
        first, last = int(c.indptr[t0]), int(c.indptr[t1])
        tensors = (
            layout.to_device(c.indptr[t0 : t1 + 1] - first, self.device),
            layout.to_device(c.indices[first:last], self.device),
            layout.to_device(c.values[first:last], self.device),
        )
        if self.n_ranges == 1:
            self._kept = tensors
        return tensors


def token_ranges(indptr: np.ndarray, range_bytes: int) -> list[tuple[int, int]]:
    """Consecutive ranges of tokens, each holding at most `range_bytes` of entries and token
    pointers (a token with more gets a range of its own)."""
    n_tokens = len(indptr) - 1
    max_entries = max(1, range_bytes // _BYTES_PER_ENTRY)
    max_tokens = max(1, range_bytes // 16)  # its pointers: 8 bytes a token, with slack
    ranges, t0 = [], 0
    while t0 < n_tokens:
        t1 = int(np.searchsorted(indptr, indptr[t0] + max_entries, side="right")) - 1
        t1 = min(max(t1, t0 + 1), t0 + max_tokens, n_tokens)
        ranges.append((t0, t1))
        t0 = t1
    return ranges or [(0, 0)]


def available(device: torch.device, budget: int) -> int | None:
    """Bytes of `device` the activations may take by default: what the engine's working budget
    leaves of what is free, with slack (None on the CPU: no bound)."""
    free = device_.free_memory(device)
    return None if free is None else max(0, int(free * 0.9) - budget // 2)


def place(
    parent: layout.TokenMajor,
    child: layout.TokenMajor,
    device: torch.device,
    memory: int | None,
) -> Resident | Streamed:
    """The activations on `device` within `memory` bytes (None: no bound): whole where they
    fit, else the child streamed in ranges of at most half of it (a block's entries are within
    the engine's working budget; the rest is slack for the allocator's cache, as ranges and
    blocks of different sizes come and go)."""
    if memory is None or resident_bytes(parent, child) <= memory:
        return Resident(parent, child, device)
    return Streamed(parent, child, device, max(1, memory // 2))
