"""The `latent-trees` CLI: thin; parse, call, render. A ServiceError prints one line, exit 1."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

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
app.add_typer(db_app, name="db")
app.add_typer(family_app, name="family")

out = Console(soft_wrap=True)
T = TypeVar("T")


def _engine(*, migrated: bool = True) -> Engine:
    engine = db_engine.get()
    if migrated:
        have, want = migrate.current(engine), migrate.head()
        if have != want:
            raise errors.ServiceError(
                f"the database schema is at revision {have or 'none'}, expected {want}:"
                " run `latent-trees db upgrade`"
            )
    return engine


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


@family_app.command("create")
def family_create(name: Annotated[str, typer.Argument(help="Family name, e.g. S.")]) -> None:
    """Register a family (its saes are added with `ingest`)."""
    with _engine().begin() as conn:
        queries.create_family(conn, name)
    out.print(f"family {name} created")


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Families, saes and jobs with their states."""
    with _engine().connect() as conn:
        report = queries.status(conn)
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


@app.command("ingest")
def ingest_cmd(
    family: Annotated[str, typer.Argument(help="The family to add the sae to.")],
    activations: Annotated[
        Path, typer.Option("--activations", help="Activation file or directory of shards.")
    ],
    d_sae: Annotated[
        int | None, typer.Option("--d-sae", help="Latents, if the file does not say.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Sae name, e.g. S/3.")] = None,
) -> None:
    """Add an sae from activations and plan the jobs for its new neighbour pairs."""
    from service import ingest

    added = ingest.ingest_activations(_engine(), settings.get(), family, activations, d_sae, name)
    out.print(
        f"sae {added.name}: d_sae {added.d_sae}, {added.n_tokens:,} tokens,"
        f" {added.nnz:,} activations; jobs planned: {added.job_ids or 'none'}"
    )


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command("worker")
def worker_cmd(
    once: Annotated[bool, typer.Option("--once", help="Drain pending jobs and exit.")] = False,
    device: Annotated[
        DeviceChoice | None, typer.Option("--device", help="Overrides LATENT_TREES_DEVICE.")
    ] = None,
) -> None:
    """Run jobs: with --once until none is pending, else until stopped (SIGTERM, Ctrl-C)."""
    from service.jobs import edges, worker

    config = settings.get()
    if device is not None:
        config = config.model_copy(update={"device": device.value})

    def report(result: edges.Outcome | worker.Failure) -> None:
        out.print(worker.describe(result), markup=False, highlight=False)

    runner = worker.Worker(_engine(), config, report)
    if once:
        results = runner.drain()
        runner.reap()
        if not results:
            out.print("no pending jobs")
        if any(isinstance(r, worker.Failure) for r in results):
            raise SystemExit(1)
        return
    runner.serve(db_engine.url(config))


class TreeFormat(StrEnum):
    text = "text"
    json = "json"


@app.command("tree")
def tree_cmd(
    label: Annotated[str, typer.Argument(help="Root latent, e.g. S/1/3.")],
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Default: LATENT_TREES_THRESHOLD.")
    ] = None,
    fmt: Annotated[TreeFormat, typer.Option("--format", help="text or json.")] = TreeFormat.text,
) -> None:
    """Print the rooted tree of LABEL: qualifying children, then theirs, and so on."""
    from service import trees

    config = settings.get()
    if threshold is not None and not threshold >= 0:
        raise errors.BadInput(f"--threshold {threshold}: expected a number >= 0")
    with _engine().connect() as conn:
        rows = queries.rooted_tree(
            conn,
            label,
            config.threshold if threshold is None else threshold,
            config.min_active_tokens,
        )
    root = trees.nest(rows)
    if fmt is TreeFormat.json:
        typer.echo(json.dumps(root, indent=2))
    else:
        typer.echo(trees.render(root))


@app.command("demo")
def demo_cmd() -> None:
    """Run the whole pipeline on a planted family (migrates the database first)."""
    from service import demo

    demo.run(_engine(migrated=False), settings.get(), typer.echo)


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except errors.ServiceError as exc:
        Console(stderr=True, soft_wrap=True).print(
            f"latent-trees: error: {errors.describe(exc)}", markup=False, highlight=False
        )
        raise SystemExit(exc.exit_code) from None


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `latent-trees` console script."""

    def go() -> Any:
        config = settings.get()
        logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
        return app(args=argv if argv is not None else sys.argv[1:], standalone_mode=True)

    return _run(go)
