"""The store: content-addressed files under `LATENT_TREES_HOME/store`.

- `activations/<sha256>/`: one sae's activations as CSR, `indptr.i64` [T+1], `indices.i32`
  [nnz], `values.f32` [nnz] and `meta.json`, re-read by jobs in token chunks through memory maps.
- `inputs/<sha256>/`: a family's model inputs, `inputs.bin` [T, d_in] (float32, float16 or
  bfloat16 bits), `token_ids.i64` [T], `sequence.i64` [T] (which sequence each token came from),
  `vocab.json` (the text of each token id, when a tokenizer is known) and `meta.json`.

Writes go to a temporary folder `tmp/<uuid>/` first (its writer holds a lock on it while it
lives, so a folder whose lock can be taken was left by a killed writer) and are renamed into
place by `place`: a reader never sees a half-written entry, and identical content is stored
once. Placing and deleting an entry are coordinated with the rows that reference it by
`service.entries`, so that no entry is deleted while a committed row points at it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import numpy as np
import torch

from service import errors
from service.compute import chunks as chunks_
from service.compute import layout

# An sae from a checkpoint keeps its unit decoder rows (float32 [d_sae, d_in]) in its entry.
DECODER = "decoder.f32"
FILES = {
    "indptr": ("indptr.i64", np.int64),
    "indices": ("indices.i32", np.int32),
    "values": ("values.f32", np.float32),
}


@dataclass(frozen=True)
class Stored:
    """Where one sae's activations were stored."""

    path: str  # relative to the store root: activations/<sha256>
    sha256: str
    n_tokens: int
    d_sae: int
    nnz: int


INPUT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class InputsBatch:
    """Consecutive tokens of model inputs: x [b, d_in], their token ids and sequence numbers."""

    x: torch.Tensor
    token_ids: np.ndarray
    sequence: np.ndarray


@dataclass(frozen=True)
class StoredInputs:
    """Where a family's model inputs were stored."""

    path: str  # relative to the store root: inputs/<sha256>
    sha256: str
    n_tokens: int
    d_in: int
    token_fingerprint: str  # sha256 of the token ids as little-endian int64


E = TypeVar("E", Stored, StoredInputs)
KINDS = ("activations", "inputs")
# A temporary folder younger than this is never swept: its writer may not hold its lock yet.
_TMP_GRACE_SECONDS = 60.0


@dataclass
class Pending(Generic[E]):
    """An entry written to its temporary folder, awaiting `Store.place` (or `discard`)."""

    entry: E
    tmp: Path
    lock: IO[bytes] | None = field(default=None, repr=False)


