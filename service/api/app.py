"""`latent-trees serve`: the JSON API for dashboards and the tree and DAG viewer page.

Each handler validates its parameters (FastAPI, from the annotations that also make the
OpenAPI) and computes a plain dict in one read-only REPEATABLE READ transaction whose statements
time out (`LATENT_TREES_STATEMENT_TIMEOUT`); the body is rendered once with orjson and kept
while the database snapshot is unchanged (service/api/cache.py). FastAPI runs handlers in its
thread pool. Every error has one shape, `{"ok": false, "error": "..."}`, 4xx or 5xx.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Connection, Engine
from starlette.exceptions import HTTPException

import service
from service import errors, settings, trees
from service.api import cache, schemas
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
MaxNodes = Annotated[
    int | None,
    Query(
        ge=1,
        le=1_000_000,
        description="Nodes returned, the first by depth (default: LATENT_TREES_API_MAX_NODES).",
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
SNAPSHOT = sa.text("SELECT CAST(pg_current_snapshot() AS text)")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody} for code in (400, 404, 500, 503)
}


class JSON(JSONResponse):
    """JSON by orjson: the errors, and the default class that the OpenAPI document names."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def fail(status: int, message: str) -> JSON:
    """The one error shape."""
    return JSON({"ok": False, "error": message}, status_code=status)


