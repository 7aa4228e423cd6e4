"""`ingest --release R --sae-id ID`: saes of pretrained releases read offline from a local
Hugging Face cache laid out as the hub lays it out (models--OWNER--NAME/refs/main and
snapshots/<commit>/...), encodes checked against each format's own definition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from service import families
from service.sources import releases
from tests.conftest import Pipeline, run_cli
from tests.jobs.test_checkpoints import D_IN, _inputs, _topk_sae

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DIRECTORY = """
test-gemma-scope:
  conversion_func: gemma_2
  model: test-model
  repo_id: google/gemma-scope-test
  saes:
  - id: layer_3/width_32/average_l0_5
    path: layer_3/width_32/average_l0_5
    neuronpedia: test-model/3-gemmascope-res-32
test-saelens:
  conversion_func: null
  repo_id: someone/saelens-test
  saes:
  - id: blocks.3.hook_resid_post
    path: blocks.3.hook_resid_post
test-other-loader:
  conversion_func: goodfire
  repo_id: fnlp/test
  saes:
  - id: l3r
    path: L3R
"""


def snapshot(cache: Path, repo_id: str) -> Path:
    """The folder of a repository's cached snapshot, as huggingface_hub lays it out."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def gemma_scope_params(folder: Path, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(d_sae, D_IN)).astype(np.float32)
    params = {
        "W_enc": (w_dec.T * 0.5).astype(np.float32),
        "W_dec": w_dec,
        "b_enc": rng.normal(scale=0.1, size=d_sae).astype(np.float32),
        "b_dec": rng.normal(scale=0.5, size=D_IN).astype(np.float32),
        "threshold": rng.uniform(0.5, 1.5, d_sae).astype(np.float32),
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **params)
    return params


@pytest.fixture
def hub(tmp_path: Path) -> dict[str, str]:
    """A local cache and directory, offline: the environment the CLI runs in."""
    cache = tmp_path / "hub"
    (tmp_path / "directory.yaml").write_text(DIRECTORY)
    return {
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "LATENT_TREES_RELEASES": str(tmp_path / "directory.yaml"),
    }


def test_gemma_scope_release_from_the_cache(
    pipeline: Pipeline, tmp_path: Path, hub: dict[str, str]
) -> None:
    inputs = _inputs(tmp_path)
    families.create_from_inputs(pipeline.engine, pipeline.config, "G", inputs, "float32")
    path = "layer_3/width_32/average_l0_5"
    params = gemma_scope_params(
        snapshot(Path(hub["HF_HUB_CACHE"]), "google/gemma-scope-test") / path, 32
    )
    env = pipeline.env(**hub)
    out = run_cli("ingest", "G", "--release", "test-gemma-scope", "--sae-id", path, env=env).stdout
    assert "sae G/1: d_sae 32" in out
    # Gemma Scope's definition: pre = x @ W_enc + b_enc, active where pre > threshold.
    x = np.load(inputs)["inputs"].astype(np.float64)
    pre = x @ params["W_enc"].astype(np.float64) + params["b_enc"]
    acts = np.where(pre > params["threshold"], np.maximum(pre, 0), 0)
    rows = pipeline.sql("SELECT idx, max_act, n_active FROM latent ORDER BY idx")
    assert [r.n_active for r in rows] == list((acts > 0).sum(axis=0))
    np.testing.assert_allclose([r.max_act for r in rows], acts.max(axis=0), rtol=1e-5)
    source = pipeline.sql("SELECT source FROM sae")[0][0]
    assert source["neuronpedia_id"] == "test-model/3-gemmascope-res-32"  # the sae's link
    assert (source["release"], source["format"]) == ("test-gemma-scope", "gemma_scope")


def test_saelens_release_and_a_repository_read_as_is(
    pipeline: Pipeline, tmp_path: Path, hub: dict[str, str]
) -> None:
    inputs = _inputs(tmp_path)
    families.create_from_inputs(pipeline.engine, pipeline.config, "S", inputs, "float32")
    cache = Path(hub["HF_HUB_CACHE"])
    _topk_sae(snapshot(cache, "someone/saelens-test") / "blocks.3.hook_resid_post", 24)
    _topk_sae(snapshot(cache, "someone/other") / "layers.3", 48, seed=1)
    env = pipeline.env(**hub)
    run_cli(
        "ingest", "S", "--release", "test-saelens", "--sae-id", "blocks.3.hook_resid_post", env=env
    )
    run_cli("ingest", "S", "--release", "someone/other", "--sae-id", "layers.3", env=env)
    assert [tuple(r) for r in pipeline.sql("SELECT name, d_sae FROM sae ORDER BY d_sae")] == [
        ("S/1", 24),
        ("S/2", 48),
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--release", "test-gemma-scope", "--sae-id", "layer_3/width_32/average_l0_5"],
            "not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
        ),
        (["--release", "nope", "--sae-id", "x"], "release 'nope': not in the directory"),
        (["--release", "test-gemma-scope", "--sae-id", "layer_9"], "no sae 'layer_9'"),
        (
            ["--release", "test-other-loader", "--sae-id", "l3r"],
            "its loader 'goodfire' is not supported",
        ),
        (["--release", "test-saelens"], "--release and --sae-id go together"),
    ],
)
def test_release_errors_are_one_line(
    pipeline: Pipeline, tmp_path: Path, hub: dict[str, str], args: list[str], error: str
) -> None:
    families.create_from_inputs(pipeline.engine, pipeline.config, "G", _inputs(tmp_path), "float32")
    bad = run_cli("ingest", "G", *args, env=pipeline.env(**hub), check=False)
    assert bad.returncode != 0 and error in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert pipeline.sql("SELECT count(*) FROM sae")[0][0] == 0


