"""Every bad input of SPEC.md section 5: one clear line, and the database exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from service import errors
from service.db import queries
from tests.conftest import Pipeline, run_cli, table_snapshot

T, D = 200, 8


def topk(rng: np.random.Generator, t: int = T, d: int = D, k: int = 2) -> dict[str, np.ndarray]:
    idx = np.stack([rng.choice(d, k, replace=False) for _ in range(t)]).astype(np.int32)
    return {"indices": idx, "values": rng.uniform(0.1, 1, (t, k)).astype(np.float32)}


@pytest.fixture
def family(pipeline: Pipeline, tmp_path: Path) -> Pipeline:
    """Family S with one sae (S/1, d_sae 8) on 200 tokens with token ids."""
    rng = np.random.default_rng(0)
    with pipeline.engine.begin() as conn:
        queries.create_family(conn, "S")
    np.savez(tmp_path / "ok.npz", **topk(rng), token_ids=np.arange(T), d_sae=np.int64(D))
    pipeline.ingest("S", tmp_path / "ok.npz")
    return pipeline


def _write(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(arrays, str(path))
    elif name.endswith(".npy"):
        np.save(path, next(iter(arrays.values())))
    else:
        np.savez(path, **arrays)
    return path


def _cases(tmp_path: Path) -> dict[str, tuple[Callable[[], Path], dict[str, object], str]]:
    rng = np.random.default_rng(1)
    good = topk(rng)
    ids = np.arange(T)

    def with_values(values: np.ndarray) -> Callable[[], Path]:
        return lambda: _write(
            tmp_path, "v.npz", indices=good["indices"], values=values, d_sae=np.int64(16)
        )

    neg = good["values"].copy()
    neg[5, 1] = -0.5
    nan = good["values"].copy()
    nan[7, 0] = np.nan
    inf = good["values"].copy()
    inf[9, 0] = np.inf
    twice = good["indices"].copy()
    twice[11, 1] = twice[11, 0]  # one latent twice in a token's top k
    csr_twice = np.ones(T + 1, np.int64)
    csr_twice[0] = 0
    csr_twice[51:] = 3  # token 50 lists latent 4 twice (sorted, as CSR usually is)
    truncated = tmp_path / "truncated.npz"
    return {
        "shape mismatch": (
            with_values(good["values"][:, :1]),
            {},
            "field 'values': expected the shape of indices [200, 2], got [200, 1]",
        ),
        "float indices": (
            lambda: _write(
                tmp_path,
                "f.npz",
                indices=good["indices"].astype(np.float32),
                values=good["values"],
                d_sae=np.int64(16),
            ),
            {},
            "field 'indices': expected integer dtype, got float32",
        ),
        "integer values": (
            with_values(good["values"].astype(np.int32) + 1),
            {},
            "field 'values': expected float dtype, got int32",
        ),
        "negative": (
            with_values(neg),
            {},
            "expected finite values >= 0, got negative -0.5 at token 5",
        ),
        "nan": (with_values(nan), {}, "got NaN at token 7"),
        "inf": (with_values(inf), {}, "got Inf at token 9"),
        "token count": (
            lambda: _write(tmp_path, "t.npz", **topk(rng, t=T - 1), d_sae=np.int64(16)),
            {},
            "expected 200 tokens (the token set of family 'S'), got 199",
        ),
        "token ids": (
            lambda: _write(
                tmp_path, "i.npz", **good, token_ids=ids[::-1].copy(), d_sae=np.int64(16)
            ),
            {},
            "field 'token_ids': expected the token set of family 'S'",
        ),
        "d_sae below an index": (
            lambda: _write(tmp_path, "d.npz", **good),
            {"d_sae": 4},
            "field 'indices': expected latent indices in [0, d_sae=4)",
        ),
        "no d_sae": (
            lambda: _write(tmp_path, "n.npz", **good),
            {},
            "no d_sae: store a 'd_sae' field or pass --d-sae",
        ),
        "duplicate d_sae": (
            lambda: _write(tmp_path, "dd.npz", **good, d_sae=np.int64(D)),
            {},
            "d_sae 8 is taken in this family by sae 'S/1'",
        ),
        "duplicate name": (
            lambda: _write(tmp_path, "dn.npz", **good, d_sae=np.int64(16)),
            {"name": "S/1"},
            "sae 'S/1' already exists",
        ),
        "bad name": (
            lambda: _write(tmp_path, "bn.npz", **good, d_sae=np.int64(16)),
            {"name": "T/2"},
            "sae name 'T/2': expected it to start with 'S/'",
        ),
        "unreadable": (
            lambda: (tmp_path / "junk.npz").write_bytes(b"not a zip") and tmp_path / "junk.npz",
            {"d_sae": 16},
            "junk.npz: unreadable or truncated file",
        ),
        "truncated": (
            lambda: (
                (
                    _write(tmp_path, "full.npz", **good, d_sae=np.int64(16)),
                    truncated.write_bytes((tmp_path / "full.npz").read_bytes()[:900]),
                )
                and truncated
            ),
            {},
            "truncated.npz: unreadable or truncated file",
        ),
        "truncated safetensors": (
            lambda: (
                (
                    _write(
                        tmp_path, "full.safetensors", **good, d_sae=np.array(16, dtype=np.int64)
                    ),
                    (tmp_path / "cut.safetensors").write_bytes(
                        (tmp_path / "full.safetensors").read_bytes()[:-100]
                    ),
                )
                and tmp_path / "cut.safetensors"
            ),
            {},
            "cut.safetensors: unreadable or truncated file",
        ),
        "missing file": (lambda: tmp_path / "nope.npz", {}, "nope.npz: no such file or directory"),
        "wrong arrays": (
            lambda: _write(tmp_path, "w.npz", foo=good["values"], bar=good["values"]),
            {},
            "expected top-k (indices, values), CSR (indptr, indices, values) or one dense array",
        ),
        "csr offsets": (
            lambda: _write(
                tmp_path,
                "c.npz",
                indptr=np.array([0, 3, 2]),
                indices=np.zeros(2, np.int32),
                values=np.ones(2, np.float32),
                d_sae=np.int64(16),
            ),
            {},
            "field 'indptr': expected non-decreasing offsets from 0 to nnz=2",
        ),
        "latent twice in a token (top-k)": (
            lambda: _write(
                tmp_path, "tw.npz", indices=twice, values=good["values"], d_sae=np.int64(16)
            ),
            {},
            "field 'indices': expected each latent at most once per token",
        ),
        "latent twice in a token (CSR)": (
            lambda: _write(
                tmp_path,
                "ctw.npz",
                indptr=csr_twice,
                indices=np.array([1, 4, 4], np.int32),
                values=np.ones(3, np.float32),
                d_sae=np.int64(16),
            ),
            {},
            "field 'indices': expected each latent at most once per token",
        ),
        "dense negative": (
            lambda: _write(tmp_path, "dense.npy", a=-np.ones((T, 16), np.float32)),
            {},
            "field 'activations': expected finite values >= 0, got negative -1 at token 0",
        ),
        "unknown family": (
            lambda: _write(tmp_path, "u.npz", **good, d_sae=np.int64(16)),
            {"family": "Nope"},
            "unknown family 'Nope'",
        ),
    }


CASE_NAMES = list(_cases(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_changes_nothing(family: Pipeline, tmp_path: Path, case: str) -> None:
    make, kwargs, expected = _cases(tmp_path)[case]
    path = make()
    fam = str(kwargs.pop("family", "S"))
    with family.engine.connect() as conn:
        before = table_snapshot(conn)
    store_before = sorted(p.name for p in (family.config.home / "store" / "activations").iterdir())
    with pytest.raises(errors.ServiceError) as info:
        family.ingest(fam, path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    with family.engine.connect() as conn:
        assert table_snapshot(conn) == before
    after = sorted(p.name for p in (family.config.home / "store" / "activations").iterdir())
    assert after == store_before
    assert not any((family.config.home / "store" / "tmp").iterdir())


def test_cli_bad_inputs_print_one_line(family: Pipeline, tmp_path: Path) -> None:
    env = family.env()
    cases = [
        (["family", "create", "S"], "latent-trees: error: family 'S' already exists"),
        (["tree", "S/1/99"], "latent-trees: error: unknown label 'S/1/99'"),
        (["tree", "S/1/0", "--threshold", "-1"], "latent-trees: error: --threshold -1.0"),
        (
            ["ingest", "Nope", "--activations", str(tmp_path / "ok.npz")],
            "latent-trees: error: unknown family 'Nope'",
        ),
    ]
    with family.engine.connect() as conn:
        before = table_snapshot(conn)
    for args, expected in cases:
        proc = run_cli(*args, env=env, check=False)
        assert proc.returncode == 1, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), (args, proc.stderr)
    with family.engine.connect() as conn:
        assert table_snapshot(conn) == before


def test_more_bad_inputs_print_one_line(family: Pipeline, tmp_path: Path) -> None:
    """Issue 12, item 4: what used to end in a traceback, a box or a wrong message."""
    env = family.env()
    ok = str(tmp_path / "ok.npz")
    zero = _write(tmp_path, "zero.npy", a=np.zeros((T, 0), np.float32))
    cases = [
        (["ingest", "S", "--activations", ok, "--d-sae", "3000000000"], 1, "at most 2,147,483,647"),
        (["ingest", "S", "--activations", ok, "--d-sae", "2000000000"], 1, "GiB, more than half"),
        (["ingest", "S", "--activations", str(zero)], 1, "expected at least 1 latent, got 0"),
        (["db", "reader", "pg_monitor"], 1, "reserved by PostgreSQL"),
        (["ingest", "S", "--bogus"], 2, "latent-trees ingest: No such option: --bogus"),
        (["tree"], 2, "latent-trees tree: Missing argument 'label'"),
        (["tree", "S/1/0", "--threshold", "inf"], 1, "--threshold inf: expected a finite"),
        (["export", "edges", "-o", "-", "--min-score", "nan"], 1, "--min-score nan: expected"),
    ]
    with family.engine.connect() as conn:
        before = table_snapshot(conn)
    for args, code, expected in cases:
        proc = run_cli(*args, env=env, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("latent-trees: error: "), (args, lines)
        assert expected in lines[0], (args, lines)
    with family.engine.connect() as conn:
        assert table_snapshot(conn) == before


def test_serve_on_a_busy_port_is_one_line(family: Pipeline) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), env=family.env(), check=False, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"latent-trees: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
