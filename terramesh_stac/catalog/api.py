"""STAC API: stac-fastapi-pgstac assembled from its pieces (stac_fastapi/pgstac/app.py).

Mounted at /stac by catalog/app.py. Extensions: filter (CQL2 text + JSON, in GET and
POST: a POST cql2-text filter is converted to CQL2 JSON with the `cql2` package), sort, fields,
query, token pagination, collection search (with free text); transactions only when
`settings.enable_transactions`.

`TerraMeshClient` (a `CoreCrudClient`) post-processes every item it returns (item,
item collection, GET/POST search all go through `_search_base`) and every collection:

- local asset hrefs (absolute paths under `settings.dest`) become
  `{service root}/assets/<relative path>`, built from the request (nothing host-dependent
  is stored in pgstac);
- `s3://bucket/key` hrefs (assets converted to S3) are returned as stored, with the
  `alternate.https.href` (alternate-assets extension) the converter wrote. They are not
  rewritten to `settings.s3_public_url`: the `s3://` URL is the asset's canonical location
  and what clients with credentials (GDAL /vsis3/, fsspec, boto3, odc-stac) read fastest;
  the bucket may be private, so a public URL in `href` could answer 403 where `s3://`
  works; and the https form is already offered where the extension says it belongs.
- items get a TileJSON link (rel `tiles`) and a PNG preview link (rel `preview`) to the
  tile service, with the collection's default render preset's parameters.

Requests are checked before the database (catalog/search_checks.py, an ASGI middleware of
this app, and `check_queryables` here for what needs the queryables); client errors of
stac-fastapi, pydantic and PostgreSQL are answered 4xx with a short message
(`add_client_error_handlers`).

Links: stac-fastapi builds them from `request.base_url`; catalog/app.py mounts the API
so that its base URL is `.../stac/` (see `_MountedAsRoot`), so no `router_prefix`.
"""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import asyncpg
import attr
import orjson
import pydantic
from cachetools import TTLCache
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from stac_fastapi.api.app import StacApi
from stac_fastapi.extensions import ItemCollectionFilterExtension, SearchFilterExtension
from stac_fastapi.extensions.filter.request import FilterExtensionPostRequest
from stac_fastapi.pgstac.app import instantiate_api
from stac_fastapi.pgstac.config import PostgresSettings, ServerSettings
from stac_fastapi.pgstac.config import Settings as StacSettings
from stac_fastapi.pgstac.core import CoreCrudClient
from stac_fastapi.pgstac.db import close_db_connection, connect_to_db
from stac_fastapi.pgstac.extensions.filter import FiltersClient
from stac_fastapi.pgstac.models.extensions import Extensions
from stac_fastapi.types.errors import InvalidQueryParameter, NotFoundError
from starlette.exceptions import HTTPException as StarletteHTTPException

from terramesh_stac.catalog import search_checks as checks
from terramesh_stac.catalog.errors import error_response, redact
from terramesh_stac.catalog.links import (
    RASTER_PATH,
    default_render_id,
    item_render_links,
    rewrite_asset_hrefs,
    served_folders,
    service_root,
)
from terramesh_stac.catalog.settings import ServiceSettings
from terramesh_stac.converters.items import asset_extensions, served_extensions

API_TITLE = "TerraMesh STAC API"
API_DESCRIPTION = (
    "TerraMesh (multimodal Earth-observation samples: Sentinel-2 L1C/L2A/RGB, Sentinel-1, "
    "DEM, NDVI, LULC) as STAC items with COG assets."
)


def _role_dsn(settings: ServiceSettings, role: str, setting: str) -> str:
    """`terramesh_stac.catalog.database.dsn(settings, role)`, with a message that says what to set."""
    from terramesh_stac.catalog import database

    try:
        return database.dsn(settings, role=role)  # type: ignore[arg-type]
    except database.DatabaseError as e:
        raise database.DatabaseError(f"{e} (or set {setting})") from None
    except (OSError, ValueError, KeyError) as e:  # unreadable / corrupt credentials.json
        raise database.DatabaseError(
            f"cannot read the {role} role's credentials from {database.credentials_file(settings)}: "
            f"{type(e).__name__}: {e}. Run `terramesh-stac db start` to rewrite the roles, or set {setting}."
        ) from e


