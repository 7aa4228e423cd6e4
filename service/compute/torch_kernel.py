"""The plain-torch path (any device): the same blocks as the compiled kernels, in torch ops.

For a block of parent rows, each parent entry (row, token, a) meets the child entries of its
token; the co-activations are expanded in batches of at most `max_coactivations`, added into
dense float64 rows [block rows, d_child] (allocated once, reset only where touched), and the
touched pairs are listed by their keys. It is the fallback where neither numba nor Triton is
available, and the reference the GPU kernel is compared with on the GPU.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

# Bytes of working memory per co-activation while a batch is expanded.
BYTES_PER_COACTIVATION = 64
# Co-activations expanded at once.
MAX_COACTIVATIONS = 1 << 22


class Rows:
    """Dense sums of a block's rows against every child latent, reused across blocks."""

    def __init__(self, n_rows: int, d_child: int, device: torch.device) -> None:
        self.d_child = d_child
        self.sums = torch.zeros(4, n_rows * d_child, dtype=torch.float64, device=device)

    def block_sums(
        self,
        p_indptr: Tensor,
        p_tokens: Tensor,
        p_values: Tensor,
        c_indptr: Tensor,
        c_indices: Tensor,
        c_values: Tensor,
        max_coactivations: int = MAX_COACTIVATIONS,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, children, sums [4, n] as ab, aa, bb, n) of the touched pairs of one block;
        the rows are left zeroed for the next block."""
        dev = p_tokens.device
        n_rows = len(p_indptr) - 1
        row_of = torch.repeat_interleave(
            torch.arange(n_rows, device=dev), p_indptr.diff(), output_size=len(p_tokens)
        )
        tok = p_tokens.long()
        per_entry = (c_indptr[tok + 1] - c_indptr[tok]).long()
        total = int(per_entry.sum())
        keys: list[Tensor] = []
        if total:
            ends = torch.cumsum(per_entry, 0)
            marks = torch.arange(
                max_coactivations, max(total, max_coactivations), max_coactivations, device=dev
            )
            cuts = torch.searchsorted(ends, marks, right=True).tolist()
            bounds = sorted({0, *cuts, len(tok)})
            for lo, hi in itertools.pairwise(bounds):
                if hi > lo:
                    keys.append(
                        self._expand(
                            row_of[lo:hi],
                            tok[lo:hi],
                            p_values[lo:hi],
                            per_entry[lo:hi],
                            c_indptr,
                            c_indices,
                            c_values,
                        )
                    )
        touched = (
            torch.unique(torch.cat(keys)) if keys else torch.zeros(0, dtype=torch.long, device=dev)
        )
        sums = self.sums[:, touched]
        self.sums[:, touched] = 0
        return touched // self.d_child, touched % self.d_child, sums

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
        return torch.unique(key)
