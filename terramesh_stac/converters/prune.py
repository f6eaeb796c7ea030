"""`prune`: delete the superseded assets that incremental updates kept readable.

When a shard is converted again from a newer source revision, the assets whose bytes
changed are first copied to `revisions/<old content id>/...` and listed in the shard's
manifest under `superseded`, so subsets published earlier keep working. Pruning deletes
those copies and empties the lists. Current assets are never touched.
"""

from __future__ import annotations

import dataclasses

from terramesh_stac.converters.manifest import all_manifests, write_manifest


def prune(store, *, dry_run: bool = False) -> dict:
    """Delete every superseded object listed in the manifests; returns counts."""
    objects = size = shards = 0
    for manifest in all_manifests(store):
        superseded = manifest.superseded
        if not superseded:
            continue
        shards += 1
        objects += len(superseded)
        size += sum(entry["size"] for entry in superseded.values())
        if dry_run:
            continue
        for relpath in superseded:
            store.delete(relpath)
        write_manifest(store, dataclasses.replace(manifest, superseded={}))
    return {"objects": objects, "bytes": size, "shards": shards}
