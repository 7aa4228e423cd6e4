"""Engine benchmark on hierarchical synthetic activations, against the baselines a user would
write, every method checked against a float64 reference on a sample of parent latents.

Activations: per token, L0 child latents drawn from a Zipf-like frequency distribution (a latent
once per token); each child's parent is the latent it split from (child // split), 10% noise.
The engine runs as a job runs it: latent statistics given (they are stored at ingest).

    python -m bench.engine                 # CPU: 1k -> 4k (100k tokens, L0 32) and 4k -> 16k
                                           # (200k, L0 64): engine, torch path, scipy, dense
    python -m bench.engine --cases scale   # CPU: 1k -> 4k ... 262k -> 1M at 200k tokens, L0 64,
                                           # one process per case (its own peak memory)
    python -m bench.engine --cases gpu     # GPU: 16k -> 65k at 1M and 10M tokens, 65k -> 262k and
                                           # 262k -> 1M at 1M (L0 64), dense TF32 baseline where
                                           # it fits, checkpoint encode throughput
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from service.compute import chunks, device, engine, layout, scores, stats

FLOOR = scores.EdgeParams().store_floor
TOL = 1e-5


@dataclass(frozen=True)
class Case:
    d_parent: int
    d_child: int
    n_tokens: int
    l0: int

    @property
    def name(self) -> str:
        return f"{_k(self.d_parent)} -> {_k(self.d_child)}, {self.n_tokens:,} tokens, L0 {self.l0}"


def _k(d: int) -> str:
    return f"{d // 1024}k" if d >= 1024 else str(d)


CASES = {
    "smoke": [Case(256, 1024, 20_000, 16)],  # seconds: checks that every method runs
    "cpu": [Case(1024, 4096, 100_000, 32), Case(4096, 16384, 200_000, 64)],
    # The issue's four widths, then SPEC.md section 6's widest pair (262k -> 1M).
    "scale": [Case(1024 << (2 * i), 4096 << (2 * i), 200_000, 64) for i in range(5)],
    "gpu": [
        Case(16384, 65536, 1_000_000, 64),
        Case(16384, 65536, 10_000_000, 64),
        Case(65536, 262144, 1_000_000, 64),
        Case(262144, 1 << 20, 1_000_000, 64),
    ],
}


def synthetic(case: Case, seed: int = 0) -> tuple[chunks.CsrSource, chunks.CsrSource]:
    """Parent and child activations (CSR on the CPU); generated with torch on the GPU when
    there is one (10M tokens x L0 64 is 640M entries)."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=dev).manual_seed(seed)
    ranks = torch.randperm(case.d_child, device=dev, generator=gen)
    zipf = 1.0 / (ranks.to(torch.float64) + 1.0) ** 1.1
    probs = (zipf / zipf.sum()).to(torch.float32)
    split = case.d_child // case.d_parent
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("pc", "pi", "pv", "cc", "ci", "cv")}
    step = 1 << 18
    for s in range(0, case.n_tokens, step):
        n = min(step, case.n_tokens - s)
        idx = torch.multinomial(probs, n * case.l0, replacement=True, generator=gen)
        idx = idx.view(n, case.l0).sort(dim=1).values
        val = torch.rand(n, case.l0, device=dev, generator=gen) * 4 + 0.1
        par = idx // split
        noise = torch.rand(n, case.l0, device=dev, generator=gen) < 0.1
        par = torch.where(noise, torch.randint_like(par, case.d_parent, generator=gen), par)
        par, order = par.sort(dim=1, stable=True)
        pv = torch.gather(val, 1, order) * (
            0.8 + 0.4 * torch.rand(n, case.l0, device=dev, generator=gen)
        )
        for prefix, i, v in (("p", par, pv), ("c", idx, val)):
            keep = torch.ones_like(i, dtype=torch.bool)
            keep[:, 1:] = i[:, 1:] != i[:, :-1]  # a latent once per token
            parts[prefix + "c"].append(keep.sum(1).cpu())
            parts[prefix + "i"].append(i[keep].to(torch.int32).cpu())
            parts[prefix + "v"].append(v[keep].cpu())

    def csr(prefix: str, d: int) -> chunks.CsrSource:
        counts = torch.cat(parts[prefix + "c"])
        indptr = torch.zeros(case.n_tokens + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=indptr[1:])
        return chunks.CsrSource(
            indptr, torch.cat(parts[prefix + "i"]), torch.cat(parts[prefix + "v"]), d
        )

    return csr("p", case.d_parent), csr("c", case.d_child)


