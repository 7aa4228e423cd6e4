"""Activation files of SPEC.md section 4, validated as they stream.

Formats (`.npz`, `.safetensors`, `.npy`; a directory's shards are concatenated in name order):
- top-k: `indices` [T, k] (any integer type) and `values` [T, k]; a value of 0 is padding;
- CSR: `indptr` [T+1], `indices` [nnz], `values` [nnz];
- dense: one array [T, d_sae];
- optional `token_ids` [T] and `d_sae` (else `--d-sae`).
Every problem is a one-line BadInput naming the file, the field and what was expected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service import errors
from service.compute import chunks as chunks_
from service.sources import arrays as arrays_

OPTIONAL = ("token_ids", "d_sae")
BLOCK_TOKENS = 1 << 16


@dataclass
class _Shard:
    path: Path
    kind: str  # "topk", "csr" or "dense"
    arrays: dict[str, arrays_.LazyArray]
    n_tokens: int
    d_sae: int | None


def _fail(path: Path, field: str, message: str) -> errors.BadInput:
    return errors.BadInput(f"{path}: field '{field}': {message}")


def _check_dtype(path: Path, name: str, arr: arrays_.LazyArray, kind: str) -> None:
    ok = np.issubdtype(arr.dtype, np.integer if kind == "integer" else np.floating)
    if not ok:
        raise _fail(path, name, f"expected {kind} dtype, got {arr.dtype}")


def _check_ndim(path: Path, name: str, arr: arrays_.LazyArray, ndim: int, shape: str) -> None:
    if len(arr.shape) != ndim:
        raise _fail(path, name, f"expected shape {shape}, got {list(arr.shape)}")


def _shard(path: Path, arrs: dict[str, arrays_.LazyArray]) -> _Shard:
    names = set(arrs)
    d_sae = None
    if "d_sae" in arrs:
        raw = np.asarray(arrs["d_sae"][...])
        if raw.size != 1 or not np.issubdtype(raw.dtype, np.integer) or int(raw.ravel()[0]) <= 0:
            raise _fail(path, "d_sae", f"expected one positive integer, got {raw.ravel()[:3]}")
        d_sae = int(raw.ravel()[0])
    main = names - set(OPTIONAL)
    if main == {"indices", "values"}:
        kind, shape = "topk", "[T, k]"
        idx, val = arrs["indices"], arrs["values"]
        _check_ndim(path, "indices", idx, 2, shape)
        _check_ndim(path, "values", val, 2, shape)
        if tuple(idx.shape) != tuple(val.shape):
            raise _fail(
                path,
                "values",
                f"expected the shape of indices {list(idx.shape)}, got {list(val.shape)}",
            )
        n_tokens = idx.shape[0]
    elif main == {"indptr", "indices", "values"}:
        kind = "csr"
        ptr, idx, val = arrs["indptr"], arrs["indices"], arrs["values"]
        _check_ndim(path, "indptr", ptr, 1, "[T+1]")
        _check_ndim(path, "indices", idx, 1, "[nnz]")
        _check_ndim(path, "values", val, 1, "[nnz]")
        _check_dtype(path, "indptr", ptr, "integer")
        if ptr.shape[0] < 1:
            raise _fail(path, "indptr", "expected T+1 >= 1 entries, got 0")
        if idx.shape[0] != val.shape[0]:
            raise _fail(
                path, "values", f"expected {idx.shape[0]} entries like indices, got {val.shape[0]}"
            )
        indptr = np.asarray(ptr[:], dtype=np.int64)
        if indptr[0] != 0 or indptr[-1] != idx.shape[0] or np.any(np.diff(indptr) < 0):
            raise _fail(
                path, "indptr", f"expected non-decreasing offsets from 0 to nnz={idx.shape[0]}"
            )
        n_tokens = ptr.shape[0] - 1
    elif len(main) == 1:
        kind = "dense"
        (name,) = main
        dense = arrs[name]
        _check_ndim(path, name, dense, 2, "[T, d_sae]")
        _check_dtype(path, name, dense, "float")
        if d_sae is not None and d_sae != dense.shape[1]:
            raise _fail(path, name, f"expected {d_sae} columns (d_sae), got {dense.shape[1]}")
        d_sae = int(dense.shape[1])
        n_tokens = dense.shape[0]
    else:
        found = ", ".join(sorted(names)) or "no arrays"
        raise errors.BadInput(
            f"{path}: expected top-k (indices, values), CSR (indptr, indices, values) or one"
            f" dense array, got {found}"
        )
    if kind != "dense":
        _check_dtype(path, "indices", arrs["indices"], "integer")
        _check_dtype(path, "values", arrs["values"], "float")
    if "token_ids" in arrs:
        tok = arrs["token_ids"]
        _check_dtype(path, "token_ids", tok, "integer")
        if tuple(tok.shape) != (n_tokens,):
            raise _fail(path, "token_ids", f"expected shape [{n_tokens}], got {list(tok.shape)}")
    return _Shard(path, kind, arrs, int(n_tokens), d_sae)


def shard_paths(path: Path) -> list[Path]:
    """The file itself, or a directory's activation files in name order."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in arrays_.SUFFIXES)
        if not found:
            raise errors.BadInput(f"{path}: no .npz, .safetensors or .npy files in the directory")
        return found
    if not path.exists():
        raise errors.BadInput(f"{path}: no such file or directory")
    return [path]


