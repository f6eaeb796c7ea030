"""`terramesh-stac demo`: the embedded default, end to end, on one machine.

Starts the embedded database, generates a small TerraMesh-format sample when no source is
given, converts it to COGs + STAC items in a local folder, loads them and serves them.
"""

import sys
from pathlib import Path

from terramesh_stac.exits import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from terramesh_stac.settings import Settings

DEMO_COLLECTION = "terramesh-demo"
DEMO_TITLE = "TerraMesh demo (GENERATED data in the TerraMesh format, not real observations)"
DEMO_DESCRIPTION = (
    "A few samples written by `terramesh-stac synth`: the real TerraMesh layout, band lists, "
    "dtypes and grids at real SSL4EO-S12 and Major TOM locations, filled with synthetic "
    "values. Use it to try the catalog, the API and the tiles; not for science."
)


def run_demo(settings: Settings, *, source: str | None = None, serve: bool = True) -> int:
    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.loader import Publisher
    from terramesh_stac.converters.pipeline import ConvertOptions
    from terramesh_stac.converters.run import convert
    from terramesh_stac.converters.synth import generate

    demo_dir = Path(settings.state_dir) / "demo"
    print("1/4 starting the embedded PostgreSQL/PostGIS + pgstac database")
    database.start(settings)

    if source is None:
        source = str(demo_dir / "source")
        print(f"2/4 generating a TerraMesh-format sample in {source}")
        generate(source, split="val", shards=3, samples_per_shard=8, seed=0)
        collection_id, title, description = DEMO_COLLECTION, DEMO_TITLE, DEMO_DESCRIPTION
    else:
        print(f"2/4 using TerraMesh source {source}")
        collection_id, title, description = settings.collection_id, None, None

    dest = str(demo_dir / "output")
    print(f"3/4 converting to COG assets + STAC items in {dest} (on Dask), loading them into pgstac as shards finish")
    options = ConvertOptions(
        dest=dest,
        collection_id=collection_id,
        collection_title=title,
        collection_description=description,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
    with Publisher(database.dsn(settings, role="loader"), options.store()) as publisher:
        report = convert(source, options, split="val", progress=True, publisher=publisher)
    print(report.summary())
    if report.stopped:  # the destination took no more writes (full disk, read-only ...)
        print(f"error: {report.stopped}", file=sys.stderr)
        return EXIT_FAILED
    print(f"4/4 {report.published.get('in_db', 0)} items published")
    seed_errors = _seed_map_mosaic(settings.model_copy(update={"dest": dest, "collection_id": collection_id}))

    base = f"http://{settings.host}:{settings.port}"
    print(f"""
Open:
  map page      {base}/
  STAC API      {base}/stac
  collection    {base}/stac/collections/{collection_id}
  items         {base}/stac/collections/{collection_id}/items
  tiles (docs)  {base}/raster/api.html
Search from Python:
  from pystac_client import Client
  Client.open("{base}/stac").search(collections=["{collection_id}"], filter="eo:cloud_cover < 10").item_collection()
""")
    if not serve:
        return EXIT_PARTIAL if report.errors or seed_errors else EXIT_OK
    from terramesh_stac.catalog.app import run

    run(settings.model_copy(update={"dest": dest, "collection_id": collection_id}))
    return EXIT_OK


def _seed_map_mosaic(settings: Settings) -> int:
    """The map's zoom 11-12 mosaic of the default render (catalog/mosaic_cache.py); returns
    the tiles that failed."""
    from terramesh_stac.catalog import database, mosaic_cache

    loader_dsn = database.dsn(settings, role="loader")
    renders = [settings.default_render]
    try:
        reports = mosaic_cache.seed_collection(
            settings, settings.collection_id, renders, mosaic_cache.DEFAULT_ZOOMS, loader_dsn
        )
    except mosaic_cache.UnknownMosaic as e:  # e.g. a source whose collection has other presets
        print(f"the map's zoom 11-13 mosaic is not seeded: {e}")
        return 0
    for seeded in reports:
        print(seeded.summary())
    return sum(r.errors for r in reports)