@dataclass
class Run:
    """One method's figures on one case."""

    method: str
    seconds: float
    n_coactivations: int
    edges: scores.Edges | None
    note: str = ""
    n_pairs: int | None = None

    @property
    def rate(self) -> float:
        return self.n_coactivations / self.seconds if self.seconds else float("nan")


def run_engine(
    parent: chunks.CsrSource,
    child: chunks.CsrSource,
    st: tuple[stats.LatentStats, stats.LatentStats],
    backend: str,
    dev: torch.device,
) -> Run:
    result = engine.score_pair(
        parent, child, device=dev, backend=backend, parent_stats=st[0], child_stats=st[1]
    )
    label = f"engine ({result.backend})"
    note = f"{len(result.blocks)} blocks"
    return Run(label, result.seconds, result.n_coactivations, result.edges, note, result.n_pairs)


def run_scipy(
    parent: chunks.CsrSource, child: chunks.CsrSource, st: tuple[stats.LatentStats, ...]
) -> Run:
    """What a user writes: the four sums as sparse products A.T @ B, then every nonzero scored."""
    import scipy.sparse as sp

    def matrix(src: chunks.CsrSource, values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(
            (values, src.indices.numpy(), src.indptr.numpy()), shape=(src.n_tokens, src.d_sae)
        )

    a_v = parent.values.numpy().astype(np.float64)
    b_v = child.values.numpy().astype(np.float64)
    started = time.perf_counter()
    a, b = matrix(parent, a_v), matrix(child, b_v)
    a_on, b_on = matrix(parent, np.ones_like(a_v)), matrix(child, np.ones_like(b_v))
    products = [a.T @ b, a.multiply(a).T @ b_on, a_on.T @ b.multiply(b), a_on.T @ b_on]
    ab, aa, bb, n = (m.tocsr() for m in products)
    for m in (ab, aa, bb, n):
        m.sort_indices()  # the same co-active pattern in all four: their data align
    p = np.repeat(np.arange(ab.shape[0]), np.diff(ab.indptr))
    edges = scores.Edges.from_sums(
        torch.from_numpy(p.astype(np.int64)),
        torch.from_numpy(ab.indices.astype(np.int64)),
        torch.from_numpy(np.stack([ab.data, aa.data, bb.data, n.data])),
        st[0],
        st[1],
    )
    edges = scores.finalize(edges, scores.EdgeParams())
    seconds = time.perf_counter() - started
    return Run("scipy A.T @ B x4", seconds, int(n.sum()), edges, "", int(n.nnz))


def run_dense(
    parent: chunks.CsrSource, child: chunks.CsrSource, dev: torch.device, n_tokens: int
) -> Run | None:
    """The four sums as dense matmuls (TF32 on a GPU) over the first `n_tokens` tokens,
    extrapolated to all of them; None when the d_parent x d_child sums do not fit."""
    out_bytes = 4 * parent.d_sae * child.d_sae * 4
    chunk = 8192
    if out_bytes + 2 * chunk * (parent.d_sae + child.d_sae) * 4 > engine.default_budget(dev):
        return None
    torch.backends.cuda.matmul.allow_tf32 = True
    sums = torch.zeros(4, parent.d_sae, child.d_sae, device=dev)
    _sync(dev)
    started = time.perf_counter()
    for s in range(0, n_tokens, chunk):
        a = _dense(parent, s, min(chunk, n_tokens - s), dev)
        b = _dense(child, s, min(chunk, n_tokens - s), dev)
        ma, mb = (a > 0).float(), (b > 0).float()
        sums[0] += a.T @ b
        sums[1] += (a * a).T @ mb
        sums[2] += ma.T @ (b * b)
        sums[3] += ma.T @ mb
    _sync(dev)
    seconds = (time.perf_counter() - started) * parent.n_tokens / n_tokens
    note = "" if n_tokens == parent.n_tokens else f"from {n_tokens:,} tokens"
    return Run(
        "dense matmul x4" + (" (TF32)" if dev.type == "cuda" else ""), seconds, 0, None, note
    )


def _dense(src: chunks.CsrSource, start: int, n: int, dev: torch.device) -> torch.Tensor:
    lo, hi = int(src.indptr[start]), int(src.indptr[start + n])
    rows = torch.repeat_interleave(
        torch.arange(n), (src.indptr[start + 1 : start + n + 1] - src.indptr[start : start + n])
    )
    out = torch.zeros(n, src.d_sae, device=dev)
    # index_put_ with accumulate: a latent repeated within a token adds, never overwrites.
    out.index_put_(
        (rows.to(dev), src.indices[lo:hi].long().to(dev)),
        src.values[lo:hi].to(dev),
        accumulate=True,
    )
    return out


def check(
    parent: chunks.CsrSource,
    child: chunks.CsrSource,
    st: tuple[stats.LatentStats, stats.LatentStats],
    edges: scores.Edges,
    sample: np.ndarray,
) -> str:
    """Compare a method's edges of the sampled parents with a float64 brute force: every
    reported pair's parts within 1e-5, and every pair above the floor reported."""
    p_rows, c_rows = layout.token_major(parent), layout.token_major(child)
    bad = missing = 0
    by_parent = {int(p): i for i, p in enumerate(sample)}
    got: dict[tuple[int, int], np.ndarray] = {}
    for i in torch.nonzero(torch.isin(edges.parent, torch.from_numpy(sample))).ravel().tolist():
        got[(int(edges.parent[i]), int(edges.child[i]))] = np.array(
            [
                float(edges.masked_cos[i]),
                float(edges.masked_cos_parent[i]),
                float(edges.max_ratio[i]),
                float(edges.score[i]),
            ]
        )
    for p in by_parent:
        block = layout.latent_major(p_rows, p, p + 1)
        ab: dict[int, list[float]] = {}
        for t, a in zip(
            block.tokens.tolist(), block.values.astype(np.float64).tolist(), strict=True
        ):
            lo, hi = c_rows.indptr[t], c_rows.indptr[t + 1]
            for c, b in zip(
                c_rows.indices[lo:hi].tolist(),
                c_rows.values[lo:hi].astype(np.float64).tolist(),
                strict=True,
            ):
                s = ab.setdefault(c, [0.0, 0.0, 0.0])
                s[0] += a * b
                s[1] += a * a
                s[2] += b * b
        for c, (sab, saa, sbb) in ab.items():
            mc = sab / math.sqrt(saa * float(st[1].sum_sq[c]))
            mcp = sab / math.sqrt(float(st[0].sum_sq[p]) * sbb)
            ratio = float(st[1].max_act[c]) / float(st[0].max_act[p])
            want = np.array([mc, mcp, ratio, mc * ratio])
            have = got.get((p, c))
            if have is not None and not np.allclose(have, want, rtol=TOL, atol=TOL):
                bad += 1
            if have is None and (mc * ratio > FLOOR + TOL or max(mc, mcp) > FLOOR + TOL):
                missing += 1
    return "exact" if bad == missing == 0 else f"{bad} wrong, {missing} missing"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(case: Case, dev: torch.device, methods: list[str], baseline_tokens: int) -> list[dict]:
    """Every method on one case: a row each, checked on 16 sampled parents."""
    parent, child = synthetic(case)
    st = (
        stats.latent_stats(parent, device=str(dev)),
        stats.latent_stats(child, device=str(dev)),
    )
    sample = np.random.default_rng(1).choice(case.d_parent, 16, replace=False)
    runs: dict[str, Callable[[], Run | None]] = {
        "numba": lambda: run_engine(parent, child, st, "numba", dev),
        "triton": lambda: run_engine(parent, child, st, "triton", dev),
        "torch": lambda: run_engine(parent, child, st, "torch", dev),
        "scipy": lambda: run_scipy(parent, child, st),
        "dense": lambda: run_dense(parent, child, dev, min(case.n_tokens, baseline_tokens)),
    }
    rows = []
    for method in methods:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        run = runs[method]()
        if run is None:
            rows.append({"case": case.name, "method": method, "note": "does not fit"})
            continue
        rows.append(
            {
                "case": case.name,
                "method": run.method,
                "seconds": run.seconds,
                "coactivations": run.n_coactivations,
                "pairs": run.n_pairs,
                "rate": run.rate,
                "edges": len(run.edges) if run.edges is not None else None,
                "per_child": len(run.edges) / case.d_child if run.edges is not None else None,
                "peak_gib": _peak(dev),
                "check": check(parent, child, st, run.edges, sample)
                if run.edges is not None
                else "-",
                "note": run.note,
            }
        )
    return rows


def encode_rows(dev: torch.device) -> list[dict]:
    """Checkpoint encode throughput (bf16 on a GPU): tokens/s and the fraction of bf16 peak."""
    from service.compute import encode

    rows = []
    d_in, tokens = 2304, 1 << 16
    for d_sae in (16384, 65536, 262144):
        gen = torch.Generator(device=dev).manual_seed(0)
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        w = torch.randn(d_in, d_sae, device=dev, generator=gen, dtype=dtype) / d_in**0.5
        enc = encode.Encoder(
            encode.Architecture.topk,
            w,
            torch.zeros(d_sae, device=dev, dtype=dtype),
            w.T.contiguous(),
            torch.zeros(d_in, device=dev, dtype=dtype),
            torch.zeros(d_in, device=dev, dtype=dtype),
            k=64,
        )
        x = torch.randn(4096, d_in, device=dev, generator=gen, dtype=dtype)
        quality = encode.Reconstruction()
        encode.encode_chunk(enc, x, 0, quality)  # warm-up
        _sync(dev)
        started = time.perf_counter()
        for start in range(0, tokens, 4096):
            encode.encode_chunk(enc, x, start, quality)
        _sync(dev)
        seconds = time.perf_counter() - started
        flops = 2 * 2 * tokens * d_in * d_sae  # encode and decode matmuls
        peak = 989e12 if dev.type == "cuda" else float("nan")  # H100 SXM dense bf16
        rows.append(
            {
                "case": f"encode d_in {d_in} -> {_k(d_sae)} (top-k 64, {dtype})".replace(
                    "torch.", ""
                ),
                "tokens_per_s": tokens / seconds,
                "tflops": flops / seconds / 1e12,
                "of_peak": flops / seconds / peak,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=sorted(CASES), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baseline-tokens", type=int, default=20_000)
    parser.add_argument("--one", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--methods", type=str, default=None)
    args = parser.parse_args()
    dev = device.resolve(args.device)
    if args.one:  # a child process measuring one case
        case = Case(**json.loads(args.one))
        kernels = [m for m in args.methods.split(",") if m in ("numba", "triton")]
        measure(Case(64, 256, 5_000, 8), dev, kernels, 1000)  # compile (or load) them first
        for row in measure(case, dev, args.methods.split(","), args.baseline_tokens):
            print(json.dumps(row))
        return
    which = args.cases or ("gpu" if dev.type == "cuda" else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    import numba

    print(
        f"device: {name}, torch {torch.__version__}, numba {numba.__version__},"
        f" {numba.get_num_threads()} threads"
    )
    default_methods = {
        "smoke": "numba,torch,scipy,dense",
        "cpu": "numba,torch,scipy,dense",
        "scale": "numba",
        "gpu": "triton,torch,dense",
    }
    methods = args.methods or default_methods[which]
    print(
        "| case | method | seconds | co-activations | per second | co-active pairs "
        "| edges per child | peak memory (GiB) | vs float64 (16 parents) | ratio | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first: float | None = None
    for case in CASES[which]:
        # One process per case: its own peak memory, nothing left over from the last case.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.engine",
                "--one",
                json.dumps(asdict(case)),
                "--methods",
                methods,
                "--device",
                str(dev.type),
                "--baseline-tokens",
                str(args.baseline_tokens),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"| {case.name} | failed | {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        engine_s = rows[0].get("seconds")
        if which == "scale" and first is None:
            first = engine_s
        for row in rows:
            if "seconds" not in row:
                print(f"| {row['case']} | {row['method']} | {row['note']} ||||||||")
                continue
            if which == "scale":
                ratio = f"{row['seconds'] / first:.2f}x the smallest" if first else "-"
            elif row is rows[0]:
                ratio = "1"
            else:
                ratio = f"engine {row['seconds'] / engine_s:.1f}x faster"
            per_child = f"{row['per_child']:.1f}" if row["per_child"] is not None else "-"
            pairs = f"{row['pairs']:.3g}" if row["pairs"] is not None else "-"
            print(
                f"| {row['case']} | {row['method']} | {row['seconds']:.2f} "
                f"| {row['coactivations']:.3g} | {row['rate']:.3g} | {pairs} | {per_child} "
                f"| {row['peak_gib']:.2f} | {row['check']} | {ratio} | {row['note']} |"
            )
    if which == "gpu":
        print()
        print("| encode | tokens/s | TFLOP/s | of bf16 peak |")
        print("|---|---|---|---|")
        for row in encode_rows(dev):
            print(
                f"| {row['case']} | {row['tokens_per_s']:.3g} | {row['tflops']:.1f} "
                f"| {row['of_peak']:.1%} |"
            )


if __name__ == "__main__":
    main()