class ActivationFile:
    """An activation file or directory of shards, opened and checked for structure.

    Use as a context manager; `blocks()` then streams validated token blocks."""

    def __init__(self, path: Path, d_sae: int | None = None) -> None:
        self.path = path
        self._requested_d_sae = d_sae
        self._stack = contextlib.ExitStack()
        self.shards: list[_Shard] = []

    def __enter__(self) -> ActivationFile:
        try:
            for p in shard_paths(self.path):
                self.shards.append(_shard(p, self._stack.enter_context(arrays_.open_arrays(p))))
            self._resolve()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _resolve(self) -> None:
        kinds = {s.kind for s in self.shards}
        if len(kinds) > 1:
            raise errors.BadInput(f"{self.path}: shards mix formats ({', '.join(sorted(kinds))})")
        stored = {s.d_sae for s in self.shards if s.d_sae is not None}
        if len(stored) > 1:
            raise errors.BadInput(f"{self.path}: field 'd_sae': shards disagree ({sorted(stored)})")
        wanted = self._requested_d_sae
        if wanted is not None and wanted <= 0:
            raise errors.BadInput(f"--d-sae {wanted}: expected a positive integer")
        if stored and wanted is not None and wanted not in stored:
            raise errors.BadInput(
                f"{self.path}: field 'd_sae': the file says {stored.pop()} but --d-sae is {wanted}"
            )
        d_sae = wanted if wanted is not None else (stored.pop() if stored else None)
        if d_sae is None:
            raise errors.BadInput(f"{self.path}: no d_sae: store a 'd_sae' field or pass --d-sae")
        if d_sae <= 0:
            raise errors.BadInput(
                f"{self.path}: field 'd_sae': expected at least 1 latent, got {d_sae}"
            )
        with_ids = [s for s in self.shards if "token_ids" in s.arrays]
        if with_ids and len(with_ids) != len(self.shards):
            raise errors.BadInput(f"{self.path}: field 'token_ids': present in some shards only")
        self.d_sae = d_sae
        self.kind = kinds.pop()
        self.n_tokens = sum(s.n_tokens for s in self.shards)
        if self.n_tokens == 0:
            raise errors.BadInput(f"{self.path}: expected at least one token, got 0")
        self.has_token_ids = bool(with_ids)

    def token_ids(self) -> Iterator[np.ndarray]:
        """The token ids, shard by shard, in blocks (int64)."""
        for shard in self.shards:
            tok = shard.arrays["token_ids"]
            for start in range(0, shard.n_tokens, BLOCK_TOKENS):
                yield np.asarray(tok[start : start + BLOCK_TOKENS], dtype=np.int64)

    def blocks(self) -> Iterator[chunks_.SparseChunk]:
        """Validated sparse blocks of consecutive tokens covering the whole token set."""
        offset = 0
        for shard in self.shards:
            for start in range(0, shard.n_tokens, BLOCK_TOKENS):
                stop = min(start + BLOCK_TOKENS, shard.n_tokens)
                rows, cols, vals = self._read(shard, start, stop)
                yield chunks_.SparseChunk(
                    offset + start,
                    stop - start,
                    torch.from_numpy(rows),
                    torch.from_numpy(cols),
                    torch.from_numpy(vals),
                )
            offset += shard.n_tokens

    def _read(self, shard: _Shard, start: int, stop: int) -> tuple[np.ndarray, ...]:
        a = shard.arrays
        if shard.kind == "dense":
            (name,) = set(a) - set(OPTIONAL)
            block = np.asarray(a[name][start:stop])
            self._check_values(shard, name, block, start)
            rows, cols = np.nonzero(block > 0)
            vals = block[rows, cols]
        elif shard.kind == "topk":
            idx = np.asarray(a["indices"][start:stop])
            val = np.asarray(a["values"][start:stop])
            self._check_values(shard, "values", val, start)
            rows, pos = np.nonzero(val > 0)
            cols = idx[rows, pos]
            vals = val[rows, pos]
        else:
            ptr = np.asarray(a["indptr"][start : stop + 1], dtype=np.int64)
            idx = np.asarray(a["indices"][ptr[0] : ptr[-1]])
            val = np.asarray(a["values"][ptr[0] : ptr[-1]])
            rows_all = np.repeat(np.arange(stop - start), np.diff(ptr))
            self._check_values(shard, "values", val, start, rows_all)
            active = val > 0
            rows, cols, vals = rows_all[active], idx[active], val[active]
        cols = cols.astype(np.int64)
        self._check_indices(shard, cols, rows, start)
        return rows.astype(np.int64), cols, vals.astype(np.float32)

    def _check_values(
        self,
        shard: _Shard,
        name: str,
        values: np.ndarray,
        start: int,
        rows: np.ndarray | None = None,
    ) -> None:
        bad = ~np.isfinite(values) | (values < 0)
        if not bad.any():
            return
        flat = int(np.flatnonzero(bad)[0])
        value = values.ravel()[flat]
        token = start + (int(rows[flat]) if rows is not None else flat // max(values.shape[-1], 1))
        what = "NaN" if np.isnan(value) else ("Inf" if np.isinf(value) else f"negative {value:g}")
        raise _fail(shard.path, name, f"expected finite values >= 0, got {what} at token {token}")

    def _check_indices(self, shard: _Shard, cols: np.ndarray, rows: np.ndarray, start: int) -> None:
        if cols.size == 0:
            return
        bad = (cols < 0) | (cols >= self.d_sae)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(
                shard.path,
                "indices",
                f"expected latent indices in [0, d_sae={self.d_sae}), got {int(cols[i])}"
                f" at token {start + int(rows[i])}",
            )
        # Each (token, latent) once: the keys ascend strictly, as they do in token order with
        # sorted indices (CSR usually is); otherwise sorted first (top-k rows are in rank order).
        keys = rows * self.d_sae + cols
        if not _strictly_ascending(keys) and not _strictly_ascending(np.sort(keys)):
            raise _fail(shard.path, "indices", "expected each latent at most once per token")


def _strictly_ascending(keys: np.ndarray) -> bool:
    return bool((keys[1:] > keys[:-1]).all())