def api_dsn(settings: ServiceSettings) -> str:
    """The DSN the services connect with: the database module's `api` role (pgstac_read).

    Order: `settings.api_dsn`; else, when there is a database to derive it from (the
    embedded cluster's credentials file, or an external `settings.dsn`),
    `terramesh_stac.catalog.database.dsn(settings, role="api")`, whose errors are raised (a corrupt or
    missing credentials file is a misconfiguration, reported at startup); else libpq's
    PG* environment variables when any is set. Never `settings.dsn` itself: that is the
    admin DSN, and the API must not run as a superuser.

    Raises terramesh_stac.catalog.database.DatabaseError when there is nothing to connect with.
    """
    from terramesh_stac.catalog import database

    if settings.api_dsn:
        return settings.api_dsn
    if settings.dsn or database.credentials_file(settings).exists():
        return _role_dsn(settings, "api", "TERRAMESH_API_DSN")
    if settings.libpq_env:
        return "postgresql://"  # libpq's PG* environment variables
    raise database.DatabaseError(
        f"no database to serve from: no credentials at {database.credentials_file(settings)} "
        "(run `terramesh-stac db start`, or point TERRAMESH_STATE_DIR at the cluster's state dir), "
        "no TERRAMESH_DSN, no TERRAMESH_API_DSN and no PG* environment variables."
    )


def write_dsn(settings: ServiceSettings) -> str:
    """The DSN of the transaction endpoints' write pool: the `loader` role (pgstac_ingest).

    `settings.write_dsn`, else `terramesh_stac.catalog.database.dsn(settings, role="loader")`. Never the
    read (`api`) DSN, which cannot write items, nor the admin DSN.
    """
    if settings.write_dsn:
        return settings.write_dsn
    return _role_dsn(settings, "loader", "TERRAMESH_WRITE_DSN")


WRITE_APPLICATION_NAME = "terramesh-stac-write"


async def check_write_role(pool) -> None:
    """Refuse to start when the write pool's user is not a pgstac_ingest member, or is a superuser."""
    from terramesh_stac.catalog.database import DatabaseError

    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT current_user AS who, pg_has_role(current_user, 'pgstac_ingest', 'MEMBER') AS ingest,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS super"
        )
    if row["super"] or not row["ingest"]:
        raise DatabaseError(
            f"the transaction endpoints' database user {row['who']!r} "
            + ("is a superuser" if row["super"] else "is not a member of pgstac_ingest")
            + ": set TERRAMESH_WRITE_DSN to the loader role's DSN "
            "(`terramesh-stac db dsn --role loader`) or leave it unset."
        )


def stac_postgres_settings(
    dsn: str,
    pool_max: int,
    application_name: str = "pgstac",
    env: dict[str, str] | None = None,
    statement_timeout: float | None = None,
) -> PostgresSettings:
    """stac-fastapi-pgstac's PostgresSettings from a DSN (missing parts from libpq's PG* `env`).

    `statement_timeout` (seconds): PostgreSQL ends a query of this pool that runs longer, so
    a search cannot keep working in the database after its request's time limit."""
    u = urlsplit(dsn)
    env = env or {}
    return PostgresSettings(
        pguser=unquote(u.username or env.get("PGUSER", "postgres")),
        pgpassword=unquote(u.password or env.get("PGPASSWORD", "")),
        pghost=u.hostname or env.get("PGHOST", "localhost"),
        pgport=u.port or int(env.get("PGPORT", 5432)),
        pgdatabase=unquote(u.path.lstrip("/")) or env.get("PGDATABASE", "postgres"),
        db_min_conn_size=1,
        db_max_conn_size=pool_max,
        server_settings=ServerSettings(
            application_name=application_name,
            **({"statement_timeout": str(int(statement_timeout * 1000))} if statement_timeout else {}),
        ),
    )


def _geojson(result):
    if isinstance(result, JSONResponse):
        result.headers["content-type"] = "application/geo+json"
    return result


