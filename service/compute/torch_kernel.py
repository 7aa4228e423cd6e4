"""The plain-torch path (any device): the same blocks as the compiled kernels, in torch ops.

For a block of parent rows, each parent entry (row, token, a) meets the child entries of its
token; the co-activations are expanded in batches of at most `max_coactivations`, added into
dense float64 rows [block rows, d_child] (allocated once), and read back either by the
touched pairs (listed by their keys, reset only there) or whole. It is the fallback where
neither numba nor Triton is available, and the reference the GPU kernel is compared with on
the GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import Tensor

from service.compute import layout

# Bytes of working memory per co-activation while a batch is expanded.
BYTES_PER_COACTIVATION = 64
# Co-activations expanded at once.
MAX_COACTIVATIONS = 1 << 22


class Rows(layout.DenseRows):
    """A block's dense rows, filled by torch ops."""

    def __init__(
        self,
        n_rows: int,
        d_child: int,
        device: torch.device,
        max_coactivations: int = MAX_COACTIVATIONS,
    ) -> None:
        self.d_child = d_child
        self.max_coactivations = max_coactivations
        self.sums = torch.zeros(4, n_rows * d_child, dtype=torch.float64, device=device)

    def block_sums(
        self, parts: Iterable[layout.DeviceBlock], n_coactivations: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        keys = [key for part in parts for key in self._accumulate(part, True)]
        touched = (
            torch.unique(torch.cat(keys))
            if keys
            else torch.zeros(0, dtype=torch.long, device=self.sums.device)
        )
        return self._take(touched)  # `unique` sorts

    def _accumulate(self, block: layout.DeviceBlock, track: bool) -> list[Tensor]:
        """Add the block's co-activations, in batches; each batch's distinct keys if `track`."""
        dev = block.p_tokens.device
        row_of = torch.repeat_interleave(
            torch.arange(block.n_rows, device=dev),
            block.p_indptr.diff(),
            output_size=len(block.p_tokens),
        )
        tok = block.p_tokens.long()
        c_indptr = block.c_indptr
        per_entry = (c_indptr[tok + 1] - c_indptr[tok]).long()
        total = int(per_entry.sum())
        keys: list[Tensor] = []
        if not total:
            return keys
        batch = self.max_coactivations
        ends = torch.cumsum(per_entry, 0)
        marks = torch.arange(batch, max(total, batch), batch, device=dev)
        cuts = torch.searchsorted(ends, marks, right=True).tolist()
        bounds = sorted({0, *cuts, len(tok)})
        for lo, hi in itertools.pairwise(bounds):
            if hi > lo:
                key = self._expand(
                    row_of[lo:hi],
                    tok[lo:hi],
                    block.p_values[lo:hi],
                    per_entry[lo:hi],
                    c_indptr,
                    block.c_indices,
                    block.c_values,
                )
                if track:
                    keys.append(torch.unique(key))
        return keys

    def _expand(
        self,
        rows: Tensor,
        tok: Tensor,
        a: Tensor,
        reps: Tensor,
        c_indptr: Tensor,
        c_indices: Tensor,
        c_values: Tensor,
    ) -> Tensor:
        """Add one batch's co-activations; returns their keys (row * d_child + child)."""
        n = int(reps.sum())
        entry = torch.repeat_interleave(
            torch.arange(len(reps), device=reps.device), reps, output_size=n
        )
        first = torch.cumsum(reps, 0) - reps
        offset = torch.arange(n, device=reps.device) - first[entry]
        ce = c_indptr[tok[entry]] + offset
        key = rows[entry] * self.d_child + c_indices[ce].long()
        av = a[entry].to(torch.float64)
        bv = c_values[ce].to(torch.float64)
        self.sums[0].index_add_(0, key, av * bv)
        self.sums[1].index_add_(0, key, av * av)
        self.sums[2].index_add_(0, key, bv * bv)
        self.sums[3].index_add_(0, key, torch.ones_like(av))
        return key
