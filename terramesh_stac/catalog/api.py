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
from cachetools import TTLCache
from cql2 import Expr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
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

from terramesh_stac.catalog.links import (
    RASTER_PATH,
    default_render_id,
    item_render_links,
    rewrite_asset_hrefs,
    served_folders,
    service_root,
)
from terramesh_stac.catalog.settings import ServiceSettings

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
    dsn: str, pool_max: int, application_name: str = "pgstac", env: dict[str, str] | None = None
) -> PostgresSettings:
    """stac-fastapi-pgstac's PostgresSettings from a DSN (missing parts from libpq's PG* `env`)."""
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
        server_settings=ServerSettings(application_name=application_name),
    )


def _geojson(result):
    if isinstance(result, JSONResponse):
        result.headers["content-type"] = "application/geo+json"
    return result


class Cql2TextOrJsonPostRequest(FilterExtensionPostRequest):
    """POST /search filter that may be CQL2 text (`"filter-lang": "cql2-text"`) as well as
    CQL2 JSON. The filter spec asks POST servers for cql2-json and leaves cql2-text
    optional; we advertise cql2-text conformance and accept it in GET, so POST takes it
    too. `cql2_text_to_json` turns it into CQL2 JSON before pgstac sees it."""

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


def cql2_text_to_json(search_request) -> None:
    """In place: a cql2-text `filter` of a POST search becomes CQL2 JSON; mismatches are 400."""
    expr = getattr(search_request, "filter_expr", None)
    if expr is None:
        return
    lang = getattr(search_request, "filter_lang", None) or "cql2-json"
    if isinstance(expr, str):
        if lang != "cql2-text":
            raise InvalidQueryParameter(
                'filter is a string but filter-lang is cql2-json: send "filter-lang": "cql2-text" '
                "with a CQL2 text filter, or the filter as a CQL2 JSON object"
            )
        try:
            parsed = Expr(expr)
            parsed.validate()
        except Exception as e:  # cql2 raises plain exceptions (ParseError, ValidationError)
            raise InvalidQueryParameter(f"invalid cql2-text filter {expr!r}: {e}") from e
        search_request.filter_expr = parsed.to_json()
        search_request.filter_lang = "cql2-json"
    elif lang == "cql2-text":
        raise InvalidQueryParameter(
            'filter-lang is cql2-text but filter is a JSON object: send "filter-lang": "cql2-json" '
            "(or leave it out), or the filter as CQL2 text"
        )