class Cql2TextOrJsonPostRequest(FilterExtensionPostRequest):
    """POST /search filter that may be CQL2 text (`"filter-lang": "cql2-text"`) as well as
    CQL2 JSON. The filter spec asks POST servers for cql2-json and leaves cql2-text
    optional; we advertise cql2-text conformance and accept it in GET, so POST takes it
    too. search_checks parses it into CQL2 JSON before pgstac sees it."""

    filter_expr: dict[str, Any] | str | None = Field(
        None, alias="filter", description="A CQL2 filter: a JSON object (cql2-json) or text (cql2-text)."
    )
    filter_lang: Literal["cql2-json", "cql2-text"] | None = Field(
        "cql2-json", alias="filter-lang", description="The CQL2 encoding of `filter` (default cql2-json)."
    )


def search_filter_extension() -> SearchFilterExtension:
    """stac-fastapi-pgstac's search filter extension with `Cql2TextOrJsonPostRequest` as its
    POST model. An instance attribute, not a subclass: stac-fastapi finds extensions by
    class name (`extension_is_enabled("SearchFilterExtension")`, e.g. for the landing
    page's queryables link)."""
    extension = SearchFilterExtension(client=TerraMeshFiltersClient())
    extension.POST = Cql2TextOrJsonPostRequest
    return extension


def checked_filter(request: Request) -> dict | None:
    """The request's filter as CQL2 JSON, parsed and checked by search_checks.SearchChecks
    (a cql2-text filter is not parsed again: that parser must not run on the event loop)."""
    return request.scope.get(checks.FILTER_SCOPE_KEY)


async def queryables_of(request: Request, collections: list[str] | None) -> dict[str, Any] | None:
    """The `properties` of pgstac's queryables document for `collections` (all when None);
    None when none of them exists. Cached for `render_cache_ttl` seconds, like the renders."""
    cache = request.app.state.terramesh["queryables_cache"]  # one event loop: no lock needed
    key = tuple(sorted(set(collections or ())))
    if key in cache:
        return cache[key]
    async with request.app.state.get_connection(request, "r") as conn:
        document = await conn.fetchval("SELECT pgstac.get_queryables($1::text[])", list(key) or None)
    cache[key] = properties = (document or {}).get("properties") if document else None
    return properties


async def check_queryables(request: Request, search_request) -> None:
    """400 for a filter, `query` or `sortby` on a property that is not a queryable of the
    searched collections, and for a filter or `query` whose values do not have the
    queryable's type (`eo:cloud_cover < 'abc'`: PostgreSQL would fail casting 'abc').

    The filter extension lets a server reject properties it does not know; otherwise such a
    filter silently matches nothing. "Known" is pgstac's queryables document of those
    collections (`get_queryables`, what /queryables serves) or an item column (id,
    collection, datetime, geometry, ...). pgstac's own switch for this, the
    `additional_properties=false` setting, cannot be used: it applies to every search, and
    stac-fastapi-pgstac's collection listing filters collections on `type`, which is no
    queryable, so /collections would answer 400.
    """
    expr = getattr(search_request, "filter_expr", None)
    query = getattr(search_request, "query", None) or {}
    sort_names = [s.field for s in getattr(search_request, "sortby", None) or []]
    names = checks.filter_properties(expr) | set(query)
    if not names and not sort_names:
        return
    collections = getattr(search_request, "collections", None) or None
    properties = await queryables_of(request, collections)

    def unknown(candidates) -> list[str]:
        return sorted(
            n
            for n in set(candidates)
            if checks.property_name(n) not in checks.COLUMN_KINDS and checks.property_name(n) not in (properties or {})
        )

    where = f"collection(s) {', '.join(collections)}" if collections else "any collection"
    if bad := unknown(names):
        raise InvalidQueryParameter(
            f"unknown queryable(s) in filter: {', '.join(bad)} (not a queryable of {where}; "
            "see the `queryables` link of the landing page or collection)"
        )
    if bad := unknown(sort_names):
        raise InvalidQueryParameter(f"sortby: unknown propert(ies) {', '.join(bad)} (not a queryable of {where})")
    if reason := checks.filter_type_errors(expr, properties):
        raise InvalidQueryParameter(f"filter: {reason}")
    if reason := checks.query_type_errors(query, properties):
        raise InvalidQueryParameter(reason)


