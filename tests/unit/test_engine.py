"""The engine against the float64 brute-force reference, on random, adversarial and planted data."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time

import numpy as np
import pytest
import torch

from service.compute import chunks, engine, layout, placement, scores
from tests import reference

if not torch.cuda.is_available():
    # The GPU kernel runs on CPU tensors under Triton's interpreter (set before it is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

TOL = 1e-5
# Every backend on the CPU: the compiled kernel, the Triton kernel interpreted, plain torch;
# each device path reading a block whole, and by the pairs it touched ("/listed").
BACKENDS = ["numba", "triton", "triton/listed", "torch", "torch/listed"]


def sparse_matrix(rng: np.random.Generator, t: int, d: int, density: float) -> np.ndarray:
    values = rng.exponential(1.0, size=(t, d)) * (rng.random((t, d)) < density)
    return values.astype(np.float32)


def run(
    parent: np.ndarray, child: np.ndarray, backend: str = "numba", **kwargs: object
) -> engine.PairResult:
    """The pair scored by `backend` (a device path with "/listed": every block read by the
    pairs it touched; without it, every block read whole)."""
    kind, _, read = backend.partition("/")
    return engine.score_pair(
        chunks.DenseSource(torch.from_numpy(parent)),
        chunks.DenseSource(torch.from_numpy(child)),
        device="cpu",
        backend=kind,
        read=read or "whole",
        **kwargs,  # type: ignore[arg-type]
    )


def as_dict(edges: scores.Edges) -> dict[tuple[int, int], dict[str, float]]:
    out = {}
    for i in range(len(edges)):
        out[(int(edges.parent[i]), int(edges.child[i]))] = {
            "masked_cos": float(edges.masked_cos[i]),
            "masked_cos_parent": float(edges.masked_cos_parent[i]),
            "max_ratio": float(edges.max_ratio[i]),
            "score": float(edges.score[i]),
            "n_coactive": int(edges.n_coactive[i]),
        }
    return out


def assert_same_edges(
    got: scores.Edges, want: scores.Edges, rel: float = 1e-12, abs: float = 0.0
) -> None:
    """The same pairs, each part within `rel` (or `abs`) of the other's."""
    a, b = as_dict(got), as_dict(want)
    assert a.keys() == b.keys()
    for key, parts in a.items():
        for name, value in parts.items():
            assert value == pytest.approx(b[key][name], rel=rel, abs=abs), (key, name)


def qualifying(
    result: engine.PairResult, threshold: float = 0.6, min_active: int = 10
) -> torch.Tensor:
    """Which of the engine's edges qualify, as the database decides (edge_qualifies: the score
    as stored, real, above the threshold as real; both latents active often enough)."""
    e = result.edges
    return (
        (e.score.to(torch.float32) > torch.tensor(threshold, dtype=torch.float32))
        & (result.parent_stats.n_active[e.parent.long()] >= min_active)
        & (result.child_stats.n_active[e.child.long()] >= min_active)
    )


