"""The host's work for a streamed job (`placement.Streamed`): each block gathered latent-major
and handed over in its ranges of tokens, with the device the CPU (its copies are views), so that
what is timed is the gathering and splitting alone.

    python -m bench.streamed   # 4k -> 16k, 2M tokens, L0 64 (--parent, --child, --tokens, --l0),
                               # four blocks
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.engine import add_case_arguments, case_of, synthetic
from service.compute import layout, placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, parent=4096, child=16384, tokens=2_000_000)
    args = parser.parse_args()
    case = case_of(args)
    parent, child = (layout.token_major(s) for s in synthetic(case))
    quarter = case.d_parent // 4
    plan = [(lo, lo + quarter) for lo in range(0, case.d_parent, quarter)]
    cpu = torch.device("cpu")
    entries = len(child.indices)
    bounds = {
        "one range": placement.resident_bytes(parent, child) - 1,
        "ranges of 1/2": 8 * entries,  # ranges of half the bytes: 8 bytes an entry
        "ranges of 1/8": 2 * entries + 1,
    }
    for label, memory in bounds.items():
        acts = placement.place(parent, child, cpu, memory)
        for _ in range(2):
            started = time.perf_counter()
            n_coacts = n_entries = 0
            total = 0.0
            for coacts, parts in acts.blocks(plan):
                n_coacts += coacts
                for part in parts:
                    n_entries += len(part.p_tokens)
                    total += float(part.p_values.double().sum())
            print(
                f"{case.name}, {label} ({acts.n_ranges} ranges): "
                f"{time.perf_counter() - started:.2f} s; {n_coacts} co-activations, "
                f"{n_entries} entries, values summing to {total:.6g}",
                flush=True,
            )


if __name__ == "__main__":
    main()