class TerraMeshFiltersClient(FiltersClient):
    """Queryables documents say `additionalProperties: false`: other properties are 400."""

    async def get_queryables(self, request: Request, collection_id: str | None = None, **kwargs):  # type: ignore[override]
        queryables = await super().get_queryables(request, collection_id=collection_id, **kwargs)
        queryables["additionalProperties"] = False
        return queryables


@attr.s
class TerraMeshClient(CoreCrudClient):
    """CoreCrudClient that serves URLs instead of local paths and adds tile links."""

    async def _collection_facts(self, collection_id: str, request: Request) -> tuple[dict, dict]:
        """(render presets, asset_extensions of item_assets) of a collection, cached."""
        cache = request.app.state.terramesh["renders_cache"]  # one event loop: no lock needed
        if (facts := cache.get(collection_id)) is not None:
            return facts
        async with request.app.state.get_connection(request, "r") as conn:
            collection = await conn.fetchval("SELECT get_collection($1::text)", collection_id)
        collection = collection or {}
        facts = (collection.get("renders") or {}, asset_extensions(collection.get("item_assets") or {}))
        cache[collection_id] = facts
        return facts

    async def _decorate_item(self, item: dict[str, Any], request: Request, root: str) -> None:
        conf = request.app.state.terramesh
        rewrite_asset_hrefs(item, conf["served_folders"], root)
        cid, iid = item.get("collection"), item.get("id")
        if not cid:
            return
        renders, extensions_of_assets = await self._collection_facts(cid, request)
        if "stac_extensions" in item:  # hydrated from the collection's item_assets: say their extensions
            item["stac_extensions"] = served_extensions(item, extensions_of_assets)
        if not iid or not isinstance(item.get("links"), list):
            return  # fields extension left no links / ids: nothing to add to
        render_id = default_render_id(renders, conf["default_render"])
        if render_id is not None:
            item["links"] += item_render_links(f"{root}{RASTER_PATH}/", cid, iid, render_id, renders[render_id])

    async def _search_base(self, search_request, request: Request):  # type: ignore[override]
        if search_request.limit and search_request.limit > checks.MAX_LIMIT:
            search_request.limit = checks.MAX_LIMIT  # the spec lets a server cap `limit`
        # pgstac reads its settings (`context` counts, ...) from `conf`: not the client's to set
        search_request.conf = None
        await check_queryables(request, search_request)
        item_collection = await super()._search_base(search_request, request=request)
        root = service_root(request)
        for item in item_collection.get("features", []):
            await self._decorate_item(item, request, root)
        return item_collection

    def _clean_search_args(self, base_args, filter_query=None, filter_lang=None, **kwargs):  # type: ignore[override]
        """stac-fastapi-pgstac's, but a filter that search_checks already parsed (a dict) is
        used as it is instead of being parsed and validated a second time."""
        if not isinstance(filter_query, dict):
            return super()._clean_search_args(base_args, filter_query=filter_query, filter_lang=filter_lang, **kwargs)
        clean = super()._clean_search_args(base_args, **kwargs)
        clean["filter"], clean["filter_lang"] = filter_query, "cql2-json"
        return clean

    def _checked_kwargs(self, request: Request, kwargs: dict) -> dict:
        if (expr := checked_filter(request)) is not None:
            kwargs["filter_expr"] = expr
        if (geometry := request.scope.get(checks.INTERSECTS_SCOPE_KEY)) is not None:
            kwargs["intersects"] = orjson.dumps(geometry).decode()  # the geometry search_checks checked
        return kwargs

    # With the fields extension stac-fastapi-pgstac answers a plain JSONResponse
    # (application/json); an item collection is GeoJSON: say so.
    async def get_search(self, request: Request, **kwargs):  # type: ignore[override]
        return _geojson(await super().get_search(request=request, **self._checked_kwargs(request, kwargs)))

    async def post_search(self, search_request, request: Request, **kwargs):  # type: ignore[override]
        if (expr := checked_filter(request)) is not None:  # a cql2-text filter becomes CQL2 JSON
            search_request.filter_expr, search_request.filter_lang = expr, "cql2-json"
        return _geojson(await super().post_search(search_request, request=request, **kwargs))

    async def item_collection(self, collection_id: str, request: Request, **kwargs):  # type: ignore[override]
        kwargs = self._checked_kwargs(request, kwargs)
        return _geojson(await super().item_collection(collection_id, request=request, **kwargs))

    async def get_collection(self, collection_id: str, request: Request, **kwargs):  # type: ignore[override]
        collection = await super().get_collection(collection_id, request=request, **kwargs)
        conf = request.app.state.terramesh
        rewrite_asset_hrefs(collection, conf["served_folders"], service_root(request))
        return collection

    async def all_collections(self, request: Request, **kwargs):  # type: ignore[override]
        kwargs = self._checked_kwargs(request, kwargs)
        if kwargs.get("limit") and kwargs["limit"] > checks.MAX_LIMIT:
            kwargs["limit"] = checks.MAX_LIMIT
        await check_collection_search(request, kwargs)
        collections = await super().all_collections(request=request, **kwargs)
        conf = request.app.state.terramesh
        body = collections
        if hasattr(collections, "body"):  # JSONResponse when the fields extension is used
            return collections
        for collection in body.get("collections", []):
            rewrite_asset_hrefs(collection, conf["served_folders"], service_root(request))
        return collections


