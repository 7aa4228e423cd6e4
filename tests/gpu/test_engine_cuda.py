"""The engine on CUDA gives the CPU's edges (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.compute import chunks, engine
from tests.unit.test_engine import as_dict, sparse_matrix

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("memory_budget", [None, 64 * 80 + (1 << 10) * 64])
def test_cuda_matches_cpu(memory_budget: int | None) -> None:
    rng = np.random.default_rng(7)
    parent = torch.from_numpy(sparse_matrix(rng, 2000, 40, 0.05))
    child = torch.from_numpy(sparse_matrix(rng, 2000, 160, 0.02))
    kwargs = {"memory_budget": memory_budget, "max_coactivations": 1 << 10}
    cpu = engine.score_pair(
        chunks.DenseSource(parent), chunks.DenseSource(child), device="cpu", **kwargs
    )
    gpu = engine.score_pair(
        chunks.DenseSource(parent.cuda()),
        chunks.DenseSource(child.cuda()),
        device="cuda",
        **kwargs,
    )
    got, want = as_dict(gpu.edges), as_dict(cpu.edges)
    assert got.keys() == want.keys()
    for key in got:
        for name in got[key]:
            assert got[key][name] == pytest.approx(want[key][name], rel=1e-9, abs=1e-12)
    assert gpu.n_coactivations == cpu.n_coactivations


def test_topk_source_on_cuda_streams() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    t, k, d = 10_000, 16, 512
    idx = torch.randint(0, d, (t, k), device="cuda", generator=gen)
    val = torch.rand(t, k, device="cuda", generator=gen)
    src = chunks.TopKSource(idx, val, d)
    result = engine.score_pair(src, src, device="cuda", chunk_tokens=3000)
    assert len(result.edges) > 0
    assert torch.isfinite(result.edges.score).all()
