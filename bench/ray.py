"""Ray on this machine's CPUs: a job's blocks as tasks on a local cluster of 1 and of 2 CPUs,
against the same blocks in process (numba on 1 thread, then on every core), every run's edges
checked equal to the in-process run's.

    python -m bench.ray                      # 16k -> 65k, 1M tokens, L0 64 (the issue's case)
    python -m bench.ray --parent 4096 --child 16384 --tokens 200000
"""

from __future__ import annotations

import argparse
import logging
import time

import numba
import ray

from bench import engine as bench_engine
from service.compute import cluster, engine, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_engine.add_case_arguments(parser)
    parser.add_argument("--blocks", type=int, default=8, help="blocks of parent latents")
    args = parser.parse_args()
    case = bench_engine.case_of(args)
    started = time.perf_counter()
    parent, child = bench_engine.synthetic(case)
    st = (stats.latent_stats(parent), stats.latent_stats(child))
    per_block = -(-int(parent.indptr[-1]) // args.blocks)
    print(f"{case.name}: data in {time.perf_counter() - started:.1f} s", flush=True)

    def score(runner: engine.Runner | None = None) -> engine.PairResult:
        return engine.score_pair(
            parent,
            child,
            device="cpu",
            parent_stats=st[0],
            child_stats=st[1],
            max_block_entries=per_block,
            runner=runner,
        )

    small = bench_engine.synthetic(bench_engine.Case(64, 256, 5_000, 8))
    engine.score_pair(*small, device="cpu")  # compiled kernels loaded: not timed
    cores = numba.get_num_threads()
    numba.set_num_threads(1)
    one_thread = score()
    numba.set_num_threads(cores)
    all_cores = score()
    want = bench_engine.as_set(one_thread.edges)
    rows = [
        ("in process, numba 1 thread", one_thread, ""),
        (f"in process, numba {cores} threads", all_cores, ""),
    ]
    for cpus in (1, 2):
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        runner = cluster.RayRunner("auto")
        score(runner)  # workers started, modules imported and kernels loaded: not timed
        result = score(runner)
        ray.shutdown()
        same = "same edges" if bench_engine.as_set(result.edges) == want else "EDGES DIFFER"
        rows.append((f"Ray, {cpus} worker{'s' if cpus > 1 else ''} (1 CPU each)", result, same))
    base = rows[0][1].seconds
    n = len(one_thread.blocks)
    print(f"\n{n} blocks; {one_thread.n_coactivations:.3g} co-activations\n")
    print("| run | seconds | co-activations/s | vs 1 thread in process | note |")
    print("|---|---|---|---|---|")
    for label, result, note in rows:
        rate, speedup = result.n_coactivations / result.seconds, base / result.seconds
        print(f"| {label} | {result.seconds:.2f} | {rate:.3g} | {speedup:.2f}x | {note} |")
    ray_one, ray_two = rows[2][1].seconds, rows[3][1].seconds
    print(
        f"\n2 Ray workers vs 1: {ray_one / ray_two:.2f}x; overhead per task (Ray with 1 worker"
        f" minus in process on 1 thread, per block): {(ray_one - base) / n:.3f} s"
    )


if __name__ == "__main__":
    main()
