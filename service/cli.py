"""The `latent-trees` CLI: thin; parse, call, render. A ServiceError prints one line, exit 1."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from service import errors, settings
from service.db import engine as db_engine
from service.db import migrate, queries, server

app = typer.Typer(
    name="latent-trees",
    help="Feature-splitting trees across SAE widths, indexed in PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The database: migrations, URL, embedded server.", no_args_is_help=True)
family_app = typer.Typer(help="Families of saes.", no_args_is_help=True)
sae_app = typer.Typer(help="Saes of a family.", no_args_is_help=True)
store_app = typer.Typer(help="The store of activations and model inputs.", no_args_is_help=True)
job_app = typer.Typer(help="Jobs: list them, retry a failed one.", no_args_is_help=True)
explanations_app = typer.Typer(
    help="Explanations of latents, from Neuronpedia exports.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(job_app, name="job")
app.add_typer(store_app, name="store")
app.add_typer(family_app, name="family")
app.add_typer(sae_app, name="sae")
app.add_typer(explanations_app, name="explanations")

out = Console(soft_wrap=True)
T = TypeVar("T")


def _engine(*, migrated: bool = True) -> Engine:
    engine = db_engine.get()
    if not migrated:
        return engine
    if settings.get().database_url is None and migrate.current(engine) is None:
        migrate.upgrade(engine)  # the embedded server's new database: nothing to set up
    return migrate.require_head(engine)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    engine = _engine(migrated=False)
    migrate.upgrade(engine, revision)
    out.print(f"database at revision {migrate.current(engine)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops everything.")],
) -> None:
    """Revert migrations down to REVISION."""
    engine = _engine(migrated=False)
    migrate.downgrade(engine, revision)
    out.print(f"database at revision {migrate.current(engine) or 'base'}")


@db_app.command("url")
def db_url() -> None:
    """Print the database URL in use (libpq form, for psql and psycopg)."""
    config = settings.get()
    url = db_engine.url(config)
    db_engine.create(url, config.connect_timeout).dispose()
    typer.echo(url)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server, if it runs."""
    config = settings.get()
    if config.database_url:
        raise errors.ServiceError("DATABASE_URL is set: there is no embedded server to stop")
    stopped = server.stop(config.home)
    out.print("embedded server stopped" if stopped else "embedded server was not running")


@db_app.command("reader")
def db_reader(
    role: Annotated[str, typer.Argument(help="Role name, e.g. dashboards.")],
    password: Annotated[
        str | None, typer.Option("--password", help="Its password (else none is set).")
    ] = None,
) -> None:
    """Create or update a read-only login role for dashboards, whose statements time out after
    LATENT_TREES_STATEMENT_TIMEOUT seconds."""
    from service.db import roles

    config = settings.get()
    engine = _engine()
    with engine.begin() as conn:
        created = roles.grant_reader(conn, role, password, config.statement_timeout)
    scheme, rest = db_engine.url(config).split("://", 1)
    url = f"{scheme}://{role}@{rest.split('@', 1)[-1]}"
    out.print(
        f"role {role} {'created' if created else 'updated'}: read-only, statement timeout"
        f" {config.statement_timeout:g} s; connect with {url}",
        markup=False,
    )


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class InputsDtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@family_app.command("create")
def family_create(
    name: Annotated[str, typer.Argument(help="Family name, e.g. S.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model to capture inputs from: folder, .gguf file, hub id."),
    ] = None,
    hook: Annotated[
        str | None,
        typer.Option("--hook", help="N, blocks.N.hook_resid_post or blocks.N.hook_resid_pre."),
    ] = None,
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="Text to run: .txt, or .jsonl with 'text'.")
    ] = None,
    tokens: Annotated[int | None, typer.Option("--tokens", help="Tokens to capture.")] = None,
    inputs: Annotated[
        Path | None, typer.Option("--inputs", help="Precomputed inputs [T, d_in] instead.")
    ] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 128,
    keep_first: Annotated[
        bool,
        typer.Option("--keep-first", help="Keep each sequence's first position (an outlier)."),
    ] = False,
    max_norm_ratio: Annotated[
        float | None,
        typer.Option("--max-norm-ratio", help="Also skip tokens with norm > R x the median."),
    ] = None,
    dtype: Annotated[
        InputsDtype, typer.Option("--dtype", help="How the inputs are stored.")
    ] = InputsDtype.float32,
) -> None:
    """Register a family: by name only (for activation files), or with model inputs captured
    from --model at --hook over --corpus, or read from --inputs."""
    from service import families
    from service.sources import model as model_

    config = settings.get()
    engine = _engine()
    model_options = {"--model": model, "--hook": hook, "--corpus": corpus, "--tokens": tokens}
    given = [flag for flag, value in model_options.items() if value is not None]
    if inputs is not None and given:
        raise errors.BadInput(f"--inputs: expected it alone, got it with {', '.join(given)}")
    if given and len(given) < len(model_options):
        missing = [flag for flag in model_options if flag not in given]
        raise errors.BadInput(f"{', '.join(given)}: expected also {', '.join(missing)}")
    if model is not None and hook is not None and corpus is not None and tokens is not None:
        spec = model_.Capture(
            model=model,
            hook=hook,
            corpus=corpus,
            n_tokens=tokens,
            seq_len=seq_len,
            keep_first=keep_first,
            max_norm_ratio=max_norm_ratio,
            device=config.device,
        )
        report = Console(stderr=True, soft_wrap=True)

        def progress(line: str) -> None:
            report.print(line, markup=False, highlight=False)

        created = families.create_from_model(engine, config, name, spec, dtype.value, progress)
    elif inputs is not None:
        created = families.create_from_inputs(engine, config, name, inputs, dtype.value)
    else:
        created = families.create(engine, name)
    if created.inputs is None:
        out.print(f"family {name} created")
    else:
        skipped = created.inputs.get("skipped")
        note = f" (skipped {skipped})" if skipped else ""
        out.print(
            f"family {name} created with {created.n_tokens:,} model inputs of d_in"
            f" {created.d_in}{note}"
        )