async def check_collection_search(request: Request, kwargs: dict) -> None:
    """Collection search: filter and `query` values against the queryables' types (pgstac
    casts with them here too), and `q` as pgstac turns it into a tsquery (a syntax error
    there is the client's text)."""
    expr = kwargs.get("filter_expr")
    query = kwargs.get("query")
    if isinstance(query, str):
        try:
            query = orjson.loads(query)
        except orjson.JSONDecodeError:
            query = None  # stac-fastapi answers it
    if expr is not None or query:
        properties = await queryables_of(request, None)
        if reason := checks.filter_type_errors(expr, properties):
            raise InvalidQueryParameter(f"filter: {reason}")
        if reason := checks.query_type_errors(query, properties):
            raise InvalidQueryParameter(reason)
    if q := kwargs.get("q"):
        text = " OR ".join(q) if isinstance(q, list) else q
        async with request.app.state.get_connection(request, "r") as conn:
            try:
                await conn.fetchval("SELECT pgstac.q_to_tsquery($1::text::jsonb)", orjson.dumps(text).decode())
            except (asyncpg.exceptions.PostgresSyntaxError, asyncpg.exceptions.RaiseError) as e:
                raise InvalidQueryParameter(
                    'q is not a valid free-text search (words, "quoted phrases", AND, OR, commas, '
                    f"+word, -word): {_primary_message(e)}"
                ) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("terramesh-stac")
    except PackageNotFoundError:
        return "0.0.0"


# --- client errors: 4xx with a short message ------------------------------------------

MAX_MESSAGE = 300  # characters of an error description


def _short(text: str) -> str:
    text = " ".join(redact(str(text)).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _primary_message(exc: Exception) -> str:
    """A PostgreSQL error's primary message: never its DETAIL, QUERY or PL/pgSQL CONTEXT."""
    return getattr(exc, "message", None) or (exc.args[0] if exc.args else type(exc).__name__)


def _validation_message(errors: list) -> str:
    """pydantic's errors as `where: what` (at most three), without the input it repeats."""
    parts = []
    for error in errors[:3]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {error.get('msg')}" if loc else str(error.get("msg")))
    return "invalid request: " + "; ".join(parts)


def _client_error(status: int):
    def handler(request: Request, exc: Exception) -> JSONResponse:
        return error_response(status, _short(exc))

    return handler


def _database_input_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, _short(f"invalid request: {_primary_message(exc)}"))


def _request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, _short(_validation_message(exc.errors())))


def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    cause = exc.__cause__  # stac-fastapi wraps pydantic's ValidationError (its text repeats the input)
    detail = _validation_message(cause.errors()) if isinstance(cause, pydantic.ValidationError) else exc.detail
    return error_response(exc.status_code, _short(detail), headers=exc.headers)


