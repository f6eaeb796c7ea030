"""`terramesh-stac demo --no-serve`, the README's first command, on the test cluster: a
generated sample converted, loaded and searchable, its collection saying it is generated,
the map's mosaic made ahead for it."""

import json

import psycopg

from terramesh_stac.catalog import density, mosaic_cache
from terramesh_stac.demo import DEMO_COLLECTION, run_demo
from terramesh_stac.exits import EXIT_OK


def test_demo_loads_a_generated_collection_that_says_so(pgstac_db):
    assert run_demo(pgstac_db.settings, serve=False) == EXIT_OK
    with psycopg.connect(pgstac_db.api) as conn:
        collection = conn.execute("SELECT pgstac.get_collection(%s)", (DEMO_COLLECTION,)).fetchone()[0]
        count = conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s", (DEMO_COLLECTION,)).fetchone()[
            0
        ]
        search = {
            "collections": [DEMO_COLLECTION],
            "limit": 100,
            "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 101]},
        }
        found = conn.execute("SELECT pgstac.search(%s::jsonb)", (json.dumps(search),)).fetchone()[0]
        revision = density.revision(conn, DEMO_COLLECTION)
        seeded = mosaic_cache.seeded(conn, DEMO_COLLECTION, revision)
        tiles = conn.execute(
            "SELECT z, count(*) FROM terramesh.mosaic_tiles WHERE collection = %s AND revision = %s GROUP BY z",
            (DEMO_COLLECTION, revision),
        ).fetchall()
    assert "GENERATED" in collection["title"] and "not real observations" in collection["title"]
    assert "synthetic" in collection["description"]
    assert count == 3 * 8  # the demo's 3 shards of 8 samples
    assert len(found["features"]) == count
    assert seeded == {pgstac_db.settings.default_render: {"minzoom": 11, "maxzoom": 13}}
    assert {z for z, n in tiles if n > 0} == {11, 12, 13}
