"""Sae checkpoints: each library writes its own checkpoint, our encoder must agree with the
library's own encode within 1e-5 on random inputs; bad checkpoints are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from service import errors
from service.compute.encode import Architecture
from service.sources import checkpoints

D_IN, D_SAE = 24, 96
TOL = 1e-5


def _inputs(seed: int = 0, n: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=gen) * 3 + 0.5


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights and biases, so that every bias and threshold matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.3 if "b_" in name else 1))
            if "threshold" in name:
                param.copy_(torch.rand(param.shape, generator=gen) * 0.5)


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours >= 0).all()
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=TOL, rtol=TOL)
    assert (ours > 0).sum() > 0


# SAELens ------------------------------------------------------------------------------------


def _saelens(kind: str, **cfg: Any) -> Any:
    import sae_lens

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
    }
    sae_class, cfg_class = classes[kind]
    return sae_class(cfg_class(d_in=D_IN, d_sae=D_SAE, **cfg))


@pytest.mark.parametrize(
    ("kind", "cfg"),
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("standard", {"normalize_activations": "constant_norm_rescale"}),
        ("standard", {"normalize_activations": "layer_norm"}),
        ("topk", {"k": 7}),
        ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
    ],
)
def test_saelens_encode_matches_the_library(tmp_path: Path, kind: str, cfg: dict[str, Any]) -> None:
    sae = _saelens(kind, **cfg)
    _randomize(sae, seed=1)
    sae.save_model(tmp_path)
    encoder = checkpoints.load(tmp_path)
    assert (encoder.d_in, encoder.d_sae) == (D_IN, D_SAE)
    x = _inputs()
    with torch.no_grad():
        theirs = sae.encode(x)
    _close(encoder.encode(x), theirs)
    if kind == "topk":
        assert ((encoder.encode(x) > 0).sum(dim=1) <= 7).all()


def test_saelens_batchtopk_saves_as_jumprelu_and_matches(tmp_path: Path) -> None:
    import sae_lens

    training = sae_lens.BatchTopKTrainingSAE(
        sae_lens.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5)
    )
    _randomize(training, seed=2)
    with torch.no_grad():
        training.topk_threshold.fill_(0.7)
    training.save_inference_model(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "jumprelu"
    encoder = checkpoints.load(tmp_path)
    assert encoder.architecture is Architecture.jumprelu
    inference = sae_lens.SAE.load_from_disk(tmp_path)
    x = _inputs(3)
    with torch.no_grad():
        _close(encoder.encode(x), inference.encode(x))


# EleutherAI sparsify --------------------------------------------------------------------------


def test_sparsify_encode_matches_the_library(tmp_path: Path) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=6))
    _randomize(coder, seed=4)
    coder.save_to_disk(tmp_path)
    encoder = checkpoints.load(tmp_path)
    assert encoder.architecture is Architecture.topk and encoder.k == 6
    x = _inputs(5)
    with torch.no_grad():
        out = coder.encode(x)
    theirs = torch.zeros(len(x), D_SAE).scatter_(-1, out.top_indices, out.top_acts)
    _close(encoder.encode(x), theirs)


# dictionary_learning -------------------------------------------------------------------------
# The library does not install here (it pins nnsight and a CUDA torch), so these tests write its
# checkpoint layout (config.json + ae.pt state dict) and check against its encode definitions,
# transcribed from saprmarks/dictionary_learning (dictionary.py, trainers/top_k.py,
# trainers/batch_top_k.py).


def _linear(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen)


def _dl_checkpoint(folder: Path, dict_class: str, **extra: Any) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(6)
    if dict_class == "JumpReluAutoEncoder":
        state = {
            "W_enc": _linear(gen, D_IN, D_SAE),
            "b_enc": torch.randn(D_SAE, generator=gen) * 0.3,
            "W_dec": _linear(gen, D_SAE, D_IN),
            "b_dec": torch.randn(D_IN, generator=gen),
            "threshold": torch.rand(D_SAE, generator=gen),
        }
    else:
        state = {
            "encoder.weight": _linear(gen, D_SAE, D_IN),
            "encoder.bias": torch.randn(D_SAE, generator=gen) * 0.3,
            "decoder.weight": _linear(gen, D_IN, D_SAE),
        }
        bias = torch.randn(D_IN, generator=gen)
        if dict_class == "AutoEncoder":
            state["bias"] = bias
        else:
            state |= {
                "b_dec": bias,
                "k": torch.tensor(5, dtype=torch.int),
                "threshold": extra.get("threshold", torch.tensor(-1.0)),
            }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE, "k": 5}
    trainer.update({k: v for k, v in extra.items() if k != "threshold"})
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    return state


def _dl_reference(
    dict_class: str, s: dict[str, torch.Tensor], x: torch.Tensor, **extra: Any
) -> torch.Tensor:
    if dict_class == "AutoEncoder":
        return torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    if dict_class == "JumpReluAutoEncoder":
        if extra.get("apply_b_dec_to_input"):
            x = x - s["b_dec"]
        pre = x @ s["W_enc"] + s["b_enc"]
        return torch.relu(pre * (pre > s["threshold"]))
    post_relu = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    if dict_class == "BatchTopKSAE":  # inference: use_threshold=True
        return post_relu * (post_relu > s["threshold"])
    top = post_relu.topk(int(s["k"]), dim=-1, sorted=False)
    return torch.zeros_like(post_relu).scatter_(-1, top.indices, top.values)


@pytest.mark.parametrize(
    ("dict_class", "extra"),
    [
        ("AutoEncoder", {}),
        ("AutoEncoderTopK", {}),
        ("BatchTopKSAE", {"threshold": torch.tensor(0.8)}),
        ("JumpReluAutoEncoder", {}),
        ("JumpReluAutoEncoder", {"apply_b_dec_to_input": True}),
    ],
)
def test_dictionary_learning_encode_matches_its_definition(
    tmp_path: Path, dict_class: str, extra: dict[str, Any]
) -> None:
    state = _dl_checkpoint(tmp_path, dict_class, **extra)
    encoder = checkpoints.load(tmp_path)
    x = _inputs(7)
    _close(encoder.encode(x), _dl_reference(dict_class, state, x, **extra))


# bad checkpoints -----------------------------------------------------------------------------


def _one_line_error(folder: Path, *needles: str) -> None:
    with pytest.raises(errors.BadInput) as info:
        checkpoints.load(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    for needle in needles:
        assert needle in message, message


def test_unknown_architectures_are_clear_errors(tmp_path: Path) -> None:
    import sae_lens

    gated = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=D_IN, d_sae=D_SAE))
    gated.save_model(tmp_path / "gated")
    _one_line_error(tmp_path / "gated", "unknown SAELens architecture 'gated'")

    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=6, activation="groupmax"))
    coder.save_to_disk(tmp_path / "groupmax")
    _one_line_error(tmp_path / "groupmax", "unknown sparsify architecture 'groupmax'")

    _dl_checkpoint(tmp_path / "gdl", "AutoEncoder")
    config = json.loads((tmp_path / "gdl" / "config.json").read_text())
    config["trainer"]["dict_class"] = "GatedAutoEncoder"
    (tmp_path / "gdl" / "config.json").write_text(json.dumps(config))
    _one_line_error(tmp_path / "gdl", "unknown dictionary_learning architecture")


def test_damaged_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "missing", "expected a checkpoint folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "expected an sae checkpoint")

    sae = _saelens("standard")
    sae.save_model(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _one_line_error(tmp_path / "truncated", "unreadable checkpoint")

    sae.save_model(tmp_path / "shape")
    w = {n: t.clone() for n, t in sae.state_dict().items()}
    w["b_enc"] = torch.zeros(D_SAE + 1)
    save_file(w, str(tmp_path / "shape" / "sae_weights.safetensors"))
    _one_line_error(tmp_path / "shape", "weight 'b_enc'", f"expected shape [{D_SAE}]")

    sae.save_model(tmp_path / "nan")
    w = {n: t.clone() for n, t in sae.state_dict().items()}
    w["W_enc"][0, 0] = float("nan")
    save_file(w, str(tmp_path / "nan" / "sae_weights.safetensors"))
    _one_line_error(tmp_path / "nan", "weight 'W_enc'", "finite")

    sae.save_model(tmp_path / "json")
    (tmp_path / "json" / "cfg.json").write_text("{not json")
    _one_line_error(tmp_path / "json", "cfg.json", "unreadable JSON")

    sae.save_model(tmp_path / "whitened")
    cfg = json.loads((tmp_path / "whitened" / "cfg.json").read_text())
    cfg["normalize_activations"] = "covariance_whitening"
    (tmp_path / "whitened" / "cfg.json").write_text(json.dumps(cfg))
    _one_line_error(tmp_path / "whitened", "normalize_activations", "covariance_whitening")