class Store:
    """The store under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, home: Path) -> Store:
        """The store of a LATENT_TREES_HOME."""
        return cls(home / "store")

    def write_activations(
        self,
        blocks: Iterable[chunks_.SparseChunk],
        n_tokens: int,
        d_sae: int,
        decoder: np.ndarray | None = None,
    ) -> Pending[Stored]:
        """Write consecutive blocks covering tokens [0, n_tokens) (sorted by token) to a
        temporary folder; `place` puts them in the store. `decoder`: the sae's unit decoder
        rows [d_sae, d_in] (checkpoints), kept beside its activations for decoder cosines."""
        tmp, lock = self._new_tmp()
        try:
            hashes = {name: hashlib.sha256() for name in FILES}
            handles = {name: (tmp / fn).open("wb") for name, (fn, _dt) in FILES.items()}
            nnz, next_token = 0, 0
            try:
                self._put(handles, hashes, "indptr", np.zeros(1, np.int64))
                for block in blocks:
                    if block.start != next_token:
                        raise ValueError("blocks must be consecutive")
                    counts = np.bincount(block.rows.numpy(), minlength=block.n_tokens)
                    self._put(handles, hashes, "indptr", nnz + np.cumsum(counts))
                    self._put(handles, hashes, "indices", block.cols.numpy())
                    self._put(handles, hashes, "values", block.values.numpy())
                    nnz += int(block.rows.numel())
                    next_token += block.n_tokens
            finally:
                for fh in handles.values():
                    fh.close()
            if next_token != n_tokens:
                raise ValueError(f"blocks cover {next_token} tokens, expected {n_tokens}")
            parts = [hashes[name].digest() for name in FILES]
            meta: dict[str, Any] = {"n_tokens": n_tokens, "d_sae": d_sae, "nnz": nnz}
            if decoder is not None:
                rows = np.ascontiguousarray(decoder, np.float32)
                if rows.ndim != 2 or rows.shape[0] != d_sae:
                    raise ValueError(f"decoder of shape {rows.shape}, expected [{d_sae}, d_in]")
                rows.tofile(tmp / DECODER)
                parts.append(hashlib.sha256(rows.tobytes()).digest())
                meta["d_in"] = int(rows.shape[1])
            digest = hashlib.sha256(
                f"csr:{n_tokens}:{d_sae}:".encode() + b"".join(parts)
            ).hexdigest()
            meta["sha256"] = digest
            (tmp / "meta.json").write_text(json.dumps(meta))
            entry = Stored(f"activations/{digest}", digest, n_tokens, d_sae, nnz)
            return Pending(entry, tmp, lock)
        except BaseException:
            self._drop(tmp, lock)
            raise

    def _new_tmp(self) -> tuple[Path, IO[bytes]]:
        """A fresh temporary folder, locked by this process until it is placed or discarded."""
        tmp = self.root / "tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        lock = (tmp / ".lock").open("wb")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return tmp, lock

    @staticmethod
    def _drop(tmp: Path, lock: IO[bytes] | None) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            lock.close()

    def place(self, pending: Pending[E]) -> E:
        """Rename a pending entry into `kind/<sha256>` unless identical content is there; the
        caller holds the entry's lock (`service.entries`) so that no delete runs meanwhile."""
        final = self.root / pending.entry.path
        if not self.exists(pending.entry.path):
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(pending.tmp, final)
            except OSError:
                if not self.exists(pending.entry.path):
                    raise
        self.discard(pending)
        return pending.entry

    def discard(self, pending: Pending[Any]) -> None:
        """Remove what is left of a pending entry's temporary folder and release its lock."""
        self._drop(pending.tmp, pending.lock)
        pending.lock = None

    def exists(self, rel_path: str) -> bool:
        """Whether the entry at `rel_path` is complete (its meta.json is written last)."""
        return (self.root / rel_path / "meta.json").exists()

    def delete(self, rel_path: str) -> None:
        """Remove one entry (the caller holds its lock and knows no row references it)."""
        shutil.rmtree(self.root / rel_path, ignore_errors=True)

    def entries(self) -> list[str]:
        """Every entry's relative path (`activations/<sha256>`, `inputs/<sha256>`)."""
        return sorted(
            f"{kind}/{p.name}"
            for kind in KINDS
            if (self.root / kind).is_dir()
            for p in (self.root / kind).iterdir()
        )

    def size(self, rel_path: str) -> int:
        """Bytes on disk of one entry."""
        return _folder_size(self.root / rel_path)

    def sweep_tmp(self) -> tuple[int, int]:
        """Remove temporary folders left by killed writers; (folders, bytes) removed."""
        folders = n_bytes = 0
        tmp_root = self.root / "tmp"
        if not tmp_root.is_dir():
            return 0, 0
        for tmp in tmp_root.iterdir():
            try:
                if time.time() - tmp.stat().st_mtime < _TMP_GRACE_SECONDS:
                    continue
                size = _folder_size(tmp)
                try:
                    fd = os.open(tmp / ".lock", os.O_RDONLY)
                except FileNotFoundError:
                    shutil.rmtree(tmp)  # its writer died before it took the lock
                else:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its writer is gone
                        shutil.rmtree(tmp)
                    finally:
                        os.close(fd)
            except BlockingIOError:
                continue  # a live writer holds it
            except FileNotFoundError:
                continue  # placed or discarded meanwhile
            folders += 1
            n_bytes += size
        return folders, n_bytes

    @staticmethod
    def _put(handles: dict[str, Any], hashes: dict[str, Any], name: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=FILES[name][1]).tobytes()
        handles[name].write(data)
        hashes[name].update(data)

    def write_inputs(
        self,
        batches: Iterable[InputsBatch],
        d_in: int,
        dtype: str,
        vocab: dict[int, str] | None,
        meta: dict[str, Any],
    ) -> Pending[StoredInputs]:
        """Write a family's model inputs, batch after batch, as `dtype` to a temporary folder;
        `place` puts them in the store."""
        if dtype not in INPUT_DTYPES:
            raise errors.BadInput(f"--dtype {dtype}: expected one of {', '.join(INPUT_DTYPES)}")
        tmp, lock = self._new_tmp()
        try:
            digest = hashlib.sha256(f"inputs:{d_in}:{dtype}:".encode())
            fingerprint = hashlib.sha256()
            n_tokens = 0
            with (
                (tmp / "inputs.bin").open("wb") as xs,
                (tmp / "token_ids.i64").open("wb") as ids,
                (tmp / "sequence.i64").open("wb") as seqs,
            ):
                for batch in batches:
                    if batch.x.ndim != 2 or batch.x.shape[1] != d_in:
                        raise ValueError(f"inputs batch of shape {tuple(batch.x.shape)}")
                    raw = _input_bytes(batch.x, dtype)
                    id_bytes = np.ascontiguousarray(batch.token_ids, "<i8").tobytes()
                    xs.write(raw)
                    ids.write(id_bytes)
                    seqs.write(np.ascontiguousarray(batch.sequence, "<i8").tobytes())
                    digest.update(raw)
                    digest.update(id_bytes)
                    fingerprint.update(id_bytes)
                    n_tokens += int(batch.x.shape[0])
            if n_tokens == 0:
                raise errors.BadInput("the inputs hold no tokens")
            if vocab is not None:
                (tmp / "vocab.json").write_text(json.dumps({str(k): v for k, v in vocab.items()}))
                digest.update((tmp / "vocab.json").read_bytes())
            sha = digest.hexdigest()
            info = {
                **meta,
                "n_tokens": n_tokens,
                "d_in": d_in,
                "dtype": dtype,
                "sha256": sha,
                "token_fingerprint": fingerprint.hexdigest(),
            }
            (tmp / "meta.json").write_text(json.dumps(info))
            entry = StoredInputs(f"inputs/{sha}", sha, n_tokens, d_in, fingerprint.hexdigest())
            return Pending(entry, tmp, lock)
        except BaseException:
            self._drop(tmp, lock)
            raise

    def open_inputs(self, rel_path: str) -> InputsSource:
        """A family's stored model inputs."""
        return InputsSource(self.root / rel_path)

    def open_activations(self, rel_path: str) -> StoreSource:
        """The stored activations at `rel_path` as a chunk source."""
        return StoreSource(self.root / rel_path)


