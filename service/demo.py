"""`latent-trees demo`: the whole pipeline on a planted family, on the configured database."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.engine import Connection, Engine

from service import ingest, settings, trees
from service.db import migrate, queries
from service.jobs import edges, worker
from service.sources import planted

FAMILY = "demo"


def run(engine: Engine, config: settings.Settings, say: Callable[[str], None]) -> None:
    """Plant a family of three widths, ingest the widest two first, insert the middle one,
    drain the jobs and print a rooted tree."""
    started = time.perf_counter()
    migrate.upgrade(engine)
    with engine.begin() as conn:
        if queries.delete_family(conn, FAMILY):
            say(f"replaced the earlier family {FAMILY!r}")
        queries.create_family(conn, FAMILY)
    spec = planted.PlantedSpec(widths=(32, 96, 288), n_tokens=20_000, seed=0)
    family = planted.generate(spec)
    folder = config.home / "demo"
    files = [family.write(folder, level) for level in range(len(spec.widths))]
    say(f"planted family: widths {spec.widths}, {spec.n_tokens:,} tokens, files in {folder}")

    def report(result: edges.Outcome | worker.Failure) -> None:
        say("  " + worker.describe(result))

    runner = worker.Worker(engine, config, report)
    for level in (0, 2, 1):  # the middle width last: it is inserted between the other two
        added = ingest.ingest_activations(engine, config, FAMILY, files[level])
        say(
            f"ingest {files[level].name} -> {added.name} (d_sae {added.d_sae}):"
            f" jobs {added.job_ids}"
        )
        runner.drain()

    first_merge = spec.widths[-1] - spec.noise_per_sae - 2
    siblings, apart = (f"{FAMILY}/2/{first_merge + m}" for m in (0, 1))
    with engine.connect() as conn:
        root = _forest_root(conn, siblings)
        rows = queries.rooted_tree(conn, root, config.threshold, config.min_active_tokens)
        forest_parent = conn.exec_driver_sql(
            "SELECT parent FROM tree_edges WHERE child = %(c)s", {"c": apart}
        ).scalar_one()
        other = conn.exec_driver_sql(
            "SELECT parent FROM latent_edges WHERE child = %(c)s AND adjacent"
            " AND score > 0.6 AND parent <> %(p)s",
            {"c": apart, "p": forest_parent},
        ).scalar_one()
        other_root = _forest_root(conn, other)
    say(f"\nrooted tree of {root} at threshold {config.threshold} (latent-trees tree {root}):")
    say(trees.render(trees.nest(rows)))
    say(
        f"\n{siblings} merges two siblings: it hangs under the better one and lists the other"
        f" under 'also under'. {apart} merges latents of two trees: the forest (tree_edges)"
        f" hangs it under {forest_parent}, while `latent-trees tree {other_root}` draws it"
        f" under {other}."
    )
    say(f"done in {time.perf_counter() - started:.1f} s. Query the edges with SQL:")
    sql = "SELECT * FROM latent_edges ORDER BY score DESC LIMIT 5"
    say(f'  psql "$(latent-trees db url)" -c "{sql}"')


def _forest_root(conn: Connection, label: str) -> str:
    return str(
        conn.exec_driver_sql(
            "SELECT root FROM tree_nodes WHERE node = %(n)s", {"n": label}
        ).scalar_one()
    )
