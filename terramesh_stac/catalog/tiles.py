"""Tile service: titiler-pgstac assembled from its factories (as titiler/pgstac/main.py does).

Mounted at /raster by catalog/app.py. Routes:

- `/collections/{cid}/items/{iid}/...`  item tiles, TileJSON, preview, info, renders (COG
  and Zarr assets, see catalog/zarr_tiles.py)
- `/searches/register`, `/searches/{search_id}/...`  registered-search mosaics
- `/collections/{cid}/tiles/...`  mosaic of a whole collection
- `/tileMatrixSets`, `/colorMaps`, `/healthz`

Assets are read BY PATH: items keep local asset hrefs as absolute filesystem paths in
pgstac (the API rewrites them to URLs only in its responses), so GDAL never fetches tiles
over HTTP from this same process (tried: a tile service reading its assets over HTTP from
its own process hung on the first tile). Assets converted to S3 keep `s3://bucket/key` hrefs, which GDAL reads through /vsis3/ with the S3 settings of
`gdal_s3_config` (endpoint from `settings.s3_endpoint_url`; credentials from the process
environment / boto3, as rasterio wants them).

Render presets live once in the collection's `renders` (render extension). titiler-pgstac
reads item-level `renders` only, so two small additions wire the collection's presets in:

- `?render=<id>` on any item or search endpoint: `RenderPresetMiddleware` expands it into
  the preset's query parameters (explicit parameters in the request win), e.g.
  `/collections/c/items/i/tiles/WebMercatorQuad/8/1/2.png?render=true_color`.
  Unknown preset or collection -> 404 with a message.
- `/collections/{cid}/items/{iid}/renders` lists the collection's presets (+ item ones).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import morecantile
import psycopg
import rasterio
from cachetools import TTLCache
from fastapi import Depends, FastAPI, Query, status
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from pydantic import ValidationError, ValidationInfo, field_validator
from rasterio.errors import CRSError
from rio_tiler import errors as rt_errors
from starlette.types import ASGIApp, Receive, Scope, Send
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import ColorMapFactory, MultiBaseTilerFactory, TMSFactory
from titiler.extensions import stacRenderExtension
from titiler.mosaic.errors import MOSAIC_STATUS_CODES
from titiler.pgstac import __version__ as titiler_pgstac_version
from titiler.pgstac import model as pgstac_model
from titiler.pgstac.dependencies import CollectionIdParams, ItemIdParams, SearchIdParams, SearchParams
from titiler.pgstac.errors import PGSTAC_STATUS_CODES, BackendError
from titiler.pgstac.extensions import searchInfoExtension
from titiler.pgstac.factory import (
    MosaicTilerFactory,
    add_search_list_route,
    add_search_register_route,
)
from titiler.pgstac.reader import PgSTACReader
from titiler.pgstac.settings import PostgresSettings

from terramesh_stac.catalog.errors import error_response, redact, service_unavailable
from terramesh_stac.catalog.links import render_query, titiler_render
from terramesh_stac.catalog.settings import ServiceSettings
from terramesh_stac.catalog.tile_cache import RevisionCache, TileCacheHeaders
from terramesh_stac.catalog.tile_limits import (
    RENDER_ZOOMS_KEY,
    BoundedPartParams,
    BudgetedBackend,
    MosaicReadTimeout,
    TileLimits,
    document_limits,
    feature_body_check,
    mosaic_zoom_check,
    request_checks,
)
from terramesh_stac.catalog.zarr_tiles import ItemReader, MosaicItemReader

logger = logging.getLogger(__name__)

RENDER_PARAM = "render"
_COLLECTION_IN_PATH = re.compile(r"^/collections/(?P<cid>[^/]+)(/|$)")
_SEARCH_IN_PATH = re.compile(r"^/searches/(?P<sid>(?!register/?$|list/?$)[^/]+)/")


class CollectionRenders:
    """The `renders` of each collection, read from pgstac and cached for `ttl` seconds.

    One lookup per collection per `ttl`, however many items or tiles are requested.
    """

    def __init__(self, ttl: float = 60.0):
        self.pool = None  # psycopg ConnectionPool, set by the app's lifespan
        self._cache: TTLCache = TTLCache(maxsize=1024, ttl=ttl)  # collection id -> renders or None
        self._searches: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def get(self, collection_id: str) -> dict[str, dict] | None:
        """Presets of a collection ({} if it has none), None if the collection is unknown."""
        with self._lock:
            if collection_id in self._cache:
                return self._cache[collection_id]
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT pgstac.get_collection(%s) AS c", (collection_id,))
            row = cur.fetchone()
        collection = row["c"] if row else None
        renders = None if collection is None else dict(collection.get("renders") or {})
        with self._lock:
            self._cache[collection_id] = renders
        return renders

    def search_collections(self, search_id: str) -> list[str] | None:
        """The `collections` of a registered search ([] if it has none), None if unknown.

        Registered searches never change (their id is the hash of their content), so
        known ones are cached for good.
        """
        with self._lock:
            hit = self._searches.get(search_id)
        if hit is not None:
            return hit
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT search FROM pgstac.searches WHERE hash = %s", (search_id,))
            row = cur.fetchone()
        if row is None:
            return None
        collections = row["search"].get("collections") or []
        collections = [collections] if isinstance(collections, str) else [str(c) for c in collections]
        with self._lock:
            self._searches[search_id] = collections
        return collections

    def unknown_mosaic(self, path_params: dict) -> str | None:
        """The 404 message for a registered search or collection that does not exist."""
        if (search_id := path_params.get("search_id")) is not None:
            return None if self.search_collections(search_id) is not None else f"SearchId `{search_id}` not found"
        if (collection_id := path_params.get("collection_id")) is not None:
            return None if self.get(collection_id) is not None else f"CollectionId `{collection_id}` not found"
        return None

    def for_item(self, reader: PgSTACReader) -> dict[str, dict]:
        """Collection presets overlaid by the item's own `renders` (titiler `get_renders`)."""
        renders: dict[str, dict] = {}
        if reader.item.collection_id:
            renders.update(self.get(reader.item.collection_id) or {})
        renders.update(reader.item.properties.get("renders") or {})
        # titiler-core 2.x band syntax (`S2L2A|bidx=4,3,2`); copies, not the cached dicts
        return {k: titiler_render(v) for k, v in renders.items()}


