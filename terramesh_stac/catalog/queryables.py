"""The queryables of the TerraMesh collection, as data, and how they are written to pgstac.

Each is registered for our collection only (pgstac.queryables.collection_ids). Selective
ones get a BTREE index on the items partitions (pgstac's property_index_type); the others
are filtered on the rows another index found (bbox, datetime, id). At 9.2 M items each
BTREE costs ~15-40 B per item (benchmarks/scale.py prints them): an index on a column of 2
values (source, split) or 1 (revision) is never chosen for a selective search, so they
have none.
"""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from terramesh_stac.converters.modalities import SOURCES, SPLITS


def _indexed(title: str, description: str, **schema) -> tuple[dict, str]:
    """A queryable with a BTREE index: (JSON Schema definition, pgstac property_index_type)."""
    return {"title": title, "description": description, **schema}, "BTREE"


def _unindexed(title: str, description: str, **schema) -> tuple[dict, None]:
    """A queryable without an index."""
    return {"title": title, "description": description, **schema}, None


# name -> (JSON Schema definition, pgstac property_index_type)
QUERYABLES: dict[str, tuple[dict, str | None]] = {
    "terramesh:source": _unindexed(
        "TerraMesh source", "Dataset the sample comes from", type="string", enum=list(SOURCES)
    ),
    "terramesh:split": _unindexed("TerraMesh split", "Training or validation split", type="string", enum=list(SPLITS)),
    "terramesh:shard": _indexed("TerraMesh shard", "WebDataset shard the sample is stored in", type="string"),
    "terramesh:sample_id": _indexed("TerraMesh sample id", "Sample key in the source dataset", type="string"),
    "terramesh:revision": _unindexed("TerraMesh revision", "Revision of the source dataset", type="string"),
    # no index: filtering by S1 time is rare, and each BTREE adds ~40 B per item at 9.2 M items
    "terramesh:s1_datetime": _unindexed(
        "Sentinel-1 time", "Acquisition time of the Sentinel-1 image", type="string", format="date-time"
    ),
    "eo:cloud_cover": _indexed(
        "Cloud cover",
        "Cloud cover of the optical image, in percent",
        **{"$ref": "https://stac-extensions.github.io/eo/v1.1.0/schema.json#/definitions/eo:cloud_cover"},
        type="number",
        minimum=0,
        maximum=100,
    ),
}


def apply_queryables(conn: psycopg.Connection, collection_id: str) -> None:
    """Upsert our queryables for `collection_id` (pgstac.upsert_queryable replaces same-name rows)."""
    for name, (definition, index_type) in QUERYABLES.items():
        same = conn.execute(
            "SELECT 1 FROM pgstac.queryables WHERE name = %s AND collection_ids = %s AND definition = %s"
            " AND property_index_type IS NOT DISTINCT FROM %s"
            " AND property_wrapper IS NULL AND property_path IS NULL",
            (name, [collection_id], Jsonb(definition), index_type),
        ).fetchone()
        if same:  # unchanged: skip, so no index is dropped and rebuilt
            continue
        conn.execute(
            "SELECT pgstac.upsert_queryable(%s, %s, NULL, %s, %s)",
            (name, Jsonb(definition), index_type, [collection_id]),
        )