def test_saelens_directory_resolves_gemma_scope() -> None:
    found = releases.resolve(
        "gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82", releases.directory_file(None)
    )
    assert (found.repo_id, found.path, found.loader) == (
        "google/gemma-scope-2b-pt-res",
        "layer_12/width_16k/average_l0_82",
        "gemma_2",
    )


LLAMA_SCOPE = (
    "llama_scope_lxr_8x",
    "l0r_8x",
    "fnlp/Llama3_1-8B-Base-LXR-8x",
    "Llama3_1-8B-Base-L0R-8x",
)
REFERENCE = """
import sys, numpy as np, torch
from sae_lens import SAE
sae = SAE.from_pretrained(sys.argv[1], sys.argv[2], device="cpu", dtype="float32")
x = torch.from_numpy(np.load(sys.argv[3])["inputs"]).float()
np.save(sys.argv[4], sae.encode(x).detach().numpy())
"""


def test_llama_scope_release_encodes_as_saelens_loads_it(
    pipeline: Pipeline, tmp_path: Path, hub: dict[str, str]
) -> None:
    from safetensors.torch import save_file

    release, sae_id, repo_id, path = LLAMA_SCOPE
    folder = snapshot(Path(hub["HF_HUB_CACHE"]), repo_id) / path
    (folder / "checkpoints").mkdir(parents=True)
    gen = torch.Generator().manual_seed(3)
    d_sae, avg_norm = 32, 0.07
    (folder / "hyperparams.json").write_text(
        json.dumps(
            {
                "d_model": D_IN,
                "d_sae": d_sae,
                "jump_relu_threshold": 0.05,
                "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
                "hook_point_in": "blocks.0.hook_resid_post",
                "hook_point_out": "blocks.0.hook_resid_post",
                "norm_activation": "dataset-wise",
                "act_fn": "jumprelu",
            }
        )
    )
    save_file(
        {
            "encoder.weight": torch.randn(d_sae, D_IN, generator=gen) * 0.05,
            "encoder.bias": torch.randn(d_sae, generator=gen) * 0.1,
            "decoder.weight": torch.randn(D_IN, d_sae, generator=gen),
            "decoder.bias": torch.randn(D_IN, generator=gen) * 0.1,
        },
        str(folder / "checkpoints" / "final.safetensors"),
    )
    inputs = _inputs(tmp_path)
    families.create_from_inputs(pipeline.engine, pipeline.config, "L", inputs, "float32")
    env = {k: v for k, v in pipeline.env(**hub).items() if k != "LATENT_TREES_RELEASES"}
    run_cli("ingest", "L", "--release", release, "--sae-id", sae_id, env=env)
    # The reference: SAELens loading the same files from the same cache, offline.
    out = tmp_path / "reference.npy"
    subprocess.run(
        [sys.executable, "-c", REFERENCE, release, sae_id, str(inputs), str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    acts = np.load(out).astype(np.float64)
    assert 0 < (acts > 0).mean() < 0.9  # some latents fire, not all
    rows = pipeline.sql("SELECT idx, max_act, n_active FROM latent ORDER BY idx")
    assert [r.n_active for r in rows] == list((acts > 0).sum(axis=0))
    np.testing.assert_allclose([r.max_act for r in rows], acts.max(axis=0), rtol=1e-4)
    source = pipeline.sql("SELECT source FROM sae")[0][0]
    assert source["format"] == "llama_scope"
    assert source["neuronpedia_id"] == "llama3.1-8b/0-llamascope-res-32k"


def test_sparsify_and_dictionary_learning_releases_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from sparsify import SparseCoder, SparseCoderConfig

    from tests.unit import test_checkpoints as unit

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    directory = tmp_path / "directory.yaml"
    directory.write_text(
        "test-dl:\n  conversion_func: dictionary_learning_1\n  repo_id: someone/dl-test\n"
        "  saes:\n  - id: resid_3/trainer_0\n    path: resid_3/trainer_0\n"
    )
    # A sparsify release: a repository not in the directory, read as is.
    coder = SparseCoder(unit.D_IN, SparseCoderConfig(num_latents=unit.D_SAE, k=6))
    unit._randomize(coder, seed=4)
    coder.save_to_disk(snapshot(cache, "EleutherAI/sae-test") / "layers.3")
    found = releases.resolve("EleutherAI/sae-test", "layers.3", directory)
    encoder = releases.load(found, releases.fetch(found))
    x = unit._inputs(5)
    with torch.no_grad():
        out = coder.encode(x)
    theirs = torch.zeros(len(x), unit.D_SAE).scatter_(-1, out.top_indices, out.top_acts)
    unit._close(encoder.encode(x), theirs)
    # A dictionary_learning release of the directory.
    state = unit._dl_checkpoint(
        snapshot(cache, "someone/dl-test") / "resid_3/trainer_0", "AutoEncoderTopK"
    )
    found = releases.resolve("test-dl", "resid_3/trainer_0", directory)
    encoder = releases.load(found, releases.fetch(found))
    unit._close(encoder.encode(x), unit._dl_reference("AutoEncoderTopK", state, x))