class StoreSource:
    """A stored entry read through memory maps; implements compute.chunks.ChunkSource."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            meta = json.loads((folder / "meta.json").read_text())
            self._n_tokens, self._d_sae = int(meta["n_tokens"]), int(meta["d_sae"])
            self.sha256 = str(meta["sha256"])
            nnz = int(meta["nnz"])
            self.indptr = np.memmap(
                folder / FILES["indptr"][0], np.int64, "r", shape=(self._n_tokens + 1,)
            )
            shape = (nnz,)
            self.indices = _map(folder / FILES["indices"][0], np.int32, shape)
            self.values = _map(folder / FILES["values"][0], np.float32, shape)
            d_in = meta.get("d_in")
            self._decoder = (
                _map(folder / DECODER, np.float32, (self._d_sae * int(d_in),)).reshape(
                    self._d_sae, int(d_in)
                )
                if d_in is not None
                else None
            )
        except (OSError, ValueError, KeyError) as exc:
            raise errors.ServiceError(
                f"activation store entry {folder} is missing or damaged"
            ) from exc

    def __reduce__(self) -> tuple[type[StoreSource], tuple[Path]]:
        # Pickled as its path (a Ray task opens the entry where it runs: a store every node
        # mounts), never as its arrays.
        return (StoreSource, (self.folder,))

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    def decoder(self) -> np.ndarray | None:
        """The sae's unit decoder rows [d_sae, d_in], when it came from a checkpoint."""
        return self._decoder

    @property
    def d_sae(self) -> int:
        return self._d_sae

    def token_major(self) -> layout.TokenMajor:
        """The entry as it is stored (token-major), memory-mapped: nothing is copied."""
        return layout.TokenMajor(
            np.asarray(self.indptr), np.asarray(self.indices), np.asarray(self.values), self._d_sae
        )

    def chunks(self, chunk_tokens: int) -> Iterator[chunks_.SparseChunk]:
        for start in range(0, self._n_tokens, chunk_tokens):
            stop = min(start + chunk_tokens, self._n_tokens)
            ptr = np.asarray(self.indptr[start : stop + 1])
            lo, hi = int(ptr[0]), int(ptr[-1])
            rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(ptr))
            yield chunks_.SparseChunk(
                start,
                stop - start,
                torch.from_numpy(rows),
                torch.from_numpy(np.asarray(self.indices[lo:hi], dtype=np.int64)),
                torch.from_numpy(np.array(self.values[lo:hi])),
            )


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _map(path: Path, dtype: type, shape: tuple[int]) -> np.ndarray:
    if shape[0] == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", shape=shape)