class RegisterSearch(pgstac_model.RegisterMosaic):
    """titiler-pgstac's `/searches/register` body, with its `intersects` validator reading
    `bbox` safely: when `bbox` itself failed validation the original raises KeyError (a 500)
    instead of reporting the bbox error."""

    @field_validator("intersects")
    def validate_spatial(cls, v, info: ValidationInfo):
        if v and info.data.get("bbox"):
            raise ValueError("intersects and bbox parameters are mutually exclusive")
        return v


def register_search_params(body: RegisterSearch) -> tuple[pgstac_model.PgSTACSearch, pgstac_model.Metadata]:
    return SearchParams(body)


def _collection_mosaic_renders(backend) -> dict:
    """Presets of a collection mosaic (titiler-pgstac keeps them as `defaults_params`)."""
    return {k: titiler_render(v) for k, v in (backend.info().metadata.defaults_params or {}).items()}


# What a client's input makes the libraries raise, and the status it gets. titiler's own
# table without its 500s (RasterioError, RioTilerError, Exception), which would put the
# library's message, server paths included, in the body: those fall to the last-resort
# handlers of catalog/errors.py (503 for unreadable assets, 500 "internal error").
CLIENT_STATUS_CODES: dict[type[Exception], int] = {
    **{
        exc: code
        for exc, code in {**DEFAULT_STATUS_CODES, **MOSAIC_STATUS_CODES, **PGSTAC_STATUS_CODES}.items()
        if code < 500
    },
    ValidationError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    rt_errors.PointOutsideBounds: 404,  # like TileOutsideBounds
    rt_errors.InvalidBufferSize: 400,
    rt_errors.InvalidBounds: 400,
    rt_errors.InvalidGeographicBounds: 400,
    rt_errors.InvalidColorMapName: 400,
    rt_errors.InvalidMosaicMethod: 400,
    rt_errors.AssetAsBandError: 400,
    morecantile.errors.MorecantileError: 400,
    CRSError: 400,  # a dst_crs / coord_crs that PROJ cannot use
}

