"""Where the engine runs: `auto` picks CUDA when present, else the CPU."""

from __future__ import annotations

import os

import torch

from service import errors


def resolve(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a setting of `auto`, `cpu`, `cuda` or `cuda:N`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise errors.ServiceError(f"device {device!r} requested but CUDA is not available")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise errors.ServiceError(f"unknown device {device!r}: expected auto, cpu or cuda") from exc


def host_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device, with what this process's allocator holds unused (a worker's
    earlier jobs leave their blocks cached); None on the CPU."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)
