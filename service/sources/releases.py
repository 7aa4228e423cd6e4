"""Pretrained releases: an sae named by release and id in SAELens's directory of pretrained saes,
its files read from the local Hugging Face cache (downloaded where a hub is reachable and
`HF_HUB_OFFLINE` is not set).

The directory (SAELens's `pretrained_saes.yaml`, read from the installed `sae_lens` package
without importing it, or any file of its shape named by `LATENT_TREES_RELEASES`) gives each
release's repository and loader, and each sae's path in it and Neuronpedia id. Loaders read:
SAELens's format (`cfg.json` + `sae_weights.safetensors`), Gemma Scope (`params.npz`: JumpReLU
with `W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`), Llama Scope (`hyperparams.json` +
`checkpoints/final.safetensors`, with its norm scaling factor) and dictionary_learning
(`config.json` + `ae.pt`). A repository that is not in the directory (e.g. a sparsify release)
is read as REPO with the sae's folder as its id.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service import errors
from service.compute.encode import Architecture, Encoder, Normalisation
from service.sources import checkpoints

# Loaders of SAELens's directory (`conversion_func`) read here; None is SAELens's own format.
LOADERS = (None, "gemma_2", "llama_scope", "dictionary_learning_1")


@dataclass(frozen=True)
class Release:
    """Where one pretrained sae lives."""

    release: str
    sae_id: str
    repo_id: str
    path: str  # the sae's folder in the repository
    loader: str | None
    neuronpedia_id: str | None
    norm_scaling_factor: float | None = None  # Llama Scope: what inputs are multiplied by


def directory_file(configured: Path | None) -> Path:
    """The directory of releases: the configured file, else SAELens's packaged one."""
    if configured is not None:
        if not configured.is_file():
            raise errors.BadInput(f"LATENT_TREES_RELEASES={configured}: no such file")
        return configured
    spec = importlib.util.find_spec("sae_lens")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pretrained_saes.yaml"
        if candidate.is_file():
            return candidate
    raise errors.BadInput(
        "--release needs SAELens's directory of pretrained saes: `pip install sae-lens`, or set"
        " LATENT_TREES_RELEASES to a file of its shape"
    )


def resolve(release: str, sae_id: str, directory: Path) -> Release:
    """Release `release`, sae `sae_id`, as the directory describes it (a repository id that is
    not in the directory is read as is, `sae_id` its folder)."""
    import yaml

    entries: dict[str, Any] = yaml.safe_load(directory.read_text()) or {}
    entry = entries.get(release)
    if entry is None:
        if "/" in release:  # a Hugging Face repository: sparsify and other layouts
            return Release(release, sae_id, release, sae_id.strip("/"), None, None)
        raise errors.BadInput(
            f"release {release!r}: not in the directory {directory} (nor a repository id"
            " OWNER/NAME)"
        )
    loader = entry.get("conversion_func")
    if loader not in LOADERS:
        raise errors.BadInput(
            f"release {release!r}: its loader {loader!r} is not supported (supported: SAELens"
            " format, gemma_2 (Gemma Scope), llama_scope, dictionary_learning_1)"
        )
    for sae in entry.get("saes") or []:
        if sae.get("id") == sae_id:
            return Release(
                release,
                sae_id,
                str(entry["repo_id"]),
                str(sae.get("path") or sae_id),
                loader,
                sae.get("neuronpedia"),
                sae.get("norm_scaling_factor"),
            )
    known = [str(s.get("id")) for s in entry.get("saes") or []]
    raise errors.BadInput(
        f"release {release!r}: no sae {sae_id!r} (it has {len(known)}, e.g. {', '.join(known[:3])})"
    )