# Errors of a library's base class whose message shows the client's input was the cause.
_CLIENT_MESSAGES: dict[type[Exception], re.Pattern] = {
    IndexError: re.compile(r"^band index -?\d+ out of range"),  # rasterio: `assets=S2L2A|bidx=20`
    rt_errors.RioTilerError: re.compile(r"^Invalid geometry"),  # a Feature without a geometry
    # PROJ/GDAL on coordinates or CRSs they cannot transform (our datasets' CRSs are valid)
    rasterio._err.CPLE_BaseError: re.compile(
        r"^PROJ: |^Cannot invert geotransform|^Too many points|^latitude max < latitude min"
    ),
    # titiler-pgstac's search list puts `sortby` and other parameters into SQL literals; a `%`
    # in them then trips psycopg's placeholder parsing (safe: literals are quoted, not run)
    psycopg.ProgrammingError: re.compile(r"^only '%s', '%b', '%t' are allowed as placeholders"),
}


def _short(exc) -> str:
    """First line of a library's message, server paths taken out, at most 300 characters."""
    if isinstance(exc, ValidationError) and exc.errors():
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:3])
    elif isinstance(exc, ValidationError):  # titiler-pgstac's: a cql2 message as the title
        text = "invalid filter: " + " ".join(exc.title.split())
    else:
        text = str(exc).strip()
    return redact(text.splitlines()[0] if text else "")[:300]


def client_error_response(request, exc: Exception) -> JSONResponse:
    status_code = next(code for cls, code in CLIENT_STATUS_CODES.items() if isinstance(exc, cls))
    return error_response(status_code, _short(exc) or type(exc).__name__)


