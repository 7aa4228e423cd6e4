"""One real job end to end, as a user runs it: two activation files (the engine benchmark's
synthetic saes, CSR safetensors), `family create`, two `ingest`s and `worker --once`, through the
CLI on a throwaway embedded PostgreSQL; prints each step's time.

    python -m bench.job                          # 16k -> 65k, 1M tokens, L0 64
    python -m bench.job --parent 4096 --child 16384 --tokens 200000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bench import engine as bench_engine


def write(source: object, path: Path) -> None:
    """A CSR activation file with token ids (the family's fingerprint)."""
    save_file(
        {
            "indptr": source.indptr.numpy(),  # type: ignore[attr-defined]
            "indices": source.indices.numpy(),  # type: ignore[attr-defined]
            "values": source.values.numpy(),  # type: ignore[attr-defined]
            "token_ids": np.arange(source.n_tokens, dtype=np.int64),  # type: ignore[attr-defined]
            "d_sae": np.array(source.d_sae, dtype=np.int64),  # type: ignore[attr-defined]
        },
        str(path),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_engine.add_case_arguments(parser)
    args = parser.parse_args()
    case = bench_engine.case_of(args)
    work = Path(tempfile.mkdtemp(prefix="lt-job-", dir="/tmp"))
    try:
        parent, child = bench_engine.synthetic(case)
        write(parent, work / "parent.safetensors")
        write(child, work / "child.safetensors")
        del parent, child
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATENT_TREES_")}
        env.pop("DATABASE_URL", None)
        env["LATENT_TREES_HOME"] = str(work / "home")
        steps = [
            ("family create", ["family", "create", "S"]),
            ("ingest parent", ["ingest", "S", "--activations", str(work / "parent.safetensors")]),
            ("ingest child", ["ingest", "S", "--activations", str(work / "child.safetensors")]),
            ("worker --once", ["worker", "--once"]),
        ]
        size = sum(f.stat().st_size for f in work.glob("*.safetensors")) / 2**20
        print(f"{case.name}; files {size:,.0f} MiB")
        print("| step | seconds | output |")
        print("|---|---|---|")
        subprocess.run(
            [sys.executable, "-m", "service", "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
        )  # the embedded server's first start is not the job's
        total = 0.0
        for name, argv in steps:
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "service", *argv], env=env, capture_output=True, text=True
            )
            seconds = time.perf_counter() - started
            total += seconds
            line = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:]
            print(f"| {name} | {seconds:.1f} | {' '.join(line)} |")
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
        print(f"| total (both ingests and the job) | {total:.1f} | |")
        subprocess.run(
            [sys.executable, "-m", "service", "db", "stop"], env=env, capture_output=True
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
