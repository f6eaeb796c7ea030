"""The queryables of the TerraMesh collection, as data, and how they are written to pgstac.

Each is registered for our collection only (pgstac.queryables.collection_ids) with a BTREE
index on the items partitions (pgstac's property_index_type), so filters on them are fast.
"""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from terramesh_stac.converters.modalities import SOURCES, SPLITS

# name -> (JSON Schema definition, pgstac property_index_type)
QUERYABLES: dict[str, tuple[dict, str | None]] = {
    "terramesh:source": (
        {"title": "TerraMesh source", "description": "Dataset the sample comes from",
         "type": "string", "enum": list(SOURCES)},
        "BTREE",
    ),
    "terramesh:split": (
        {"title": "TerraMesh split", "description": "Training or validation split",
         "type": "string", "enum": list(SPLITS)},
        "BTREE",
    ),
    "terramesh:shard": (
        {"title": "TerraMesh shard", "description": "WebDataset shard the sample is stored in",
         "type": "string"},
        "BTREE",
    ),
    "terramesh:sample_id": (
        {"title": "TerraMesh sample id", "description": "Sample key in the source dataset",
         "type": "string"},
        "BTREE",
    ),
    "terramesh:revision": (
        {"title": "TerraMesh revision", "description": "Revision of the source dataset",
         "type": "string"},
        "BTREE",
    ),
    "eo:cloud_cover": (
        {"title": "Cloud cover", "description": "Cloud cover of the optical image, in percent",
         "$ref": "https://stac-extensions.github.io/eo/v1.1.0/schema.json#/definitions/eo:cloud_cover",
         "type": "number", "minimum": 0, "maximum": 100},
        "BTREE",
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