def message_error_response(request, exc: Exception) -> JSONResponse:
    """400 when the message says the client's input was the cause (`_CLIENT_MESSAGES`); else a
    bug of ours or a library's: 500, logged, without internals."""
    for cls, pattern in _CLIENT_MESSAGES.items():
        if isinstance(exc, cls) and pattern.search(str(exc)):
            return error_response(400, _short(exc))
    logger.error("unexpected %s on %s", type(exc).__name__, request.url.path if request else "?", exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


def index_error_response(request, exc: IndexError) -> JSONResponse:
    """400 for rasterio's "band index N out of range" (the client asked for a band the asset
    lacks); any other IndexError is a bug: 500."""
    return message_error_response(request, exc)


def database_input_error_response(request, exc: Exception) -> JSONResponse:
    """pgstac rejecting what the client sent (a CQL2 op it does not know, a value of the wrong
    type): 400 with PostgreSQL's primary message, without its CONTEXT (PL/pgSQL lines) or SQL.
    titiler-pgstac wraps some as BackendError (with the search's JSON): the cause is used."""
    cause = exc.__cause__ if isinstance(exc, BackendError) else exc
    if not isinstance(cause, psycopg.Error):
        logger.error("unexpected %s", type(exc).__name__, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")
    primary = cause.diag.message_primary or type(cause).__name__
    return error_response(400, f"the search was rejected: {_short(primary)}")


def mosaic_timeout_response(request, exc: MosaicReadTimeout) -> JSONResponse:
    return service_unavailable(str(exc))


def add_tile_error_handlers(app: FastAPI) -> None:
    # titiler's 204s (no item in a mosaic tile) answer without a body, as titiler does
    add_exception_handlers(app, {exc: code for exc, code in MOSAIC_STATUS_CODES.items() if code == 204})
    for exc, code in CLIENT_STATUS_CODES.items():
        if code != 204:
            app.add_exception_handler(exc, client_error_response)
    for exc in _CLIENT_MESSAGES:
        app.add_exception_handler(exc, message_error_response)
    for exc in (psycopg.errors.DataError, psycopg.errors.RaiseException, BackendError):
        app.add_exception_handler(exc, database_input_error_response)
    app.add_exception_handler(MosaicReadTimeout, mosaic_timeout_response)


class RenderPresetMiddleware:
    """Expand `?render=<id>` into the collection preset's query parameters.

    The collection is the one in the path (`/collections/{cid}/...`); for a registered
    search (`/searches/{search_id}/...`) the preset is looked up in the search's own
    `collections`, in their order (the first that has it wins; a search without
    collections has no presets); on other paths `default_collection`. Parameters given explicitly win over the
    preset's. The expanded query string is what the endpoint (and any URL it builds, e.g.
    TileJSON tile templates) sees.
    """

    def __init__(self, app: ASGIApp, renders: CollectionRenders, default_collection: str):
        self.app = app
        self.renders = renders
        self.default_collection = default_collection

    def _find_preset(self, path: str, render_id: str) -> dict | tuple[int, str]:
        """The preset for a request path, or (status, message) when there is none."""
        m = _SEARCH_IN_PATH.match(path)
        if m:
            search_id = m.group("sid")
            collection_ids = self.renders.search_collections(search_id)
            if collection_ids is None:
                return 404, f"search {search_id!r} not found"
            if not collection_ids:
                return 400, (
                    f"search {search_id!r} has no collections, so no render presets: "
                    "give the tile parameters (assets, rescale, ...) explicitly"
                )
        else:
            m = _COLLECTION_IN_PATH.match(path)
            collection_ids = [m.group("cid") if m else self.default_collection]
        available: set[str] = set()
        for collection_id in collection_ids:
            renders = self.renders.get(collection_id)
            if renders is None:
                if len(collection_ids) == 1:
                    return 404, f"collection {collection_id!r} not found"
                continue
            if render_id in renders:
                return renders[render_id]
            available.update(renders)
        where = (
            "collection " + repr(collection_ids[0])
            if len(collection_ids) == 1
            else "collections " + ", ".join(repr(c) for c in collection_ids)
        )
        return 404, (
            f"render preset {render_id!r} not found in {where} (available: {', '.join(sorted(available)) or 'none'})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or b"render=" not in scope.get("query_string", b""):
            return await self.app(scope, receive, send)
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        render_ids = [v for k, v in query if k == RENDER_PARAM]
        if not render_ids:
            return await self.app(scope, receive, send)
        if len(render_ids) > 1:
            return await error_response(400, "give one `render` preset id")(scope, receive, send)
        render_id = render_ids[0]

        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        try:
            found = await anyio.to_thread.run_sync(self._find_preset, path, render_id)
        except Exception as e:  # database down etc.: not the client's fault
            logger.exception("render lookup failed")
            return await service_unavailable(f"could not read render presets: {redact(str(e))}")(scope, receive, send)
        if isinstance(found, tuple):  # (status, message)
            return await error_response(*found)(scope, receive, send)

        given = [(k, v) for k, v in query if k != RENDER_PARAM]
        given_keys = {k for k, _ in given}
        preset = [(k, v) for k, v in render_query(found) if k not in given_keys]
        scope = dict(scope)
        scope["query_string"] = urlencode(preset + given).encode("latin-1")
        scope[RENDER_ZOOMS_KEY] = found.get("minmax_zoom")  # the mosaic minzoom (tile_limits)
        await self.app(scope, receive, send)


def gdal_s3_config(endpoint_url: str | None) -> dict[str, str]:
    """GDAL config options for /vsis3/ on an S3-compatible endpoint (none for AWS itself).

    `http://127.0.0.1:9000` -> AWS_S3_ENDPOINT=127.0.0.1:9000, AWS_HTTPS=NO, path-style
    addressing (AWS_VIRTUAL_HOSTING=FALSE), no directory listing on open. Credentials are
    not set here: rasterio refuses AWS credentials in `rasterio.Env` and takes them from
    boto3 (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    """
    if not endpoint_url:
        return {}
    u = urlsplit(endpoint_url)
    if u.scheme not in ("http", "https") or not u.hostname or u.path.strip("/"):
        raise ValueError(f"TERRAMESH_S3_ENDPOINT_URL must look like http(s)://host[:port], not {endpoint_url!r}")
    host = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
    return {
        "AWS_S3_ENDPOINT": f"{host}:{u.port}" if u.port else host,
        "AWS_HTTPS": "YES" if u.scheme == "https" else "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }


def apply_gdal_s3_config(settings: ServiceSettings) -> dict[str, str]:
    """Put `gdal_s3_config` into this process's environment, where GDAL reads config
    options in every thread.

    Not `rasterio.Env` per request (titiler's `environment_dependency`): outside the main
    thread rasterio sets those options thread-locally, and rio-tiler reads the assets of
    an item or a mosaic in its own thread pool, which would not see them.
    """
    config = gdal_s3_config(settings.s3_endpoint_url)
    for key, value in config.items():
        if os.environ.get(key) not in (None, value):
            logger.info("%s=%s from settings.s3_endpoint_url replaces %s", key, value, os.environ[key])
        os.environ[key] = value
    return config


def open_pool(dsn: str, settings: ServiceSettings) -> ConnectionPool:
    """The tile service's psycopg pool, as titiler-pgstac's `connect_to_db` opens it
    (search_path, application name, waits for the first connection) but failing fast
    when the database is away: a request waits at most `db_acquire_timeout` for a
    connection (psycopg_pool's default is 30 s; the request then answers 503), and each
    connection is checked as it leaves the pool, so connections broken by a database
    restart are replaced instead of failing one request each."""
    url = str(PostgresSettings(database_url=dsn).database_url)
    pool = ConnectionPool(
        conninfo=url,
        min_size=1,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_acquire_timeout,
        num_workers=1,
        check=ConnectionPool.check_connection,
        # statement_timeout: a query ends with its request's time limit (catalog/guard.py)
        kwargs={
            "options": "-c search_path=pgstac,public -c application_name=pgstac"
            f" -c statement_timeout={int(settings.request_time_limit * 1000)}"
        },
        open=True,
    )
    pool.wait()
    return pool


def _mosaic_factory(reader, path_dependency, prefix: str, **options) -> MosaicTilerFactory:
    """titiler-pgstac's mosaic endpoints of a registered search or a collection, with the
    options of titiler-pgstac's own main.py (no statistics, viewer or OGC maps)."""
    return MosaicTilerFactory(
        dataset_reader=reader,
        path_dependency=path_dependency,
        router_prefix=prefix,
        add_statistics=False,
        add_viewer=False,
        add_part=True,
        add_ogc_maps=False,
        extensions=[searchInfoExtension()],
        **options,
    )


def create_raster_app(settings: ServiceSettings, dsn: str) -> FastAPI:
    """The titiler-pgstac application (to be mounted at /raster)."""
    renders = CollectionRenders(ttl=settings.render_cache_ttl)
    apply_gdal_s3_config(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.dbpool = renders.pool = open_pool(dsn, settings)
        try:
            yield
        finally:
            app.state.dbpool.close()

    app = FastAPI(
        title="TerraMesh tiles (titiler-pgstac)",
        version=titiler_pgstac_version,
        openapi_url="/api",
        docs_url="/api.html",
        lifespan=lifespan,
    )
    add_tile_error_handlers(app)
    app.state.renders = renders

    # Bounded work per request (catalog/tile_limits.py): checks before any work on every
    # tile route, mosaic tiles from a minimum zoom, bbox/feature images sized, every read
    # counted (pixels x bands) and a read deadline for mosaics.
    limits = TileLimits.from_settings(settings)
    app.state.tile_limits = limits
    checks = [Depends(request_checks(limits)), Depends(feature_body_check)]
    mosaic_checks = [*checks, Depends(mosaic_zoom_check(limits, renders.unknown_mosaic))]
    part_params = type("PartParams", (BoundedPartParams,), {"default_max_size": limits.max_image_size})
    backend = type(
        "Backend",
        (BudgetedBackend,),
        {
            "read_seconds": limits.mosaic_read_seconds,
            "max_values": limits.max_values,
            "max_side": limits.max_image_size,
            "max_threads": settings.mosaic_threads,
        },
    )

    # Readers that also read Zarr assets (catalog/zarr_tiles.py), with this app's S3 endpoint.
    zarr_options = {
        "s3_endpoint_url": settings.s3_endpoint_url,
        "max_values": limits.max_values,
        "max_side": limits.max_image_size,
    }
    item_reader = type("ItemReader", (ItemReader,), zarr_options)
    mosaic_item_reader = type("MosaicItemReader", (MosaicItemReader,), zarr_options)
    mosaic_options = {"backend": backend, "img_part_dependency": part_params}

    # Registered-search mosaics.
    searches = _mosaic_factory(mosaic_item_reader, SearchIdParams, "/searches/{search_id}", **mosaic_options)
    app.include_router(
        searches.router, tags=["STAC Search"], prefix="/searches/{search_id}", dependencies=mosaic_checks
    )
    add_search_list_route(app, prefix="/searches", tags=["STAC Search"])
    add_search_register_route(
        app,
        prefix="/searches",
        search_dependency=register_search_params,
        tile_dependencies=[
            searches.layer_dependency,
            searches.dataset_dependency,
            searches.pixel_selection_dependency,
            searches.process_dependency,
            searches.render_dependency,
            searches.assets_accessor_dependency,
            searches.reader_dependency,
            searches.backend_dependency,
        ],
        tags=["STAC Search"],
    )

    # Collection mosaics (all items of a collection, as in titiler-pgstac's main.py).
    collections = _mosaic_factory(
        mosaic_item_reader,
        CollectionIdParams,
        "/collections/{collection_id}",
        get_renders=_collection_mosaic_renders,
        **mosaic_options,
    )
    app.include_router(
        collections.router,
        tags=["STAC Collection"],
        prefix="/collections/{collection_id}",
        dependencies=mosaic_checks,
    )

    # Items.
    items = MultiBaseTilerFactory(
        reader=item_reader,
        path_dependency=ItemIdParams,
        router_prefix="/collections/{collection_id}/items/{item_id}",
        add_viewer=False,
        get_renders=renders.for_item,
        extensions=[stacRenderExtension()],
        img_part_dependency=part_params,
    )
    app.include_router(
        items.router,
        tags=["STAC Item"],
        prefix="/collections/{collection_id}/items/{item_id}",
        dependencies=checks,
    )

    app.include_router(TMSFactory().router, tags=["Tiling Schemes"])
    app.include_router(ColorMapFactory().router, tags=["ColorMaps"], dependencies=checks)  # legend width/height

    @app.get("/healthz", tags=["Health Check"])
    def healthz(timeout: int = Query(1, ge=0, le=30)) -> dict[str, Any]:
        try:
            with app.state.dbpool.connection(timeout) as conn:
                conn.execute("SELECT 1")
            db_online = True
        except Exception:
            db_online = False
        return {
            "database_online": db_online,
            "versions": {"titiler.pgstac": titiler_pgstac_version, "gdal": rasterio.__gdal_version__},
        }

    def openapi() -> dict:  # FastAPI's document, with the limits of tile_limits in it
        if app.openapi_schema is None:
            app.openapi_schema = document_limits(FastAPI.openapi(app), limits)
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(RenderPresetMiddleware, renders=renders, default_collection=settings.collection_id)
    app.add_middleware(TileCacheHeaders, revisions=RevisionCache(), pool_of=lambda: app.state.dbpool)
    return app