def create_app(engine: Engine, config: settings.Settings) -> FastAPI:
    """The app over `engine` (read-only, REPEATABLE READ, with a statement timeout, as
    `db_engine.create(url, read_only_timeout=...)` makes it)."""
    app = FastAPI(
        title="latent-trees",
        version=service.__version__,
        description="Feature-splitting trees across SAE widths: latents, edges, trees, DAGs.",
        default_response_class=JSON,
        # Swagger UI and ReDoc load their assets from a CDN; the OpenAPI document is enough.
        docs_url=None,
        redoc_url=None,
    )
    default_nodes = config.api_max_nodes
    store = cache.ResponseCache(int(config.api_cache_mb * 2**20)) if config.api_cache_mb else None

    # Probing the snapshot needs no transaction: one round trip decides a cache hit.
    probe = engine.execution_options(isolation_level="AUTOCOMMIT")

    def respond(request: Request, compute: Callable[[Connection], dict[str, Any]]) -> Response:
        """The body `compute` gives in one read transaction, or the one it gave under the
        same snapshot; a connection lost to a database restart is retried once."""
        key = request.url.path + "?" + urlencode(sorted(request.query_params.multi_items()))
        for attempt in (1, 2):
            try:
                if store is not None:
                    with probe.connect() as conn:
                        snapshot = conn.execute(SNAPSHOT).scalar_one()
                    body = store.get(key, snapshot)
                    if body is not None:
                        return reply(request, body, cache.etag(key, snapshot))
                snapshot, body = read(key, compute)
                return reply(request, body, cache.etag(key, snapshot))
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def read(key: str, compute: Callable[[Connection], dict[str, Any]]) -> tuple[str, bytes]:
        # Commit, not roll back, when done: a ROLLBACK makes psycopg forget its prepared
        # statements, and re-planning the rooted tree's recursive query cost 2.5 ms a request.
        with engine.connect() as conn:
            try:
                snapshot = conn.execute(SNAPSHOT).scalar_one()
                body = orjson.dumps({"ok": True, **compute(conn)})
            except errors.ServiceError:
                conn.commit()  # our error (bad or unknown input): the transaction is intact
                raise
            conn.commit()
        if store is not None:
            store.put(key, snapshot, body)
        return snapshot, body

    def reply(request: Request, body: bytes, tag: str) -> Response:
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={"ETag": tag})
        return Response(body, media_type="application/json", headers={"ETag": tag})

    def threshold_of(value: float | None) -> float:
        return config.threshold if value is None else value

    @app.middleware("http")
    async def head_as_get(request: Request, call_next: Callable[..., Any]) -> Response:
        """HEAD answers as GET would, without the body (monitors and `curl -I` use it)."""
        if request.method != "HEAD":
            return await call_next(request)
        request.scope["method"] = "GET"
        response = await call_next(request)
        return Response(status_code=response.status_code, headers=dict(response.headers))

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
    def families(request: Request) -> Response:
        """Families with their saes by level."""

        def compute(conn: Connection) -> dict[str, Any]:
            found = queries.families(conn)
            for family in found:
                # An sae's name is its label (FAMILY/SAE), as the API calls it.
                family["saes"] = [
                    {"label": sae["name"], **{k: v for k, v in sae.items() if k != "name"}}
                    for sae in family["saes"]
                ]
            return {"families": found}

        return respond(request, compute)

    @app.get(
        "/api/families/{name}/summary",
        response_model=None,
        responses={200: {"model": schemas.FamilySummary}, **ERRORS},
    )
    def family_summary(
        request: Request,
        name: Annotated[str, Path(pattern=tables.NAME_PATTERN, description="e.g. S")],
        threshold: Threshold = None,
    ) -> Response:
        """Per pair of neighbouring levels: latents that split, merge, persist, are new or
        vanish at `threshold`, and the largest splits."""
        t = threshold_of(threshold)
        return respond(
            request,
            lambda conn: {
                "family": name,
                "threshold": t,
                "min_active_tokens": config.min_active_tokens,
                "levels": queries.family_summary(conn, name, t, config.min_active_tokens),
            },
        )

    @app.get(
        "/api/latents/{label:path}",
        response_model=None,
        responses={200: {"model": schemas.LatentCard}, **ERRORS},
    )
    def latent_card(
        request: Request,
        label: Label,
        threshold: Threshold = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Parents, children")] = 100,
    ) -> Response:
        """A latent card: statistics, top activations in context, place in the forest, and
        parents and children with every score part (`qualifies` at `threshold`)."""
        t = threshold_of(threshold)

        def compute(conn: Connection) -> dict[str, Any]:
            card = browse.latent_card(conn, label, t, config.min_active_tokens, limit)
            return {**card, "threshold": t}

        return respond(request, compute)

    @app.get(
        "/api/trees/{label:path}",
        response_model=None,
        responses={200: {"model": schemas.Tree}, **ERRORS},
    )
    def tree(
        request: Request,
        label: Label,
        threshold: Threshold = None,
        shape: Literal["nested", "flat"] = "nested",
        contexts: Annotated[int, Query(ge=0, le=100, description="Per node.")] = 0,
        max_nodes: MaxNodes = None,
    ) -> Response:
        """The rooted tree of `label`: nested (`children`) or flat (`parent`,
        `other_parents`); its first `max_nodes` nodes by depth, `left_out` says how many
        more it has."""
        t = threshold_of(threshold)
        browse.check_label(label)

        def compute(conn: Connection) -> dict[str, Any]:
            reached = queries.rooted_tree(
                conn, label, t, config.min_active_tokens, contexts, max_nodes or default_nodes
            )
            return {
                "threshold": t,
                "min_active_tokens": config.min_active_tokens,
                "shape": shape,
                "root": trees.nest(reached.rows) if shape == "nested" else None,
                "nodes": reached.rows if shape == "flat" else None,
                "n_nodes": reached.n_nodes,
                "left_out": reached.left_out,
                "quick_list": trees.quick_list(
                    reached.rows, queries.neuronpedia_ids(conn, label.split("/", 1)[0])
                ),
            }

        return respond(request, compute)

    @app.get(
        "/api/dags/{label:path}",
        response_model=None,
        responses={200: {"model": schemas.Dag}, **ERRORS},
    )
    def dag(
        request: Request, label: Label, threshold: Threshold = None, max_nodes: MaxNodes = None
    ) -> Response:
        """The rooted DAG of `label`: `{nodes, links: [{source, target, weight}]}`; its first
        `max_nodes` nodes by depth, `left_out` says how many more it has."""
        t = threshold_of(threshold)
        cap = max_nodes or default_nodes
        return respond(
            request,
            lambda conn: {
                "threshold": t,
                **browse.dag(conn, label, t, config.min_active_tokens, cap),
            },
        )

    @app.get(
        "/api/edges", response_model=None, responses={200: {"model": schemas.EdgePage}, **ERRORS}
    )
    def edges(
        request: Request,
        family: FamilyName = None,
        parent_sae: SaeName = None,
        child_sae: SaeName = None,
        min_score: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: Annotated[
            str | None,
            Query(pattern=browse.AFTER.pattern, description="`next` of the previous page"),
        ] = None,
    ) -> Response:
        """Stored edges with every score part, in a stable order, keyset-paginated."""
        which = browse.EdgeFilter(family, parent_sae, child_sae, min_score)

        def compute(conn: Connection) -> dict[str, Any]:
            rows, next_token = browse.edges_page(conn, which, limit, after)
            return {"rows": rows, "next": next_token}

        return respond(request, compute)

    @app.get(
        "/api/search", response_model=None, responses={200: {"model": schemas.Matches}, **ERRORS}
    )
    def search(
        request: Request,
        q: Annotated[
            str,
            Query(max_length=200, pattern="^[^\\x00]*$", description="Label prefix, e.g. S/2/6"),
        ] = "",
        family: FamilyName = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> Response:
        """Latents whose label starts with `q`, smallest sae first."""
        return respond(request, lambda conn: {"rows": browse.search(conn, q, family, limit)})

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
