"""Engine benchmark on hierarchical synthetic activations, against the baselines a user would
write, every method checked against a float64 reference on a sample of parent latents.

Activations: per token, L0 child latents drawn from a Zipf-like frequency distribution (a latent
once per token); each child's parent is the latent it split from (child // split), 10% noise.
The engine runs as a job runs it: latent statistics given (they are stored at ingest).

    python -m bench.engine                 # CPU: 1k -> 4k (100k tokens, L0 32) and 4k -> 16k
                                           # (200k, L0 64): engine, torch path, scipy, dense
    python -m bench.engine --cases scale   # CPU: 1k -> 4k ... 262k -> 1M at 200k tokens, L0 64,
                                           # one process per case (its own peak memory)
    python -m bench.engine --cases wide    # CPU: 262k -> 1M at 1M tokens, L0 64 (~1 min)
    python -m bench.engine --cases gpu     # GPU: 16k -> 65k at 1M and 10M tokens, 65k -> 262k and
                                           # 262k -> 1M at 1M (L0 64), dense TF32 baseline where
                                           # it fits, checkpoint encode throughput
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from service.compute import chunks, cpu_kernel, device, engine, layout, scores, stats

FLOOR = scores.EdgeParams().store_floor
TOL = 1e-5


@dataclass(frozen=True)
class Case:
    d_parent: int
    d_child: int
    n_tokens: int
    l0: int
    methods: str | None = None  # this case's methods, where they differ from the run's
    timeout: float | None = None  # seconds for the case's process (the GPU run has a budget)

    @property
    def name(self) -> str:
        return f"{_k(self.d_parent)} -> {_k(self.d_child)}, {self.n_tokens:,} tokens, L0 {self.l0}"


def add_case_arguments(
    parser: argparse.ArgumentParser,
    parent: int = 16384,
    child: int = 65536,
    tokens: int = 1_000_000,
    l0: int = 64,
) -> None:
    """--parent, --child, --tokens and --l0: one case, for the benchmarks that take one."""
    parser.add_argument("--parent", type=int, default=parent, help="d_sae of the parent")
    parser.add_argument("--child", type=int, default=child, help="d_sae of the child")
    parser.add_argument("--tokens", type=int, default=tokens)
    parser.add_argument("--l0", type=int, default=l0)


def case_of(args: argparse.Namespace) -> Case:
    """The case that `add_case_arguments`' options name."""
    return Case(args.parent, args.child, args.tokens, args.l0)


def _k(d: int) -> str:
    return f"{d // 1024}k" if d >= 1024 else str(d)


