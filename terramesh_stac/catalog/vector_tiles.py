"""Vector tiles (Mapbox Vector Tiles, from PostGIS's ST_AsMVT) for the map, mounted at /vector:

    /density/{z}/{x}/{y}.pbf      samples per grid cell, zooms 0-5 (catalog/density.py),
                                  filtered by year_min, year_max, source, split, max_cloud
    /footprints/{z}/{x}/{y}.pbf   item footprints, zooms 6-14, of a registered search
                                  (`?search=<id>` from /raster/searches/register, the same
                                  search the mosaic draws) or of the whole collection
    /mosaic/{render}/{z}/{x}/{y}.webp
                                  the collection's mosaic seeded ahead for zooms 11-13
                                  (catalog/mosaic_cache.py): 204 where it is empty
    /revision                     the collection's catalog revision and its seeded mosaics

Every tile URL may carry `v=<revision>` (catalog/tile_cache.py): a tile asked for the current
revision is the same until the next load, so it is sent `immutable`; any other gets a short
max-age. A footprint tile holds at most `footprints_max_features` items; when there were
more it says so in the `X-Footprints-Truncated` header (the map page does not read it yet).
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from cachetools import LRUCache
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from psycopg import sql

from terramesh_stac.catalog import density, mosaic_cache
from terramesh_stac.catalog.settings import ServiceSettings
from terramesh_stac.catalog.tile_cache import RevisionCache, cache_control
from terramesh_stac.catalog.tiles import open_pool

MVT_MEDIA_TYPE = "application/vnd.mapbox-vector-tile"
FOOTPRINTS_MINZOOM = density.MAX_LEVEL + 1
FOOTPRINTS_MAXZOOM = 14  # the map overzooms beyond

_FOOTPRINTS_SQL = """
SELECT ST_AsMVT(t, 'footprints', 4096, 'geom'), count(*) FROM (
    SELECT id,
        (content->'properties'->>'eo:cloud_cover')::float8 AS cloud,
        to_char(datetime AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
        content->'properties'->>'terramesh:source' AS source,
        content->'properties'->>'terramesh:split' AS split,
        ST_AsMVTGeom(ST_Transform(geometry, 3857), ST_TileEnvelope({z}, {x}, {y}), 4096, 64, true) AS geom
    FROM pgstac.items
    WHERE collection = {collection}
      AND geometry && ST_Transform(ST_TileEnvelope({z}, {x}, {y}), 4326)
      AND ({where})
    LIMIT {limit}
) t WHERE geom IS NOT NULL
"""


class _SearchWheres:
    """Registered search id -> pgstac's SQL WHERE clause of it (pgstac.stac_search_to_where);
    a search id is the hash of its content, so the clause never changes."""

    def __init__(self):
        self._cache: LRUCache = LRUCache(maxsize=1024)
        self._lock = threading.Lock()

    def get(self, conn, search_id: str) -> str:
        with self._lock:
            hit = self._cache.get(search_id)
        if hit is not None:
            return hit
        row = conn.execute(
            "SELECT pgstac.stac_search_to_where(search) FROM pgstac.searches WHERE hash = %s", (search_id,)
        ).fetchone()
        if row is None:
            raise HTTPException(404, f"search {search_id!r} is not registered")
        where = row[0] or "true"
        with self._lock:
            self._cache[search_id] = where
        return where


def _check_tile(z: int, x: int, y: int, minzoom: int, maxzoom: int, layer: str) -> None:
    if not minzoom <= z <= maxzoom:
        raise HTTPException(404, f"{layer} tiles are served at zooms {minzoom}-{maxzoom}")
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        raise HTTPException(404, f"tile {z}/{x}/{y} is outside the zoom {z} grid")


def _names(value: str | None, what: str) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if len(names) > 16 or any(len(n) > 64 for n in names):
        raise HTTPException(400, f"{what}: at most 16 comma-separated names of at most 64 characters")
    return names


def create_vector_app(settings: ServiceSettings, dsn: str) -> FastAPI:
    """The /vector application."""
    revisions = RevisionCache()
    wheres = _SearchWheres()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.dbpool = open_pool(dsn, settings)
        try:
            yield
        finally:
            app.state.dbpool.close()

    app = FastAPI(title="TerraMesh vector tiles", openapi_url="/api", docs_url="/api.html", lifespan=lifespan)

    def _collection(conn, collection_id: str | None) -> tuple[str, int]:
        cid = collection_id or settings.collection_id
        rev, exists = revisions.get(conn, cid)
        if not exists:
            raise HTTPException(404, f"collection {cid!r} not found")
        return cid, rev

    def _tile_response(data: bytes, asked: int | None, current: int, headers: dict | None = None) -> Response:
        cache = cache_control(asked, current)
        return Response(
            data,
            media_type=MVT_MEDIA_TYPE,
            headers={"Cache-Control": cache, "X-Catalog-Revision": str(current), **(headers or {})},
        )

    @app.get("/revision")
    def revision(request: Request, collection: str | None = Query(None, max_length=256)) -> JSONResponse:
        with request.app.state.dbpool.connection() as conn:
            cid, rev = _collection(conn, collection)
            seeded = mosaic_cache.seeded(conn, cid, rev)
        return JSONResponse(
            {"collection": cid, "revision": rev, "seeded_mosaic": seeded}, headers={"Cache-Control": "no-cache"}
        )

    @app.get("/density/{z}/{x}/{y}.pbf", response_class=Response)
    def density_tile(
        request: Request,
        z: int,
        x: int,
        y: int,
        collection: str | None = Query(None, max_length=256),
        v: int | None = Query(None, description="catalog revision (caching)"),
        year_min: int | None = Query(None, ge=1900, le=2200),
        year_max: int | None = Query(None, ge=1900, le=2200),
        source: str | None = Query(None, max_length=1100, description="comma-separated terramesh:source"),
        split: str | None = Query(None, max_length=1100, description="comma-separated terramesh:split"),
        max_cloud: float | None = Query(None, ge=0, le=100, description="eo:cloud_cover at most (%)"),
    ) -> Response:
        _check_tile(z, x, y, 0, density.MAX_LEVEL, "density")
        flt = density.DensityFilter(year_min, year_max, _names(source, "source"), _names(split, "split"), max_cloud)
        with request.app.state.dbpool.connection() as conn:
            cid, rev = _collection(conn, collection)
            data = density.tile(conn, cid, z, x, y, flt)
        return _tile_response(data, v, rev)

    @app.get("/footprints/{z}/{x}/{y}.pbf", response_class=Response)
    def footprints_tile(
        request: Request,
        z: int,
        x: int,
        y: int,
        collection: str | None = Query(None, max_length=256),
        search: str | None = Query(None, max_length=64, pattern=r"^[0-9a-fA-F]+$", description="registered search"),
        v: int | None = Query(None, description="catalog revision (caching)"),
    ) -> Response:
        _check_tile(z, x, y, FOOTPRINTS_MINZOOM, FOOTPRINTS_MAXZOOM, "footprints")
        limit = settings.footprints_max_features
        with request.app.state.dbpool.connection() as conn:
            cid, rev = _collection(conn, collection)
            where = sql.SQL(wheres.get(conn, search) if search else "true")
            query = sql.SQL(_FOOTPRINTS_SQL).format(
                z=sql.Literal(z),
                x=sql.Literal(x),
                y=sql.Literal(y),
                collection=sql.Literal(cid),
                where=where,
                limit=sql.Literal(limit + 1),
            )
            data, count = conn.execute(query).fetchone()
        headers = {"X-Footprints-Truncated": "true"} if count > limit else {}
        # a search's footprints are short-lived whatever the revision (search-dependent, like
        # the mosaic), and so is a truncated tile
        pinned = v if not search and not headers else None
        return _tile_response(bytes(data or b""), pinned, rev, headers)

    @app.get("/mosaic/{render}/{z}/{x}/{y}.webp", response_class=Response)
    def seeded_mosaic_tile(
        request: Request,
        render: str,
        z: int,
        x: int,
        y: int,
        collection: str | None = Query(None, max_length=256),
        v: int | None = Query(None, description="catalog revision (caching)"),
    ) -> Response:
        _check_tile(z, x, y, 0, mosaic_cache.MAX_SEED_ZOOM, "seeded mosaic")
        if len(render) > 64:
            raise HTTPException(400, "render: at most 64 characters")
        with request.app.state.dbpool.connection() as conn:
            cid, rev = _collection(conn, collection)
            data, seeded_revision = mosaic_cache.tile(conn, cid, render, z, x, y)
        if seeded_revision is None:
            raise HTTPException(404, f"the mosaic of {cid!r} with render {render!r} is not seeded at zoom {z}")
        # immutable only for the revision it was seeded for, when that is the current one
        headers = {
            "Cache-Control": cache_control(v if seeded_revision == rev else None, rev),
            "X-Catalog-Revision": str(rev),
            "X-Seeded-Revision": str(seeded_revision),
        }
        if data is None:
            return Response(status_code=204, headers=headers)
        return Response(data, media_type="image/webp", headers=headers)

    return app
