"""Per-shard manifests: what a finished shard wrote, and whether it must be converted again.

A shard's manifest (`manifests/<split>/<shard>.json`) is the last object a shard writes.
Its presence means every asset, the items file, the index and the report of the shard are
in place; its `content_id` says which source content and which options produced them:

    content_id = sha256(the shard's source fingerprint + the conversion settings)[:12]

The fingerprint is what storage says about each modality tar without reading it: size plus
ETag (S3, Hugging Face) or modification time (local files). A re-run whose content_id
equals the manifest's skips the shard; anything else (a re-uploaded tar, other modalities,
another limit) converts it again, rewriting only the assets whose bytes changed.

On disk a manifest is readable, sorted JSON (`Manifest.to_json`); a manifest of another
`MANIFEST_FORMAT` reads as None, which means "convert again".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TypedDict

from terramesh_stac.converters.layout import manifest_path
from terramesh_stac.converters.shards import shard_modalities
from terramesh_stac.converters.summary import Extent, Summary

# 2: the manifest records the shard's summary (split, sources, modalities, formats, ...)
MANIFEST_FORMAT = 2


class AssetRecord(TypedDict):
    size: int
    checksum: str  # multihash sha2-256, as the item's file:checksum


class SupersededRecord(AssetRecord):
    of: str  # the asset path it was the previous bytes of
    content_id: str  # the content (revision) it belonged to


@dataclass
class SourceRecord:
    url: str  # the source root
    revision: str | None  # the source's revision (Hub URL), if any
    tars: dict[str, dict]  # modality -> tar fingerprint (tar_fingerprint)


@dataclass
class ItemsRecord:
    path: str  # the shard's NDJSON items file
    count: int
    ids: dict[str, str | None]  # item id -> its datetime
    sha256: str  # of the items file: a publish marker names the content it loaded
    removed: list[str] = field(default_factory=list)  # ids the previous content had, this one not


@dataclass
class Manifest:
    """What a finished shard wrote, from which source content and with which settings."""

    split: str
    shard: str
    content_id: str
    revision: str
    source: SourceRecord
    settings: dict  # pipeline.shard_settings, hashed into content_id as is
    items: ItemsRecord
    extent: Extent
    summary: Summary
    index: str  # the shard's byte-index path
    report: str  # the shard's report path
    errors: list[dict] = field(default_factory=list)  # a skipped shard still reports these
    notes: list[dict] = field(default_factory=list)
    assets: dict[str, AssetRecord] = field(default_factory=dict)  # relpath -> size, checksum
    superseded: dict[str, SupersededRecord] = field(default_factory=dict)  # kept copies, until prune
    # pipeline.SampleCounts as a dict; None in manifests written before it was recorded (same
    # format: an optional field must not make every finished shard convert again)
    samples: dict | None = None

    @property
    def collection(self) -> str:
        return self.settings["collection"]

    def to_json(self) -> bytes:
        d = {
            "format": MANIFEST_FORMAT,
            "split": self.split,
            "shard": self.shard,
            "content_id": self.content_id,
            "revision": self.revision,
            "source": {"url": self.source.url, "revision": self.source.revision, "tars": self.source.tars},
            "settings": self.settings,
            "items": {
                "path": self.items.path,
                "count": self.items.count,
                "ids": self.items.ids,
                "sha256": self.items.sha256,
                "removed": self.items.removed,
            },
            "extent": {"bbox": self.extent.bbox, "start": self.extent.start, "end": self.extent.end},
            "summary": self.summary.to_dict(),
            "errors": self.errors,
            "notes": self.notes,
            "assets": self.assets,
            "superseded": self.superseded,
            "samples": self.samples,
            "index": self.index,
            "report": self.report,
        }
        return json.dumps(d, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """The manifest; OutdatedManifest if another MANIFEST_FORMAT wrote it."""
        d = json.loads(data)
        if d.get("format") != MANIFEST_FORMAT:
            raise OutdatedManifest(f"manifest format {d.get('format')!r}, expected {MANIFEST_FORMAT}")
        return cls(
            split=d["split"],
            shard=d["shard"],
            content_id=d["content_id"],
            revision=d["revision"],
            source=SourceRecord(**d["source"]),
            settings=d["settings"],
            items=ItemsRecord(**d["items"]),
            extent=Extent.from_dict(d["extent"]),
            summary=Summary.from_dict(d["summary"]),
            index=d["index"],
            report=d["report"],
            errors=d["errors"],
            notes=d["notes"],
            assets=d["assets"],
            superseded=d["superseded"],
            samples=d.get("samples"),
        )


class OutdatedManifest(ValueError):
    """Written by another version of the manifest format: the shard is converted again."""


def tar_fingerprint(source, split: str, modality: str, shard: str) -> dict:
    """Size and version marker of one modality tar, or {"missing": True}."""
    url = source.shard_url(split, modality, shard)
    try:
        info = source.fs.info(url)
    except FileNotFoundError:
        return {"missing": True}
    version = {k.lower(): str(info[k]).strip('"') for k in ("ETag", "etag", "VersionId") if info.get(k)}
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


def read_manifest(store, split: str, shard: str) -> Manifest | None:
    relpath = manifest_path(split, shard)
    try:
        return _current(store.get(relpath))
    except FileNotFoundError:
        return None


def _current(data: bytes) -> Manifest | None:
    """A manifest, or None when another format version wrote it (convert again)."""
    try:
        return Manifest.from_json(data)
    except OutdatedManifest:
        return None


def write_manifest(store, manifest: Manifest) -> str:
    relpath = manifest_path(manifest.split, manifest.shard)
    store.put(relpath, manifest.to_json())
    return relpath


def all_manifests(store) -> list[Manifest]:
    """Every readable manifest under the destination, in path order."""
    paths = store.glob("manifests/*/*.json")
    if not paths:
        return []
    contents = store.fs.cat([store.path(p) for p in paths])  # concurrent on S3
    return [m for p in paths if (m := _current(contents[store.path(p)])) is not None]
