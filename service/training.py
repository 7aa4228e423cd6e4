"""Train small TopK saes on a family's stored model inputs and save them in SAELens format.

This is the demo's trainer, not a training library: the TopK recipe of Gao et al. (2024) in a
few lines (decoder rows kept at unit norm, decoder bias started at the inputs' mean, Adam,
sparse decoding; no auxiliary loss, so some latents die), good enough to show real splits on a
laptop. Inputs are scaled to a mean norm of sqrt(d_in) while training, and the scale is folded
into the saved weights, so the checkpoint reads raw inputs (`normalize_activations: none`), as
SAELens itself saves it.

    python -m service.training INPUTS_DIR OUT_DIR --widths 256 1024 4096 --k 16
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from service.sources import store

log = logging.getLogger(__name__)

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"


@dataclass(frozen=True)
class Recipe:
    """How to train one sae."""

    d_sae: int
    k: int = 16
    epochs: float = 4.0
    batch_tokens: int = 1024
    # Higher than the paper's 2e-4 / sqrt(d_sae / 16384): the demo trains for only a few
    # hundred steps (at 60k tokens, 2e-3 gave FVU 0.114 at 4096 latents, the law's 4e-4 0.200).
    lr: float = 2e-3
    seed: int = 0


def load_inputs(source: store.InputsSource) -> Tensor:
    """All of a family's stored inputs as one float32 tensor [T, d_in]."""
    return torch.cat([x.float() for _start, x in source.batches(65536)])


def train_topk(x: Tensor, recipe: Recipe) -> dict[str, Tensor]:
    """SAELens TopK weights (W_enc, b_enc, W_dec, b_dec) for the inputs x [T, d_in]."""
    generator = torch.Generator().manual_seed(recipe.seed)
    n_tokens, d_in = x.shape
    scale = (d_in**0.5) / float(x.norm(dim=-1).mean())
    xs = x * scale
    w_dec = torch.randn(recipe.d_sae, d_in, generator=generator)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_enc": torch.nn.Parameter(w_dec.T.clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(recipe.d_sae)),
        "W_dec": torch.nn.Parameter(w_dec),
        "b_dec": torch.nn.Parameter(xs.mean(dim=0)),
    }
    optimizer = torch.optim.Adam(params.values(), lr=recipe.lr)
    steps = max(1, int(recipe.epochs * n_tokens / recipe.batch_tokens))
    for step in range(steps):
        batch = xs[torch.randint(n_tokens, (recipe.batch_tokens,), generator=generator)]
        pre = (batch - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        values, indices = pre.topk(recipe.k, dim=-1)
        values = torch.relu(values)
        recon = params["b_dec"] + torch.nn.functional.embedding_bag(
            indices, params["W_dec"], per_sample_weights=values, mode="sum"
        )
        loss = (recon - batch).square().sum(dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            params["W_dec"].div_(params["W_dec"].norm(dim=-1, keepdim=True))
        if step % 200 == 0:
            log.info(
                "d_sae %d step %d/%d loss %.4g", recipe.d_sae, step, steps, float(loss.detach())
            )
    with torch.no_grad():  # fold the input scale in: the saved sae reads raw inputs
        return {
            "W_enc": params["W_enc"].detach() * scale,
            "b_enc": params["b_enc"].detach().clone(),
            "W_dec": params["W_dec"].detach() / scale,
            "b_dec": params["b_dec"].detach() / scale,
        }


def save_saelens(
    folder: Path, weights: dict[str, Tensor], k: int, metadata: dict[str, object]
) -> None:
    """Write `cfg.json` and `sae_weights.safetensors` as SAELens saves a TopK sae."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    d_sae, d_in = weights["W_dec"].shape
    cfg = {
        "architecture": "topk",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "k": k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    save_file({name: t.contiguous() for name, t in weights.items()}, str(folder / SAELENS_WEIGHTS))
    (folder / SAELENS_CFG).write_text(json.dumps(cfg, indent=2))


def train_family(
    source: store.InputsSource,
    out: Path,
    widths: list[int],
    k: int,
    epochs: float = 4.0,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """One TopK sae per width, saved under `out/<width>`; folders already there are reused.
    `progress` gets a line per width."""
    x: Tensor | None = None
    folders = []
    for width in widths:
        folder = out / str(width)
        if not (folder / SAELENS_WEIGHTS).is_file():
            x = load_inputs(source) if x is None else x
            started = time.perf_counter()
            weights = train_topk(x, Recipe(d_sae=width, k=k, epochs=epochs, seed=width))
            meta = {
                "model_name": source.meta.get("model"),
                "hook_name": source.meta.get("hook"),
                "trained_by": "latent-trees service.training",
                "training_tokens": source.n_tokens,
                "epochs": epochs,
            }
            save_saelens(folder, weights, k, meta)
            line = f"trained d_sae {width} in {time.perf_counter() - started:.1f} s"
            log.info(line)
        else:
            line = f"d_sae {width}: reused {folder}"
        if progress is not None:
            progress(f"  {line}")
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, help="A store entry: HOME/store/inputs/<sha256>.")
    parser.add_argument("out", type=Path, help="Folder for one sae folder per width.")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=4.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = store.InputsSource(args.inputs)
    for folder in train_family(source, args.out, args.widths, args.k, args.epochs):
        sys.stdout.write(f"{folder}\n")


if __name__ == "__main__":
    main()
