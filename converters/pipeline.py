"""Convert TerraMesh: samples in, assets + STAC items out.

The unit of work is a shard (`convert_shard`), a plain function of its arguments that a
scheduler can run anywhere: it streams the shard from the source, writes the assets and
the shard's items (NDJSON) straight to the destination and returns a small report.
`convert` runs the shards of a split one after the other and writes the collection.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import pystac

from converters.cog import encode_cloud_mask, encode_cog
from converters.collection import create_collection
from converters.items import create_item
from converters.layout import COLLECTION_FILE, asset_path, items_path, report_path
from converters.sample import EncodedAsset, Sample, SampleError, WrittenAsset
from converters.shards import iter_samples
from converters.source import open_source
from converters.storage import Store, multihash_sha256
from converters.thumbnail import encode_thumbnail


@dataclass(frozen=True)
class ConvertOptions:
    dest: str
    collection_id: str = "terramesh"
    formats: tuple[str, ...] = ("cog",)
    modalities: tuple[str, ...] | None = None  # None: all the sample has
    revision: str | None = None  # None: what the source URL says
    s3_endpoint_url: str | None = None
    s3_public_url: str | None = None
    collection_title: str | None = None
    collection_description: str | None = None

    def store(self) -> Store:
        return Store(self.dest, endpoint_url=self.s3_endpoint_url, public_url=self.s3_public_url)


@dataclass
class ShardReport:
    split: str
    shard: str
    items: int = 0
    errors: list[dict] = field(default_factory=list)
    bbox: list[float] | None = None  # union of item bboxes (west may exceed east: antimeridian)
    start: str | None = None
    end: str | None = None
    seconds: float = 0.0

    def add_item(self, item: pystac.Item) -> None:
        self.items += 1
        times = [item.common_metadata.start_datetime or item.datetime,
                 item.common_metadata.end_datetime or item.datetime]
        for t in (t.isoformat() for t in times if t):
            self.start = min(self.start or t, t)
            self.end = max(self.end or t, t)
        self.bbox = _union_bbox(self.bbox, item.bbox)


@dataclass
class RunReport:
    shards: list[ShardReport]
    collection_href: str
    seconds: float

    @property
    def items(self) -> int:
        return sum(s.items for s in self.shards)

    @property
    def errors(self) -> list[dict]:
        return [e for s in self.shards for e in s.errors]

    def summary(self) -> str:
        lines = [f"converted {self.items} samples from {len(self.shards)} shards "
                 f"in {self.seconds:.1f} s; collection: {self.collection_href}"]
        if self.errors:
            lines.append(f"PARTIAL: {len(self.errors)} problems (key, shard, modality: reason):")
            lines += [f"  {e['key']}, {e['shard']}, {e['modality']}: {e['reason']}" for e in self.errors]
        return "\n".join(lines)


def _union_bbox(a, b):
    if a is None:
        return list(b)
    if a[0] > a[2] or b[0] > b[2]:  # an antimeridian-crossing box: keep the whole globe
        return [-180.0, min(a[1], b[1]), 180.0, max(a[3], b[3])]
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def encode_sample(sample: Sample, modalities: tuple[str, ...] | None = None) -> list[EncodedAsset]:
    """All assets of one sample: one COG per modality, the cloud mask and a thumbnail."""
    wanted = [m for m in sample.modalities if modalities is None or m in modalities]
    encoded = [encode_cog(sample.modalities[m], m) for m in wanted]
    mask_source = next((sample.modalities[m] for m in ("S2L2A", "S2L1C", "S2RGB", "LULC")
                        if m in sample.modalities and "cloud_mask" in sample.modalities[m]), None)
    if mask_source is not None:
        encoded.append(encode_cloud_mask(mask_source))
    if "S2RGB" in sample.modalities:
        encoded.append(encode_thumbnail(sample.modalities["S2RGB"]))
    return encoded


def write_assets(sample: Sample, encoded: list[EncodedAsset], store: Store) -> dict[str, WrittenAsset]:
    written = {}
    for asset in encoded:
        relpath = asset_path(sample.key, asset.filename)
        written[asset.key] = WrittenAsset(
            key=asset.key, href=store.put(relpath, asset.data), media_type=asset.media_type,
            roles=asset.roles, size=len(asset.data), checksum=multihash_sha256(asset.data),
            fields=asset.fields, alternate_href=store.https_href(relpath),
        )
    return written


def convert_sample(sample: Sample, store: Store, options: ConvertOptions, revision: str | None) -> pystac.Item:
    written = write_assets(sample, encode_sample(sample, options.modalities), store)
    return create_item(sample, written, collection_id=options.collection_id, revision=revision)


def convert_shard(source_url: str, split: str, shard: str, options: ConvertOptions,
                  *, limit: int | None = None, on_sample=None) -> ShardReport:
    """Convert one shard; write its items and its report to the destination."""
    t0 = time.perf_counter()
    source = open_source(source_url, endpoint_url=options.s3_endpoint_url, revision=options.revision)
    metadata = source.read_metadata(split, shard=shard)  # only this shard's rows
    store = options.store()
    report = ShardReport(split=split, shard=shard)
    lines = []
    for n, result in enumerate(iter_samples(source, split, shard, options.modalities, metadata)):
        if limit is not None and n >= limit:
            break
        if isinstance(result, SampleError):
            report.errors.append(result.to_dict())
            continue
        if metadata is not None and result.metadata is None:
            report.errors.append(SampleError(
                result.key, shard, None,
                f"no row in {split}_metadata.parquet; eo:cloud_cover computed from the cloud mask",
            ).to_dict())
        try:
            item = convert_sample(result, store, options, source.revision)
        except Exception as e:  # one bad sample must not stop the shard
            report.errors.append(SampleError(result.key, shard, None, f"{type(e).__name__}: {e}").to_dict())
            continue
        lines.append(json.dumps(item.to_dict(include_self_link=False), separators=(",", ":")))
        report.add_item(item)
        if on_sample:
            on_sample()
    store.put(items_path(split, shard), ("\n".join(lines) + "\n").encode() if lines else b"")
    report.seconds = time.perf_counter() - t0
    store.put(report_path(split, shard), json.dumps(report.__dict__, indent=1).encode())
    return report


def _collection_from_reports(options: ConvertOptions, reports: list[ShardReport], store: Store) -> pystac.Collection:
    bbox, start, end = None, None, None
    for r in reports:
        if r.items:
            bbox = _union_bbox(bbox, r.bbox)
            start = min(start or r.start, r.start)
            end = max(end or r.end, r.end)
    if store.exists(COLLECTION_FILE):  # a previous run's extent still holds its items
        old = json.loads(store.get(COLLECTION_FILE))
        old_bbox = old["extent"]["spatial"]["bbox"][0]
        old_start, old_end = old["extent"]["temporal"]["interval"][0]
        bbox = _union_bbox(bbox, old_bbox) if bbox else old_bbox
        start = min(filter(None, [start, old_start]), default=None)
        end = max(filter(None, [end, old_end]), default=None)
    extent = None
    if bbox:
        extent = pystac.Extent(
            pystac.SpatialExtent([bbox]),
            pystac.TemporalExtent([[datetime.fromisoformat(start) if start else None,
                                    datetime.fromisoformat(end) if end else None]]),
        )
    return create_collection(
        collection_id=options.collection_id, title=options.collection_title,
        description=options.collection_description, extent=extent,
    )


def convert(source_url: str, options: ConvertOptions, *, split: str = "val",
            limit: int | None = None, progress: bool = False) -> RunReport:
    """Convert every shard of `split` ("all" for train and val), at most `limit` samples."""
    t0 = time.perf_counter()
    source = open_source(source_url, endpoint_url=options.s3_endpoint_url, revision=options.revision)
    splits = ["train", "val"] if split == "all" else [split]
    work = [(s, shard) for s in splits for shard in source.list_shards(s)]
    if not work:
        raise FileNotFoundError(f"no shards of split {split!r} under {source_url}")
    store = options.store()
    reports: list[ShardReport] = []
    with _progress(progress, limit) as advance:
        for s, shard in work:
            remaining = None if limit is None else limit - sum(r.items + len(r.errors) for r in reports)
            if remaining is not None and remaining <= 0:
                break
            reports.append(convert_shard(source_url, s, shard, options, limit=remaining, on_sample=advance))
    collection = _collection_from_reports(options, reports, store)
    href = store.put(COLLECTION_FILE, json.dumps(collection.to_dict(include_self_link=False), indent=1).encode())
    return RunReport(shards=reports, collection_href=href, seconds=time.perf_counter() - t0)


class _progress:
    """A rich progress bar over samples, or nothing."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(*Progress.get_default_columns(), "{task.completed} samples")
        self._bar.start()
        task = self._bar.add_task("converting", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
