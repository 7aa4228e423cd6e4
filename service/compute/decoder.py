"""Decoder cosines (SPEC.md section 2): `dec_cos` = the cosine of two latents' decoder vectors
(rows of `W_dec`), for the stored pairs of a job, each child's best parents by it, and each
child's `max_dec_cos` (its largest to any latent of the parent sae).

A blocked matmul of unit rows: a block of child rows times every parent row at a time, so that
memory is a block times d_sae(parent), never d_sae(child) x d_sae(parent); on the GPU when the
job runs there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from service.compute import chunks as chunks_
from service.compute import engine, scores

# Bytes of one block of cosines (float32 [rows, d_parent]).
BLOCK_BYTES = 1 << 28


def unit_rows(w_dec: Float[Tensor, "d_sae d_in"]) -> Float[np.ndarray, "d_sae d_in"]:
    """Decoder rows scaled to unit length (float32; a zero row stays zero)."""
    w = w_dec.detach().to(torch.float64)
    norms = w.norm(dim=-1, keepdim=True)
    return (w / torch.where(norms > 0, norms, 1.0)).to(torch.float32).cpu().numpy()


@dataclass(frozen=True)
class Cosines:
    """The decoder cosines a job stores."""

    of_edges: Float[np.ndarray, " n_edges"]  # dec_cos of each listed pair
    top_parent: Int[np.ndarray, "d_child top"]  # each child's best parents by dec_cos
    top_cos: Float[np.ndarray, "d_child top"]  # and their cosines, best first

    @property
    def max_dec_cos(self) -> Float[np.ndarray, " d_child"]:
        """Each child's largest cosine to any parent."""
        return self.top_cos[:, 0]


def cosines(
    parent: Float[np.ndarray, "d_parent d_in"],
    child: Float[np.ndarray, "d_child d_in"],
    edge_parent: Int[np.ndarray, " n_edges"],
    edge_child: Int[np.ndarray, " n_edges"],
    top: int = 3,
    device: torch.device | str = "cpu",
    block_bytes: int = BLOCK_BYTES,
) -> Cosines:
    """Decoder cosines between unit rows `parent` and `child`: of the listed pairs, each child's
    maximum and its `top` best parents (ties: the lower parent index; at least the best one,
    which gives the maximum)."""
    d_parent, d_child = len(parent), len(child)
    top = min(max(top, 1), d_parent)
    p = _read_only(parent).to(device)
    rows = max(1, block_bytes // (4 * max(d_parent, 1)))
    of_edges = np.zeros(len(edge_child), np.float32)
    top_parent = np.zeros((d_child, top), np.int64)
    top_cos = np.zeros((d_child, top), np.float32)
    order = np.argsort(edge_child, kind="stable")
    bounds = np.searchsorted(edge_child[order], np.arange(0, d_child + rows, rows))
    for i, lo in enumerate(range(0, d_child, rows)):
        hi = min(lo + rows, d_child)
        c = _read_only(child[lo:hi]).to(device)
        block = c @ p.T  # [hi - lo, d_parent]
        # Ties to the lower parent index: topk on the cosine, then a stable order on it.
        values, index = block.topk(top, dim=1)
        index, values = _ties_to_lower_index(values, index)
        top_parent[lo:hi] = index.cpu().numpy()
        top_cos[lo:hi] = values.cpu().numpy()
        mine = order[bounds[i] : bounds[i + 1]]
        if len(mine):
            at_c = torch.from_numpy(edge_child[mine] - lo).to(device)
            at_p = torch.from_numpy(edge_parent[mine]).to(device)
            of_edges[mine] = block[at_c.long(), at_p.long()].cpu().numpy()
    return Cosines(of_edges, top_parent, top_cos)


def _ties_to_lower_index(values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The kept parents by cosine, equal cosines by the lower index (topk leaves their order
    open). Which of several parents tied exactly at the cut are kept is topk's choice."""
    by_index = index.argsort(dim=1)
    index, values = index.gather(1, by_index), values.gather(1, by_index)
    by_cos = torch.argsort(-values, dim=1, stable=True)
    return index.gather(1, by_cos), values.gather(1, by_cos)


@dataclass(frozen=True)
class WithCosines:
    """A job's edges with the decoder cosines of SPEC.md section 2."""

    edges: scores.Edges  # the stored edges, then each child's best parents by dec_cos not
    # among them that co-activate with it
    dec_cos: Float[np.ndarray, " n_edges"]
    max_dec_cos: Float[np.ndarray, " d_child"]


def extend(
    result: engine.PairResult,
    parent: chunks_.ChunkSource,
    child: chunks_.ChunkSource,
    parent_rows: Float[np.ndarray, "d_parent d_in"],
    child_rows: Float[np.ndarray, "d_child d_in"],
    top: int = 3,
    device: torch.device | str = "cpu",
    chunk_tokens: int = 1 << 16,
) -> WithCosines:
    """The engine's edges, each child's `top` parents by dec_cos added (scored exactly), and
    every edge's dec_cos and each child's max_dec_cos."""
    edges = result.edges
    found = cosines(parent_rows, child_rows, edges.parent.numpy(), edges.child.numpy(), top, device)
    d_child, top = len(child_rows), min(top, found.top_parent.shape[1])
    best_parent = found.top_parent[:, :top].reshape(-1)
    best_child = np.repeat(np.arange(d_child, dtype=np.int64), top)

    def keys(parent: np.ndarray, child: np.ndarray) -> np.ndarray:
        return parent.astype(np.int64) * d_child + child

    new = ~np.isin(keys(best_parent, best_child), keys(edges.parent.numpy(), edges.child.numpy()))
    extra = engine.score_listed(
        parent,
        child,
        best_parent[new],
        best_child[new],
        result.parent_stats,
        result.child_stats,
        chunk_tokens,
    )
    # Their cosines, from the same matmul: of the new pairs, those that co-activate (in order).
    kept = np.isin(
        keys(best_parent[new], best_child[new]), keys(extra.parent.numpy(), extra.child.numpy())
    )
    extra_cos = found.top_cos[:, :top].reshape(-1)[new][kept]
    return WithCosines(
        scores.Edges.concat([edges, extra]),
        np.concatenate([found.of_edges, extra_cos]),
        found.max_dec_cos,
    )


def _read_only(rows: np.ndarray) -> torch.Tensor:
    """Rows of a store entry (a read-only memory map) as a tensor without copying them; it is
    only read (torch warns about any array it cannot write)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(rows))
