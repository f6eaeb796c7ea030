"""Per-shard manifests: what a finished shard wrote, and whether it must be converted again.

A shard's manifest (`manifests/<split>/<shard>.json`) is the last object a shard writes.
Its presence means every asset, the items file, the index and the report of the shard are
in place; its `content_id` says which source content and which options produced them:

    content_id = sha256(the shard's source fingerprint + the conversion settings)[:12]

The fingerprint is what storage says about each modality tar without reading it: size plus
ETag (S3, Hugging Face) or modification time (local files). A re-run whose content_id
equals the manifest's skips the shard; anything else (a re-uploaded tar, other modalities,
another limit) converts it again, rewriting only the assets whose bytes changed.
"""

from __future__ import annotations

import hashlib
import json

from terramesh_stac.converters.layout import manifest_path
from terramesh_stac.converters.shards import shard_modalities

MANIFEST_FORMAT = 1


def tar_fingerprint(source, split: str, modality: str, shard: str) -> dict:
    """Size and version marker of one modality tar, or {"missing": True}."""
    url = source.shard_url(split, modality, shard)
    try:
        info = source.fs.info(url)
    except FileNotFoundError:
        return {"missing": True}
    version = {k.lower(): str(info[k]).strip('"') for k in ("ETag", "etag", "VersionId")
               if info.get(k)}
    if not version and info.get("mtime") is not None:
        version = {"mtime": repr(float(info["mtime"]))}
    elif not version and info.get("LastModified") is not None:
        version = {"mtime": str(info["LastModified"])}
    return {"size": int(info["size"]), **version}


def source_fingerprint(source, split: str, shard: str, modalities=None) -> dict[str, dict]:
    """{modality: fingerprint} of every tar the shard's conversion opens."""
    to_open, _ = shard_modalities(shard, modalities)
    return {m: tar_fingerprint(source, split, m, shard) for m in to_open}


def content_id(fingerprint: dict, settings: dict) -> str:
    text = json.dumps({"source": fingerprint, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_manifest(store, split: str, shard: str) -> dict | None:
    relpath = manifest_path(split, shard)
    try:
        return _current(store.get(relpath))
    except FileNotFoundError:
        return None


def _current(data: bytes) -> dict | None:
    """A manifest's content, or None when another version wrote it (convert again)."""
    manifest = json.loads(data)
    return manifest if manifest.get("format") == MANIFEST_FORMAT else None


def write_manifest(store, manifest: dict) -> str:
    manifest = {"format": MANIFEST_FORMAT, **manifest}
    relpath = manifest_path(manifest["split"], manifest["shard"])
    store.put(relpath, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return relpath


def all_manifests(store) -> list[dict]:
    """Every readable manifest under the destination, in path order."""
    paths = store.glob("manifests/*/*.json")
    if not paths:
        return []
    contents = store.fs.cat([store.path(p) for p in paths])  # concurrent on S3
    return [m for p in paths if (m := _current(contents[store.path(p)])) is not None]
