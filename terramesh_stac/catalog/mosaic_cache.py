"""The mosaic seeded ahead for tile zooms 11-13: what the map draws there for the whole collection.

A live mosaic tile reads every item it holds (~9-10 ms each: README "The map"): up to ~130
items at zoom 11, ~50 at zoom 12 and ~30 at zoom 13 where the catalog is dense, i.e.
0.3-1.3 s a tile.
So these zooms are rendered once after a load (`terramesh-stac db mosaic`), as tile caches
are seeded (MapProxy, gdal2tiles):

- each tile of zoom `maxzoom` holding a footprint is rendered by the tile service's own
  mosaic endpoint (`/collections/{cid}/tiles/...?render=<preset>`, in this process);
- each tile of a lower zoom, down to `minzoom`, is its four children averaged 2x2
  (alpha-weighted, so nodata stays transparent), as gdal2tiles builds its lower zooms;
- the tiles are kept as WebP (with alpha) in `terramesh.mosaic_tiles`, under the catalog
  revision (catalog/density.py) they were made for; `terramesh.mosaic_seeds` says what was
  seeded, for which revision. A load raises the revision: the seeded tiles then stop being
  offered until the next seeding.

The service answers them at /vector/mosaic/{render}/{z}/{x}/{y}.webp (catalog/vector_tiles.py):
a primary-key lookup. Only the unfiltered collection is seeded: the map draws the seeded
tiles when no filter is set and footprints otherwise (README "The map").
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from urllib.parse import quote

import numpy as np
import psycopg
from PIL import Image

from terramesh_stac.catalog import density

logger = logging.getLogger(__name__)

TILE_SIZE = 256
WEBP_QUALITY = 90  # a preview of the pixels: ~4-6x smaller than PNG, no visible loss
DEFAULT_ZOOMS = (11, 13)  # tile zooms: the map draws them at its zooms 10-13 (README "The map")
MAX_SEED_ZOOM = 14
WRITE_BATCH = 200  # tiles per INSERT round trip
FIRST_ERRORS = 5  # tile errors kept in the report (all are logged)

MOSAIC_SQL = (
    """CREATE TABLE IF NOT EXISTS terramesh.mosaic_tiles (
        collection text NOT NULL, render text NOT NULL, z smallint NOT NULL, x integer NOT NULL,
        y integer NOT NULL, revision bigint NOT NULL, data bytea NOT NULL,
        PRIMARY KEY (collection, render, z, x, y))""",
    """CREATE TABLE IF NOT EXISTS terramesh.mosaic_seeds (
        collection text NOT NULL, render text NOT NULL, revision bigint NOT NULL,
        minzoom smallint NOT NULL, maxzoom smallint NOT NULL, tiles integer NOT NULL,
        seconds float8 NOT NULL, seeded_at timestamptz NOT NULL, PRIMARY KEY (collection, render))""",
    "ALTER TABLE terramesh.mosaic_tiles OWNER TO pgstac_admin",
    "ALTER TABLE terramesh.mosaic_seeds OWNER TO pgstac_admin",
    "GRANT SELECT ON terramesh.mosaic_tiles, terramesh.mosaic_seeds TO pgstac_read",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON terramesh.mosaic_tiles, terramesh.mosaic_seeds TO pgstac_ingest",
)

# The zoom-z tiles each footprint touches (one row per part of a footprint split at the
# antimeridian), from the parts' bounding boxes.
_TILES_SQL = """
WITH parts AS (
    SELECT st_xmin(g) AS w, st_xmax(g) AS e,
        least(greatest(st_ymin(g), -85.0511), 85.0511) AS s, least(greatest(st_ymax(g), -85.0511), 85.0511) AS n
    FROM pgstac.items, LATERAL (SELECT (st_dump(geometry)).geom AS g) d
    WHERE collection = %(collection)s
), ranges AS (
    SELECT
        least(greatest(floor((w + 180) / 360 * %(side)s), 0), %(side)s - 1)::integer AS x0,
        least(greatest(floor((e + 180) / 360 * %(side)s), 0), %(side)s - 1)::integer AS x1,
        least(greatest(floor((1 - ln(tan(radians(n)) + 1 / cos(radians(n))) / pi()) / 2 * %(side)s), 0),
              %(side)s - 1)::integer AS y0,
        least(greatest(floor((1 - ln(tan(radians(s)) + 1 / cos(radians(s))) / pi()) / 2 * %(side)s), 0),
              %(side)s - 1)::integer AS y1
    FROM parts
)
SELECT DISTINCT x, y FROM ranges, generate_series(x0, x1) x, generate_series(y0, y1) y
"""


class UnknownMosaic(ValueError):
    """No such collection or render preset, or a collection never loaded (no revision)."""


@dataclass
class SeedReport:
    collection: str
    render: str
    revision: int
    zooms: tuple[int, int]
    tiles: dict[int, int] = field(default_factory=dict)  # zoom -> tiles written
    empty: int = 0  # tiles of maxzoom the service drew nothing in
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    render_seconds: float = 0.0  # the maxzoom tiles, through the tile service
    seconds: float = 0.0

    def summary(self) -> str:
        per_zoom = ", ".join(f"z{z}: {n:,}" for z, n in sorted(self.tiles.items()))
        drawn = self.tiles.get(self.zooms[1], 0) + self.empty + self.errors
        text = (
            f"mosaic of {self.collection!r} seeded with render {self.render!r} for revision {self.revision}"
            f" in {self.seconds:,.1f} s ({per_zoom}; {self.empty:,} empty; {self.errors:,} failed;"
            f" {drawn:,} tiles of zoom {self.zooms[1]} drawn by the tile service in {self.render_seconds:,.1f} s)"
        )
        for message in self.first_errors:
            text += f"\n  failed: {message}"
        return text


def tiles_with_items(
    conn: psycopg.Connection, collection_id: str, z: int, levels: int = 0
) -> Iterator[tuple[int, int]]:
    """(x, y) of the zoom-z tiles that a footprint of the collection touches, streamed (a
    9.2 M catalog has millions), in the order of their ancestors `levels` zooms up."""
    query = f"SELECT x, y FROM ({_TILES_SQL}) t ORDER BY x >> %(levels)s, y >> %(levels)s, x, y"
    params = {"collection": collection_id, "side": float(2**z), "levels": levels}
    yield from conn.cursor().stream(query, params)


def items_in_tile(conn: psycopg.Connection, collection_id: str, z: int, x: int, y: int, limit: int = 5) -> list[str]:
    """Ids of (at most `limit`) items in a tile: where to look when the tile fails."""
    rows = conn.execute(
        "SELECT id FROM pgstac.items WHERE collection = %s"
        " AND geometry && ST_Transform(ST_TileEnvelope(%s, %s, %s), 4326) ORDER BY id LIMIT %s",
        (collection_id, z, x, y, limit + 1),
    ).fetchall()
    ids = [r[0] for r in rows[:limit]]
    return ids + ["..."] if len(rows) > limit else ids


def count_tiles(conn: psycopg.Connection, collection_id: str, z: int) -> int:
    """How many zoom-z tiles a footprint of the collection touches."""
    query = f"SELECT count(*) FROM ({_TILES_SQL}) t"
    return conn.execute(query, {"collection": collection_id, "side": float(2**z)}).fetchone()[0]


def decode(data: bytes) -> np.ndarray:
    """An image file's pixels as a (256, 256, 4) uint8 RGBA array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))