def fetch(found: Release) -> Path:
    """The local folder of the sae's files: from the Hugging Face cache, else downloaded unless
    `HF_HUB_OFFLINE` is set."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f"{found.path}/*"]
    try:
        snapshot = snapshot_download(found.repo_id, allow_patterns=patterns, local_files_only=True)
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise errors.BadInput(
                f"release {found.release} sae {found.sae_id}: {found.repo_id} is not in the local"
                " Hugging Face cache and HF_HUB_OFFLINE is set: fetch it where a hub is reachable"
                f" (`hf download {found.repo_id} --include '{found.path}/*'`)"
            ) from None
        try:
            snapshot = snapshot_download(found.repo_id, allow_patterns=patterns)
        except Exception as exc:
            text = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise errors.BadInput(
                f"release {found.release} sae {found.sae_id}: download of {found.repo_id} failed"
                f" ({text})"
            ) from None
    folder = Path(snapshot) / found.path
    if not folder.is_dir():
        raise errors.BadInput(
            f"release {found.release} sae {found.sae_id}: {found.repo_id} has no folder"
            f" {found.path!r} in the cache"
        )
    return folder


def load(found: Release, folder: Path) -> Encoder:
    """The encoder of the sae in `folder`, read as its release's loader says."""
    if found.loader == "gemma_2":
        return _gemma_scope(folder)
    if found.loader == "llama_scope":
        return _llama_scope(folder, found.norm_scaling_factor)
    return checkpoints.load(folder)


def _gemma_scope(folder: Path) -> Encoder:
    """Gemma Scope's `params.npz`: JumpReLU, pre = x @ W_enc + b_enc (no decoder bias taken
    from the input), active where pre > threshold."""
    path = folder / "params.npz"
    if not path.is_file():
        raise errors.BadInput(f"{folder}: expected Gemma Scope's params.npz")
    try:
        with np.load(path) as npz:
            w = {k: torch.from_numpy(np.asarray(npz[k], np.float32)) for k in npz.files}
    except Exception as exc:
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise errors.BadInput(f"{path}: unreadable ({text})") from None
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in w]
    if missing:
        raise errors.BadInput(f"{path}: missing {', '.join(missing)}")
    encoder = Encoder(
        Architecture.jumprelu,
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        w["b_dec"],
        torch.zeros_like(w["b_dec"]),
        threshold=w["threshold"],
        metadata={"format": "gemma_scope", "architecture": "jumprelu"},
    )
    checkpoints.check(folder, encoder)
    return encoder


def _llama_scope(folder: Path, norm_scaling_factor: float | None) -> Encoder:
    """Llama Scope (`hyperparams.json` + `checkpoints/final.safetensors`) as SAELens loads it:
    JumpReLU on inputs multiplied by the release's norm scaling factor f, pre = x f @ W_enc +
    b_enc (no decoder bias taken from the input), one threshold for every latent: the
    checkpoint's `jump_relu_threshold` times sqrt(d_model) / its dataset's average input norm."""
    from safetensors.torch import load_file

    cfg_path, weights = folder / "hyperparams.json", folder / "checkpoints" / "final.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise errors.BadInput(
            f"{folder}: expected Llama Scope's hyperparams.json and checkpoints/final.safetensors"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
        d_in, d_sae = int(cfg["d_model"]), int(cfg["d_sae"])
        factor = d_in**0.5 / float(cfg["dataset_average_activation_norm"]["in"])
        threshold = float(cfg["jump_relu_threshold"]) * factor
        w = {k: v.to(torch.float32) for k, v in load_file(str(weights)).items()}
        encoder = Encoder(
            Architecture.jumprelu,
            w["encoder.weight"].T.contiguous(),
            w["encoder.bias"],
            w["decoder.weight"].T.contiguous(),
            w["decoder.bias"],
            torch.zeros(d_in),
            threshold=torch.full((d_sae,), threshold),
            normalisation=Normalisation.scale,
            input_scale=float(norm_scaling_factor) if norm_scaling_factor else factor,
            metadata={
                "format": "llama_scope",
                "architecture": "jumprelu",
                "hook": cfg.get("hook_point_in"),
            },
        )
    except errors.ServiceError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise errors.BadInput(f"{folder}: unreadable Llama Scope checkpoint ({text})") from None
    checkpoints.check(folder, encoder)
    return encoder
