"""Per-latent statistics: each latent's largest activations against a brute-force ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.compute import chunks, stats


def _reference(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each latent's k largest activations by sorting all of them: value descending, then
    token ascending; (-1, 0) where a latent has fewer than k."""
    d_sae = dense.shape[1]
    positions = np.full((d_sae, k), -1, np.int64)
    values = np.zeros((d_sae, k), np.float32)
    for c in range(d_sae):
        tokens = np.flatnonzero(dense[:, c] > 0)
        ranked = sorted(tokens, key=lambda t: (-dense[t, c], t))[:k]
        positions[c, : len(ranked)] = ranked
        values[c, : len(ranked)] = dense[ranked, c]
    return positions, values


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1000])
def test_top_activations_equal_a_full_ranking(chunk_tokens: int) -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((300, 20), dtype=np.float32) * (rng.random((300, 20)) < 0.3)
    dense[::3] = np.round(dense[::3] * 4) / 4  # many equal values: ties go to the earliest token
    dense[:, 19] = 0.0  # a latent that never fires
    dense[5, 18] = 2.0  # one that fires once
    acc = stats.TopAccumulator(20, 4)
    for chunk in chunks.DenseSource(torch.from_numpy(dense)).chunks(chunk_tokens):
        acc.add(chunk)
    top = acc.result()
    positions, values = _reference(dense, 4)
    assert np.array_equal(top.positions.numpy(), positions)
    assert np.array_equal(top.values.numpy(), values)


def test_top_activations_do_not_depend_on_the_order_of_entries() -> None:
    """Entries of a chunk in any order (a top-k file lists a token's latents by rank)."""
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(rng.permutation(np.repeat(np.arange(50), 3)))
    cols = torch.from_numpy(rng.integers(0, 5, len(rows)))
    values = torch.from_numpy(np.round(rng.random(len(rows)) * 3).astype(np.float32) + 1)
    keep = np.unique(rows.numpy() * 5 + cols.numpy(), return_index=True)[1]  # once per token
    rows, cols, values = rows[keep], cols[keep], values[keep]
    dense = np.zeros((50, 5), np.float32)
    dense[rows.numpy(), cols.numpy()] = values.numpy()
    acc = stats.TopAccumulator(5, 3)
    order = torch.from_numpy(rng.permutation(len(rows)))
    acc.add(chunks.SparseChunk(0, 50, rows[order], cols[order], values[order]))
    top = acc.result()
    positions, want = _reference(dense, 3)
    assert np.array_equal(top.positions.numpy(), positions)
    assert np.array_equal(top.values.numpy(), want)