@sae_app.command("link")
def sae_link(
    name: Annotated[str, typer.Argument(help="The sae, e.g. S/2.")],
    neuronpedia: Annotated[
        str | None,
        typer.Option("--neuronpedia", help="MODEL/SOURCE on Neuronpedia; omit to unlink."),
    ] = None,
) -> None:
    """Link an sae to its Neuronpedia page: latent cards and the viewer link out to it."""
    with _engine().begin() as conn:
        queries.link_neuronpedia(conn, name, neuronpedia)
    out.print(f"sae {name}: neuronpedia {neuronpedia or 'unlinked'}", markup=False)


@explanations_app.command("import")
def explanations_import(
    sae: Annotated[str, typer.Argument(help="The sae, e.g. S/2 (linked to Neuronpedia).")],
    path: Annotated[
        Path,
        typer.Argument(help="An export file, or a folder of explanations/batch-N.jsonl.gz."),
    ],
) -> None:
    """Attach a Neuronpedia export's explanations to an sae's latents (replacing earlier ones);
    trees, cards, exports and the viewer show them."""
    from service import explanations

    done = explanations.import_(_engine(), sae, path)
    replaced = f", replacing {done.n_replaced:,}" if done.n_replaced else ""
    out.print(
        f"sae {done.sae}: {done.n_explanations:,} explanations of {done.n_latents:,} latents"
        f" from {done.n_files} file(s){replaced}",
        markup=False,
    )


@sae_app.command("delete")
def sae_delete(name: Annotated[str, typer.Argument(help="The sae, e.g. S/2.")]) -> None:
    """Remove an sae with its latents, edges and jobs, and plan the job its removal makes
    adjacent (next smaller -> next larger)."""
    from service import saes

    done = saes.delete(_engine(), settings.get(), name)
    planned = f"; job planned: {done.job_ids[0]}" if done.job_ids else ""
    out.print(
        f"sae {done.name} deleted: {done.n_latents:,} latents, {done.n_edges:,} edges{planned}",
        markup=False,
    )


