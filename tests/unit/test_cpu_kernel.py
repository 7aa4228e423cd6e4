"""The compiled CPU kernel against its own uncompiled function, on random and adversarial data:
the same candidates, the same sums, the same counts."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from service.compute import chunks, cpu_kernel, cpu_ops, layout, scores, stats
from tests.unit.test_engine import sparse_matrix


def _candidates(
    parent: np.ndarray,
    child: np.ndarray,
    compiled: bool,
    floor: float = 0.4,
    call_candidates: int = 1,  # room for a row or two per call: rows wait, calls repeat
    stretch_candidates: int = 2,  # and threads take new stretches often
    tops: tuple[int, int] = (3, 3),  # top_parents, top_children
) -> cpu_kernel.Candidates:
    p_src = chunks.DenseSource(torch.from_numpy(parent))
    c_src = chunks.DenseSource(torch.from_numpy(child))
    p_stats, c_stats = (
        stats.latent_stats(p_src, device="cpu"),
        stats.latent_stats(c_src, device="cpu"),
    )
    p_rows, c_rows = layout.token_major(p_src), layout.token_major(c_src)
    block = layout.latent_major(c_rows, 0, c_rows.d_sae)
    threads = numba.get_num_threads() if compiled else 1
    params = scores.EdgeParams(floor, *tops)
    scratch = cpu_kernel.Scratch.new(threads, p_rows.d_sae, params)
    found = cpu_kernel.score_block(
        block,
        p_rows,
        p_stats.sum_sq.numpy(),
        p_stats.max_act.numpy(),
        c_stats.sum_sq.numpy(),
        c_stats.max_act.numpy(),
        params,
        scratch,
        kernel=cpu_kernel.score_rows if compiled else cpu_kernel.score_rows.py_func,
        call_candidates=call_candidates,
        stretch_candidates=stretch_candidates,
    )
    return found


def _as_dict(found: cpu_kernel.Candidates) -> dict[tuple[int, int], tuple]:
    used = np.isfinite(found.column("score"))  # not an unused place
    return {
        (int(row[0]), int(row[1])): tuple(float(v) for v in row[2:])
        for row in zip(*(found.column(name)[used] for name in cpu_kernel.COLUMNS), strict=True)
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_kernel_equals_its_python_function(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parent = sparse_matrix(rng, 200, 10, 0.2)
    child = sparse_matrix(rng, 200, 30, 0.1)
    numba.set_num_threads(1)  # one thread: the same running top scores, the same candidates
    try:
        compiled = _candidates(parent, child, compiled=True)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    plain = _candidates(parent, child, compiled=False)
    got, want = _as_dict(compiled), _as_dict(plain)
    assert got.keys() == want.keys() and len(got) > 8
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-12)
    assert compiled.n_coactivations == plain.n_coactivations


@pytest.mark.parametrize("sparse", [0, 1 << 40])  # every row dense; every row sparse
def test_sparse_and_dense_rows_add_alike(monkeypatch: pytest.MonkeyPatch, sparse: int) -> None:
    rng = np.random.default_rng(3)
    parent = sparse_matrix(rng, 200, 10, 0.2)
    child = sparse_matrix(rng, 200, 30, 0.1)
    mixed = _as_dict(_candidates(parent, child, compiled=False))
    monkeypatch.setattr(cpu_kernel, "SPARSE", sparse)  # read when the plain function runs
    assert _as_dict(_candidates(parent, child, compiled=False)) == mixed


def test_adversarial_rows_equal_the_python_function() -> None:
    t = 50
    parent = np.zeros((t, 4), np.float32)
    child = np.zeros((t, 6), np.float32)
    parent[:, 0] = 1.0  # a latent active everywhere meets every child
    child[:, :5] = np.float32(2.0)  # five identical children: ties broken by index
    parent[3, 1] = 3e38  # the largest float32
    child[3, 5] = 1e-38
    parent[10:12, 2] = 1e-30  # tiny values
    compiled = _as_dict(_candidates(parent, child, compiled=True, floor=2.0))
    plain = _as_dict(_candidates(parent, child, compiled=False, floor=2.0))
    assert compiled.keys() == plain.keys()
    for key in compiled:
        assert compiled[key] == pytest.approx(plain[key], rel=1e-12)
    # Parent 0 keeps its top 3 children by (score, lowest index) among the 5 tied ones: the
    # running best keeps ties, so all five are candidates and `finalize` ranks them.
    assert {c for p, c in compiled if p == 0} >= {0, 1, 2}


def _stored(
    found: cpu_kernel.Candidates, params: scores.EdgeParams
) -> dict[tuple[int, int], tuple]:
    """The edges `scores.finalize` stores from a block's candidates, as the engine calls it."""
    edges = scores.finalize(
        scores.Edges.of(*(found.column(name) for name in scores.DTYPES)),
        params,
        child_top=torch.from_numpy(found.column("child_top")),
        parent_best=found.parent_best,
    )
    columns = [getattr(edges, name).tolist() for name in scores.DTYPES]
    return {(row[0], row[1]): tuple(row[2:]) for row in zip(*columns, strict=True)}