CASES = {
    "smoke": [Case(256, 1024, 20_000, 16)],  # seconds: checks that every method runs
    "cpu": [Case(1024, 4096, 100_000, 32), Case(4096, 16384, 200_000, 64)],
    # The issue's four widths, then SPEC.md section 6's widest pair (262k -> 1M).
    "scale": [Case(1024 << (2 * i), 4096 << (2 * i), 200_000, 64) for i in range(5)],
    # The widest pair at 1M tokens on the CPU (the GPU case below, on this machine's cores).
    "wide": [Case(262144, 1 << 20, 1_000_000, 64, timeout=600)],
    # Most telling first: the GPU machine is lent for minutes, so each case has a time limit.
    # Each device case also reads its blocks the other way (whole or listed: engine.READS).
    "gpu": [
        Case(16384, 65536, 1_000_000, 64, "triton,triton/whole,torch", timeout=40),
        # Also with the activations streamed (as 100M tokens would be on an 80 GB GPU): the child
        # in one range of tokens (8 GiB), in two (4 GiB).
        Case(
            16384,
            65536,
            10_000_000,
            64,
            "triton,triton/listed,triton@8,triton@4,dense",
            timeout=150,
        ),
        Case(262144, 1 << 20, 1_000_000, 64, "triton", timeout=45),  # listed (0.3% touched)
        Case(65536, 262144, 1_000_000, 64, "triton,triton/whole", timeout=30),
        # The kernel's launch variants and memory orders (`TUNE`), last: the least needed.
        Case(16384, 65536, 1_000_000, 64, "tune", timeout=120),
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
    """The engine with `backend`; a device path as "triton/whole" or "triton/listed" reads
    every block whole or by the pairs it touched (`engine.READS`), else as it chooses; with
    "@N" (e.g. "triton@8") it holds at most N GiB of activations on the device (`placement`).
    The activations are handed over as a job reads them from the store: token-major, every
    entry known to be active (checked here, untimed, as ingest checks it)."""
    parent_rows, child_rows = (layout.Laid(layout.token_major(s)) for s in (parent, child))
    kind, read, gib = _parts(backend)
    result = engine.score_pair(
        parent_rows,
        child_rows,
        device=dev,
        backend=kind,
        parent_stats=st[0],
        child_stats=st[1],
        read=read or "auto",
        activation_memory=int(float(gib) * 2**30) if gib else None,
    )
    label = f"engine ({result.backend}{', ' + read if read else ''})"
    if gib:
        label = label[:-1] + f", {gib} GiB of activations)"
    phases = ", ".join(f"{k} {v:.2f}" for k, v in result.phases.items())
    note = f"{len(result.blocks)} blocks; {result.n_candidates:.3g} candidates; seconds: {phases}"
    if result.n_ranges > 1:
        note = f"{result.n_ranges} ranges of tokens; " + note
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
    # All the device's memory (not the engine's 16 GiB budget): the baseline as large as fits.
    free = device.free_memory(dev)
    budget = int(free * 0.8) if free is not None else engine.default_budget(dev)
    if out_bytes + 6 * chunk * (parent.d_sae + child.d_sae) * 4 > budget:
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
    mine = torch.isin(edges.parent, torch.from_numpy(sample)).numpy()
    got = {
        (p, c): np.array(parts)
        for p, c, *parts in zip(
            edges.parent.numpy()[mine].tolist(),
            edges.child.numpy()[mine].tolist(),
            edges.masked_cos.numpy()[mine].tolist(),
            edges.masked_cos_parent.numpy()[mine].tolist(),
            edges.max_ratio.numpy()[mine].tolist(),
            edges.score.numpy()[mine].tolist(),
            strict=True,
        )
    }
    c_sum_sq = st[1].sum_sq.numpy().astype(np.float64)
    c_max = st[1].max_act.numpy().astype(np.float64)
    for p in sample.tolist():
        block = layout.latent_major(p_rows, p, p + 1)
        # Every (token, child) entry on the parent's tokens, in float64, summed per child.
        lo, hi = c_rows.indptr[block.tokens], c_rows.indptr[block.tokens + 1]
        per = hi - lo
        at = np.repeat(lo - np.cumsum(per) + per, per) + np.arange(per.sum())
        a = np.repeat(block.values.astype(np.float64), per)
        c = c_rows.indices[at].astype(np.int64)
        b = c_rows.values[at].astype(np.float64)
        kids = np.unique(c)
        slot = np.searchsorted(kids, c)
        sab = np.bincount(slot, a * b, len(kids))
        saa = np.bincount(slot, a * a, len(kids))
        sbb = np.bincount(slot, b * b, len(kids))
        mc = sab / np.sqrt(saa * c_sum_sq[kids])
        mcp = sab / np.sqrt(float(st[0].sum_sq[p]) * sbb)
        ratio = c_max[kids] / float(st[0].max_act[p])
        want = np.stack([mc, mcp, ratio, mc * ratio], 1)
        for i, kid in enumerate(kids.tolist()):
            have = got.get((p, kid))
            if have is not None and not np.allclose(have, want[i], rtol=TOL, atol=TOL):
                bad += 1
            if have is None and (
                want[i, 3] > FLOOR + TOL or max(want[i, 0], want[i, 1]) > FLOOR + TOL
            ):
                missing += 1
    return "exact" if bad == missing == 0 else f"{bad} wrong, {missing} missing"


def as_set(edges: scores.Edges) -> set[tuple[int, int, float]]:
    """Edges as (parent, child, score), to compare two runs whatever their order."""
    return set(zip(edges.parent.tolist(), edges.child.tolist(), edges.score.tolist(), strict=True))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(case: Case, dev: torch.device, methods: list[str], baseline_tokens: int) -> list[dict]:
    """Every method on one case: a row each, checked on 16 sampled parents."""
    started = time.perf_counter()
    parent, child = synthetic(case)
    st = (
        stats.latent_stats(parent, device=str(dev)),
        stats.latent_stats(child, device=str(dev)),
    )
    _progress(f"{case.name}: data and statistics in {time.perf_counter() - started:.1f} s")
    sample = np.random.default_rng(1).choice(case.d_parent, 16, replace=False)
    baselines: dict[str, Callable[[], Run | None]] = {
        "scipy": lambda: run_scipy(parent, child, st),
        "dense": lambda: run_dense(parent, child, dev, min(case.n_tokens, baseline_tokens)),
    }
    rows = []
    for method in methods:
        if method == "tune":
            rows.extend(tune(case, parent, child, st, dev, sample))
            continue
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if method in baselines:
            run = baselines[method]()
        elif _kind(method) in engine.ROWS:
            run = run_engine(parent, child, st, method, dev)
        else:
            raise ValueError(f"unknown method {method!r}")
        if run is None:
            rows.append({"case": case.name, "method": method, "note": "does not fit"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        checked = check(parent, child, st, run.edges, sample) if run.edges is not None else "-"
        rows.append(_row(case, run, dev, checked))
        _progress(f"{case.name}: {run.method} in {run.seconds:.2f} s, {rows[-1]['check']}")
        print(json.dumps(rows[-1]), flush=True)  # each row as soon as it is known
    return rows


def _parts(method: str) -> tuple[str, str, str]:
    """A method such as "triton/listed@8" as its backend, read and GiB ("" where not given)."""
    rest, _, gib = method.partition("@")
    kind, _, read = rest.partition("/")
    return kind, read, gib


def _kind(method: str) -> str:
    """The engine's backend in a method such as "triton/listed@8"."""
    return _parts(method)[0]


# Launch variants of the GPU kernel (method `tune`), each timed after a compile on small data and
# checked against the float64 reference. (A variant that summed a tile's co-activations per pair
# before its atomics, by a sort and a segmented scan, was 1.1-2.4x slower on an H200:
# bench/results/2026-11-26-h200-379df4d-tune.log.)
TUNE: list[dict[str, object]] = [
    {},  # the default (`gpu_kernel.Config`)
    # Programs running together on one parent's row contend for its hottest children's sums
    # (the same addresses); spread over more rows, on fewer, or on one row at a time.
    {"spread": 4},
    {"spread": 64},
    {"spread": 256},
    {"spread": 1},
    {"sem": "acq_rel"},  # Triton's default memory order for atomics (the kernel's before)
    {"interleaved": False},
    {"num_warps": 4, "entries": 32},
]


def tune(
    case: Case,
    parent: chunks.CsrSource,
    child: chunks.CsrSource,
    st: tuple[stats.LatentStats, stats.LatentStats],
    dev: torch.device,
    sample: np.ndarray,
) -> list[dict]:
    """The Triton kernel under each of `TUNE`'s configurations, each row printed as it is
    known; a variant that fails is a row too."""
    from service.compute import gpu_kernel

    small = synthetic(Case(64, 256, 5_000, 8))
    small_st = (stats.latent_stats(small[0]), stats.latent_stats(small[1]))
    default = gpu_kernel.DEFAULT
    rows: list[dict] = []
    try:
        for variant in TUNE:
            label = ", ".join(f"{k} {v}" for k, v in variant.items()) or "default"
            gpu_kernel.DEFAULT = gpu_kernel.Config(**variant)  # type: ignore[arg-type]
            try:
                run_engine(*small, small_st, "triton", dev)  # compile this variant first
                run = run_engine(parent, child, st, "triton", dev)
            except Exception as exc:  # a variant that does not compile or run is a finding
                rows.append({"case": case.name, "method": f"triton ({label})", "note": repr(exc)})
                _progress(f"{case.name}: tune {label} failed: {exc!r}")
                print(json.dumps(rows[-1]), flush=True)
                continue
            assert run.edges is not None
            checked = check(parent, child, st, run.edges, sample)
            rows.append(_row(case, run, dev, checked, method=f"triton ({label})", note="tune; "))
            _progress(f"{case.name}: tune {label} in {run.seconds:.2f} s, {rows[-1]['check']}")
            print(json.dumps(rows[-1]), flush=True)
    finally:
        gpu_kernel.DEFAULT = default
    return rows


def _row(
    case: Case, run: Run, dev: torch.device, checked: str, method: str = "", note: str = ""
) -> dict:
    """One method's figures on a case as the table prints them (`method` instead of the
    run's own name, `note` before its note)."""
    n_edges = len(run.edges) if run.edges is not None else None
    return {
        "case": case.name,
        "method": method or run.method,
        "seconds": run.seconds,
        "coactivations": run.n_coactivations,
        "pairs": run.n_pairs,
        "rate": run.rate,
        "edges": n_edges,
        "per_child": n_edges / case.d_child if n_edges is not None else None,
        "peak_gib": _peak(dev),
        "check": checked,
        "note": note + run.note,
    }


def _first_touch_ms_per_mib(mib: int = 512) -> float:
    """Milliseconds per MiB to write memory this process never touched, less a rewrite of it:
    the page faults (on a VM with free page reporting, also the host's: up to ~1 ms/MiB), in
    memory such as the CPU kernel's candidate columns."""
    fresh = cpu_kernel.unhinted_empty(mib << 20, np.dtype(np.uint8))
    started = time.perf_counter()
    fresh.fill(1)
    first = time.perf_counter() - started
    started = time.perf_counter()
    fresh.fill(2)
    again = time.perf_counter() - started
    return (first - again) * 1000 / mib


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
    parser.add_argument("--no-encode", action="store_true", help="skip the encode figures")
    args = parser.parse_args()
    dev = device.resolve(args.device)
    if args.one:  # a child process measuring one case
        case = Case(**json.loads(args.one))
        kinds = {_kind(m) for m in args.methods.split(",")}
        # The Triton kernel is compiled once per way of reading a block.
        kernels = ["numba"] * ("numba" in kinds) + ["triton/whole", "triton/listed"] * (
            "triton" in kinds
        )
        with contextlib.redirect_stdout(sys.stderr):  # compile (or load) them first
            measure(Case(64, 256, 5_000, 8), dev, kernels, 1000)
        measure(case, dev, args.methods.split(","), args.baseline_tokens)  # prints its rows
        return
    which = args.cases or ("gpu" if dev.type == "cuda" else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    import numba

    print(
        f"device: {name}, torch {torch.__version__}, numba {numba.__version__},"
        f" {numba.get_num_threads()} threads; first touch of fresh memory"
        f" {_first_touch_ms_per_mib():.2f} ms/MiB (what writing a case's candidates costs"
        " beyond the writes)"
    )
    default_methods = {
        "smoke": "numba,torch,scipy,dense",
        "cpu": "numba,torch,scipy,dense",
        "scale": "numba",
        "wide": "numba",
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
        command = [
            sys.executable,
            "-m",
            "bench.engine",
            "--one",
            json.dumps(
                {
                    "d_parent": case.d_parent,
                    "d_child": case.d_child,
                    "n_tokens": case.n_tokens,
                    "l0": case.l0,
                }
            ),
            "--methods",
            case.methods or methods,
            "--device",
            str(dev.type),
            "--baseline-tokens",
            str(args.baseline_tokens),
        ]
        try:
            proc = subprocess.run(
                command, stdout=subprocess.PIPE, text=True, check=False, timeout=case.timeout
            )
            out, failed = proc.stdout, f"exit {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            failed = f"stopped after {case.timeout:.0f} s"
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if failed:
            print(f"| {case.name} | {failed} (rows before it below) ||||||||||")
        if not rows:
            continue
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
                f"| {row['peak_gib']:.2f} | {row['check']} | {ratio} | {row['note']} |",
                flush=True,
            )
    if which == "gpu" and not args.no_encode:
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
