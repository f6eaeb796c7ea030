"""`terramesh-stac serve`: one ASGI app for the STAC API, tiles, assets and the map page.

    /           map page (catalog/map_page.py, built from frontend/); also /map
    /vector     vector tiles of the map: density, footprints (catalog/vector_tiles.py)
    /stac       STAC API (catalog/api.py, stac-fastapi-pgstac)
    /raster     tiles, TileJSON, previews, mosaics (catalog/tiles.py, titiler-pgstac)
    /assets     the converted files (when `settings.dest` is a local folder), with
                HTTP range requests (Starlette FileResponse), so GDAL reads COGs remotely
    /index      the byte-range index (parquet per shard; the collection's `byte-index`)

Run it with `run(settings)` or `uvicorn --factory terramesh_stac.asgi:create_app` (settings
from the environment).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from terramesh_stac.catalog.api import api_dsn, create_stac_api
from terramesh_stac.catalog.errors import add_fault_handlers
from terramesh_stac.catalog.guard import RequestGuard
from terramesh_stac.catalog.links import (
    RASTER_PATH,
    SERVICE_ROOT_PATH_KEY,
    STAC_PATH,
    rewrite_reference_urls,
    served_folders,
)
from terramesh_stac.catalog.map_page import VECTOR_PATH, map_routes
from terramesh_stac.catalog.settings import ServiceSettings
from terramesh_stac.catalog.tiles import create_raster_app
from terramesh_stac.catalog.vector_tiles import create_vector_app
from terramesh_stac.converters import zarrview

logger = logging.getLogger(__name__)


class _MountedAsRoot:
    """Run a sub-app mounted at /stac or /raster as if /stac were its own root.

    Starlette keeps `app_root_path` at the top-level root in mounted apps, and
    `request.base_url` uses it: stac-fastapi and titiler would then build links without
    the mount path (`http://host/collections` instead of `http://host/stac/collections`).
    Setting `app_root_path` to the mount's `root_path` (and letting the sub-app's router
    answer `url_for`) fixes every link they build, with no `router_prefix`; the service root is kept under SERVICE_ROOT_PATH_KEY for links to
    sibling sub-apps (terramesh_stac.catalog.links.service_root).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    def __getattr__(self, name):  # .router, .state, ... of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope[SERVICE_ROOT_PATH_KEY] = scope.get("app_root_path", "")
            scope["app_root_path"] = scope.get("root_path", "")
            scope.pop("router", None)  # url_for() resolves names in the sub-app's router
        await self.app(scope, receive, send)


class _Assets(StaticFiles):
    """StaticFiles that answers 404 (not 500) for a missing asset folder, no listings.

    A per-item Zarr view (converters/zarrview.py) names the stacked store by its path on
    this server: it is served with those paths as this service's URLs, so it reads over
    HTTP like every other asset."""

    def __init__(self, *, folders: dict[str, Path], **kwargs):
        super().__init__(**kwargs)
        self.folders = folders

    async def get_response(self, path: str, scope: Scope):
        if not Path(self.directory).is_dir():
            return JSONResponse({"detail": "asset folder not available"}, status_code=404)
        if path.endswith(zarrview.FILE_SUFFIX) and scope["method"] in ("GET", "HEAD"):
            full_path, stat = await anyio.to_thread.run_sync(self.lookup_path, path)
            if stat is not None and stat.st_size <= MAX_VIEW_BYTES:
                refs = json.loads(await anyio.Path(full_path).read_bytes())
                base = str(Request(scope).base_url.replace(path=scope.get("app_root_path", "").rstrip("/") + "/"))
                return JSONResponse(rewrite_reference_urls(refs, self.folders, base))
        return await super().get_response(path, scope)


MAX_VIEW_BYTES = 1 << 20  # a view is ~10 kB; a bigger file is served as it is


def create_app(settings: ServiceSettings) -> Starlette:
    """The whole service as one Starlette app (sub-apps share one lifespan)."""
    dsn = api_dsn(settings)
    stac_api = create_stac_api(settings, dsn)
    stac_app = stac_api.app
    raster_app = create_raster_app(settings, dsn)
    vector_app = create_vector_app(settings, dsn)
    for sub in (
        stac_app,
        raster_app,
        vector_app,
    ):  # after their own handlers, which they override where both map a class
        add_fault_handlers(sub)

    # GDAL's block cache is per process and defaults to 5 % of RAM: bound it (only if the
    # environment does not say otherwise).
    os.environ.setdefault("GDAL_CACHEMAX", str(settings.gdal_cache_mb))

    @asynccontextmanager
    async def lifespan(app: Starlette):
        # Sync endpoints (titiler's) run in anyio's default thread pool: its size bounds
        # the tile work (and memory) in progress at once; more requests wait for a thread.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        async with AsyncExitStack() as stack:
            for sub in (stac_app, raster_app, vector_app):
                await stack.enter_async_context(sub.router.lifespan_context(sub))
            yield

    routes = [
        *map_routes(settings),
        Route(f"/{STAC_PATH}", lambda r: RedirectResponse(str(r.url.replace(path=r.url.path + "/")))),
        Mount(f"/{STAC_PATH}", app=_MountedAsRoot(stac_app)),
        Mount(f"/{RASTER_PATH}", app=_MountedAsRoot(raster_app)),
        Mount(f"/{VECTOR_PATH}", app=_MountedAsRoot(vector_app)),
    ]
    folders = served_folders(settings.dest)
    for url_path, folder in folders.items():
        routes.append(Mount(f"/{url_path}", app=_Assets(directory=folder, check_dir=False, folders=folders)))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["GET", "POST", "OPTIONS", "HEAD"],
                allow_headers=["*"],
                expose_headers=["Content-Range", "Content-Length", "Accept-Ranges"],
            ),
            Middleware(
                RequestGuard,
                max_body_bytes=settings.max_body_bytes,
                time_limit=settings.request_time_limit,
                timed_prefixes=(f"/{STAC_PATH}", f"/{RASTER_PATH}", f"/{VECTOR_PATH}"),
                untimed_paths=(f"/{RASTER_PATH}/healthz", f"/{STAC_PATH}/_mgmt/ping", f"/{STAC_PATH}/_mgmt/health"),
            ),
        ],
    )
    app.state.settings = settings
    app.state.stac_api = stac_api
    return app


def check_can_listen(host: str, port: int) -> None:
    """RuntimeError unless this process can listen on host:port now (a busy port, a port
    below 1024 without privileges, an address this machine does not have)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def run(settings: ServiceSettings) -> None:
    """Serve the app with uvicorn on settings.host:settings.port."""
    import uvicorn

    app = create_app(settings)
    logger.info("serving on http://%s:%s/ (STAC API at /stac)", settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        proxy_headers=True,
        timeout_graceful_shutdown=settings.shutdown_grace,  # SIGTERM: requests in flight get this long
    )
