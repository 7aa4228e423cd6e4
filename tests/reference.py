"""A float64 brute-force reference of SPEC.md section 2, written per pair from the text."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RefEdge:
    masked_cos: float
    masked_cos_parent: float
    max_ratio: float
    score: float
    n_coactive: int

    @property
    def mcs(self) -> float:
        return max(self.masked_cos, self.masked_cos_parent)


def all_pairs(parent: np.ndarray, child: np.ndarray) -> dict[tuple[int, int], RefEdge]:
    """Every pair with at least one co-active token; parent [T, dp], child [T, dc]."""
    a_all = np.asarray(parent, dtype=np.float64)
    b_all = np.asarray(child, dtype=np.float64)
    out: dict[tuple[int, int], RefEdge] = {}
    for p in range(a_all.shape[1]):
        a = a_all[:, p]
        for c in range(b_all.shape[1]):
            b = b_all[:, c]
            coactive = (a > 0) & (b > 0)
            if not coactive.any():
                continue  # no co-active token => no edge
            mb = b > 0
            ma = a > 0
            masked_cos = np.sum(a[mb] * b[mb]) / (
                math.sqrt(np.sum(a[mb] ** 2)) * math.sqrt(np.sum(b[mb] ** 2))
            )
            masked_cos_parent = np.sum(a[ma] * b[ma]) / (
                math.sqrt(np.sum(a[ma] ** 2)) * math.sqrt(np.sum(b[ma] ** 2))
            )
            max_ratio = b.max() / a.max()
            out[(p, c)] = RefEdge(
                float(masked_cos),
                float(masked_cos_parent),
                float(max_ratio),
                float(masked_cos * max_ratio),
                int(coactive.sum()),
            )
    return out


def stored(
    pairs: dict[tuple[int, int], RefEdge],
    store_floor: float = 0.4,
    top_parents: int = 3,
    top_children: int = 3,
) -> set[tuple[int, int]]:
    """Pairs with score or mcs above the floor, plus each child's top parents by score
    (ties: lowest parent index) and each parent's top children (ties: lowest child index)."""
    keep = {k for k, e in pairs.items() if e.score > store_floor or e.mcs > store_floor}
    by_child: dict[int, list[tuple[float, int]]] = {}
    by_parent: dict[int, list[tuple[float, int]]] = {}
    for (p, c), e in pairs.items():
        by_child.setdefault(c, []).append((-e.score, p))
        by_parent.setdefault(p, []).append((-e.score, c))
    for c, ranked in by_child.items():
        for _neg, p in sorted(ranked)[:top_parents]:
            keep.add((p, c))
    for p, ranked in by_parent.items():
        for _neg, c in sorted(ranked)[:top_children]:
            keep.add((p, c))
    return keep


def qualifying(
    pairs: dict[tuple[int, int], RefEdge],
    parent: np.ndarray,
    child: np.ndarray,
    threshold: float = 0.6,
    min_active_tokens: int = 10,
) -> set[tuple[int, int]]:
    """Pairs whose score exceeds the threshold, both latents active often enough."""
    n_parent = (np.asarray(parent) > 0).sum(axis=0)
    n_child = (np.asarray(child) > 0).sum(axis=0)
    return {
        (p, c)
        for (p, c), e in pairs.items()
        if e.score > threshold
        and n_parent[p] >= min_active_tokens
        and n_child[c] >= min_active_tokens
    }


def forest_of(conn: object) -> tuple[set[tuple[str, str, float, int]], set[tuple[str, str, int]]]:
    """The forest (tree_edges rows, tree_nodes rows without the path) computed in Python from
    the stored latents and edges: each latent's best parent is its qualifying parent in the next
    smaller sae with the highest score (ties: lowest index), at 0.6 and 10 active tokens."""
    import sqlalchemy as sa

    run = conn.execute  # type: ignore[attr-defined]
    saes = run(sa.text("SELECT id, family_id, d_sae FROM sae")).all()
    latents = {
        r.id: r for r in run(sa.text("SELECT id, sae_id, idx, label, n_active FROM latent")).all()
    }
    by_family: dict[int, list[tuple[int, int]]] = {}
    for sae_id, family_id, d_sae in saes:
        by_family.setdefault(family_id, []).append((d_sae, sae_id))
    next_of = {}
    for members in by_family.values():
        members.sort()
        next_of.update({a[1]: b[1] for a, b in itertools.pairwise(members)})
    best: dict[int, tuple[float, int, int]] = {}  # child -> (score, -idx of parent, parent)
    for parent_id, child_id, score in run(sa.text("SELECT parent_id, child_id, score FROM edge")):
        p, c = latents[parent_id], latents[child_id]
        qualifies = score > np.float32(0.6) and p.n_active >= 10 and c.n_active >= 10
        if next_of.get(p.sae_id) != c.sae_id or not qualifies:
            continue
        key = (score, -p.idx, parent_id)
        if child_id not in best or key[:2] > best[child_id][:2]:
            best[child_id] = key
    nodes, edges = set(), set()

    def place(latent_id: int) -> tuple[str, int]:
        if latent_id not in best:
            return latents[latent_id].label, 0
        root, depth = place(best[latent_id][2])
        return root, depth + 1

    for latent_id, latent in latents.items():
        root, depth = place(latent_id)
        nodes.add((root, latent.label, depth))
        if latent_id in best:
            score, _, parent_id = best[latent_id]
            edges.add((latent.label, latents[parent_id].label, score, depth))
    return edges, nodes
