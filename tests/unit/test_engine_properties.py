"""Property tests of the invariants (Hypothesis, derandomized: the same examples each run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.compute import chunks, engine, scores
from tests.unit.test_engine import as_dict, qualifying, sparse_matrix

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def score(
    parent: np.ndarray,
    child: np.ndarray,
    chunk_tokens: int = 32768,
    params: scores.EdgeParams | None = None,
) -> dict:
    result = engine.score_pair(
        chunks.DenseSource(torch.from_numpy(np.ascontiguousarray(parent))),
        chunks.DenseSource(torch.from_numpy(np.ascontiguousarray(child))),
        params,
        device="cpu",
        chunk_tokens=chunk_tokens,
    )
    return as_dict(result.edges)


# A floor below every co-active pair's mcs (> 0): every co-active pair is stored.
EVERY_PAIR = scores.EdgeParams(store_floor=-1.0)


def close(x: dict, y: dict, rel: float = 1e-6) -> None:
    assert x.keys() == y.keys()
    for key in x:
        for name in x[key]:
            assert x[key][name] == pytest.approx(y[key][name], rel=rel, abs=1e-12), (key, name)


data = st.integers(0, 2**31 - 1).map(np.random.default_rng)


@SETTINGS
@given(rng=data, chunk_tokens=st.integers(1, 120))
def test_chunk_size_and_token_order_do_not_matter(
    rng: np.random.Generator, chunk_tokens: int
) -> None:
    parent = sparse_matrix(rng, 120, 6, 0.3)
    child = sparse_matrix(rng, 120, 10, 0.2)
    order = rng.permutation(120)
    close(score(parent, child), score(parent[order], child[order], chunk_tokens))


@SETTINGS
@given(rng=data, scale=st.floats(1e-3, 1e3))
def test_masked_cos_is_invariant_to_positive_scale(rng: np.random.Generator, scale: float) -> None:
    parent = sparse_matrix(rng, 100, 5, 0.3)
    child = sparse_matrix(rng, 100, 8, 0.3)
    base = score(parent, child, params=EVERY_PAIR)
    scaled = score((parent * np.float32(scale)).astype(np.float32), child, params=EVERY_PAIR)
    # Scaling changes no activity: the same co-active pairs, every one of them compared.
    assert base.keys() == scaled.keys() and len(base) > 0
    for key in base:
        assert scaled[key]["masked_cos"] == pytest.approx(base[key]["masked_cos"], rel=1e-5)
        assert scaled[key]["masked_cos_parent"] == pytest.approx(
            base[key]["masked_cos_parent"], rel=1e-5
        )
        assert scaled[key]["max_ratio"] * scale == pytest.approx(base[key]["max_ratio"], rel=1e-5)


@SETTINGS
@given(rng=data)
def test_mcs_is_the_max_of_both_directions(rng: np.random.Generator) -> None:
    parent = sparse_matrix(rng, 100, 5, 0.3)
    child = sparse_matrix(rng, 100, 7, 0.3)
    params = EVERY_PAIR
    fwd = engine.score_pair(
        chunks.DenseSource(torch.from_numpy(parent)),
        chunks.DenseSource(torch.from_numpy(child)),
        params,
        device="cpu",
    ).edges
    back = as_dict(
        engine.score_pair(
            chunks.DenseSource(torch.from_numpy(child)),
            chunks.DenseSource(torch.from_numpy(parent)),
            params,
            device="cpu",
        ).edges
    )
    assert len(fwd) == len(back) > 0
    for i in range(len(fwd)):
        p, c = int(fwd.parent[i]), int(fwd.child[i])
        # The parent-masked cosine is the child-masked cosine seen from the other side, so
        # mcs is the larger of this run's masked cosine and the reversed run's.
        seen_from_child = back[(c, p)]["masked_cos"]
        # (parts are kept as float32: equal up to its rounding)
        assert float(fwd.masked_cos_parent[i]) == pytest.approx(seen_from_child, rel=1e-6)
        want = max(float(fwd.masked_cos[i]), seen_from_child)
        assert float(fwd.mcs[i]) == pytest.approx(want, rel=1e-6)


@SETTINGS
@given(
    k=st.integers(4, 8),
    exponent=st.integers(-4, 4),
    ratio=st.sampled_from([0.5, 0.625, 0.75, 0.875]),
)
def test_score_exactly_at_threshold_is_not_an_edge(k: int, exponent: int, ratio: float) -> None:
    # k*k tokens with a = 2**e and b = ratio * a: masked_cos is exactly 1, score exactly ratio.
    n = k * k
    parent = np.zeros((n + 5, 1), np.float32)
    child = np.zeros((n + 5, 1), np.float32)
    parent[:n, 0] = 2.0**exponent
    child[:n, 0] = ratio * 2.0**exponent
    result = engine.score_pair(
        chunks.DenseSource(torch.from_numpy(parent)),
        chunks.DenseSource(torch.from_numpy(child)),
        device="cpu",
    )
    # Exact, so that the database's rule (tests/db/test_qualifies.py) sees it exactly at the
    # threshold: a score equal to the threshold does not exceed it.
    assert float(result.edges.score[0]) == ratio
    assert qualifying(result, ratio).tolist() == [False]
    assert qualifying(result, ratio - 1e-6).tolist() == [True]
