"""The map page (built from frontend/ by `infra/install.sh` into static/map/), at / and /map.

    /, /map            the page (index.html, with the service's root path filled in)
    /map/config.json   what the page needs to know of this service: where the STAC API, the
                       tiles and the vector tiles are, the collection, the base map, zooms
    /map/...           the built files (bundle, MapLibre's worker, the offline base map)

The page is built, not committed: without a build the routes answer 503 saying how to build it.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from terramesh_stac.catalog import density
from terramesh_stac.catalog.links import RASTER_PATH, STAC_PATH
from terramesh_stac.catalog.settings import ServiceSettings
from terramesh_stac.catalog.vector_tiles import FOOTPRINTS_MAXZOOM, FOOTPRINTS_MINZOOM
from terramesh_stac.converters.modalities import SOURCES, SPLITS

MAP_DIR = Path(__file__).parent / "static" / "map"
VECTOR_PATH = "vector"
NOT_BUILT = "the map page is not built: run infra/install.sh (it builds frontend/ with npm)"

mimetypes.add_type("text/javascript", ".mjs")  # MapLibre's worker module


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


class _MapFiles(StaticFiles):
    """The built files; 503 with a message when there is no build, 404 for a missing file."""

    async def get_response(self, path: str, scope):
        if not (MAP_DIR / "index.html").is_file():
            return JSONResponse({"detail": NOT_BUILT}, status_code=503)
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")  # revalidated (ETag): a rebuild shows at once
        return response


def map_routes(settings: ServiceSettings) -> list[BaseRoute]:
    async def page(request: Request):
        index = MAP_DIR / "index.html"
        if not index.is_file():
            return JSONResponse({"detail": NOT_BUILT}, status_code=503)
        html = index.read_text().replace("%ROOT%", _root(request))
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    async def config(request: Request):
        root = _root(request)
        return JSONResponse(
            {
                "collection": settings.collection_id,
                "stac": f"{root}/{STAC_PATH}",
                "raster": f"{root}/{RASTER_PATH}",
                "vector": f"{root}/{VECTOR_PATH}",
                "basemap": settings.basemap,
                "density_maxzoom": density.MAX_LEVEL,
                "footprints_minzoom": FOOTPRINTS_MINZOOM,
                "footprints_maxzoom": FOOTPRINTS_MAXZOOM,
                "mosaic_minzoom": max(settings.map_mosaic_minzoom, settings.mosaic_minzoom),
                "default_render": settings.default_render,
                "sources": list(SOURCES),
                "splits": list(SPLITS),
            },
            headers={"Cache-Control": "no-cache"},
        )

    return [
        Route("/", page, methods=["GET"]),
        Route("/map", page, methods=["GET"]),
        Route("/map/config.json", config, methods=["GET"]),
        Mount("/map", app=_MapFiles(directory=MAP_DIR, check_dir=False)),
    ]