@pytest.mark.parametrize(
    ("floor", "tops"), [(0.4, (3, 3)), (0.9, (3, 3)), (0.9, (0, 2)), (0.9, (1, 0))]
)
@pytest.mark.parametrize("compiled", [True, False])
def test_calls_that_fill_the_columns_store_the_same_edges(
    floor: float, tops: tuple[int, int], compiled: bool
) -> None:
    """Columns too small for a block's candidates: calls repeat, each going on after the
    candidates that may still be stored (the columns grow by a copy only where that frees too
    little room), and the stored edges are those of one call into roomy columns."""
    rng = np.random.default_rng(3)
    parent = sparse_matrix(rng, 400, 40, 0.2)
    child = sparse_matrix(rng, 400, 120, 0.1)
    params = scores.EdgeParams(floor, *tops)
    one_call = _candidates(parent, child, compiled, floor, call_candidates=1 << 20, tops=tops)
    # Counted before `_stored`, whose `finalize` compacts the columns in place.
    assert one_call.n_candidates == int(np.isfinite(one_call.column("score")).sum())
    want = _stored(one_call, params)
    assert one_call.calls == 1 and len(want) > 50
    assert one_call.n_coactivations == int(((parent > 0).astype(int).T @ (child > 0)).sum())
    in_place = 0
    for call_candidates in (1, 20, 50):
        found = _candidates(
            parent, child, compiled, floor, call_candidates, stretch_candidates=4, tops=tops
        )
        assert found.n_candidates == int(np.isfinite(found.column("score")).sum())
        assert found.calls > 1
        in_place += found.calls - 1 - found.grown  # calls that went on in the same columns
        assert (found.n_coactivations, found.n_pairs) == (
            one_call.n_coactivations,
            one_call.n_pairs,
        )
        assert found.parent_best is not None and one_call.parent_best is not None
        assert np.array_equal(found.parent_best, one_call.parent_best)
        got = _stored(found, params)
        assert got.keys() == want.keys()
        for key in got:
            assert got[key] == pytest.approx(want[key], rel=1e-12)
    assert in_place > 0 or tops[1] == 0  # no candidate waits on its parent's rank: all stay


@numba.njit(parallel=True)
def _count_up(cursor: np.ndarray, olds: np.ndarray) -> None:
    for i in numba.prange(len(olds)):
        olds[i] = cpu_ops.fetch_add(cursor, 0, 3)


def test_fetch_add_is_atomic_across_threads() -> None:
    """Every thread's add lands and every caller gets its own slot: what the kernel's room
    for candidates rests on."""
    cursor = np.zeros(1, np.int64)
    olds = np.zeros(200_000, np.int64)
    _count_up(cursor, olds)
    assert cursor[0] == 3 * len(olds)
    assert np.array_equal(np.sort(olds), 3 * np.arange(len(olds)))
    # The uncompiled function (the kernel's reference) does the same, one caller at a time.
    plain = np.zeros(1, np.int64)
    assert [cpu_ops.fetch_add(plain, 0, 2) for _ in range(3)] == [0, 2, 4]
