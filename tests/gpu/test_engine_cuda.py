"""The engine on CUDA: the fused Triton kernel and the torch path give the CPU kernel's edges
and the float64 reference's (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.compute import chunks, engine, layout
from tests.unit.test_engine import assert_matches_reference, assert_same_edges, sparse_matrix

pytestmark = pytest.mark.gpu


def _against_cpu(
    parent: np.ndarray,
    child: np.ndarray,
    backend: str,
    max_block_rows: int | None,
    read: str = "auto",
    activation_memory: int | None = None,
) -> engine.PairResult:
    """The pair scored on CUDA (its blocks read as `read` says, its activations within
    `activation_memory`) gives the CPU kernel's edges and the float64 reference's."""
    cpu = engine.score_pair(
        chunks.DenseSource(torch.from_numpy(parent)),
        chunks.DenseSource(torch.from_numpy(child)),
        device="cpu",
        backend="numba",
    )
    gpu = engine.score_pair(
        chunks.DenseSource(torch.from_numpy(parent).cuda()),
        chunks.DenseSource(torch.from_numpy(child).cuda()),
        device="cuda",
        backend=backend,
        max_block_rows=max_block_rows,
        read=read,
        activation_memory=activation_memory,
    )
    assert gpu.backend == backend
    assert_same_edges(gpu.edges, cpu.edges, rel=1e-6, abs=1e-9)
    assert gpu.n_coactivations == cpu.n_coactivations
    assert_matches_reference(parent, child, gpu)
    return gpu


@pytest.mark.parametrize("read", ["whole", "listed"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("max_block_rows", [None, 7])
def test_cuda_matches_cpu_and_reference(
    backend: str, max_block_rows: int | None, read: str
) -> None:
    # Every block read whole, or by the pairs it touched.
    rng = np.random.default_rng(7)
    _against_cpu(
        sparse_matrix(rng, 2000, 40, 0.05),
        sparse_matrix(rng, 2000, 160, 0.02),
        backend,
        max_block_rows,
        read,
    )


@pytest.mark.parametrize("read", ["whole", "listed"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_activations_streamed_to_cuda_in_ranges_of_tokens(backend: str, read: str) -> None:
    rng = np.random.default_rng(8)
    parent, child = sparse_matrix(rng, 2000, 40, 0.05), sparse_matrix(rng, 2000, 160, 0.02)
    gpu = _against_cpu(parent, child, backend, 7, read, activation_memory=20_000)
    assert gpu.n_ranges > 1


def test_auto_on_cuda_is_the_triton_kernel() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    t, k, d = 10_000, 16, 512
    idx = torch.randint(0, d, (t, k), device="cuda", generator=gen)
    val = torch.rand(t, k, device="cuda", generator=gen)
    src = chunks.TopKSource(idx, val, d)
    result = engine.score_pair(src, src, device="cuda", chunk_tokens=3000)
    assert result.backend == "triton" and len(result.edges) > 0
    assert torch.isfinite(result.edges.score).all()


@pytest.mark.parametrize(
    "config",
    [
        {"interleaved": False},
        {"entries": 2, "block_c": 16, "num_warps": 1},
        {"sem": "acq_rel"},
        {"spread": 1},
        {"spread": 7, "entries": 3},
    ],
)
def test_kernel_variants_match_cpu(config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.compute import gpu_kernel

    monkeypatch.setattr(gpu_kernel, "DEFAULT", gpu_kernel.Config(**config))
    rng = np.random.default_rng(11)
    _against_cpu(sparse_matrix(rng, 3000, 50, 0.2), sparse_matrix(rng, 3000, 120, 0.1), "triton", 9)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
@pytest.mark.parametrize("n", [0, 249, 250, 251, 12_345])
def test_staged_copies_equal_plain_ones(dtype: type, n: int) -> None:
    # Through pinned buffers of 1,000 bytes: a stretch and a part, several stretches, none.
    a = (np.arange(n) * 7 % 1001).astype(dtype)
    got = layout.to_device(a, torch.device("cuda"), stage_bytes=1000)
    assert got.device.type == "cuda" and got.dtype == torch.from_numpy(a).dtype
    assert torch.equal(got.cpu(), torch.from_numpy(a))