# Database errors a client's input causes, answered 400 with their primary message:
# - data exceptions (SQLSTATE class 22): a value PostgreSQL cannot take (text where a number
#   is, NUL in text, bad hex, division by zero, ...) — the type checks catch most before;
# - pgstac's own input checks, raised in SQL (`RAISE EXCEPTION`, P0001), e.g. "Invalid
#   paging token", "Operator foo Not Supported";
# - program limits (class 54, e.g. "stack depth limit exceeded"): a request too complex.
# Anything else (undefined functions, permissions, ...) is the server's fault: 500 (errors.py).
DATABASE_INPUT_ERRORS = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.RaiseError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


def add_client_error_handlers(app: FastAPI) -> None:
    """Short `{"code", "description", "detail"}` bodies for every client error of the STAC app."""
    app.add_exception_handler(InvalidQueryParameter, _client_error(400))
    app.add_exception_handler(NotFoundError, _client_error(404))
    app.add_exception_handler(orjson.JSONDecodeError, _client_error(400))  # GET intersects / query
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    for exc in DATABASE_INPUT_ERRORS:
        app.add_exception_handler(exc, _database_input_error)


def stac_settings(settings: ServiceSettings) -> StacSettings:
    return StacSettings(
        stac_fastapi_title=API_TITLE,
        stac_fastapi_description=API_DESCRIPTION,
        stac_fastapi_landing_id="terramesh",
        enable_transactions_extensions=settings.enable_transactions,
        enabled_extensions=None,  # all of stac-fastapi-pgstac's read extensions
        use_api_hydrate=settings.api_hydrate,
        cors_origins=settings.cors_origin_list,
        prefix_path="",
        root_path="",
        stac_fastapi_version=_version(),
        openapi_url="/api",
        docs_url="/api.html",
    )


def create_stac_api(settings: ServiceSettings, dsn: str) -> StacApi:
    """The STAC API (its `.app` is the FastAPI application to mount at /stac)."""
    pg = stac_postgres_settings(
        dsn, settings.db_pool_max_size, env=settings.libpq_env, statement_timeout=settings.request_time_limit
    )
    # Transactions write with the loader role (pgstac_ingest), never with the read role.
    write_pg = (
        stac_postgres_settings(write_dsn(settings), 2, WRITE_APPLICATION_NAME, settings.libpq_env)
        if settings.enable_transactions
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await connect_to_db(
            app,
            postgres_settings=pg,
            add_write_connection_pool=settings.enable_transactions,
            write_postgres_settings=write_pg,
        )
        try:
            if settings.enable_transactions:
                await check_write_role(app.state.writepool)
            yield
        finally:
            await close_db_connection(app)

    ssettings = stac_settings(settings)
    api = instantiate_api(
        # the client's landing page id/title default to values read at import time
        client=functools.partial(
            TerraMeshClient,
            landing_page_id=ssettings.stac_fastapi_landing_id,
            title=ssettings.stac_fastapi_title,
            description=ssettings.stac_fastapi_description,
        ),
        extensions=Extensions(
            settings=ssettings,
            search_map={"filter": search_filter_extension()},
            item_collection_map={"filter": ItemCollectionFilterExtension(client=TerraMeshFiltersClient())},
        ),
        lifespan=lifespan,
        settings=ssettings,
    )
    add_client_error_handlers(api.app)
    # after stac-fastapi's own middleware, so it is the outermost: checks run before all else
    api.app.add_middleware(checks.SearchChecks)
    api.app.state.terramesh = {
        "served_folders": served_folders(settings.dest),
        "default_render": settings.default_render,
        # collection id -> its render presets, shared by all requests of this app
        "renders_cache": TTLCache(maxsize=1024, ttl=settings.render_cache_ttl),
        # collection ids -> their queryables' schemas (search_checks type checks)
        "queryables_cache": TTLCache(maxsize=256, ttl=settings.render_cache_ttl),
    }
    return api


__all__ = ["api_dsn", "write_dsn", "create_stac_api", "TerraMeshClient", "NotFoundError"]
