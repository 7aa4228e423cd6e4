"""`ingest --release R --sae-id ID`: saes of pretrained releases read offline from a local
Hugging Face cache laid out as the hub lays it out (models--OWNER--NAME/refs/main and
snapshots/<commit>/...), encodes checked against each format's own definition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
test-llama-scope:
  conversion_func: llama_scope
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
            ["--release", "test-llama-scope", "--sae-id", "l3r"],
            "its loader 'llama_scope' is not supported",
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
