"""Sae checkpoints on disk, read into a `compute.encode.Encoder`.

Three layouts, recognised by their files:

- SAELens, `cfg.json` + `sae_weights.safetensors`: standard (ReLU), topk, jumprelu (a BatchTopK
  sae saves as jumprelu), with `apply_b_dec_to_input` and `normalize_activations` honoured;
- EleutherAI sparsify, `cfg.json` + `sae.safetensors`: topk;
- dictionary_learning, `config.json` + `ae.pt`: AutoEncoder (ReLU), AutoEncoderTopK,
  BatchTopKSAE (its inference threshold), JumpReluAutoEncoder.

Anything else (gated saes, transcoders, group-max, whitened inputs) is a one-line BadInput.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from service import errors
from service.compute.encode import Architecture, Encoder, Normalisation

SAELENS = ("cfg.json", "sae_weights.safetensors")
SPARSIFY = ("cfg.json", "sae.safetensors")
DICTIONARY_LEARNING = ("config.json", "ae.pt")


def load(folder: Path) -> Encoder:
    """The encoder of the checkpoint in `folder`; BadInput naming the folder if it is not one."""
    if not folder.is_dir():
        raise errors.BadInput(f"{folder}: expected a checkpoint folder")
    readers: list[tuple[tuple[str, str], Callable[[Path], Encoder]]] = [
        (SAELENS, _saelens),
        (SPARSIFY, _sparsify),
        (DICTIONARY_LEARNING, _dictionary_learning),
    ]
    for files, reader in readers:
        if all((folder / name).is_file() for name in files):
            try:
                encoder = reader(folder)
            except errors.ServiceError:
                raise
            except Exception as exc:  # a damaged file is one line naming the folder
                text = " ".join(str(exc).split())[:160] or type(exc).__name__
                raise errors.BadInput(f"{folder}: unreadable checkpoint ({text})") from None
            check(folder, encoder)
            return encoder
    nested = sorted(p.name for p in folder.iterdir() if (p / "cfg.json").is_file())
    if nested:
        raise errors.BadInput(
            f"{folder}: holds saes for several sites ({', '.join(nested[:5])}): pass one folder"
        )
    raise errors.BadInput(
        f"{folder}: expected an sae checkpoint: SAELens ({' + '.join(SAELENS)}),"
        f" sparsify ({' + '.join(SPARSIFY)}) or dictionary_learning"
        f" ({' + '.join(DICTIONARY_LEARNING)})"
    )


def _saelens(folder: Path) -> Encoder:
    from safetensors.torch import load_file

    cfg = _json(folder / "cfg.json")
    w = load_file(str(folder / "sae_weights.safetensors"))
    arch = str(cfg.get("architecture") or cfg.get("activation_fn_str") or "standard")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    architecture = {"standard": Architecture.relu, "relu": Architecture.relu}.get(arch)
    threshold, k = None, None
    if arch == "topk":
        architecture, k = Architecture.topk, int(cfg.get("k") or kwargs["k"])
    elif arch == "jumprelu":
        architecture = Architecture.jumprelu
        threshold = w["threshold"] if "threshold" in w else torch.exp(w["log_threshold"])
    if architecture is None:
        raise _unknown(folder, "SAELens", arch, "standard, topk, jumprelu")
    norm = str(cfg.get("normalize_activations") or "none")
    normalisation = {
        "none": Normalisation.none,
        "expected_average_only_in": Normalisation.scale,
        "constant_norm_rescale": Normalisation.constant_norm,
        "layer_norm": Normalisation.layer_norm,
    }.get(norm)
    if normalisation is None:
        raise errors.BadInput(
            f"{folder}/cfg.json: field 'normalize_activations': expected none,"
            f" expected_average_only_in, constant_norm_rescale or layer_norm, got {norm!r}"
        )
    scale = cfg.get("norm_scaling_factor")
    b_dec = w["b_dec"]
    return Encoder(
        architecture,
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        b_dec,
        b_dec if cfg.get("apply_b_dec_to_input", True) else torch.zeros_like(b_dec),
        k=k,
        threshold=threshold,
        normalisation=normalisation,
        input_scale=float(scale) if scale else math.nan,
        rescale_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        metadata={"format": "saelens", "architecture": arch, "hook": _hook(cfg)},
    )


def _hook(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    return str(hook) if hook else None


def _sparsify(folder: Path) -> Encoder:
    from safetensors.torch import load_file

    cfg = _json(folder / "cfg.json")
    w = load_file(str(folder / "sae.safetensors"))
    activation = str(cfg.get("activation", "topk"))
    if activation != "topk":
        raise _unknown(folder, "sparsify", activation, "topk")
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise errors.BadInput(
            f"{folder}/cfg.json: a sparsify transcoder or skip connection: expected an sae"
        )
    weight, b_dec = w["encoder.weight"], w["b_dec"]
    return Encoder(
        Architecture.topk,
        weight.T.contiguous(),
        w["encoder.bias"],
        w["W_dec"],
        b_dec,
        b_dec,
        k=int(cfg["k"]),
        metadata={"format": "sparsify", "architecture": "topk"},
    )


def _dictionary_learning(folder: Path) -> Encoder:
    config = _json(folder / "config.json")
    trainer = config.get("trainer", config)
    dict_class = str(trainer.get("dict_class", ""))
    state: dict[str, Tensor] = torch.load(folder / "ae.pt", map_location="cpu", weights_only=True)
    meta: dict[str, object] = {"format": "dictionary_learning", "architecture": dict_class}
    if dict_class in ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"):
        weight, dec = state["encoder.weight"], state["decoder.weight"]
        b_dec = state["bias"] if dict_class == "AutoEncoder" else state["b_dec"]
        encoder = Encoder(
            Architecture.relu,
            weight.T.contiguous(),
            state["encoder.bias"],
            dec.T.contiguous(),
            b_dec,
            b_dec,
            metadata=meta,
        )
        if dict_class == "AutoEncoderTopK":
            encoder.architecture = Architecture.topk
            encoder.k = int(state["k"]) if "k" in state else int(trainer["k"])
        elif dict_class == "BatchTopKSAE":
            # At inference a BatchTopK sae keeps what exceeds its learned threshold.
            encoder.architecture = Architecture.jumprelu
            encoder.threshold = state["threshold"].float().expand(encoder.d_sae).clone()
        return encoder
    if dict_class == "JumpReluAutoEncoder":
        b_dec = state["b_dec"]
        apply = bool(trainer.get("apply_b_dec_to_input", False))
        return Encoder(
            Architecture.jumprelu,
            state["W_enc"],
            state["b_enc"],
            state["W_dec"],
            b_dec,
            b_dec if apply else torch.zeros_like(b_dec),
            threshold=state["threshold"],
            metadata=meta,
        )
    raise _unknown(
        folder,
        "dictionary_learning",
        dict_class,
        "AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder",
    )


def _unknown(folder: Path, library: str, got: str, expected: str) -> errors.BadInput:
    return errors.BadInput(
        f"{folder}: unknown {library} architecture {got!r}: expected one of {expected}"
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise errors.BadInput(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise errors.BadInput(f"{path}: expected a JSON object")
    return data


def check(folder: Path, enc: Encoder) -> None:
    """Shapes agree and every weight is finite."""
    d_in, d_sae = enc.d_in, enc.d_sae
    expected = {
        "W_enc": (enc.W_enc, (d_in, d_sae)),
        "b_enc": (enc.b_enc, (d_sae,)),
        "W_dec": (enc.W_dec, (d_sae, d_in)),
        "b_dec": (enc.b_dec, (d_in,)),
    }
    if enc.threshold is not None:
        expected["threshold"] = (enc.threshold, (d_sae,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise errors.BadInput(
                f"{folder}: weight {name!r}: expected shape {list(shape)}, got {list(tensor.shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise errors.BadInput(f"{folder}: weight {name!r}: expected finite values")
    if enc.k is not None and not 0 < enc.k <= d_sae:
        raise errors.BadInput(f"{folder}: field 'k': expected 1..{d_sae}, got {enc.k}")
