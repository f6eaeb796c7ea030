"""Sample density per grid cell: what the map draws from the whole planet down to a region.

9.2 M footprints cannot be drawn at world zooms (and a raster mosaic there would read
millions of COGs), so the map shows counts per cell of a Web Mercator grid, recounted in
PostGIS from pgstac's items after each load (`refresh`) into one small table,
`terramesh.density`:

    (collection, level, x, y, year, source, split, cloud, n)

`level` is the map zoom a row serves (0 ... MAX_LEVEL); its cells are the tiles of zoom
`level + CELLS_ZOOM_OFFSET`, so one vector tile of zoom `level` holds up to 32 x 32 cells
(a cell is ~39 km at level 5, ~1,250 km at level 0). A sample counts in the cell of its
bbox's centre (of a point on it, for a footprint split at the antimeridian). `cloud` is the class of `eo:cloud_cover` between CLOUD_EDGES (0: <= 10 %,
1: <= 20 %, 2: <= 50 %, 3: more, -1: none), so the layer honours the map's filters at the
granularity of year, source, split and cloud class.

`terramesh.catalog_state` holds a revision per collection, raised by each refresh: tile
URLs carry it (`?v=`) so tiles can be cached as immutable for one state of the catalog.
The SQL runs as pgstac_admin (SECURITY DEFINER), called by the loader role.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

CELLS_ZOOM_OFFSET = 5  # a level-z tile holds 2^5 x 2^5 cells
MAX_LEVEL = 5  # density tiles for zooms 0-5 (cells of zoom 10); footprints from zoom 6
CLOUD_EDGES = (10.0, 20.0, 50.0)  # eo:cloud_cover classes: <= 10, <= 20, <= 50, more
EARTH_CIRCUMFERENCE_KM = 40075.016686

DENSITY_SQL = (
    "CREATE SCHEMA IF NOT EXISTS terramesh",
    "ALTER SCHEMA terramesh OWNER TO pgstac_admin",
    """CREATE TABLE IF NOT EXISTS terramesh.density (
        collection text NOT NULL, level smallint NOT NULL, x integer NOT NULL, y integer NOT NULL,
        year smallint NOT NULL, source text NOT NULL, split text NOT NULL, cloud smallint NOT NULL,
        n integer NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS density_tile ON terramesh.density (collection, level, (x >> {CELLS_ZOOM_OFFSET}),"
    f" (y >> {CELLS_ZOOM_OFFSET}))",
    """CREATE TABLE IF NOT EXISTS terramesh.catalog_state (
        collection text PRIMARY KEY, revision bigint NOT NULL, refreshed_at timestamptz NOT NULL)""",
    f"""CREATE OR REPLACE FUNCTION terramesh.refresh_density(_collection text, _max_level integer, _edges float8[])
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgstac, public AS $$
DECLARE
    cells_zoom integer := _max_level + {CELLS_ZOOM_OFFSET};
    side float8 := 2 ^ (_max_level + {CELLS_ZOOM_OFFSET});
    rev bigint;
BEGIN
    IF _max_level < 0 OR _max_level > 20 THEN
        RAISE EXCEPTION 'max level % out of range', _max_level USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- one writer at a time per collection; readers keep seeing the previous counts until commit
    PERFORM pg_advisory_xact_lock(hashtext('terramesh.density:' || _collection));
    DELETE FROM terramesh.density WHERE collection = _collection;
    CREATE TEMP TABLE _terramesh_cells ON COMMIT DROP AS
    SELECT x, y, year, source, split, cloud, count(*)::integer AS n FROM (
        SELECT
            least(greatest(floor((lon + 180) / 360 * side), 0), side - 1)::integer AS x,
            least(greatest(floor((1 - ln(tan(radians(lat)) + 1 / cos(radians(lat))) / pi()) / 2 * side), 0),
                  side - 1)::integer AS y,
            extract(year FROM datetime)::smallint AS year,
            coalesce(content->'properties'->>'terramesh:source', '') AS source,
            coalesce(content->'properties'->>'terramesh:split', '') AS split,
            CASE WHEN cc IS NULL THEN -1 ELSE (SELECT count(*) FROM unnest(_edges) e WHERE cc > e) END::smallint
                AS cloud
        FROM (
            SELECT datetime, content,
                CASE WHEN st_xmax(geometry) - st_xmin(geometry) > 180  -- split at the antimeridian
                    THEN st_x(st_pointonsurface(geometry))
                    ELSE (st_xmin(geometry) + st_xmax(geometry)) / 2 END AS lon,
                least(greatest((st_ymin(geometry) + st_ymax(geometry)) / 2, -85.0511), 85.0511) AS lat,
                (content->'properties'->>'eo:cloud_cover')::float8 AS cc
            FROM pgstac.items WHERE collection = _collection
        ) i
    ) c GROUP BY 1, 2, 3, 4, 5, 6;
    FOR lvl IN 0.._max_level LOOP
        INSERT INTO terramesh.density (collection, level, x, y, year, source, split, cloud, n)
        SELECT _collection, lvl, x >> (_max_level - lvl), y >> (_max_level - lvl), year, source, split, cloud, sum(n)
        FROM _terramesh_cells GROUP BY 3, 4, 5, 6, 7, 8;
    END LOOP;
    INSERT INTO terramesh.catalog_state AS s (collection, revision, refreshed_at) VALUES (_collection, 1, now())
    ON CONFLICT (collection) DO UPDATE SET revision = s.revision + 1, refreshed_at = now()
    RETURNING revision INTO rev;
    RETURN rev;
END $$""",
    "ALTER TABLE terramesh.density OWNER TO pgstac_admin",
    "ALTER TABLE terramesh.catalog_state OWNER TO pgstac_admin",
    "ALTER FUNCTION terramesh.refresh_density(text, integer, float8[]) OWNER TO pgstac_admin",
    "REVOKE ALL ON FUNCTION terramesh.refresh_density(text, integer, float8[]) FROM PUBLIC",
    "GRANT USAGE ON SCHEMA terramesh TO pgstac_ingest, pgstac_read",
    "GRANT EXECUTE ON FUNCTION terramesh.refresh_density(text, integer, float8[]) TO pgstac_ingest",
    "GRANT SELECT ON terramesh.density, terramesh.catalog_state TO pgstac_read, pgstac_ingest",
)


def refresh(conn: psycopg.Connection, collection_id: str) -> int:
    """Recount `collection_id`'s density cells from pgstac (in one transaction: readers see
    the old counts until it commits) and ANALYZE; returns the collection's new revision."""
    with conn.transaction():
        (revision,) = conn.execute(
            "SELECT terramesh.refresh_density(%s, %s, %s)", (collection_id, MAX_LEVEL, list(CLOUD_EDGES))
        ).fetchone()
    return revision


def revision(conn: psycopg.Connection, collection_id: str) -> int:
    """The collection's catalog revision (0 before its first refresh)."""
    row = conn.execute(
        "SELECT revision FROM terramesh.catalog_state WHERE collection = %s", (collection_id,)
    ).fetchone()
    return row[0] if row else 0


def cloud_classes(max_cloud: float | None) -> list[int] | None:
    """The cloud classes of samples with eo:cloud_cover <= max_cloud (None: all, unknown
    cover included). A bound between edges takes the class it falls in (an over-count,
    which the map avoids by offering only the edges)."""
    if max_cloud is None:
        return None
    classes = [0]
    for n, edge in enumerate(CLOUD_EDGES, start=1):
        if max_cloud > edge:
            classes.append(n)
    return classes


@dataclass(frozen=True)
class DensityFilter:
    """The map's filters as the density table can honour them."""

    year_min: int | None = None
    year_max: int | None = None
    sources: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    max_cloud: float | None = None


_TILE_SQL = f"""
WITH cells AS (
    SELECT x, y, sum(n)::integer AS n FROM terramesh.density
    WHERE collection = %(collection)s AND level = %(z)s
      AND (x >> {CELLS_ZOOM_OFFSET}) = %(x)s AND (y >> {CELLS_ZOOM_OFFSET}) = %(y)s
      AND (%(year_min)s::integer IS NULL OR year >= %(year_min)s)
      AND (%(year_max)s::integer IS NULL OR year <= %(year_max)s)
      AND (%(sources)s::text[] IS NULL OR source = ANY(%(sources)s))
      AND (%(splits)s::text[] IS NULL OR split = ANY(%(splits)s))
      AND (%(clouds)s::smallint[] IS NULL OR cloud = ANY(%(clouds)s))
    GROUP BY x, y
), shaped AS (
    SELECT n,
        -- samples per 1,000 km2 of ground: a cell's side shrinks with cos(latitude)
        round((n * 1000 / (
            (%(cell_km)s * cos(atan(sinh(pi() * (1 - 2 * (y + 0.5) / %(side)s))))) ^ 2
        ))::numeric, 3)::float8 AS per_1000_km2,
        ST_AsMVTGeom(ST_TileEnvelope(%(cells_zoom)s, x, y), ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 0, false)
            AS geom
    FROM cells
)
SELECT ST_AsMVT(shaped, 'density', 4096, 'geom') FROM shaped
"""


def tile(conn: psycopg.Connection, collection_id: str, z: int, x: int, y: int, flt: DensityFilter) -> bytes:
    """One Mapbox Vector Tile (layer `density`: a square per cell, properties `n` and
    `per_1000_km2`) of zoom z <= MAX_LEVEL."""
    cells_zoom = z + CELLS_ZOOM_OFFSET
    clouds = cloud_classes(flt.max_cloud)
    params = {
        "collection": collection_id,
        "z": z,
        "x": x,
        "y": y,
        "cells_zoom": cells_zoom,
        "side": float(2**cells_zoom),
        "cell_km": EARTH_CIRCUMFERENCE_KM / 2**cells_zoom,
        "year_min": flt.year_min,
        "year_max": flt.year_max,
        "sources": list(flt.sources) or None,
        "splits": list(flt.splits) or None,
        "clouds": clouds,
    }
    (data,) = conn.execute(_TILE_SQL, params).fetchone()
    return bytes(data or b"")
