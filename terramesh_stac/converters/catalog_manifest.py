"""The `catalog` command's manifest: `catalog/manifests/<split>.json`, one per split.

It lists every items file `catalog` wrote for the split (path, shard, item count), the
extent and summary of those items (the collection unions them with the converted shards'),
and the rows it could not make an item of. Written last, after all the split's files.

What the loader does with it (`pending_catalog_files`): a shard that `convert` has finished
(a current `manifests/<split>/<shard>.json` of the same collection) is left out, so a later
`load` never replaces a converted item with its metadata-only version; the other files are
loaded with a count check against the numbers recorded here.
"""

from __future__ import annotations

import json

from .layout import catalog_manifest_path
from .summary import Extent, Summary

CATALOG_MANIFEST_FORMAT = 1


def write_catalog_manifest(store, manifest: dict) -> str:
    relpath = catalog_manifest_path(manifest["split"])
    store.put(relpath, json.dumps({"format": CATALOG_MANIFEST_FORMAT, **manifest}, indent=1, sort_keys=True).encode())
    return relpath


def catalog_manifests(store, collection_id: str | None = None) -> list[dict]:
    """The readable catalog manifests under the destination (of `collection_id` if given)."""
    out = []
    for relpath in store.glob("catalog/manifests/*.json"):
        try:
            d = json.loads(store.get(relpath))
        except (FileNotFoundError, ValueError):
            continue
        if d.get("format") == CATALOG_MANIFEST_FORMAT and collection_id in (None, d.get("collection")):
            out.append(d)
    return out


def catalog_extent_summary(store, collection_id: str) -> tuple[Extent, Summary]:
    """The union of what the catalog manifests of `collection_id` cover."""
    extent, summary = Extent(), Summary()
    for m in catalog_manifests(store, collection_id):
        extent = extent.union(Extent.from_dict(m["extent"]))
        summary = summary.union(Summary.from_dict(m["summary"]))
    return extent, summary


def pending_catalog_files(store, collection_id: str) -> tuple[list[tuple[str, int]], int]:
    """([(items file, its item count)] to load, files left out because `convert` finished
    their shard)."""
    from .manifest import all_manifests  # pulls in the converters' codecs: only when loading

    converted = {(m.split, m.shard) for m in all_manifests(store) if m.collection == collection_id}
    files, skipped = [], 0
    for m in catalog_manifests(store, collection_id):
        for f in m["files"]:
            if (m["split"], f["shard"]) in converted:
                skipped += 1
            else:
                files.append((f["path"], f["count"]))
    return files, skipped
