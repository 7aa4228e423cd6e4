"""Named arrays of one file, read lazily: `.npy`, `.npz` (stored members are memory-mapped) and
`.safetensors` (sliced). Any failure to read is a one-line BadInput naming the file."""

from __future__ import annotations

import contextlib
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service import errors

SUFFIXES = (".npz", ".safetensors", ".npy")
# The name a bare `.npy` array goes by.
DENSE_NPY = "activations"


class LazyArray(Protocol):
    """An array read by slices: numpy arrays and memory maps, or safetensors slices."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, key: Any) -> np.ndarray: ...


class _SafetensorSlice:
    """A safetensors tensor read by row ranges; bfloat16 is widened to float32."""

    def __init__(self, handle: Any, name: str) -> None:
        import torch

        self._slice = handle.get_slice(name)
        self.shape = tuple(self._slice.get_shape())
        kind = self._slice.get_dtype()
        self._widen = kind == "BF16"
        torch_dtype = torch.float32 if self._widen else _TORCH_DTYPES.get(kind)
        if torch_dtype is None:
            raise ValueError(f"tensor {name} has unsupported dtype {kind}")
        self.dtype = np.dtype(str(torch.empty(0, dtype=torch_dtype).numpy().dtype))

    def __getitem__(self, key: Any) -> np.ndarray:
        tensor = self._slice[...] if self.shape == () else self._slice[key]
        if self._widen:
            tensor = tensor.float()
        return tensor.numpy()


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }


_TORCH_DTYPES = _torch_dtypes()


def _npz_member(path: Path, zf: zipfile.ZipFile, member: str) -> LazyArray:
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    with path.open("rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad zip entry {member}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        data_start = info.header_offset + 30 + name_len + extra_len
        fh.seek(data_start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"{member}: unsupported .npy format version {version}")
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{member} holds Python objects")
    if int(np.prod(shape)) * dtype.itemsize > info.file_size - (offset - data_start):
        raise ValueError(f"{member} is truncated")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


@contextlib.contextmanager
def open_arrays(path: Path) -> Iterator[dict[str, LazyArray]]:
    """The arrays of one file by name; a failure is BadInput('FILE: unreadable ...')."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise errors.BadInput(f"{path}: expected a .npz, .safetensors or .npy file")
    try:
        if suffix == ".npy":
            yield {DENSE_NPY: np.load(path, mmap_mode="r", allow_pickle=False)}
        elif suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".npy")]
                yield {n.removesuffix(".npy"): _npz_member(path, zf, n) for n in names}
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                yield {name: _SafetensorSlice(handle, name) for name in handle.keys()}  # noqa: SIM118
    except errors.ServiceError:
        raise
    except Exception as exc:  # every reader failure becomes one line naming the file
        raise errors.BadInput(f"{path}: unreadable or truncated file ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]
