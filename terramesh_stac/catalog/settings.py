"""The catalog's settings: the database (embedded cluster or external) and the service.

Plain pydantic models: nothing here reads the environment. The command line composes them
with the conversion settings into `terramesh_stac.settings.Settings`, which reads
`TERRAMESH_*` variables once, and passes them down.
"""

import os
from pathlib import Path

from pydantic import BaseModel, Field


def default_state_dir() -> Path:
    # As root the cluster runs as the `postgres` user, which cannot enter /root: keep the
    # state somewhere it can reach.
    if os.geteuid() == 0:
        return Path("/var/lib/terramesh-stac")
    return Path.home() / ".local" / "state" / "terramesh-stac"


class DatabaseSettings(BaseModel):
    """Where pgstac is: the embedded PostgreSQL/PostGIS cluster (`terramesh-stac db start`),
    or an external database when `dsn` is set."""

    state_dir: Path = default_state_dir()  # the embedded cluster and its credentials
    db_host: str = "127.0.0.1"
    db_port: int = 5439
    db_name: str = "terramesh"
    dsn: str | None = None  # an external database (superuser/admin DSN) instead


class ServiceSettings(DatabaseSettings):
    """`terramesh-stac serve`: the STAC API, tiles, assets and map page."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    dest: str = "./terramesh-output"  # what `convert` wrote: assets served from here when local
    collection_id: str = "terramesh"  # the tile service's default collection
    s3_endpoint_url: str | None = None  # S3-compatible endpoint for S3 assets (GDAL, Zarr)
    enable_transactions: bool = False
    cors_origins: str = "*"  # comma-separated origins, or "*"
    # DSN the API and tile service connect with (pgstac_read role). Default: the database
    # module's API role DSN (catalog.api.api_dsn), else libpq's PG* environment variables;
    # never `dsn` itself (the admin).
    api_dsn: str | None = None
    db_pool_max_size: int = 5  # per service (STAC API, tiles)
    # Items are merged with their collection's item_assets in the API (stac-fastapi-pgstac's
    # Rust `hydraters`) instead of in pgstac's PL/pgSQL: see README "pgstac at full size".
    api_hydrate: bool = True
    # seconds a tile request waits for a pooled connection (titiler-pgstac tries 3 more times)
    db_acquire_timeout: float = Field(2.0, gt=0)
    # DSN of the transaction endpoints' write pool (pgstac_ingest role), used only with
    # enable_transactions. Default: the database module's loader role DSN.
    write_dsn: str | None = None
    # libpq's PG* variables (PGHOST, PGUSER, ...) as the process got them: the services'
    # connection when no DSN is configured (asyncpg needs them spelled out)
    libpq_env: dict[str, str] = {}
    default_render: str | None = "true-color"  # render preset of items' tile and preview links
    render_cache_ttl: float = 60.0  # seconds the collections' render presets are cached
    # Bounds on one request (catalog/guard.py): the STAC API's and tile service's time
    # limit, the largest request body, the worker threads of sync endpoints (tiles: each
    # holds at most one bounded image in memory), GDAL's block cache, and how long SIGTERM
    # waits for requests in flight.
    request_time_limit: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    worker_threads: int = Field(8, ge=1, le=256)
    # GDAL's default block cache is 5 % of RAM (1.2 GB of 24), which one zoomed-out read
    # fills; 64 MB keeps a 2048 px read at ~+140 MB instead of ~+250 MB (measured), and COG
    # tiles still come from the page cache.
    gdal_cache_mb: int = Field(64, ge=16)
    shutdown_grace: int = Field(5, ge=0)
    # Work one tile request may cause (terramesh_stac.catalog.tile_limits; README "Limits of
    # the tile service"): larger requests answer 400 before any read.
    tile_max_tilesize: int = Field(1024, ge=64)  # tile side in pixels (`tilesize`)
    tile_max_image_size: int = Field(2048, ge=64)  # preview, bbox, feature, statistics side
    tile_max_values: int = Field(2048 * 2048 * 3, ge=64 * 64)  # output pixels x bands per request
    mosaic_minzoom: int = Field(8, ge=0)  # mosaic tiles (WebMercatorQuad zoom) unless a preset says
    mosaic_max_items: int = Field(100, ge=1)  # pgstac `items_limit` per mosaic tile
    mosaic_max_scan: int = Field(10_000, ge=1)  # pgstac `scan_limit`
    mosaic_max_search_seconds: int = Field(5, ge=1)  # pgstac `time_limit`
    mosaic_read_seconds: float = Field(10.0, gt=0)  # reading a mosaic's items: then stop
    mosaic_threads: int = Field(1, ge=1, le=64)  # items of one mosaic tile read at once (tile_limits)
    # the map draws the mosaic from this zoom (footprints below it; README "The map")
    map_mosaic_minzoom: int = Field(13, ge=0, le=24)
    # The map page (catalog/map_page.py, vector tiles in catalog/vector_tiles.py)
    footprints_max_features: int = Field(20_000, ge=1)  # footprints in one vector tile
    # the map's base map: "offline" (Natural Earth land and borders, served by us), "osm"
    # (OpenStreetMap's raster tiles) or the URL of a MapLibre style
    basemap: str = "offline"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