class JobState(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


@job_app.command("list")
def job_list(
    state: Annotated[
        JobState | None, typer.Option("--state", help="Only jobs in this state.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Jobs with their state, attempts, worker, lease, error and timings."""
    from service.db import jobs

    with _engine().connect() as conn:
        rows = jobs.listing(conn, state.value if state else None)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("id", "pair", "state", "attempts", "worker", "lease", "edges", "seconds", "error")
    for r in rows:
        table.add_row(
            str(r["id"]),
            f"{r['parent']} -> {r['child']}",
            r["state"],
            f"{r['attempts']}/{r['max_attempts']}",
            r["worker"] or "-",
            _lease(r),
            f"{r['n_edges']:,}" if r["n_edges"] is not None else "-",
            f"{r['seconds']:.1f}" if r["seconds"] is not None and r["state"] != "running" else "-",
            (r["error"] or "")[:80],
        )
    out.print(table)


def _lease(job: dict[str, Any]) -> str:
    """A job's lease in words: "expired", "until 12:34:56", or "-" without one."""
    if job["lease_until"] is None:
        return "-"
    return "expired" if job["lease_expired"] else f"until {job['lease_until']:%H:%M:%S}"


@job_app.command("retry")
def job_retry(job_id: Annotated[int, typer.Argument(help="The failed job's id.")]) -> None:
    """Run a failed job again: back to pending, with a fresh count of attempts."""
    from service.db import jobs

    with _engine().begin() as conn:
        jobs.retry(conn, job_id)
    out.print(f"job {job_id} is pending again")


@store_app.command("gc")
def store_gc() -> None:
    """Remove store entries that no sae or family references, and the temporary folders of
    killed ingests (safe while other commands run)."""
    from service import entries
    from service.sources import store

    config = settings.get()
    done = entries.collect(_engine(), store.Store.under(config.home))
    out.print(
        f"removed {done.entries} unreferenced entries ({done.entry_bytes / 2**20:,.1f} MiB) and"
        f" {done.tmp_folders} abandoned temporary folders ({done.tmp_bytes / 2**20:,.1f} MiB);"
        f" {done.kept} entries in use",
        markup=False,
    )


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="Also each family's splits, merges, persisting, new and vanishing latents per"
            " pair of levels (reads every qualifying edge).",
        ),
    ] = False,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="For --summary. Default: the setting.")
    ] = None,
) -> None:
    """Families, saes and jobs with their states."""
    config = settings.get()
    _check_score("--threshold", threshold)
    t = config.threshold if threshold is None else threshold
    with _engine().connect() as conn:
        report = queries.status(conn)
        if summary:
            for family in report["families"]:
                family["summary"] = queries.family_summary(
                    conn, family["name"], t, config.min_active_tokens
                )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table("family", "sae", "level", "d_sae", "latents", "state", title="saes")
    for family in report["families"]:
        if not family["saes"]:
            table.add_row(family["name"], "-", "-", "-", "-", "-")
        for sae in family["saes"]:
            table.add_row(
                family["name"],
                sae["name"],
                str(sae["level"]),
                str(sae["d_sae"]),
                str(sae["n_latents"]),
                sae["state"],
            )
    out.print(table)
    out.print("jobs: " + ", ".join(f"{k} {v}" for k, v in report["jobs"].items()))
    if summary:
        levels = Table(
            "family",
            "pair",
            "split",
            "merge",
            "persist",
            "new",
            "vanish",
            "largest splits",
            title=f"neighbouring levels at threshold {t:g}",
        )
        for family in report["families"]:
            for row in family["summary"]:
                largest = ", ".join(
                    f"{s['parent'].split('/', 1)[1]} ({s['n_children']})"
                    for s in row["largest_splits"][:3]
                )
                counts = (row[k] for k in ("split", "merge", "persist", "new", "vanish"))
                levels.add_row(
                    family["name"],
                    f"{row['parent_sae'].split('/', 1)[1]} -> {row['child_sae'].split('/', 1)[1]}",
                    *(str(c) if row["scored"] else "-" for c in counts),
                    largest if row["scored"] else "not scored yet",
                )
        out.print(levels)


