"""The GPU kernel as it compiles for an H100 (sm_90), checked without a GPU: Triton ships the
compiler (ptxas) and the disassembler, so the instructions each atomic becomes are known here.

Measured on an H200, the kernel with acquire-release atomics spent 3.8 s in its sums at 16k ->
65k, 10M tokens; compiled, each such atomic is a fence of the whole GPU (MEMBAR.ALL.GPU), an L1
invalidation (CCTL.IVALL) and barriers around it, and must wait for its old value (ATOMG).
Relaxed, an add whose old value nobody reads is a fire-and-forget reduction (REDG)."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_OPS = r"\b(REDG\.E\.ADD\.F64|ATOMG\.E\.ADD\.F64|ATOMG\.E\.ADD|MEMBAR|CCTL|BAR\.SYNC|STL|LDL)\b"


def compiled_ops(*flags: str) -> collections.Counter[str]:
    """The kernel's atomics, fences, barriers and spills, compiled for sm_90 in a process of
    its own (this one may run the interpreter, which cannot compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "service.compute.gpu_kernel", "--arch", "90", *flags],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return collections.Counter(re.findall(_OPS, done.stdout))


def test_a_block_read_whole_is_four_reductions_per_coactivation_and_nothing_else() -> None:
    ops = compiled_ops()
    assert ops == {"REDG.E.ADD.F64": 4}, ops


def test_the_listed_read_waits_only_for_the_count_and_the_list_slot() -> None:
    ops = compiled_ops("--listed")
    # ab, aa, bb fire and forget; the count's old value says whether the pair is new, the
    # counter's where its key goes; the barriers are the vector's sum and prefix sum.
    assert ops["REDG.E.ADD.F64"] == 3 and ops["ATOMG.E.ADD.F64"] == 1, ops
    assert ops["ATOMG.E.ADD"] == 1, ops
    assert not ops["MEMBAR"] and not ops["CCTL"] and not ops["STL"] and not ops["LDL"], ops


def test_acquire_release_atomics_fence_the_gpu() -> None:
    """What the check above tells apart: Triton's default memory order."""
    ops = compiled_ops("--sem", "acq_rel")
    assert ops["MEMBAR"] == 4 and ops["ATOMG.E.ADD.F64"] == 4 and not ops["REDG.E.ADD.F64"], ops