def filter_properties(node: Any) -> set[str]:
    """Every `{"property": name}` of a CQL2 JSON expression."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("property"), str):
            found.add(node["property"])
        for value in node.values():
            found |= filter_properties(value)
    elif isinstance(node, list):
        for value in node:
            found |= filter_properties(value)
    return found


async def check_queryables(request: Request, search_request) -> None:
    """400 for a filter on a property that is not a queryable of the searched collections.

    The filter extension lets a server reject properties it does not know; otherwise such a
    filter silently matches nothing. "Known" is pgstac's own answer (`pgstac.queryable(name,
    collections).registered`): an item column (id, collection, datetime, geometry, ...) or a
    row of pgstac.queryables for those collections (or for all). pgstac's own switch for
    this, the `additional_properties=false` setting, cannot be used: it applies to every
    search, and stac-fastapi-pgstac's collection listing filters collections on `type`, which
    is no queryable, so /collections would answer 400.
    """
    names = sorted(filter_properties(getattr(search_request, "filter_expr", None)))
    if not names:
        return
    collections = getattr(search_request, "collections", None) or None
    async with request.app.state.get_connection(request, "r") as conn:  # only for filters
        unknown = await conn.fetchval(
            "SELECT array_agg(p ORDER BY p) FROM unnest($1::text[]) p"
            " WHERE NOT coalesce((pgstac.queryable(p, $2::text[])).registered, false)",
            names,
            collections,
        )
    if unknown:
        where = f"collection(s) {', '.join(collections)}" if collections else "any collection"
        raise InvalidQueryParameter(
            f"unknown queryable(s) in filter: {', '.join(unknown)} (not a queryable of {where}; "
            "see the `queryables` link of the landing page or collection)"
        )


class TerraMeshFiltersClient(FiltersClient):
    """Queryables documents say `additionalProperties: false`: other properties are 400."""

    async def get_queryables(self, request: Request, collection_id: str | None = None, **kwargs):  # type: ignore[override]
        queryables = await super().get_queryables(request, collection_id=collection_id, **kwargs)
        queryables["additionalProperties"] = False
        return queryables


@attr.s
class TerraMeshClient(CoreCrudClient):
    """CoreCrudClient that serves URLs instead of local paths and adds tile links."""

    async def _collection_renders(self, collection_id: str, request: Request) -> dict:
        cache = request.app.state.terramesh["renders_cache"]  # one event loop: no lock needed
        if (renders := cache.get(collection_id)) is not None:
            return renders
        async with request.app.state.get_connection(request, "r") as conn:
            collection = await conn.fetchval("SELECT get_collection($1::text)", collection_id)
        cache[collection_id] = renders = (collection or {}).get("renders") or {}
        return renders

    async def _decorate_item(self, item: dict[str, Any], request: Request, root: str) -> None:
        conf = request.app.state.terramesh
        rewrite_asset_hrefs(item, conf["served_folders"], root)
        cid, iid = item.get("collection"), item.get("id")
        if not (cid and iid) or not isinstance(item.get("links"), list):
            return  # fields extension left no links / ids: nothing to add to
        renders = await self._collection_renders(cid, request)
        render_id = default_render_id(renders, conf["default_render"])
        if render_id is not None:
            item["links"] += item_render_links(f"{root}{RASTER_PATH}/", cid, iid, render_id, renders[render_id])

    async def _search_base(self, search_request, request: Request):  # type: ignore[override]
        await check_queryables(request, search_request)
        item_collection = await super()._search_base(search_request, request=request)
        root = service_root(request)
        for item in item_collection.get("features", []):
            await self._decorate_item(item, request, root)
        return item_collection

    # With the fields extension stac-fastapi-pgstac answers a plain JSONResponse
    # (application/json); an item collection is GeoJSON: say so.
    async def get_search(self, request: Request, **kwargs):  # type: ignore[override]
        return _geojson(await super().get_search(request=request, **kwargs))

    async def post_search(self, search_request, request: Request, **kwargs):  # type: ignore[override]
        cql2_text_to_json(search_request)
        return _geojson(await super().post_search(search_request, request=request, **kwargs))

    async def item_collection(self, collection_id: str, request: Request, **kwargs):  # type: ignore[override]
        return _geojson(await super().item_collection(collection_id, request=request, **kwargs))

    async def get_collection(self, collection_id: str, request: Request, **kwargs):  # type: ignore[override]
        collection = await super().get_collection(collection_id, request=request, **kwargs)
        conf = request.app.state.terramesh
        rewrite_asset_hrefs(collection, conf["served_folders"], service_root(request))
        return collection

    async def all_collections(self, request: Request, **kwargs):  # type: ignore[override]
        collections = await super().all_collections(request=request, **kwargs)
        conf = request.app.state.terramesh
        body = collections
        if hasattr(collections, "body"):  # JSONResponse when the fields extension is used
            return collections
        for collection in body.get("collections", []):
            rewrite_asset_hrefs(collection, conf["served_folders"], service_root(request))
        return collections


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("terramesh-stac")
    except PackageNotFoundError:
        return "0.0.0"


def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"code": "BadRequest", "description": f"{type(exc).__name__}: {exc}"}, status_code=400)


# Client input errors that stac-fastapi-pgstac 7.2 lets through as 500s:
# - malformed JSON in GET `intersects` / `query` (orjson.JSONDecodeError);
# - pgstac's own input checks, raised in SQL (`RAISE EXCEPTION`), e.g. "Invalid paging
#   token" (asyncpg RaiseError; other database errors keep their status).
BAD_REQUEST_ERRORS = (orjson.JSONDecodeError, asyncpg.exceptions.RaiseError)


def stac_settings(settings: ServiceSettings) -> StacSettings:
    return StacSettings(
        stac_fastapi_title=API_TITLE,
        stac_fastapi_description=API_DESCRIPTION,
        stac_fastapi_landing_id="terramesh",
        enable_transactions_extensions=settings.enable_transactions,
        enabled_extensions=None,  # all of stac-fastapi-pgstac's read extensions
        cors_origins=settings.cors_origin_list,
        prefix_path="",
        root_path="",
        stac_fastapi_version=_version(),
        openapi_url="/api",
        docs_url="/api.html",
    )


def create_stac_api(settings: ServiceSettings, dsn: str) -> StacApi:
    """The STAC API (its `.app` is the FastAPI application to mount at /stac)."""
    pg = stac_postgres_settings(dsn, settings.db_pool_max_size, env=settings.libpq_env)
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
    for exc in BAD_REQUEST_ERRORS:
        api.app.add_exception_handler(exc, _bad_request)
    api.app.state.terramesh = {
        "served_folders": served_folders(settings.dest),
        "default_render": settings.default_render,
        # collection id -> its render presets, shared by all requests of this app
        "renders_cache": TTLCache(maxsize=1024, ttl=settings.render_cache_ttl),
    }
    return api


__all__ = ["api_dsn", "write_dsn", "create_stac_api", "TerraMeshClient", "NotFoundError"]