def _input_bytes(x: torch.Tensor, dtype: str) -> bytes:
    converted = x.detach().to("cpu", getattr(torch, dtype)).contiguous()
    if dtype == "bfloat16":  # numpy has no bfloat16: keep the bits
        converted = converted.view(torch.int16)
    return converted.numpy().tobytes()


class InputsSource:
    """A family's stored model inputs, read through memory maps."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.meta = json.loads((folder / "meta.json").read_text())
            self.n_tokens, self.d_in = int(self.meta["n_tokens"]), int(self.meta["d_in"])
            self.dtype = str(self.meta["dtype"])
            storage = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}
            self._x = np.memmap(
                folder / "inputs.bin", storage[self.dtype], "r", shape=(self.n_tokens, self.d_in)
            )
            self.token_ids = np.memmap(folder / "token_ids.i64", "<i8", "r", shape=(self.n_tokens,))
            self.sequence = np.memmap(folder / "sequence.i64", "<i8", "r", shape=(self.n_tokens,))
            vocab_file = folder / "vocab.json"
            self.vocab: dict[int, str] | None = (
                {int(k): v for k, v in json.loads(vocab_file.read_text()).items()}
                if vocab_file.exists()
                else None
            )
        except (OSError, ValueError, KeyError) as exc:
            raise errors.ServiceError(f"inputs store entry {folder} is missing or damaged") from exc

    def __reduce__(self) -> tuple[type[InputsSource], tuple[Path]]:
        return (InputsSource, (self.folder,))  # as its path, like StoreSource

    def batches(
        self, batch_tokens: int, first: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, inputs [b, d_in] as stored) for consecutive batches of tokens [first, stop)."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        for start in range(first, stop, batch_tokens):
            block = torch.from_numpy(np.array(self._x[start : min(start + batch_tokens, stop)]))
            yield start, block.view(torch.bfloat16) if self.dtype == "bfloat16" else block

    def context(self, position: int, width: int) -> tuple[str, str, str] | None:
        """(text before, the token, text after): up to `width` tokens either side within the
        token's sequence; None when the token texts are not known."""
        if self.vocab is None:
            return None
        lo, hi = max(0, position - width), min(self.n_tokens, position + width + 1)
        seq = self.sequence[position]
        ids, seqs = self.token_ids[lo:hi], self.sequence[lo:hi]

        def text(span: range) -> str:
            vocab = self.vocab or {}
            return "".join(vocab.get(int(ids[i - lo]), "") for i in span if seqs[i - lo] == seq)

        return (
            text(range(lo, position)),
            text(range(position, position + 1)),
            text(range(position + 1, hi)),
        )
