"""The GPU kernel (Triton): a block's co-activations fused into one pass of atomic adds.

Each program takes a few entries (row, token, a) of the block's parent latents (latent-major)
and, for each, the child entries of that token (token-major) as one vector of lanes: it adds
a*b, a^2, b^2 and 1 into the block's dense rows [rows, d_child] (float64 atomics). Where the
caller will read the rows whole (a dense block: `track=False`), that is all; otherwise the lane
whose add found the count at 0 appends the pair's key to the touched list (one atomic on a
counter per vector, a prefix sum within it), and only the touched pairs are then scored and
reset (torch, on the device): no pass over pairs that never co-activate.

The atomics are relaxed: nothing in the kernel orders one memory access after another, and
the launch's end makes every add visible. Triton's default (acquire-release) fences each one:
compiled for an H100, each becomes an atomic that waits for its old value, fenced by a
MEMBAR.ALL.GPU, an L1 invalidation and two barriers of the program; relaxed, an add whose old
value is unused is a fire-and-forget reduction (REDG), so that a block read whole is four REDG
per co-activation and nothing else (`python -m service.compute.gpu_kernel` prints the SASS on
any machine; tests/unit/test_gpu_assembly.py checks it). `Config.sem` keeps acquire-release
for a comparison in the same run.

The programs running together (~4,000 on an H100) would, in launch order, take consecutive
entries of the block's latent-major parent: all of one parent's, so every atomic in flight
would go to one row, and the hottest children of that row (in nearly every token) would be the
same few addresses for all of them. `Config.spread` interleaves stretches of the entries, so
that they add into as many rows at once.

Ceilings, for 16k -> 65k at 10M tokens, L0 64 (2.3e10 co-activations) on one H100: 4 atomic
adds per co-activation, ~9e10 atomics, ~1 s at the ~1e11/s of L2 atomics on distinct
addresses; 8 B of child entry read per co-activation (~180 GB, ~0.06 s). Measured (make
bench-gpu, 2026-11-26): sums 3.62 s with the programs on one row, 1.45 s spread over 16
(1.56e10 co-activations/s); acquire-release atomics 1.1-1.3x slower than relaxed.

Under TRITON_INTERPRET=1 (set before this module is imported) the same kernel runs on CPU
tensors: that is how CI tests it against the float64 reference.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from service.compute import layout

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - a torch without Triton: the torch path serves
    triton = None


@dataclass(frozen=True)
class Config:
    """How the kernel is launched and where the four sums of a pair lie.

    `interleaved`: a pair's four sums are adjacent (32 bytes, one memory sector), so the four
    atomics of a co-activation touch one sector; otherwise each sum has its own array."""

    block_c: int = 64  # child entries per vector (L0 up to block_c in one step, more in several)
    entries: int = 8  # parent entries per program
    num_warps: int = 2
    interleaved: bool = True
    sem: str = "relaxed"  # the atomics' memory order ("acq_rel": Triton's default)
    # Programs running together take entries from this many places along the block's
    # latent-major entries, so from as many parents' rows: programs in launch order, each
    # `spread`-th one from the same stretch (1: all from one stretch, one row at a time).
    spread: int = 16


DEFAULT = Config()


def available() -> bool:
    """Whether the kernel can run: Triton importable, and a GPU or the interpreter."""
    return triton is not None and (
        torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    )


if triton is not None:

    @triton.jit
    def _accumulate(  # type: ignore[no-untyped-def]
        row_of,
        p_tokens,
        p_values,
        c_indptr,
        c_indices,
        c_values,
        sums,
        s_pair,
        s_part,
        touched,
        counter,
        n_entries,
        d_child,
        BLOCK_C: tl.constexpr,
        ENTRIES: tl.constexpr,
        TRACK: tl.constexpr,
        SEM: tl.constexpr,
        SPREAD: tl.constexpr,
    ):
        pid = tl.program_id(0)
        if SPREAD > 1:  # program pid takes the (pid // SPREAD)-th entries of stretch pid % SPREAD
            stretch = tl.cdiv(tl.cdiv(n_entries, ENTRIES), SPREAD)
            pid = (pid % SPREAD) * stretch + pid // SPREAD
        lanes = tl.arange(0, BLOCK_C)
        for i in range(ENTRIES):
            j = pid * ENTRIES + i
            if j < n_entries:
                r = tl.load(row_of + j).to(tl.int64)
                t = tl.load(p_tokens + j).to(tl.int64)
                a = tl.load(p_values + j).to(tl.float64)
                lo = tl.load(c_indptr + t)
                hi = tl.load(c_indptr + t + 1)
                for e0 in range(lo, hi, BLOCK_C):
                    offs = e0 + lanes
                    m = offs < hi
                    c = tl.load(c_indices + offs, mask=m, other=0).to(tl.int64)
                    b = tl.load(c_values + offs, mask=m, other=0.0).to(tl.float64)
                    key = r * d_child + c
                    at = sums + key * s_pair
                    tl.atomic_add(at, a * b, mask=m, sem=SEM)
                    tl.atomic_add(at + s_part, a * a, mask=m, sem=SEM)
                    tl.atomic_add(at + 2 * s_part, b * b, mask=m, sem=SEM)
                    if TRACK:  # n: an old count of 0 is the pair's first touch
                        old = tl.atomic_add(at + 3 * s_part, 1.0, mask=m, sem=SEM)
                        first = (m & (old == 0.0)).to(tl.int32)
                        n_first = tl.sum(first, axis=0)
                        if n_first > 0:
                            base = tl.atomic_add(counter, n_first, sem=SEM)
                            slot = base + tl.cumsum(first, axis=0) - 1
                            tl.store(touched + slot, key, mask=first > 0)
                    else:
                        tl.atomic_add(at + 3 * s_part, 1.0, mask=m, sem=SEM)


class Rows(layout.DenseRows):
    """A block's dense rows, filled by the kernel."""

    def __init__(
        self, n_rows: int, d_child: int, device: torch.device, config: Config | None = None
    ) -> None:
        size = n_rows * d_child
        self.d_child = d_child
        self.config = config = config or DEFAULT
        # [4, size] in either layout: sums[k, key] is part k of pair key.
        if config.interleaved:
            self.sums = torch.zeros(size, 4, dtype=torch.float64, device=device).T
        else:
            self.sums = torch.zeros(4, size, dtype=torch.float64, device=device)
        self.counter = torch.zeros(1, dtype=torch.int32, device=device)
        self.touched = torch.empty(0, dtype=torch.int64, device=device)

    def block_sums(
        self, parts: Iterable[layout.DeviceBlock], n_coactivations: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        self.counter.zero_()
        for i, part in enumerate(parts):
            if i == 0:  # the parts share the rows: the list sized once, for all of them
                capacity = min(n_coactivations, part.n_rows * self.d_child)
                if capacity > len(self.touched):
                    self.touched = torch.empty(capacity, dtype=torch.int64, device=self.sums.device)
            self._accumulate(part, True)
        # In key order: each row's pairs together (for its maxima), the gather in address order.
        return self._take(self.touched[: int(self.counter.item())].sort().values)

    def _accumulate(self, block: layout.DeviceBlock, track: bool) -> None:
        if len(block.p_tokens) == 0:
            return
        args, constants = self._arguments(block, track)
        programs = triton.cdiv(len(block.p_tokens), self.config.entries)
        spread = self.config.spread
        grid = (triton.cdiv(programs, spread) * spread,)  # every stretch as long
        _accumulate[grid](*args, **constants, num_warps=self.config.num_warps)

    def _arguments(
        self, block: layout.DeviceBlock, track: bool
    ) -> tuple[list[Tensor | int], dict[str, object]]:
        """The kernel's arguments for one block, and its compile-time constants."""
        n_entries = len(block.p_tokens)
        row_of = torch.repeat_interleave(
            torch.arange(block.n_rows, device=block.p_tokens.device, dtype=torch.int32),
            block.p_indptr.diff(),
            output_size=n_entries,
        )
        args: list[Tensor | int] = [
            row_of,
            block.p_tokens,
            block.p_values,
            block.c_indptr,
            block.c_indices,
            block.c_values,
            self.sums,
            self.sums.stride(1),
            self.sums.stride(0),
            self.touched,
            self.counter,
            n_entries,
            self.d_child,
        ]
        cfg = self.config
        constants = {
            "BLOCK_C": cfg.block_c,
            "ENTRIES": cfg.entries,
            "TRACK": track,
            "SEM": cfg.sem,
            "SPREAD": cfg.spread,
        }
        return args, constants


# Triton's names for the argument types (a pointer is "*" and its element's).
_TYPES = {torch.int32: "i32", torch.int64: "i64", torch.float32: "fp32", torch.float64: "fp64"}


def assembly(config: Config = DEFAULT, track: bool = False, arch: int = 90) -> dict[str, str]:
    """The kernel compiled for an NVIDIA GPU of compute capability `arch` (90: H100, H200)
    without one: its PTX and SASS (Triton ships the compiler and the disassembler). How each
    atomic compiles decides the kernel's speed; the tests check it on the CPU. Not under
    TRITON_INTERPRET=1 (the interpreter replaces the functions the kernel calls): run
    `python -m service.compute.gpu_kernel` in a process of its own."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the kernel cannot be compiled under TRITON_INTERPRET=1")

    block = layout.DeviceBlock(
        torch.tensor([0, 1]),
        torch.zeros(1, dtype=torch.int32),
        torch.ones(1),
        torch.tensor([0, 1]),
        torch.zeros(1, dtype=torch.int32),
        torch.ones(1),
    )
    rows = Rows(1, 1, torch.device("cpu"), config)
    rows.touched = torch.empty(1, dtype=torch.int64)
    args, constants = rows._arguments(block, track)
    fn = _accumulate
    signature = {
        name: "*" + _TYPES[a.dtype] if isinstance(a, Tensor) else ("i32" if a < 2**31 else "i64")
        for name, a in zip(fn.arg_names, args, strict=False)
    } | dict.fromkeys(constants, "constexpr")
    compiled = triton.compile(
        ASTSource(fn, signature, constants),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps},
    )
    return {"ptx": compiled.asm["ptx"], "sass": compiled.asm["sass"]}


def main(argv: list[str] | None = None) -> None:
    """`python -m service.compute.gpu_kernel [--listed] [--sem S] [--arch N] [--ptx]`: the
    kernel's SASS (or PTX) as it compiles for a GPU, on any machine with Triton."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--listed", action="store_true", help="the listed read (touched list)")
    parser.add_argument("--sem", default=DEFAULT.sem, help="the atomics' memory order")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    parser.add_argument("--ptx", action="store_true", help="PTX instead of SASS")
    args = parser.parse_args(argv)
    config = Config(sem=args.sem)
    sys.stdout.write(assembly(config, args.listed, args.arch)["ptx" if args.ptx else "sass"])


if __name__ == "__main__":
    main()