@app.command("ingest")
def ingest_cmd(
    family: Annotated[str, typer.Argument(help="The family to add the sae to.")],
    activations: Annotated[
        Path | None, typer.Option("--activations", help="Activation file or directory of shards.")
    ] = None,
    sae: Annotated[
        Path | None,
        typer.Option("--sae", help="Checkpoint folder (SAELens, sparsify, dictionary_learning)."),
    ] = None,
    d_sae: Annotated[
        int | None, typer.Option("--d-sae", help="Latents, if the file does not say.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Sae name, e.g. S/3.")] = None,
    device: Annotated[
        DeviceChoice | None, typer.Option("--device", help="Where to encode (with --sae).")
    ] = None,
    release: Annotated[
        str | None,
        typer.Option(
            "--release",
            help="A SAELens pretrained release (e.g. gemma-scope-2b-pt-res), or a Hugging Face"
            " repository OWNER/NAME; with --sae-id.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Encode (with --sae or --release) as Ray tasks on this cluster, one per shard"
            " of tokens: auto, local or ray://host:port (overrides LATENT_TREES_RAY).",
        ),
    ] = None,
    sae_id: Annotated[
        str | None, typer.Option("--sae-id", help="The sae in the release (with --release).")
    ] = None,
) -> None:
    """Add an sae from activations, or from a checkpoint (a folder, or a pretrained release
    read from the local Hugging Face cache) that encodes the family's model inputs, and plan
    the jobs for its new neighbour pairs."""
    from service import ingest

    config = settings.get()
    if device is not None:
        config = config.model_copy(update={"device": device.value})
    if ray is not None:
        if activations is not None:
            raise errors.BadInput("ingest: --ray encodes a checkpoint (--sae or --release)")
        config = config.model_copy(update={"ray": ray})
    if (release is None) != (sae_id is None):
        raise errors.BadInput("ingest: --release and --sae-id go together")
    if sum(x is not None for x in (activations, sae, release)) != 1:
        raise errors.BadInput(
            "ingest: expected exactly one of --activations FILE, --sae DIR or --release R"
            " --sae-id ID"
        )
    if release is not None and sae_id is not None:
        if d_sae is not None:
            raise errors.BadInput("--d-sae: the checkpoint says how many latents it has")
        added = ingest.ingest_release(_engine(), config, family, release, sae_id, name)
    elif sae is not None:
        if d_sae is not None:
            raise errors.BadInput("--d-sae: the checkpoint says how many latents it has")
        added = ingest.ingest_checkpoint(_engine(), config, family, sae, name)
    else:
        assert activations is not None
        added = ingest.ingest_activations(_engine(), config, family, activations, d_sae, name)
    quality = ""
    if "fvu" in added.source:
        quality = f", L0 {added.source['l0']:.1f}, FVU {added.source['fvu']:.3f}"
    out.print(
        f"sae {added.name}: d_sae {added.d_sae}, {added.n_tokens:,} tokens,"
        f" {added.nnz:,} activations{quality}; jobs planned: {added.job_ids or 'none'}",
        markup=False,
    )
    for note in added.notes:
        out.print(f"note: {note}", markup=False)


@app.command("worker")
def worker_cmd(
    once: Annotated[bool, typer.Option("--once", help="Drain pending jobs and exit.")] = False,
    device: Annotated[
        DeviceChoice | None, typer.Option("--device", help="Overrides LATENT_TREES_DEVICE.")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Score each job's blocks as Ray tasks on this cluster: auto, local or"
            " ray://host:port (overrides LATENT_TREES_RAY).",
        ),
    ] = None,
) -> None:
    """Run jobs: with --once until none is pending, else until stopped (SIGTERM, Ctrl-C)."""
    from service.db import jobs
    from service.jobs import edges, worker

    config = settings.get()
    if device is not None:
        config = config.model_copy(update={"device": device.value})
    if ray is not None:
        config = config.model_copy(update={"ray": ray})

    def report(result: edges.Outcome | worker.Failure) -> None:
        out.print(worker.describe(result), markup=False, highlight=False)

    runner = worker.Worker(_engine(), config, report)
    if once:
        results = runner.drain()
        runner.reap()
        if not results:
            out.print("no pending jobs")
        with _engine().connect() as conn:
            running = jobs.listing(conn, "running")
        for j in running:  # held by another worker, or by a dead one until its lease runs out
            out.print(
                f"job {j['id']} {j['parent']} -> {j['child']} is running on {j['worker']}"
                f" (lease {_lease(j)})",
                markup=False,
            )
        if code := worker.exit_code(results):
            raise SystemExit(code)
        return
    runner.serve(db_engine.url(config))


class TreeFormat(StrEnum):
    text = "text"
    json = "json"
    quick_list = "quick-list"


@app.command("tree")
def tree_cmd(
    label: Annotated[str, typer.Argument(help="Root latent, e.g. S/1/3.")],
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Default: LATENT_TREES_THRESHOLD.")
    ] = None,
    fmt: Annotated[
        TreeFormat,
        typer.Option("--format", help="text, json, or quick-list (a Neuronpedia quick-list link)."),
    ] = TreeFormat.text,
    n_contexts: Annotated[
        int, typer.Option("--contexts", min=0, help="Top activations shown per node (text).")
    ] = 1,
) -> None:
    """Print the rooted tree of LABEL: qualifying children, then theirs, and so on."""
    from service import trees

    config = settings.get()
    _check_score("--threshold", threshold)
    with _engine().connect() as conn:
        rows = queries.rooted_tree(
            conn,
            label,
            config.threshold if threshold is None else threshold,
            config.min_active_tokens,
        ).rows
        linked = queries.neuronpedia_ids(conn, label.split("/", 1)[0])
    if fmt is TreeFormat.quick_list:
        link = trees.quick_list(rows, linked)
        if link is None:
            raise errors.BadInput(
                f"no sae of {label.split('/', 1)[0]} is linked to Neuronpedia:"
                " run `latent-trees sae link S/1 --neuronpedia MODEL/SOURCE` first"
            )
        typer.echo(link)
        return
    root = trees.nest(rows)
    if fmt is TreeFormat.json:
        typer.echo(json.dumps(root, indent=2))
    else:
        typer.echo(trees.render(root, n_contexts))


