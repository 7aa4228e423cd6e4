"""A planted hierarchy: synthetic activations of a family whose true tree is known.

Every token carries one *leaf* concept (drawn with Zipf-like frequencies) and a value. At each
width, a concept latent fires on the tokens of the leaves below it with that token's value, so a
child's tokens are a subset of its parent's (a split: masked cosine 1, max ratio about 1).
Also planted: an *absorbed* child that takes only a sliver of its parent's tokens, a *near-dead*
one below `min_active_tokens`, two *merge* latents in the widest sae that each fire on the tokens
of two parents (a DAG: both parents qualify; the first merges siblings, the second merges
concepts under different roots, where the forest and the rooted trees differ), and *noise*
latents that fire at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PlantedSpec:
    """Widths of the family (ascending), tokens and the random seed."""

    widths: tuple[int, ...] = (32, 96, 288)
    n_tokens: int = 20_000
    seed: int = 0
    noise_per_sae: int = 2
    noise_rate: float = 0.02
    vocab: int = 5000
    min_active_tokens: int = 10


@dataclass
class PlantedFamily:
    """Activations per width ([T, d_sae] in CSR form) and the planted qualifying edges."""

    spec: PlantedSpec
    token_ids: np.ndarray
    indptr: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    # planted[(k, l)]: qualifying (parent idx, child idx) pairs from width k to width l > k.
    planted: dict[tuple[int, int], set[tuple[int, int]]] = field(default_factory=dict)

    def dense(self, level: int) -> np.ndarray:
        """Width `level` (0-based) as a dense [T, d_sae] array (small families only)."""
        t, d = self.spec.n_tokens, self.spec.widths[level]
        out = np.zeros((t, d), np.float32)
        rows = np.repeat(np.arange(t), np.diff(self.indptr[level]))
        out[rows, self.indices[level]] = self.values[level]
        return out

    def write(self, folder: Path, level: int) -> Path:
        """Write width `level` as a CSR `.npz` activation file with token ids and d_sae."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"width{level + 1}_{self.spec.widths[level]}.npz"
        np.savez(
            path,
            indptr=self.indptr[level],
            indices=self.indices[level],
            values=self.values[level],
            token_ids=self.token_ids,
            d_sae=np.int64(self.spec.widths[level]),
        )
        return path


