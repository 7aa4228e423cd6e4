"""Load test of `latent-trees serve` on loopback: tree requests from concurrent keep-alive
clients at ~26M stored edges (20 per child), and a full export of the edges, on a throwaway embedded
PostgreSQL.

    python -m bench.api                          # widths 65536 262144 1048576: ~26M edges
    python -m bench.api --widths 4096 16384 65536 --seconds 5

Prints throughput and latency percentiles for 1 client (the baseline) and for `--clients`
(50), for the nested tree, the flat tree and the DAG, with the response cache off (the
baseline) and on; then rows/s and peak memory of `latent-trees export edges` to Parquet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

from bench import pipeline
from service.db import engine as db_engine
from service.db import migrate, server


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """GET `path` on a keep-alive connection and read the whole response; its status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _client(
    port: int, paths: list[str], until: float, latencies: list[float], errors: list[int]
) -> None:
    """One keep-alive HTTP/1.1 client: request, read the whole response, repeat."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(len(latencies) + id(latencies))
    try:
        while time.perf_counter() < until:
            path = rng.choice(paths)
            started = time.perf_counter()
            status = await _get(reader, writer, path)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def warm(port: int, paths: list[str], clients: int, rounds: int = 8) -> None:
    """Request every path `rounds` times, so that each server process has very likely seen it
    (connections split between the processes as the kernel hands them out)."""

    async def one(mine: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in mine:
            await _get(reader, writer, path)
        writer.close()

    async def run() -> None:
        todo = paths * rounds
        await asyncio.gather(*(one(todo[i::clients]) for i in range(clients)))

    asyncio.run(run())


def load(port: int, paths: list[str], clients: int, seconds: float) -> dict[str, float]:
    """`clients` concurrent clients for `seconds` (after a 2 s warm-up): throughput and
    latency percentiles in ms."""

    async def run(duration: float) -> tuple[list[float], list[int]]:
        latencies: list[float] = []
        errors: list[int] = []
        until = time.perf_counter() + duration
        await asyncio.gather(
            *(_client(port, paths, until, latencies, errors) for _ in range(clients))
        )
        return latencies, errors

    asyncio.run(run(2.0))
    started = time.perf_counter()
    latencies, errors = asyncio.run(run(seconds))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "per_s": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "errors": len(errors),
    }


def single_requests(base: str, built: pipeline.Built, rng: np.random.Generator) -> None:
    """Median latency of requests made one at a time: cards, edge pages, search."""

    def median_ms(urls: list[str]) -> float:
        times = []
        with httpx.Client() as client:
            for url in urls:
                started = time.perf_counter()
                response = client.get(base + url, timeout=60)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
        return float(np.median(times))

    mid = len(built.latent_ids[1]) // 2
    deep = f"{int(built.latent_ids[1][mid])}-0"
    idx = rng.integers(0, len(built.latent_ids[1]), 20)
    cases = [
        ("latent card (parents, children)", [f"/api/latents/B/2/{i}" for i in idx]),
        (
            "edges, first page of 1000",
            [f"/api/edges?limit=1000&min_score={x / 100}" for x in range(20)],
        ),
        (
            "edges, a page of 1000 half-way",
            [f"/api/edges?limit=1000&after={deep}&min_score={x / 100}" for x in range(20)],
        ),
        (
            "search by label prefix",
            [f"/api/search?q=B/3/{i}" for i in rng.integers(1000, 9999, 10)],
        ),
    ]
    print(f"\n{'one request at a time (cache off)':<36}{'median ms':>10}")
    for name, urls in cases:
        print(f"{name:<36}{median_ms(urls):>10.1f}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    """`latent-trees serve` in a subprocess, once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/families", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[65536, 262144, 1048576])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--roots", type=int, default=2000, help="distinct roots requested")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    home = Path(tempfile.mkdtemp(prefix="lt-bench-api-", dir="/tmp"))
    proc = None
    try:
        url = server.ensure_running(home)
        engine = db_engine.create(url)
        migrate.upgrade(engine)
        built = pipeline.add_family(engine, "B", args.widths, rng, print)
        with engine.connect() as conn:
            n_roots = min(args.roots, len(built.latent_ids[0]))
            roots = rng.choice(built.latent_ids[0], n_roots, replace=False)
            labels = list(
                conn.execute(
                    sa.text("SELECT label FROM latent WHERE id = ANY(:ids)"),
                    {"ids": roots.tolist()},
                ).scalars()
            )
        engine.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATENT_TREES_")}
        env |= {"DATABASE_URL": url, "LATENT_TREES_HOME": str(home)}
        print(
            f"\nserving {built.n_edges:,} stored edges with {args.workers} server processes;"
            f" {len(labels)} distinct roots requested at random"
        )
        print(
            f"{'route':<24}{'cache':>6}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
            f"{'p99 ms':>9}"
        )
        for cache_mb in ("0", "64"):
            port = free_port()
            proc = start_server(env | {"LATENT_TREES_API_CACHE_MB": cache_mb}, port, args.workers)
            for name, route, suffix in (
                ("/api/trees (nested)", "trees", ""),
                ("/api/trees?shape=flat", "trees", "?shape=flat"),
                ("/api/dags", "dags", ""),
            ):
                paths = [f"/api/{route}/{label}{suffix}" for label in labels]
                if cache_mb != "0":  # measure the steady state: every root seen before
                    warm(port, paths, args.clients)
                for clients in (1, args.clients):
                    r = load(port, paths, clients, args.seconds)
                    errors = f"  ({r['errors']} errors)" if r["errors"] else ""
                    print(
                        f"{name:<24}{'on' if cache_mb != '0' else 'off':>6}{clients:>8}"
                        f"{r['per_s']:>9.0f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}"
                        f"{errors}",
                        flush=True,
                    )
            proc.terminate()
            proc.wait(timeout=30)
            proc = None
        port = free_port()
        proc = start_server(env | {"LATENT_TREES_API_CACHE_MB": "0"}, port, args.workers)
        single_requests(f"http://127.0.0.1:{port}", built, rng)
        proc.terminate()
        proc.wait(timeout=30)
        proc = None
        out = home / "edges.parquet"
        started = time.perf_counter()
        command = [sys.executable, "-m", "service", "export", "edges", "-o", str(out)]
        timed = subprocess.run(
            ["/usr/bin/time", "-f", "%M", *command],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        elapsed = time.perf_counter() - started
        peak_mib = int(timed.stderr.strip().splitlines()[-1]) / 1024
        print(
            f"\nexport edges -> Parquet: {built.n_edges:,} rows in {elapsed:.1f} s"
            f" = {built.n_edges / elapsed / 1e3:.0f}k rows/s; {out.stat().st_size / 2**20:.0f} MiB;"
            f" peak RSS of the export process {peak_mib:.0f} MiB"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
