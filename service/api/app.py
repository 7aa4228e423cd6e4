"""`latent-trees serve`: the JSON API for dashboards and the tree and DAG viewer page.

Handlers are plain functions over one read-only engine whose statements time out
(`LATENT_TREES_STATEMENT_TIMEOUT`); FastAPI runs them in its thread pool. Every error has one
shape, `{"ok": false, "error": "..."}`, with a 4xx or 5xx status.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException

import service
from service import errors, settings, trees
from service.api import schemas
from service.db import browse, migrate, queries, tables
from service.db import engine as db_engine

log = logging.getLogger(__name__)
STATIC = pathlib.Path(__file__).with_name("static")
STATUS = {
    errors.BadInput: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.DatabaseUnreachable: 503,
}

Threshold = Annotated[
    float | None,
    Query(ge=0, le=1e6, allow_inf_nan=False, description="Default: LATENT_TREES_THRESHOLD."),
]
Label = Annotated[
    str,
    Path(
        pattern=browse.LABEL.pattern,
        description="A latent label, FAMILY/SAE/INDEX (URL-encoded or not).",
        examples=["S/2/65"],
    ),
]
FamilyName = Annotated[str | None, Query(pattern=tables.NAME_PATTERN, description="e.g. S")]
SaeName = Annotated[str | None, Query(pattern=browse.SAE_NAME.pattern, description="e.g. S/2")]
# What a parameter that fails its pattern was expected to be, for the one-line error.
EXPECTED = {
    "label": "FAMILY/SAE/INDEX, e.g. S/2/65",
    "family": "a family name: letters, digits and '_.:+-'",
    "parent_sae": "FAMILY/SAE, e.g. S/1",
    "child_sae": "FAMILY/SAE, e.g. S/2",
    "after": "the `next` token of an earlier page",
    "q": "text without NUL characters",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody} for code in (400, 404, 500, 503)
}


class JSON(JSONResponse):
    """Compact JSON; NaN and infinity never occur (the database refuses them)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def fail(status: int, message: str) -> JSON:
    """The one error shape."""
    return JSON({"ok": False, "error": message}, status_code=status)


def create_app(engine: Engine, config: settings.Settings) -> FastAPI:
    """The app over `engine` (read-only with a statement timeout, in production)."""
    app = FastAPI(
        title="latent-trees",
        version=service.__version__,
        description="Feature-splitting trees across SAE widths: latents, edges, trees, DAGs.",
        default_response_class=JSON,
    )

    def read(fn: Any, *args: Any) -> Any:
        with engine.connect() as conn:
            return fn(conn, *args)

    def threshold_of(value: float | None) -> float:
        return config.threshold if value is None else value

    @app.exception_handler(errors.ServiceError)
    def _service_error(_request: Request, exc: errors.ServiceError) -> JSON:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
        return fail(status, errors.describe(exc))

    @app.exception_handler(RequestValidationError)
    def _bad_request(_request: Request, exc: RequestValidationError) -> JSON:
        first = exc.errors()[0]
        where = " ".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        if first.get("type") == "string_pattern_mismatch" and where in EXPECTED:
            return fail(400, f"{where} {first.get('input')!r}: expected {EXPECTED[where]}")
        return fail(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, exc: HTTPException) -> JSON:
        return fail(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(sa.exc.OperationalError)
    def _database_error(_request: Request, exc: sa.exc.OperationalError) -> JSON:
        log.warning("database error", exc_info=exc)
        cancelled = "canceling statement" in str(exc.orig)
        message = "the query ran past the statement timeout" if cancelled else "database error"
        return fail(503, f"{message}: {' '.join(str(exc.orig).split())[:200]}")

    @app.exception_handler(Exception)
    def _internal_error(_request: Request, exc: Exception) -> JSON:
        log.error("internal error", exc_info=exc)
        return fail(500, f"internal error: {type(exc).__name__}")

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/families", response_model=None, responses={200: {"model": schemas.Families}})
    def families() -> JSON:
        """Families with their saes by level."""
        return JSON({"ok": True, "families": read(browse.families)})

    @app.get(
        "/api/latents/{label:path}",
        response_model=None,
        responses={200: {"model": schemas.LatentCard}, **ERRORS},
    )
    def latent_card(
        label: Label,
        threshold: Threshold = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Parents, children")] = 100,
    ) -> JSON:
        """A latent card: statistics, top activations in context, place in the forest, and
        parents and children with every score part (`qualifies` at `threshold`)."""
        t = threshold_of(threshold)
        card = read(browse.latent_card, label, t, config.min_active_tokens, limit)
        return JSON({"ok": True, **card, "threshold": t})

    @app.get(
        "/api/trees/{label:path}",
        response_model=None,
        responses={200: {"model": schemas.Tree}, **ERRORS},
    )
    def tree(
        label: Label,
        threshold: Threshold = None,
        shape: Literal["nested", "flat"] = "nested",
        contexts: Annotated[int, Query(ge=0, le=100, description="Per node.")] = 0,
    ) -> JSON:
        """The rooted tree of `label`: nested (`children`) or flat (`parent`,
        `other_parents`)."""
        t = threshold_of(threshold)
        browse.check_label(label)
        rows = read(queries.rooted_tree, label, t, config.min_active_tokens, contexts)
        body: dict[str, Any] = {
            "ok": True,
            "threshold": t,
            "min_active_tokens": config.min_active_tokens,
            "shape": shape,
            "root": trees.nest(rows) if shape == "nested" else None,
            "nodes": rows if shape == "flat" else None,
        }
        return JSON(body)

    @app.get(
        "/api/dags/{label:path}",
        response_model=None,
        responses={200: {"model": schemas.Dag}, **ERRORS},
    )
    def dag(label: Label, threshold: Threshold = None) -> JSON:
        """The rooted DAG of `label`: `{nodes, links: [{source, target, weight}]}`."""
        t = threshold_of(threshold)
        found = read(browse.dag, label, t, config.min_active_tokens)
        return JSON({"ok": True, "threshold": t, **found})

    @app.get(
        "/api/edges", response_model=None, responses={200: {"model": schemas.EdgePage}, **ERRORS}
    )
    def edges(
        family: FamilyName = None,
        parent_sae: SaeName = None,
        child_sae: SaeName = None,
        min_score: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: Annotated[
            str | None,
            Query(pattern=browse.AFTER.pattern, description="`next` of the previous page"),
        ] = None,
    ) -> JSON:
        """Stored edges with every score part, in a stable order, keyset-paginated."""
        which = browse.EdgeFilter(family, parent_sae, child_sae, min_score)
        rows, next_token = read(browse.edges_page, which, limit, after)
        return JSON({"ok": True, "rows": rows, "next": next_token})

    @app.get(
        "/api/search", response_model=None, responses={200: {"model": schemas.Matches}, **ERRORS}
    )
    def search(
        q: Annotated[
            str,
            Query(max_length=200, pattern="^[^\\x00]*$", description="Label prefix, e.g. S/2/6"),
        ] = "",
        family: FamilyName = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> JSON:
        """Latents whose label starts with `q`, smallest sae first."""
        return JSON({"ok": True, "rows": read(browse.search, q, family, limit)})

    return app


def create() -> FastAPI:
    """The app from the settings (uvicorn's factory): a read-only engine, checked at head."""
    config = settings.get()
    engine = db_engine.create(
        db_engine.url(config),
        config.connect_timeout,
        read_only_timeout=config.statement_timeout,
        pool_size=20,
    )
    return create_app(migrate.require_head(engine), config)