def assert_matches_reference(
    parent: np.ndarray, child: np.ndarray, result: engine.PairResult, floor: float = 0.4
) -> None:
    ref = reference.all_pairs(parent, child)
    got = as_dict(result.edges)
    for key, parts in got.items():
        want = ref[key]
        assert parts["n_coactive"] == want.n_coactive, key
        assert parts["masked_cos"] == pytest.approx(want.masked_cos, abs=TOL), key
        assert parts["masked_cos_parent"] == pytest.approx(want.masked_cos_parent, abs=TOL)
        assert parts["max_ratio"] == pytest.approx(want.max_ratio, rel=TOL)
        assert parts["score"] == pytest.approx(want.score, rel=TOL, abs=TOL)
    # Same stored set, except pairs within TOL of the floor.
    want_set = reference.stored(ref, floor)
    near = {k for k, e in ref.items() if abs(e.score - floor) < TOL or abs(e.mcs - floor) < TOL}
    assert (set(got) ^ want_set) <= near
    # Qualifying edges are identical except within TOL of the threshold.
    mask = qualifying(result)
    got_q = {k for k, q in zip(got, mask.tolist(), strict=True) if q}
    want_q = reference.qualifying(ref, parent, child)
    near_t = {k for k, e in ref.items() if abs(e.score - 0.6) < TOL}
    assert (got_q ^ want_q) <= near_t


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_data_matches_reference(backend: str) -> None:
    rng = np.random.default_rng(0)
    parent = sparse_matrix(rng, 400, 12, 0.15)
    child = sparse_matrix(rng, 400, 40, 0.05)
    result = run(parent, child, backend)
    assert result.backend == backend.split("/")[0] and len(result.edges) > 0
    assert_matches_reference(parent, child, result)
    assert result.n_coactivations == int(((parent > 0).astype(int).T @ (child > 0)).sum())
    assert result.n_pairs == len(reference.all_pairs(parent, child))
    assert len(result.edges) <= result.n_candidates <= result.n_pairs  # edges among them


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_of_every_size_give_the_same_edges(backend: str) -> None:
    rng = np.random.default_rng(10)
    parent = sparse_matrix(rng, 300, 25, 0.12)
    child = sparse_matrix(rng, 300, 60, 0.06)
    whole = run(parent, child, backend)
    assert whole.blocks == [(0, 60 if engine.ROWS[backend.split("/")[0]] == "child" else 25)]
    for entries, rows in ((1, None), (40, None), (10_000, 3)):
        blocked = run(parent, child, backend, max_block_entries=entries, max_block_rows=rows)
        assert len(blocked.blocks) > 1
        assert_matches_reference(parent, child, blocked)
        assert_same_edges(blocked.edges, whole.edges)