class ExportKind(StrEnum):
    edges = "edges"
    latents = "latents"
    trees = "trees"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


@app.command("export")
def export_cmd(
    kind: Annotated[ExportKind, typer.Argument(help="edges, latents or trees (the forest).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="File (.jsonl, .csv, .parquet) or - (stdout).")
    ],
    fmt: Annotated[
        ExportFormat | None, typer.Option("--format", help="Default: from the file's suffix.")
    ] = None,
    family: Annotated[str | None, typer.Option("--family", help="Only this family.")] = None,
    parent_sae: Annotated[
        str | None, typer.Option("--parent-sae", help="Edges: parents in this sae.")
    ] = None,
    child_sae: Annotated[
        str | None, typer.Option("--child-sae", help="Edges: children in this sae.")
    ] = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Edges: score >= this.")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Edges: for `qualifies`; default the setting."),
    ] = None,
) -> None:
    """Export edges, latents or the forest, streaming, with the parameters recorded in the file."""
    from service import exports

    _check_score("--min-score", min_score)
    _check_score("--threshold", threshold)
    config = settings.get()
    request = exports.Request(
        kind=kind.value,
        output=output,
        format=fmt.value if fmt is not None else None,
        family=family,
        parent_sae=parent_sae,
        child_sae=child_sae,
        min_score=min_score,
        threshold=config.threshold if threshold is None else threshold,
        min_active_tokens=config.min_active_tokens,
    )
    exports.format_of(request)  # a bad output is refused before the database is touched
    written = exports.export(_engine(), request)
    if output != "-":
        what = {"trees": "forest nodes (rows of trees)"}.get(kind.value, kind.value)
        out.print(f"{written.n_rows:,} {what} written to {output} ({written.format})")


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes.")] = 1,
) -> None:
    """Serve the JSON API and the tree and DAG viewer (open http://HOST:PORT/)."""
    from service.api import serve

    config = settings.get()
    # Fail here, in one line, if the port is taken or the database is unreachable or behind;
    # the server's processes then find the embedded server that this one started.
    serve.check_port(host, port)
    _engine().dispose()
    out.print(f"serving latent-trees on http://{host}:{port}/ (Ctrl-C stops)", markup=False)
    serve.run(host, port, workers, config.log_level.lower())


@app.command("demo")
def demo_cmd(
    planted: Annotated[
        bool, typer.Option("--planted", help="A synthetic family with a known hierarchy.")
    ] = False,
    tokens: Annotated[
        int, typer.Option("--tokens", min=1000, help="Model tokens to capture (real demo).")
    ] = 60_000,
) -> None:
    """Run the whole pipeline (migrates the database first): SmolLM2 on Python's docs, three
    TopK saes, trees with contexts; or --planted, a synthetic family."""
    from service import demo

    if planted:
        demo.run(_engine(migrated=False), settings.get(), typer.echo)
    else:
        sizes = demo.ModelDemo(n_tokens=tokens)
        demo.run_model(_engine(migrated=False), settings.get(), typer.echo, sizes)


def _check_score(flag: str, value: float | None) -> None:
    """A score bound (threshold, minimum score) is a finite number >= 0, as the API wants."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise errors.BadInput(f"{flag} {value}: expected a finite number >= 0")


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except errors.ServiceError as exc:
        Console(stderr=True, soft_wrap=True).print(
            f"latent-trees: error: {errors.describe(exc)}", markup=False, highlight=False
        )
        raise SystemExit(exc.exit_code) from None


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `latent-trees` console script."""

    def go() -> Any:
        # SIGTERM unwinds like Ctrl-C, so that an ingest removes its temporary files (the
        # worker installs its own handler to finish the job at hand).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        config = settings.get()
        logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
        try:
            args = argv if argv is not None else sys.argv[1:]
            return app(args=args, prog_name="latent-trees", standalone_mode=False)
        except CLICK_ERRORS as exc:  # one line, not click's box
            if not exc.format_message():  # no arguments: the help was the answer
                raise SystemExit(0) from None
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "latent-trees"
            raise UsageError(f"{where}: {exc.format_message()} (see --help)") from None
        except typer.Abort:
            raise SystemExit(130) from None

    return _run(go)


# Click's errors (usage, bad parameter): typer >= 0.20 carries its own copy of click.
CLICK_ERRORS = tuple({click.ClickException, getattr(typer, "_click", click).ClickException})


class UsageError(errors.ServiceError):
    """the command line is not understood."""

    exit_code = 2
