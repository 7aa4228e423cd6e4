"""Ray: a job's blocks of latents (and, at ingest, an encode's token shards) as tasks
across the CPUs and GPUs of a cluster.

A block is the engine's independent unit of output (`engine.score_blocks`), so a task scores
one block where it runs and sends back its candidates; the process that called
`engine.score_pair` gathers them (`ray.wait`) and picks the stored edges exactly, as it does
for blocks scored in process: the edges are the same. The pair is put in the object store once
and shared by the tasks of a node; a store entry inside it pickles as its path, so every node
reads the activations from a store it mounts (`LATENT_TREES_HOME` on a shared file system).

Ray is an optional extra (`pip install 'latent-trees[ray]'`): nothing imports it until a
runner is made. A task that dies (its worker process killed, its node lost) is retried by Ray;
a job whose worker dies is retried by the job queue.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numba
import torch

from service import errors
from service.compute import chunks as chunks_
from service.compute import encode as encode_
from service.compute import engine

log = logging.getLogger(__name__)

# Attempts Ray makes after a task's process dies (a block is a pure function of its inputs).
TASK_RETRIES = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise errors.ServiceError(
            "Ray is not installed: pip install 'latent-trees[ray]' to use --ray"
        ) from exc
    return ray


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (`auto`, `ray://host:port` or `host:port`), or start one
    on this machine (`local`: `num_cpus` CPUs, its GPUs); once per process."""
    if address not in ("auto", "local") and ":" not in address:
        raise errors.ServiceError(
            f"unknown Ray address {address!r}: expected auto, local, ray://host:port or host:port"
        )
    ray = _ray()
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise errors.ServiceError(f"no Ray cluster at {address!r}: {exc}") from exc


@dataclass(frozen=True)
class Tasks:
    """What each task asks of a cluster this process has joined: `cpus` CPUs, `gpus` GPUs."""

    cpus: float = 1
    gpus: float = 0

    @staticmethod
    def on(address: str, cpus: float = 1, gpus: float = 0) -> Tasks:
        """Join the cluster at `address` and check that a node can run such a task: one that
        asks for a GPU no node has would wait forever."""
        connect(address)
        resources = _ray().cluster_resources()
        if gpus > 0 and resources.get("GPU", 0) < gpus:
            raise errors.ServiceError(
                f"Ray tasks ask for {gpus:g} GPU each but the cluster has"
                f" {resources.get('GPU', 0):g}: set LATENT_TREES_RAY_GPUS_PER_TASK=0 for CPUs"
            )
        if resources.get("CPU", 0) < cpus:
            raise errors.ServiceError(
                f"Ray tasks ask for {cpus:g} CPUs each but the cluster has"
                f" {resources.get('CPU', 0):g}"
            )
        return Tasks(cpus, gpus)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def slots(self) -> int:
        """Tasks the cluster runs at once."""
        resources = _ray().cluster_resources()
        if self.gpus > 0:
            return max(1, math.floor(resources.get("GPU", 0) / self.gpus))
        return max(1, math.floor(resources.get("CPU", 0) / self.cpus))

    def remote(self, function: Callable[..., Any]) -> Any:
        """`function` as a Ray task asking for these resources, retried if its process dies."""
        return (
            _ray()
            .remote(function)
            .options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=TASK_RETRIES)
        )

    def gather(
        self, task: Any, shared: Any, args: list[tuple[Any, ...]]
    ) -> Iterator[tuple[int, Any]]:
        """Submit `task` once per `args` (each with `shared` first and these CPUs last), and
        yield (index, result) as they finish."""
        ray = _ray()
        pending = {task.remote(shared, *a, self.cpus): i for i, a in enumerate(args)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
        finally:
            for ref in pending:  # the caller stopped (an error): leave no task running
                ray.cancel(ref, force=True)


class RayRunner:
    """Scores blocks as Ray tasks (`engine.Runner`), each asking for `cpus` CPUs and `gpus`
    GPUs."""

    def __init__(self, address: str, *, cpus: float = 1, gpus: float = 0) -> None:
        self.tasks = Tasks.on(address, cpus, gpus)
        self.device = self.tasks.device
        self._task = self.tasks.remote(_score_block)

    def slots(self) -> int:
        return self.tasks.slots()

    def __call__(
        self, pair: engine.Pair, blocks: list[tuple[int, int]]
    ) -> Iterator[tuple[int, engine.BlockResult]]:
        return self.tasks.gather(self._task, _ray().put(pair), [(block,) for block in blocks])


def _use_cpus(cpus: float) -> None:
    """The kernel's threads: the CPUs the task was given."""
    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(int(cpus), most)))


def _score_block(pair: engine.Pair, block: tuple[int, int], cpus: float) -> engine.BlockResult:
    _use_cpus(cpus)
    (result,) = engine.score_blocks(pair, [block])
    return result


def encode_shards(
    address: str,
    encoder: encode_.Encoder,
    inputs: Any,
    batch_tokens: int,
    dtype: torch.dtype,
    quality: encode_.Reconstruction,
    *,
    cpus: float = 1,
    gpus: float = 0,
) -> Iterator[chunks_.SparseChunk]:
    """The family's inputs (`store.InputsSource`, which pickles as its path) encoded by Ray
    tasks, one per shard of whole batches of tokens; the chunks come back in token order, as
    the unsharded encode yields them, and each shard's reconstruction figures fold into
    `quality`."""
    tasks = Tasks.on(address, cpus, gpus)
    n_batches = -(-inputs.n_tokens // batch_tokens)
    n_shards = max(1, min(n_batches, 2 * tasks.slots()))
    per_shard = -(-n_batches // n_shards) * batch_tokens
    bounds = [
        (lo, min(lo + per_shard, inputs.n_tokens)) for lo in range(0, inputs.n_tokens, per_shard)
    ]
    shared = _ray().put((encoder, inputs, batch_tokens, dtype, tasks.device))
    ready: dict[int, tuple[list[chunks_.SparseChunk], encode_.Reconstruction]] = {}
    following = 0
    for i, result in tasks.gather(tasks.remote(_encode_shard), shared, bounds):
        ready[i] = result
        while following in ready:  # in token order
            shard_chunks, shard_quality = ready.pop(following)
            quality.merge(shard_quality)
            yield from shard_chunks
            following += 1


def _encode_shard(
    shared: tuple[encode_.Encoder, Any, int, torch.dtype, str], first: int, stop: int, cpus: float
) -> tuple[list[chunks_.SparseChunk], encode_.Reconstruction]:
    encoder, inputs, batch_tokens, dtype, device = shared
    torch.set_num_threads(max(1, int(cpus)))
    quality = encode_.Reconstruction()
    batches = inputs.batches(batch_tokens, first, stop)
    out = list(encode_.encode_batches(encoder, batches, torch.device(device), dtype, quality))
    return out, quality
