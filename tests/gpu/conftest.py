"""GPU tests: skipped without CUDA. Nothing here imports the database side, so that the GPU
machine (PyTorch, Triton, numba; no database libraries) runs them with
`python -m pytest --confcutdir=tests/gpu tests/gpu` (`make bench-gpu`)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU tests run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    # `make bench-gpu` runs without the project's pytest settings (-c /dev/null: the GPU
    # machine lacks some of their plugins), so the marker is declared here too.
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")