@pytest.mark.parametrize("read", ["whole", "listed"])
@pytest.mark.parametrize(
    "config",
    [
        {"spread": 1},
        {"spread": 3, "entries": 2},  # stretches of unequal use: the last ends past the entries
        {"spread": 64, "entries": 1, "block_c": 4},  # more stretches than programs
        {"interleaved": False, "spread": 5},
    ],
)
def test_kernel_launch_variants_match_reference(
    config: dict, read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.compute import gpu_kernel

    monkeypatch.setattr(gpu_kernel, "DEFAULT", gpu_kernel.Config(**config))
    rng = np.random.default_rng(12)
    parent = sparse_matrix(rng, 300, 10, 0.15)
    child = sparse_matrix(rng, 300, 30, 0.08)
    result = run(parent, child, f"triton/{read}")
    assert result.n_coactivations == int(((parent > 0).astype(int).T @ (child > 0)).sum())
    assert_matches_reference(parent, child, result)


DEVICE_PATHS = [b for b in BACKENDS if engine.ROWS[b.split("/")[0]] == "parent"]


@pytest.mark.parametrize("backend", DEVICE_PATHS)
def test_activations_streamed_in_ranges_of_tokens_give_the_same_edges(backend: str) -> None:
    """A device whose memory holds less than both saes: each block is handed over in ranges of
    tokens (a token of its own where it alone is larger), and the sums add up across them."""
    rng = np.random.default_rng(12)
    parent = sparse_matrix(rng, 300, 25, 0.12)
    child = sparse_matrix(rng, 300, 60, 0.06)
    whole = run(parent, child, backend)
    assert whole.n_ranges == 1
    p_rows, c_rows = (
        layout.token_major(chunks.DenseSource(torch.from_numpy(x))) for x in (parent, child)
    )
    just_under = placement.resident_bytes(p_rows, c_rows) - 1  # streamed, in one range
    for memory, blocks in ((just_under, 2), (800, None), (80, None), (800, 2), (1, 3)):
        streamed = run(parent, child, backend, activation_memory=memory, max_block_rows=blocks)
        assert (streamed.n_ranges > 1) == (memory != just_under), memory
        assert "gather" in streamed.phases and "gather" not in whole.phases  # on the host
        assert_matches_reference(parent, child, streamed)
        assert streamed.n_coactivations == whole.n_coactivations
        assert streamed.n_pairs == whole.n_pairs
        assert_same_edges(streamed.edges, whole.edges)


def test_activations_stay_whole_on_the_device_while_they_fit() -> None:
    rng = np.random.default_rng(13)
    parent = layout.token_major(
        chunks.DenseSource(torch.from_numpy(sparse_matrix(rng, 50, 5, 0.3)))
    )
    child = layout.token_major(chunks.DenseSource(torch.from_numpy(sparse_matrix(rng, 50, 9, 0.2))))
    need = placement.resident_bytes(parent, child)
    cpu = torch.device("cpu")
    assert isinstance(placement.place(parent, child, cpu, None), placement.Resident)
    assert isinstance(placement.place(parent, child, cpu, need), placement.Resident)
    streamed = placement.place(parent, child, cpu, need - 1)
    assert isinstance(streamed, placement.Streamed) and streamed.n_ranges == 1  # one range: kept
    (_, first), (_, second) = streamed.blocks([(0, 2), (2, 5)])
    assert next(second).c_indices is next(first).c_indices  # copied to the device once


@pytest.mark.parametrize("memory", [None, 200])  # one range of tokens, or several
def test_streamed_blocks_are_gathered_one_ahead_in_a_thread_of_their_own(
    memory: int | None,
) -> None:
    """While the caller works on a block, the next is gathered on the host (`Streamed.blocks`):
    the same blocks as one at a time, the first in the caller's thread, the rest in the
    gathering thread, each asked for before the caller has finished the one before."""
    rng = np.random.default_rng(14)
    parent, child = (
        layout.token_major(chunks.DenseSource(torch.from_numpy(sparse_matrix(rng, 80, d, 0.2))))
        for d in (7, 11)
    )
    cpu = torch.device("cpu")
    memory = memory or placement.resident_bytes(parent, child) - 1
    streamed = placement.place(parent, child, cpu, memory)
    alone = placement.place(parent, child, cpu, memory)
    assert isinstance(streamed, placement.Streamed)
    plan = [(0, 2), (2, 3), (3, 7)]
    asked: list[tuple[int, str]] = []
    gather = streamed._gather

    def recorded(lo: int, hi: int) -> tuple[int, layout.LatentMajor]:
        asked.append((lo, threading.current_thread().name))
        return gather(lo, hi)

    streamed._gather = recorded  # type: ignore[method-assign]
    main = threading.current_thread().name
    with contextlib.closing(streamed.blocks(plan)) as blocks:
        for i, (lo, hi) in enumerate(plan):
            coacts, parts = next(blocks)
            # The next block is asked for before the caller asks for it (within 10 s).
            deadline = time.monotonic() + 10
            while len(asked) < min(i + 2, len(plan)) and time.monotonic() < deadline:
                time.sleep(0.001)
            assert [lo for lo, _ in asked] == [lo for lo, _ in plan[: i + 2]]
            want_coacts, want_parts = next(alone.blocks([(lo, hi)]))
            assert coacts == want_coacts
            for got, want in itertools.zip_longest(parts, want_parts):
                for name in ("p_indptr", "p_tokens", "p_values", "c_indptr", "c_indices"):
                    assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert asked[0][1] == main and all(name.startswith("gather") for _, name in asked[1:])


@pytest.mark.parametrize("range_bytes", [1, 8, 64, 200, 10_000])
def test_token_ranges_cover_every_token_once_within_their_bytes(range_bytes: int) -> None:
    rng = np.random.default_rng(14)
    per_token = rng.integers(0, 12, size=97)
    indptr = np.concatenate([[0], np.cumsum(per_token)]).astype(np.int64)
    ranges = placement.token_ranges(indptr, range_bytes)
    assert ranges[0][0] == 0 and ranges[-1][1] == 97
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for t0, t1 in ranges:
        assert t1 > t0
        entry_bytes = 8 * int(indptr[t1] - indptr[t0])
        assert t1 - t0 == 1 or (entry_bytes <= range_bytes and 16 * (t1 - t0) <= range_bytes)
    assert placement.token_ranges(np.zeros(1, np.int64), 100) == [(0, 0)]


def test_latent_statistics() -> None:
    rng = np.random.default_rng(1)
    parent = sparse_matrix(rng, 300, 7, 0.3)
    child = sparse_matrix(rng, 300, 9, 0.2)
    result = run(parent, child)
    stats = result.parent_stats
    assert stats.n_tokens == 300
    np.testing.assert_allclose(stats.max_act.numpy(), parent.max(axis=0), rtol=0)
    np.testing.assert_array_equal(stats.n_active.numpy(), (parent > 0).sum(axis=0))
    np.testing.assert_allclose(
        stats.sum_sq.numpy(), (parent.astype(np.float64) ** 2).sum(axis=0), rtol=1e-12
    )
    np.testing.assert_allclose(stats.frequency.numpy(), (parent > 0).mean(axis=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_split_is_found(backend: str) -> None:
    # Parent 0 is active on tokens 0..99; children 0 and 1 each take half of them.
    t = 200
    rng = np.random.default_rng(2)
    parent = np.zeros((t, 3), np.float32)
    child = np.zeros((t, 5), np.float32)
    acts = rng.uniform(0.5, 2.0, 100).astype(np.float32)
    parent[:100, 0] = acts
    child[:50, 0] = acts[:50]
    child[50:100, 1] = acts[50:]
    parent[100:, 1] = rng.uniform(0.1, 1.0, 100)  # noise latents elsewhere
    child[100:, 4] = rng.uniform(0.1, 1.0, 100)
    result = run(parent, child, backend)
    assert_matches_reference(parent, child, result)
    got = as_dict(result.edges)
    assert got[(0, 0)]["masked_cos"] == pytest.approx(1.0, abs=1e-6)
    assert got[(0, 1)]["masked_cos"] == pytest.approx(1.0, abs=1e-6)
    q = qualifying(result)
    found = {
        (int(p), int(c))
        for p, c, keep in zip(result.edges.parent, result.edges.child, q, strict=True)
        if keep
    }
    expected = {(0, 0), (0, 1)} | ({(1, 4)} if got[(1, 4)]["score"] > 0.6 else set())
    assert found == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_adversarial_cases(backend: str) -> None:
    t = 64
    parent = np.zeros((t, 6), np.float32)
    child = np.zeros((t, 6), np.float32)
    # Ties: two identical parents for child 0 (ties are broken by the lowest parent index).
    parent[:20, 0] = parent[:20, 1] = np.linspace(1, 2, 20)
    child[:20, 0] = np.linspace(1, 2, 20)
    # A single co-active token.
    parent[30, 2] = 1.0
    child[30, 1] = 3.0
    child[31:40, 1] = 1.0
    # Dead latents: parent 5, child 5 never active.
    # Huge and tiny values.
    parent[40:50, 3] = 1e30
    child[40:50, 2] = 2e30
    parent[50:60, 4] = 1e-30
    child[50:60, 3] = 1e-30
    result = run(parent, child, backend)
    assert_matches_reference(parent, child, result)
    got = as_dict(result.edges)
    assert got[(2, 1)]["n_coactive"] == 1
    assert not any(p == 5 or c == 5 for p, c in got)
    for name in ("masked_cos", "masked_cos_parent", "max_ratio", "score"):
        values = getattr(result.edges, name)
        assert torch.isfinite(values).all()
    assert got[(3, 2)]["score"] == pytest.approx(2.0)
    assert got[(4, 3)]["masked_cos"] == pytest.approx(1.0)
    # The best parent of child 0 by (score desc, parent asc) is parent 0.
    ordered = result.edges.sorted()
    first = int(torch.nonzero(ordered.child == 0)[0])
    assert int(ordered.parent[first]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_parents_are_kept_below_the_floor(backend: str) -> None:
    # Above a floor of 1.5 (mcs <= 1; scores here are small) only each child's 3 best remain.
    t = 100
    rng = np.random.default_rng(3)
    parent = np.zeros((t, 5), np.float32)
    child = np.zeros((t, 1), np.float32)
    child[:, 0] = rng.uniform(0.01, 0.02, t)
    for p in range(5):
        parent[p * 20 : p * 20 + 1 + p, p] = 50.0  # tiny overlap, huge parent max
    params = scores.EdgeParams(store_floor=1.5, top_children=0)
    result = run(parent, child, backend, params=params)
    ref = reference.all_pairs(parent, child)
    want = reference.stored(ref, 1.5, top_children=0)
    assert set(as_dict(result.edges)) == want == {(4, 0), (3, 0), (2, 0)}
    assert len(result.edges) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_children_are_kept_below_the_floor(backend: str) -> None:
    # One parent over many weak children: above the floor only its 3 best children remain,
    # and ties go to the lowest child index.
    t = 120
    rng = np.random.default_rng(4)
    parent = np.zeros((t, 1), np.float32)
    child = np.zeros((t, 8), np.float32)
    parent[:, 0] = 50.0
    for c in range(8):
        child[c * 15 : c * 15 + 1 + c % 4, c] = rng.uniform(0.01, 0.02) if c < 6 else 0.02
    params = scores.EdgeParams(store_floor=1.5, top_parents=0)
    result = run(parent, child, backend, params=params)
    ref = reference.all_pairs(parent, child)
    want = reference.stored(ref, 1.5, top_parents=0)
    assert set(as_dict(result.edges)) == want and len(want) == 3


def test_device_candidates_drop_pairs_below_their_childs_best_in_earlier_blocks() -> None:
    # Two blocks of one parent each: every pair is its child's best within its block, but in
    # the second only those at or above what the first block found for their child remain.
    params = scores.EdgeParams(store_floor=10.0, top_parents=1, top_children=0)  # ranks only

    def block(parent: int, score: list[float]) -> scores.Edges:
        n = len(score)
        return scores.Edges.of(
            [parent] * n, list(range(n)), score, score, [1.0] * n, score, [1] * n
        )

    child_best = torch.full((3, 1), -torch.inf, dtype=torch.float64)
    assert len(scores.candidates(block(0, [0.9, 0.8, 0.7]), params, child_best)) == 3
    second = block(1, [0.5, 0.85, 0.7])
    assert len(scores.candidates(second, params)) == 3  # the block alone keeps every pair
    kept = scores.candidates(second, params, child_best)
    assert kept.child.tolist() == [1, 2]  # beats child 1's best; ties child 2's (kept)
    assert child_best[:, 0].tolist() == pytest.approx([0.9, 0.85, 0.7])


@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
def test_a_block_read_whole_gives_the_listed_blocks_edges(chunk_rows: int) -> None:
    # The sums of a block of 7 parents against 30 children, a third never co-active, ties in
    # score frequent (integer sums): read whole in chunks of rows, or listed, the candidates
    # finalize to the same edges, and the whole read in one chunk keeps no more of them (its
    # k-th best counts ties, the listed read's is the k-th distinct score).
    rng = np.random.default_rng(12)
    n = rng.integers(0, 4, (7, 30)).astype(np.float64) * (rng.random((7, 30)) < 0.67)
    ab, aa, bb = (n * rng.integers(1, 3, (7, 30)) for _ in range(3))
    sums = torch.from_numpy(np.stack([ab, aa, bb, n]))
    lo = 5

    def stats(d: int) -> scores.stats_.LatentStats:
        return scores.stats_.LatentStats(
            100,
            torch.from_numpy(rng.integers(1, 3, d).astype(np.float32)),
            torch.full((d,), 50),
            torch.from_numpy(rng.integers(20, 30, d).astype(np.float64)),
        )

    p_stats, c_stats = stats(lo + 7), stats(30)
    params = scores.EdgeParams(store_floor=0.9, top_parents=2, top_children=3)
    r, c = np.nonzero(n)
    listed = scores.Edges.from_sums(
        torch.from_numpy(r + lo), torch.from_numpy(c), sums[:, r, c], p_stats, c_stats
    )
    best = torch.full((30, 2), -torch.inf, dtype=torch.float64)
    want = scores.candidates(listed, params, best)
    got_best = torch.full((30, 2), -torch.inf, dtype=torch.float64)
    got = scores.dense_candidates(sums, lo, p_stats, c_stats, params, got_best, chunk_rows)
    assert bool((got_best >= best).all())  # ties counted: bounds at least as high
    if chunk_rows >= 7:  # (a chunk's children bounded only by the chunks before it: more)
        assert len(got) <= len(want)
    finals = [as_dict(scores.finalize(x, params)) for x in (got, want)]
    assert finals[0] == finals[1] and len(finals[0]) > 0
    assert set(as_dict(got)) <= set(as_dict(want))
    # Without ranks (no top parents or children), only the floor: the same pairs either way.
    floor_only = scores.EdgeParams(store_floor=0.5, top_parents=0, top_children=0)
    whole = scores.dense_candidates(sums, lo, p_stats, c_stats, floor_only, best, chunk_rows)
    assert as_dict(whole) == as_dict(scores.candidates(listed, floor_only, best))


@pytest.mark.parametrize("rows", [None, 1, 2])
@pytest.mark.parametrize("backend", ["numba", "torch", "torch/listed"])
def test_tied_top_children_across_blocks(backend: str, rows: int | None) -> None:
    # Seven children with exactly equal scores to parent 0 and two better ones, cut into
    # blocks that each hold part of the tie: the parent keeps its 2 better children and the
    # lowest-index one of the tied, wherever the blocks' lists of best scores meet.
    t = 60
    parent = np.zeros((t, 2), np.float32)
    child = np.zeros((t, 9), np.float32)
    parent[:, 0] = 1.0
    parent[:30, 1] = 2.0
    child[:10, [0, 2, 3, 5, 6, 7, 8]] = 0.5  # tied
    child[:10, [1, 4]] = np.linspace(1, 2, 10)[:, None]  # better: max ratio 2 > 0.5
    params = scores.EdgeParams(store_floor=1.5, top_parents=0, top_children=3)
    result = run(parent, child, backend, params=params, max_block_rows=rows)
    ref = reference.all_pairs(parent, child)
    want = reference.stored(ref, 1.5, top_parents=0, top_children=3)
    assert {c for p, c in want if p == 0} == {1, 4, 0}
    assert set(as_dict(result.edges)) == want


def test_best_scores_merge_lists_as_one_pass_finds_them() -> None:
    rng = np.random.default_rng(12)
    group = rng.integers(0, 40, 3000).astype(np.int32)
    score = rng.integers(0, 8, 3000).astype(np.float64) / 7
    score[::97] = np.nan  # takes no rank
    tie = rng.permutation(3000).astype(np.int32)
    k = 3
    whole = scores._best(group, score, 40, k, 1)
    parts = np.stack([scores._best(group[i::4], score[i::4], 40, k, 2) for i in range(4)])
    assert np.array_equal(scores.best_scores(parts, k), whole)
    given, found = np.zeros(3000, np.uint8), np.zeros(3000, np.uint8)
    scores._mark_top(group, score, tie, k, scores.best_scores(parts, k), given)
    scores._mark_top(group, score, tie, k, None, found)
    assert np.array_equal(given, found) and int((found == 1).sum()) == 40 * k


def test_plan_blocks_covers_every_latent_once() -> None:
    rng = np.random.default_rng(6)
    entries = rng.integers(0, 50, 1000)
    entries[17] = 500  # one latent above the budget gets a block of its own
    blocks = layout.plan_blocks(entries, max_cost=200, max_rows=64)
    assert blocks[0][0] == 0 and blocks[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    for lo, hi in blocks:
        assert hi - lo <= 64
        assert entries[lo:hi].sum() <= 200 or hi - lo == 1
    assert (17, 18) in blocks


def test_sources_agree_topk_csr_dense() -> None:
    rng = np.random.default_rng(5)
    t, d, k = 300, 50, 4
    idx = np.stack([rng.choice(d, k, replace=False) for _ in range(t)])
    val = rng.exponential(1.0, (t, k)).astype(np.float32)
    val[rng.random((t, k)) < 0.2] = 0  # padding
    dense = np.zeros((t, d), np.float32)
    np.put_along_axis(dense, idx, val, axis=1)
    indptr = np.concatenate([[0], np.cumsum((dense > 0).sum(1))])
    rows, cols = np.nonzero(dense)
    sources = [
        chunks.TopKSource(torch.from_numpy(idx), torch.from_numpy(val), d),
        chunks.CsrSource(
            torch.from_numpy(indptr), torch.from_numpy(cols), torch.from_numpy(dense[rows, cols]), d
        ),
        chunks.DenseSource(torch.from_numpy(dense)),
    ]
    parent = chunks.DenseSource(torch.from_numpy(sparse_matrix(rng, t, 8, 0.3)))
    results = [
        as_dict(engine.score_pair(parent, s, device="cpu", chunk_tokens=64).edges) for s in sources
    ]
    assert results[0] == results[1] == results[2]


def test_token_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="share one token set"):
        run(np.ones((10, 2), np.float32), np.ones((11, 2), np.float32))


def test_cpu_device_auto_and_unavailable_cuda() -> None:
    from service import errors
    from service.compute import device

    assert device.resolve("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert device.resolve("auto").type == "cpu"
        with pytest.raises(errors.ServiceError, match="CUDA is not available"):
            device.resolve("cuda")


def test_an_unknown_read_is_refused() -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="unknown read 'dense': expected one of auto, whole"):
        run(sparse_matrix(rng, 50, 4, 0.3), sparse_matrix(rng, 50, 8, 0.3), "torch/dense")


def test_grouped_maxima_equal_the_scattered_ones() -> None:
    # Pairs ordered by group (the listed device path sorts its touched pairs): each group's k
    # best distinct scores by reductions over its stretch equal those by scattered maxima,
    # groups with no pair and groups with fewer than k distinct scores included.
    rng = np.random.default_rng(9)
    group = torch.from_numpy(np.sort(rng.choice([0, 1, 2, 5, 6, 9], 400)).astype(np.int32))
    score = torch.from_numpy(rng.integers(0, 5, 400).astype(np.float64) / 4)
    score[group == 6] = 0.5  # one distinct score
    score[group == 9] = -torch.inf  # none finite
    for k in (1, 2, 3):
        want = scores._best_distinct(group, score, k, 12)
        got = scores._best_distinct(group, score, k, 12, grouped=True)
        assert torch.equal(got, want)
        assert torch.equal(
            scores._kth_best(group, score, k, grouped=True), scores._kth_best(group, score, k)
        )
    with pytest.raises(ValueError, match="not ordered by group"):
        scores._best_distinct(group.flip(0), score, 3, 12, grouped=True)


def test_the_top_k_rule_and_the_device_superset() -> None:
    # Ties in score are frequent here: they go to the lowest index; the device's bound keeps
    # every group's k best (and their ties), nothing below the k-th distinct score.
    rng = np.random.default_rng(8)
    group = torch.from_numpy(rng.integers(0, 50, 5000).astype(np.int32))
    score = torch.from_numpy(rng.integers(0, 6, 5000).astype(np.float64) / 5)
    tie = torch.from_numpy(rng.permutation(5000).astype(np.int32))
    for k in (1, 3):
        marked = np.zeros(5000, np.uint8)
        scores._mark_top(group.numpy(), score.numpy(), tie.numpy(), k, None, marked)
        compiled = torch.from_numpy(marked == 1)
        want = torch.zeros(5000, dtype=torch.bool)
        for g in range(50):
            members = [i for i in range(5000) if group[i] == g]
            members.sort(key=lambda i: (-float(score[i]), int(tie[i])))
            want[members[:k]] = True
        assert torch.equal(compiled, want) and int(compiled.sum()) == 50 * k
        bound = scores._kth_best(group, score, k)
        kept = score >= bound
        assert bool(kept[want].all())
        for g in range(50):
            distinct = sorted({float(score[i]) for i in range(5000) if group[i] == g}, reverse=True)
            kth = distinct[k - 1] if len(distinct) >= k else -np.inf
            assert float(bound[group == g][0]) == kth
