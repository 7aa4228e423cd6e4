"""Engine benchmark on realistic synthetic activations, with a dense-matmul baseline.

Activations: child latents drawn per token from a Zipf-like frequency distribution (L0 per
token), each child's parent is the latent it split from (child // split), plus 10% noise parents.

    python -m bench.engine                   # CPU case: 1k -> 4k, 100k tokens, L0 32
    python -m bench.engine --cases gpu       # 4k -> 16k and 16k -> 65k at 1M and 10M tokens,
                                             # and 65k -> 262k at 1M, L0 64
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass

import torch

from service.compute import chunks, device, engine


@dataclass(frozen=True)
class Case:
    d_parent: int
    d_child: int
    n_tokens: int
    l0: int


CASES = {
    "cpu": [Case(1024, 4096, 100_000, 32)],
    "gpu": [
        Case(4096, 16384, 1_000_000, 64),
        Case(4096, 16384, 10_000_000, 64),
        Case(16384, 65536, 1_000_000, 64),
        Case(16384, 65536, 10_000_000, 64),
        Case(65536, 262144, 1_000_000, 64),
    ],
}


def synthetic(case: Case, dev: torch.device, seed: int = 0) -> tuple[chunks.TopKSource, ...]:
    """Top-k parent and child activations on `dev`; duplicates within a token are padding."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    ranks = torch.randperm(case.d_child, device=dev, generator=gen)
    zipf = 1.0 / (ranks.to(torch.float64) + 1.0) ** 1.1
    probs = (zipf / zipf.sum()).to(torch.float32)
    split = case.d_child // case.d_parent
    c_idx = torch.empty(case.n_tokens, case.l0, dtype=torch.int64, device=dev)
    c_val = torch.empty(case.n_tokens, case.l0, dtype=torch.float32, device=dev)
    p_idx = torch.empty_like(c_idx)
    p_val = torch.empty_like(c_val)
    step = 1 << 18
    for s in range(0, case.n_tokens, step):
        n = min(step, case.n_tokens - s)
        idx = torch.multinomial(probs, n * case.l0, replacement=True, generator=gen)
        idx = idx.view(n, case.l0).sort(dim=1).values
        val = torch.rand(n, case.l0, device=dev, generator=gen) * 4 + 0.1
        val[:, 1:][idx[:, 1:] == idx[:, :-1]] = 0  # a latent appears once per token
        c_idx[s : s + n], c_val[s : s + n] = idx, val
        parent = idx // split
        noise = torch.rand(n, case.l0, device=dev, generator=gen) < 0.1
        parent = (
            torch.where(noise, torch.randint_like(parent, case.d_parent, generator=gen), parent)
            .sort(dim=1)
            .values
        )
        pv = val * (0.8 + 0.4 * torch.rand(n, case.l0, device=dev, generator=gen))
        pv[:, 1:][parent[:, 1:] == parent[:, :-1]] = 0
        p_idx[s : s + n], p_val[s : s + n] = parent, pv
    return (
        chunks.TopKSource(p_idx, p_val, case.d_parent),
        chunks.TopKSource(c_idx, c_val, case.d_child),
    )


def dense_baseline(
    parent: chunks.TopKSource, child: chunks.TopKSource, dev: torch.device, n_tokens: int
) -> float | None:
    """Seconds for the four sums as dense matmuls over `n_tokens` tokens (None if too big)."""
    out_bytes = 4 * parent.d_sae * child.d_sae * 4
    chunk = 8192
    in_bytes = 2 * chunk * (parent.d_sae + child.d_sae) * 4
    limit = engine.default_budget(dev)
    if out_bytes + in_bytes > limit:
        return None
    torch.backends.cuda.matmul.allow_tf32 = True
    sums = torch.zeros(4, parent.d_sae, child.d_sae, device=dev)
    _sync(dev)
    started = time.perf_counter()
    for s in range(0, n_tokens, chunk):
        a = _dense(parent, s, chunk, dev)
        b = _dense(child, s, chunk, dev)
        ma, mb = (a > 0).float(), (b > 0).float()
        sums[0] += a.T @ b
        sums[1] += (a * a).T @ mb
        sums[2] += ma.T @ (b * b)
        sums[3] += ma.T @ mb
    _sync(dev)
    return time.perf_counter() - started


def _dense(src: chunks.TopKSource, start: int, n: int, dev: torch.device) -> torch.Tensor:
    idx, val = src.indices[start : start + n], src.values[start : start + n]
    out = torch.zeros(idx.shape[0], src.d_sae, device=dev)
    return out.scatter_(1, idx, val)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=sorted(CASES), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baseline-tokens", type=int, default=100_000)
    args = parser.parse_args()
    dev = device.resolve(args.device)
    cases = CASES[args.cases or ("gpu" if dev.type == "cuda" else "cpu")]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        "| parent -> child | tokens | L0 | co-activations | engine s | updates/s "
        "| peak memory | tiles | dense baseline s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        parent, child = synthetic(case, dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        result = engine.score_pair(
            parent,
            child,
            device=dev,
            chunk_tokens=1 << 18 if dev.type == "cuda" else 1 << 15,
            max_coactivations=1 << 26 if dev.type == "cuda" else 1 << 22,
        )
        rate = result.n_coactivations / result.seconds
        mem = peak_memory(dev)
        base_tokens = min(case.n_tokens, args.baseline_tokens)
        base = dense_baseline(parent, child, dev, base_tokens)
        if base is None:
            base_text, ratio = "does not fit", "-"
        else:
            full = base * case.n_tokens / base_tokens
            note = "" if base_tokens == case.n_tokens else f" (from {base_tokens:,} tokens)"
            base_text, ratio = f"{full:.1f}{note}", f"{full / result.seconds:.1f}x"
        print(
            f"| {case.d_parent:,} -> {case.d_child:,} | {case.n_tokens:,} | {case.l0} "
            f"| {result.n_coactivations:.3g} | {result.seconds:.2f} | {rate:.3g} | {mem} "
            f"| {len(result.tiles)} | {base_text} | {ratio} |"
        )
        del parent, child, result
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