def encode(rgba: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()


def parent_of(children: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """One tile from its (up to four) children, keyed (dx, dy) in {0, 1}: the 512 px quad
    averaged 2x2, weighted by alpha so transparent pixels do not darken their neighbours."""
    quad = np.zeros((2 * TILE_SIZE, 2 * TILE_SIZE, 4), dtype=np.float32)
    for (dx, dy), rgba in children.items():
        quad[dy * TILE_SIZE : (dy + 1) * TILE_SIZE, dx * TILE_SIZE : (dx + 1) * TILE_SIZE] = rgba
    blocks = quad.reshape(TILE_SIZE, 2, TILE_SIZE, 2, 4)
    alpha = blocks[..., 3:4]
    weight = alpha.sum(axis=(1, 3))
    rgb = (blocks[..., :3] * alpha).sum(axis=(1, 3)) / np.maximum(weight, 1)
    out = np.concatenate([rgb, weight / 4], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pyramid(
    render_tile: Callable[[int, int, int], np.ndarray | None],
    tiles: Iterable[tuple[int, int]],
    minzoom: int,
    maxzoom: int,
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(z, x, y, rgba) of every non-empty tile from maxzoom (rendered) down to minzoom
    (averaged), one minzoom tile's subtree at a time (`tiles` come in that order), so that
    memory holds at most one subtree's arrays (4^(maxzoom - minzoom) tiles)."""
    levels = maxzoom - minzoom
    for _, group in groupby(tiles, key=lambda t: (t[0] >> levels, t[1] >> levels)):
        level = {}
        for x, y in group:
            rgba = render_tile(maxzoom, x, y)
            if rgba is not None:
                level[(x, y)] = rgba
                yield maxzoom, x, y, rgba
        for z in range(maxzoom - 1, minzoom - 1, -1):
            parents: dict[tuple[int, int], dict] = {}
            for (x, y), rgba in level.items():
                parents.setdefault((x >> 1, y >> 1), {})[(x & 1, y & 1)] = rgba
            level = {key: parent_of(children) for key, children in parents.items()}
            for (x, y), rgba in level.items():
                yield z, x, y, rgba


def seed(
    conn: psycopg.Connection,
    reader: psycopg.Connection,
    get: Callable[[str], tuple[int, bytes, str]],
    collection_id: str,
    render: str,
    zooms: tuple[int, int] = DEFAULT_ZOOMS,
    progress: Callable[[int], None] | None = None,
) -> SeedReport:
    """Seed the collection's mosaic with `render` at zooms[0]..zooms[1] into the database.

    `conn`: the loader role (autocommit), `reader` another connection (the tiles to draw
    stream from it while `conn` writes); `get(path)` -> (status, body, content type): a GET
    on the tile service (catalog/tiles.py) by path. `progress(1)` after each maxzoom
    tile. A tile the service fails on is reported and skipped; the rest goes on."""
    minzoom, maxzoom = zooms
    if not 0 <= minzoom <= maxzoom <= MAX_SEED_ZOOM:
        raise ValueError(f"zooms {minzoom}-{maxzoom}: want 0 <= min <= max <= {MAX_SEED_ZOOM}")
    started = time.perf_counter()
    (collection,) = conn.execute("SELECT pgstac.get_collection(%s)", (collection_id,)).fetchone()
    if collection is None:
        raise UnknownMosaic(f"collection {collection_id!r} not found")
    presets = sorted(collection.get("renders") or {})
    if render not in presets:
        raise UnknownMosaic(
            f"collection {collection_id!r} has no render {render!r} (it has: {', '.join(presets) or 'none'})"
        )
    revision = density.revision(conn, collection_id)
    if revision == 0:
        raise UnknownMosaic(f"collection {collection_id!r} has no catalog revision: load it (or `db density`) first")
    report = SeedReport(collection_id, render, revision, zooms)
    tiles = tiles_with_items(reader, collection_id, maxzoom, maxzoom - minzoom)

    def render_tile(z: int, x: int, y: int) -> np.ndarray | None:
        t = time.perf_counter()
        path = f"/collections/{quote(collection_id)}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?render={quote(render)}"
        status, body, _ = get(path)
        report.render_seconds += time.perf_counter() - t
        if progress:
            progress(1)
        if status in (204, 404):  # nothing drawn there (no asset of the preset, all nodata)
            report.empty += 1
            return None
        if status != 200:
            report.errors += 1
            items = ", ".join(items_in_tile(conn, collection_id, z, x, y))
            message = f"{z}/{x}/{y} (items {items}): {status} {body[:200].decode('utf-8', 'replace')}"
            logger.warning("mosaic tile %s", message)
            if len(report.first_errors) < FIRST_ERRORS:
                report.first_errors.append(message)
            return None
        rgba = decode(body)
        return rgba if rgba[..., 3].any() else None

    batch: list[tuple] = []

    def flush() -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO terramesh.mosaic_tiles (collection, render, z, x, y, revision, data)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (collection, render, z, x, y)"
                " DO UPDATE SET revision = EXCLUDED.revision, data = EXCLUDED.data",
                batch,
            )
        batch.clear()

    for z, x, y, rgba in _pyramid(render_tile, tiles, minzoom, maxzoom):
        batch.append((collection_id, render, z, x, y, revision, encode(rgba)))
        report.tiles[z] = report.tiles.get(z, 0) + 1
        if len(batch) >= WRITE_BATCH:
            flush()
    if batch:
        flush()
    report.seconds = time.perf_counter() - started
    with conn.transaction():
        # tiles of earlier seedings (another revision, or zooms no longer seeded) go
        conn.execute(
            "DELETE FROM terramesh.mosaic_tiles WHERE collection = %s AND render = %s"
            " AND (revision <> %s OR z < %s OR z > %s)",
            (collection_id, render, revision, minzoom, maxzoom),
        )
        conn.execute(
            "INSERT INTO terramesh.mosaic_seeds AS s (collection, render, revision, minzoom, maxzoom, tiles, seconds,"
            " seeded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (collection, render) DO UPDATE SET"
            " revision = EXCLUDED.revision, minzoom = EXCLUDED.minzoom, maxzoom = EXCLUDED.maxzoom,"
            " tiles = EXCLUDED.tiles, seconds = EXCLUDED.seconds, seeded_at = now()",
            (collection_id, render, revision, minzoom, maxzoom, sum(report.tiles.values()), report.seconds),
        )
    return report


def seeded(conn: psycopg.Connection, collection_id: str, revision: int) -> dict[str, dict]:
    """{render: {"minzoom", "maxzoom"}} of the collection's seedings made for `revision`."""
    rows = conn.execute(
        "SELECT render, minzoom, maxzoom FROM terramesh.mosaic_seeds WHERE collection = %s AND revision = %s",
        (collection_id, revision),
    ).fetchall()
    return {render: {"minzoom": lo, "maxzoom": hi} for render, lo, hi in rows}


def tile(
    conn: psycopg.Connection, collection_id: str, render: str, z: int, x: int, y: int
) -> tuple[bytes | None, int | None]:
    """(WebP bytes or None when the tile is empty, the seeded revision) of one seeded tile
    of the current seeding; (None, None) when `render` is not seeded at zoom z."""
    row = conn.execute(
        "SELECT s.revision, t.data FROM terramesh.mosaic_seeds s LEFT JOIN terramesh.mosaic_tiles t"
        " ON t.collection = s.collection AND t.render = s.render AND t.z = %s AND t.x = %s AND t.y = %s"
        " AND t.revision = s.revision"
        " WHERE s.collection = %s AND s.render = %s AND %s BETWEEN s.minzoom AND s.maxzoom",
        (z, x, y, collection_id, render, z),
    ).fetchone()
    if row is None:
        return None, None
    return (bytes(row[1]) if row[1] is not None else None), row[0]


def seed_collection(
    settings, collection_id: str, renders: list[str], zooms: tuple[int, int], loader_dsn: str
) -> list[SeedReport]:
    """Seed each of `renders` with the tile service of `settings` built in this process
    (catalog/tiles.py, on the API role as `serve` runs it), with a progress bar."""
    from rich.progress import Progress
    from starlette.testclient import TestClient  # a sync client of an ASGI app, lifespan included

    from terramesh_stac.catalog.api import api_dsn
    from terramesh_stac.catalog.errors import add_fault_handlers
    from terramesh_stac.catalog.tiles import create_raster_app

    reports = []
    app = create_raster_app(settings, api_dsn(settings))
    add_fault_handlers(app)  # as `serve` answers: a broken asset is a short message, not a traceback
    with (
        TestClient(app, raise_server_exceptions=False) as client,
        psycopg.connect(loader_dsn, autocommit=True) as conn,
        psycopg.connect(loader_dsn, autocommit=True) as reader,
    ):

        def get(path: str) -> tuple[int, bytes, str]:
            r = client.get(path)
            return r.status_code, r.content, r.headers.get("content-type", "")

        for render in renders:
            with Progress(transient=True) as bar:
                task = bar.add_task(f"seeding {render} z{zooms[1]}", total=None)

                def progress(advance: int, task=task, bar=bar) -> None:
                    bar.update(task, advance=advance)

                reports.append(seed(conn, reader, get, collection_id, render, zooms, progress))
    return reports
