"""Sae encoders: model inputs in, sparse activations out (pure torch, CPU or CUDA).

One `Encoder` covers the architectures people train, as their libraries define them at
inference time:

- `relu`: `relu(x' @ W_enc + b_enc)`
- `topk`: the k largest pre-activations of each token, through a ReLU (per token)
- `jumprelu` (and BatchTopK, whose inference form is a threshold): `pre * (pre > threshold)`,
  through a ReLU

where `x' = normalise(x) - input_bias`. `input_bias` is the decoder bias when the checkpoint
subtracts it from the input (SAELens `apply_b_dec_to_input`, sparsify, dictionary_learning),
else zero. The decoder is kept so that ingest can report how well the sae reconstructs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from jaxtyping import Float
from torch import Tensor

from service.compute import chunks as chunks_


class Architecture(StrEnum):
    relu = "relu"
    topk = "topk"
    jumprelu = "jumprelu"


class Normalisation(StrEnum):
    """How a checkpoint rescales each input before encoding (and undoes it after decoding)."""

    none = "none"
    scale = "scale"  # multiply by a constant (SAELens expected_average_only_in)
    constant_norm = "constant_norm"  # rescale each token to norm sqrt(d_in)
    layer_norm = "layer_norm"  # centre and divide by the (unbiased) std + 1e-5


@dataclass
class Encoder:
    """An sae's encoder and decoder weights with its activation rule."""

    architecture: Architecture
    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_dec: Float[Tensor, " d_in"]
    input_bias: Float[Tensor, " d_in"]
    k: int | None = None
    threshold: Float[Tensor, " d_sae"] | None = None
    normalisation: Normalisation = Normalisation.none
    input_scale: float = 1.0
    rescale_by_decoder_norm: bool = False  # SAELens topk: scale pre-activations by |W_dec|
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def to(self, device: torch.device, dtype: torch.dtype) -> Encoder:
        """The same encoder with weights on `device` in `dtype`."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return Encoder(
            self.architecture,
            self.W_enc.to(device=device, dtype=dtype),
            self.b_enc.to(device=device, dtype=dtype),
            self.W_dec.to(device=device, dtype=dtype),
            self.b_dec.to(device=device, dtype=dtype),
            self.input_bias.to(device=device, dtype=dtype),
            self.k,
            move(self.threshold),
            self.normalisation,
            self.input_scale,
            self.rescale_by_decoder_norm,
            self.metadata,
        )

    def normalise(self, x: Float[Tensor, "b d_in"]) -> tuple[Tensor, Tensor, Tensor]:
        """(normalised x, scale, shift) such that x = normalised * scale + shift."""
        one = torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)
        zero = torch.zeros_like(one)
        if self.normalisation is Normalisation.scale:
            return x * self.input_scale, one / self.input_scale, zero
        if self.normalisation is Normalisation.constant_norm:
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, 1 / coeff, zero
        if self.normalisation is Normalisation.layer_norm:
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return (x - mu) / (std + 1e-5), std, mu
        return x, one, zero

    def encode(self, x: Float[Tensor, "b d_in"]) -> Float[Tensor, "b d_sae"]:
        """Dense activations (>= 0) of a batch of inputs."""
        normalised, _scale, _shift = self.normalise(x.to(self.W_enc.dtype))
        return self.activate(normalised)

    def activate(self, normalised: Tensor) -> Tensor:
        """Dense activations of already normalised inputs."""
        pre = (normalised - self.input_bias) @ self.W_enc + self.b_enc
        if self.architecture is Architecture.relu:
            return torch.relu(pre)
        if self.architecture is Architecture.jumprelu:
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold)
        assert self.k is not None
        if self.rescale_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

    def decode(self, acts: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """Reconstruction in the input's units."""
        if self.rescale_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        return (acts @ self.W_dec + self.b_dec) * scale + shift


@dataclass
class Reconstruction:
    """Streaming fraction of variance unexplained and mean L0 over the encoded tokens."""

    n_tokens: int = 0
    l0_sum: int = 0
    err_sq: float = 0.0
    x_sum: Tensor | None = None
    x_sq: float = 0.0

    def add(self, x: Tensor, x_hat: Tensor, active: int) -> None:
        x64 = x.to(torch.float64)
        self.n_tokens += int(x.shape[0])
        self.l0_sum += active
        self.err_sq += float((x64 - x_hat.to(torch.float64)).square().sum())
        total = x64.sum(dim=0)
        self.x_sum = total if self.x_sum is None else self.x_sum + total
        self.x_sq += float(x64.square().sum())

    def merge(self, other: Reconstruction) -> None:
        """Fold in the figures of another token set (sums add)."""
        self.n_tokens += other.n_tokens
        self.l0_sum += other.l0_sum
        self.err_sq += other.err_sq
        if other.x_sum is not None:
            self.x_sum = other.x_sum if self.x_sum is None else self.x_sum + other.x_sum
        self.x_sq += other.x_sq

    @property
    def fvu(self) -> float:
        """sum |x - x_hat|^2 / sum |x - mean x|^2."""
        if self.x_sum is None or self.n_tokens == 0:
            return float("nan")
        variance = self.x_sq - float(self.x_sum.square().sum()) / self.n_tokens
        return self.err_sq / variance if variance > 0 else float("nan")

    @property
    def l0(self) -> float:
        return self.l0_sum / max(self.n_tokens, 1)


def encode_chunk(
    encoder: Encoder, x: Float[Tensor, "b d_in"], start: int, quality: Reconstruction
) -> chunks_.SparseChunk:
    """Encode one batch of inputs (tokens start..start+b) into a CPU SparseChunk, sorted by
    token, and fold its reconstruction error into `quality`."""
    x = x.to(encoder.W_enc.dtype)
    normalised, scale, shift = encoder.normalise(x)
    acts = encoder.activate(normalised)
    rows, cols = acts.nonzero(as_tuple=True)
    quality.add(x, encoder.decode(acts, scale, shift), int(rows.numel()))
    return chunks_.SparseChunk(
        start,
        int(x.shape[0]),
        rows.cpu(),
        cols.cpu(),
        acts[rows, cols].to(torch.float32).cpu(),
    )


def encode_batches(
    encoder: Encoder,
    batches: Iterable[tuple[int, Tensor]],
    device: torch.device,
    dtype: torch.dtype,
    quality: Reconstruction,
) -> Iterator[chunks_.SparseChunk]:
    """Batches of inputs (start, [b, d_in]) encoded on `device` in `dtype`, in order, their
    reconstruction error folded into `quality` (an ingest in process, or one Ray task's shard)."""
    moved = encoder.to(device, dtype)
    for start, x in batches:
        yield encode_chunk(moved, x.to(device), start, quality)
