"""The queryables of the TerraMesh collection, as data, and how they are written to pgstac.

Each is registered for our collection only (pgstac.queryables.collection_ids) with a BTREE
index on the items partitions (pgstac's property_index_type), so filters on them are fast.
"""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from terramesh_stac.converters.modalities import SOURCES, SPLITS


def _indexed(title: str, description: str, **schema) -> tuple[dict, str]:
    """A queryable with a BTREE index: (JSON Schema definition, pgstac property_index_type)."""
    return {"title": title, "description": description, **schema}, "BTREE"


# name -> (JSON Schema definition, pgstac property_index_type)
QUERYABLES: dict[str, tuple[dict, str | None]] = {
    "terramesh:source": _indexed(
        "TerraMesh source", "Dataset the sample comes from", type="string", enum=list(SOURCES)
    ),
    "terramesh:split": _indexed("TerraMesh split", "Training or validation split", type="string", enum=list(SPLITS)),
    "terramesh:shard": _indexed("TerraMesh shard", "WebDataset shard the sample is stored in", type="string"),
    "terramesh:sample_id": _indexed("TerraMesh sample id", "Sample key in the source dataset", type="string"),
    "terramesh:revision": _indexed("TerraMesh revision", "Revision of the source dataset", type="string"),
    # no index: filtering by S1 time is rare, and each BTREE adds ~40 B per item at 9.2 M items
    "terramesh:s1_datetime": (
        {
            "title": "Sentinel-1 time",
            "description": "Acquisition time of the Sentinel-1 image",
            "type": "string",
            "format": "date-time",
        },
        None,
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