def generate(spec: PlantedSpec) -> PlantedFamily:
    """The planted family of `spec` (deterministic for a seed)."""
    widths = spec.widths
    if list(widths) != sorted(set(widths)) or widths[0] <= spec.noise_per_sae + 2:
        raise ValueError("widths must be ascending and leave room for concept latents")
    rng = np.random.default_rng(spec.seed)
    t = spec.n_tokens
    # Concept latents per width (the rest are noise); each concept's parent at the width below.
    n_concepts = [w - spec.noise_per_sae for w in widths]
    n_concepts[-1] -= 2  # the widest sae holds the two merge latents too
    leaves = n_concepts[-1]
    # leaf -> its concept at each width. A concept's parent is the concept at the width below
    # covering the same block of indices, so concepts nest and every concept has children.
    ancestor = [np.arange(leaves)]
    for k in range(len(widths) - 2, -1, -1):
        ancestor.insert(0, ancestor[0] * n_concepts[k] // n_concepts[k + 1])

    weights = 1.0 / (rng.permutation(leaves) + 1.0) ** 0.6
    absorbed_leaf, dead_leaf = _rare_leaves(ancestor, n_concepts)
    weights[absorbed_leaf] = weights.sum() * 0.004
    weights[dead_leaf] = 0.0
    leaf = rng.choice(leaves, size=t, p=weights / weights.sum())
    dead_tokens = rng.choice(t, size=4, replace=False)  # below min_active_tokens (10)
    leaf[dead_tokens] = dead_leaf
    value = rng.uniform(0.5, 2.0, size=t).astype(np.float32)

    # Each merge latent fires on the tokens of two concepts of the next-to-last width.
    merges = _merge_parents(ancestor, n_concepts, leaf)
    fam = PlantedFamily(spec, rng.integers(0, spec.vocab, size=t, dtype=np.int64))
    for level, width in enumerate(widths):
        cols = [ancestor[level][leaf][:, None]]
        vals = [value[:, None]]
        if level == len(widths) - 1:
            for m, parents in enumerate(merges):
                on = np.isin(ancestor[level - 1][leaf], parents)
                cols.append(np.where(on, n_concepts[level] + m, -1)[:, None])
                vals.append(np.where(on, value, 0)[:, None])
        for j in range(spec.noise_per_sae):
            on = rng.random(t) < spec.noise_rate
            cols.append(np.where(on, width - spec.noise_per_sae + j, -1)[:, None])
            vals.append(np.where(on, rng.uniform(0.5, 2.0, t), 0)[:, None])
        c = np.concatenate(cols, axis=1)
        v = np.concatenate(vals, axis=1).astype(np.float32)
        active = v > 0
        fam.indptr.append(np.concatenate([[0], np.cumsum(active.sum(1))]).astype(np.int64))
        fam.indices.append(c[active].astype(np.int32))
        fam.values.append(v[active])

    n_active = [np.bincount(cols, minlength=w) for cols, w in zip(fam.indices, widths, strict=True)]
    for k in range(len(widths)):
        for j in range(k + 1, len(widths)):
            pairs = {(int(ancestor[k][lf]), int(ancestor[j][lf])) for lf in range(leaves)}
            if j == len(widths) - 1:
                for m, parents in enumerate(merges):
                    for parent in parents:
                        lf = _first_leaf(ancestor, j - 1, int(parent))
                        pairs.add((int(ancestor[k][lf]), n_concepts[j] + m))
            # A latent active on fewer than min_active_tokens tokens never qualifies.
            fam.planted[(k, j)] = {
                (p, c)
                for p, c in pairs
                if n_active[k][p] >= spec.min_active_tokens
                and n_active[j][c] >= spec.min_active_tokens
            }
    return fam


def _rare_leaves(ancestor: list[np.ndarray], n_concepts: list[int]) -> tuple[int, int]:
    # In the widest sae every concept is one leaf; the first and the last leaf belong to
    # different concepts of the next-to-last width, each with siblings.
    leaves = len(ancestor[-1])
    sizes = np.bincount(ancestor[-2], minlength=n_concepts[-2])
    if n_concepts[-2] < 4 or min(sizes[ancestor[-2][0]], sizes[ancestor[-2][-1]]) < 2:
        raise ValueError("widths too close together to plant absorption")
    return 0, leaves - 1


def _merge_parents(
    ancestor: list[np.ndarray], n_concepts: list[int], leaf: np.ndarray
) -> list[tuple[int, int]]:
    # Concepts of the next-to-last width with similar token counts: two siblings (one parent
    # below them) and two under different roots of the smallest width.
    level = len(ancestor) - 2
    counts = np.bincount(ancestor[level][leaf], minlength=n_concepts[level])
    block = np.arange(n_concepts[level])
    parent = block * n_concepts[level - 1] // n_concepts[level] if level > 0 else block * 0
    root = block * n_concepts[0] // n_concepts[level]
    median = np.median(counts[counts > 0])
    usable = [c for c in np.argsort(np.abs(counts - median)) if 0 < c < n_concepts[level] - 1]
    siblings = next((a, b) for a in usable for b in usable if a < b and parent[a] == parent[b])
    apart = next(
        (a, b)
        for a in usable
        for b in usable
        if a < b and root[a] != root[b] and {a, b}.isdisjoint(siblings)
    )
    return [(int(siblings[0]), int(siblings[1])), (int(apart[0]), int(apart[1]))]


def _first_leaf(ancestor: list[np.ndarray], level: int, concept: int) -> int:
    return int(np.flatnonzero(ancestor[level] == concept)[0])
