"""Convert TerraMesh: samples in, assets + STAC items out.

The unit of work is a shard (`convert_shard`), a plain function of its arguments that a
scheduler can run anywhere: it streams the shard from the source, writes the assets, the
byte index, the shard's items (NDJSON), its report and last its manifest straight to the
destination, and returns a small report. `terramesh_stac.converters.run` schedules shards on Dask.
"""

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field

import pystac

from terramesh_stac.converters import zarrstack, zarrview
from terramesh_stac.converters.byteindex import ShardIndex
from terramesh_stac.converters.cog import encode_cloud_mask, encode_cog
from terramesh_stac.converters.formats import Format, parse_formats
from terramesh_stac.converters.items import create_item
from terramesh_stac.converters.layout import (
    asset_path,
    index_path,
    items_path,
    report_path,
    revision_path,
    staging_path,
    zarr_path,
)
from terramesh_stac.converters.manifest import (
    AssetRecord,
    ItemsRecord,
    Manifest,
    SourceRecord,
    SupersededRecord,
    content_id,
    read_manifest,
    source_fingerprint,
    write_manifest,
)
from terramesh_stac.converters.modalities import parse_modality
from terramesh_stac.converters.references import NotByteAddressable, encode_references
from terramesh_stac.converters.retry import is_transient, retrying
from terramesh_stac.converters.sample import EncodedAsset, Sample, SampleError, WrittenAsset
from terramesh_stac.converters.shards import iter_samples
from terramesh_stac.converters.source import open_source
from terramesh_stac.converters.storage import DestinationError, Store, multihash_sha256
from terramesh_stac.converters.summary import Extent, Summary
from terramesh_stac.converters.thumbnail import encode_thumbnail


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert and how. Formats and modality names are checked and normalised here
    (`"COG"` -> Format.COG, `"s2l2a"` -> "S2L2A"); anything unknown, or no format at all, is
    a ValueError, so a typo can never silently write nothing."""

    dest: str
    collection_id: str = "terramesh"
    formats: tuple[Format, ...] = (Format.COG,)
    # per-modality overrides of `formats`: ((modality, formats), ...), e.g. (("S1GRD", ("ref",)),)
    modality_formats: tuple[tuple[str, tuple[Format, ...]], ...] = ()
    modalities: tuple[str, ...] | None = None  # None: all the sample has
    revision: str | None = None  # None: what the source URL says
    s3_endpoint_url: str | None = None
    s3_public_url: str | None = None
    collection_title: str | None = None
    collection_description: str | None = None

    def __post_init__(self):
        def normalise(name, value):  # the dataclass is frozen
            object.__setattr__(self, name, value)

        normalise("formats", parse_formats(self.formats))
        normalise(
            "modality_formats",
            tuple(sorted((parse_modality(m), parse_formats(f)) for m, f in dict(self.modality_formats).items())),
        )
        if self.modalities is not None:
            names = (self.modalities,) if isinstance(self.modalities, str) else self.modalities
            modalities = tuple(dict.fromkeys(parse_modality(m) for m in names))
            if not modalities:
                raise ValueError("no modality given (None converts all of them)")
            normalise("modalities", modalities)

    def formats_for(self, modality: str) -> tuple[Format, ...]:
        return dict(self.modality_formats).get(modality, self.formats)

    def store(self) -> Store:
        return Store(self.dest, endpoint_url=self.s3_endpoint_url, public_url=self.s3_public_url)


@dataclass
class SampleCounts:
    """What became of a shard's samples. Every sample is in exactly one of converted,
    partial, failed (they add up to `total`); with a metadata parquet, `total` is its rows
    for the shard (`in_metadata`) plus the samples it lacks (`not_in_metadata`)."""

    total: int = 0  # samples seen: keys of any modality tar, plus metadata rows no tar held
    converted: int = 0  # item written, no problem
    partial: int = 0  # item written, with problems (a modality lost, no metadata row)
    failed: int = 0  # no item
    in_metadata: int | None = None  # rows of the metadata parquet for the shard (None: no parquet)
    not_in_metadata: int = 0  # samples without a row there

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def add(self, other: "SampleCounts") -> "SampleCounts":
        def plus(a, b):
            return None if a is None and b is None else (a or 0) + (b or 0)

        return SampleCounts(
            **{f.name: plus(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)}
        )


@dataclass
class ShardReport:
    split: str
    shard: str
    items: int = 0
    samples: SampleCounts = field(default_factory=SampleCounts)
    errors: list[dict] = field(default_factory=list)
    extent: Extent = field(default_factory=Extent)  # of the shard's items
    summary: Summary = field(default_factory=Summary)  # what the shard's items hold
    seconds: float = 0.0
    content_id: str | None = None
    revision: str | None = None
    skipped: bool = False  # the manifest said this content was converted already
    retries: list[str] = field(default_factory=list)  # transient errors that were retried
    assets: dict = field(default_factory=dict)  # written / unchanged / superseded counts
    notes: list[dict] = field(default_factory=list)  # not errors: e.g. a fallback to another format
    fault: str | None = None  # the shard did not finish: the destination takes no writes (why)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "ShardReport":
        # a manifest from before sample counts were recorded: its items, nothing else known
        samples = manifest.samples or {"total": manifest.items.count, "converted": manifest.items.count}
        return cls(
            split=manifest.split,
            shard=manifest.shard,
            items=manifest.items.count,
            samples=SampleCounts(**samples),
            extent=manifest.extent,
            summary=manifest.summary,
            content_id=manifest.content_id,
            revision=manifest.revision,
            errors=list(manifest.errors),
            notes=list(manifest.notes),
            skipped=True,
        )

    def add_item(self, item: pystac.Item) -> None:
        self.items += 1
        self.extent.add_item(item)
        self.summary.add_item(item)


def encode_sample(
    sample: Sample, modalities: tuple[str, ...] | None = None, formats=(Format.COG,), notes: list | None = None
) -> list[EncodedAsset]:
    """All file assets of one sample: per modality a COG and/or references into the source shard
    (formats "cog", "ref": one tuple for all modalities, or a function of the modality; "zarr"
    goes into the shard's stacked stores, see ShardStacks), the
    cloud mask and a thumbnail. A modality whose references cannot be made (DEFLATED zip
    entries) gets its COG instead, with a note in `notes`."""
    formats_for = formats if callable(formats) else (lambda m: formats)
    wanted = [m for m in sample.modalities if modalities is None or m in modalities]
    encoded = []
    for m in wanted:
        cog = Format.COG in formats_for(m)
        if Format.REF in formats_for(m):
            try:
                encoded.append(encode_references(m, sample.originals[m]))
            except NotByteAddressable as e:
                cog = True
                if notes is not None:
                    notes.append(
                        SampleError(sample.key, sample.shard, m, f"no references: {e}; COG written instead").to_dict()
                    )
        if cog:
            encoded.append(encode_cog(sample.modalities[m], m))
    mask_source = next(
        (
            sample.modalities[m]
            for m in ("S2L2A", "S2L1C", "S2RGB", "LULC")
            if m in sample.modalities and "cloud_mask" in sample.modalities[m]
        ),
        None,
    )
    if mask_source is not None:
        encoded.append(encode_cloud_mask(mask_source))
    if "S2RGB" in sample.modalities:
        encoded.append(encode_thumbnail(sample.modalities["S2RGB"]))
    return encoded


class AssetWriter:
    """Writes a shard's assets against what the previous manifest recorded.

    An asset whose bytes equal the recorded checksum is not written again. One whose bytes
    changed is first copied to `revisions/<old content id>/...` (kept readable for
    subsets that point at it, until `prune`) and then replaced. The copy is made only if
    absent, and always before the replacement, so a retry after a crash never copies
    new bytes over the old ones.
    """

    def __init__(self, store: Store, previous: Manifest | None):
        self.store = store
        self.previous_assets: dict[str, AssetRecord] = previous.assets if previous else {}
        self.previous_id: str | None = previous.content_id if previous else None
        self.superseded: dict[str, SupersededRecord] = dict(previous.superseded) if previous else {}
        self.assets: dict[str, AssetRecord] = {}  # relpath -> {size, checksum}
        self.counts = {"written": 0, "unchanged": 0, "superseded": 0}

    def _supersede(self, relpath: str) -> None:
        for path in self._kept_together(relpath):
            kept = revision_path(self.previous_id, path)
            if kept in self.superseded and self.superseded[kept]["content_id"] == self.previous_id:
                continue  # copied already (a store's other object changed first)
            if not self.store.exists(kept):
                if path.endswith(zarrview.FILE_SUFFIX):  # a view: to the kept copy of its store
                    self.store.put(kept, self._view_into_revision(self.store.get(path)))
                else:
                    self.store.copy(path, kept)
            self.superseded[kept] = {**self.previous_assets[path], "of": path, "content_id": self.previous_id}
            self.counts["superseded"] += 1

    def _view_into_revision(self, data: bytes) -> bytes:
        """A superseded Zarr view pointing at the previous revision's store: a view changes
        only with its store's bytes, and then the whole store is kept beside it."""
        prefix = self.store.href("")
        refs = json.loads(data)
        for key, ref in refs["refs"].items():
            if isinstance(ref, list) and ref[0].startswith(prefix):
                refs["refs"][key] = [self.store.href(revision_path(self.previous_id, ref[0][len(prefix) :])), *ref[1:]]
        return json.dumps(refs, separators=(",", ":"), sort_keys=True).encode()

    def _kept_together(self, relpath: str) -> list[str]:
        """An object of a Zarr store takes the whole previous store along (a store is only
        readable whole); any other asset goes alone. Called before the first replacement in
        the store, so every object copied is still the previous revision's."""
        if ".zarr/" not in relpath:
            return [relpath]
        prefix = relpath.split(".zarr/", 1)[0] + ".zarr/"
        return sorted(p for p in self.previous_assets if p.startswith(prefix))

    def put(self, relpath: str, data: bytes, checksum: str | None = None) -> None:
        checksum = checksum or multihash_sha256(data)
        old = self.previous_assets.get(relpath)
        if old is not None and old["checksum"] == checksum and self.store.exists(relpath):
            self.counts["unchanged"] += 1
        else:
            if old is not None and self.store.exists(relpath):
                self._supersede(relpath)
            self.store.put(relpath, data)
            self.counts["written"] += 1
        self.assets[relpath] = {"size": len(data), "checksum": checksum}

    def retire_unused(self) -> None:
        """Assets the previous revision had and this one did not write: moved aside."""
        for relpath in sorted(set(self.previous_assets) - set(self.assets)):
            if self.store.exists(relpath):
                self._supersede(relpath)
                self.store.delete(relpath)


def describe_assets(sample: Sample, encoded: list[EncodedAsset], store: Store) -> dict[str, WrittenAsset]:
    """What the item says about each asset (href, size, checksum), before anything is written."""
    described = {}
    for asset in encoded:
        relpath = asset_path(sample.key, asset.filename)
        described[asset.key] = WrittenAsset(
            key=asset.key,
            href=store.href(relpath),
            media_type=asset.media_type,
            roles=asset.roles,
            size=len(asset.data),
            checksum=multihash_sha256(asset.data),
            fields=asset.fields,
            alternate_href=store.https_href(relpath),
        )
    return described


class ShardStacks:
    """The stacked Zarr stores of one shard, one per modality converted to Zarr."""

    def __init__(self, writer: AssetWriter, split: str, shard: str):
        self.writer, self.split, self.shard = writer, split, shard
        self.stacks: dict[str, zarrstack.ShardStackWriter] = {}

    def __getitem__(self, modality: str) -> zarrstack.ShardStackWriter:
        if modality not in self.stacks:
            root = zarr_path(self.split, self.shard, modality)
            self.stacks[modality] = zarrstack.ShardStackWriter(self.writer.put, root, self.writer.store.href)
        return self.stacks[modality]

    def describe(self, sample: Sample, modality: str) -> list[WrittenAsset]:
        """The sample's two Zarr assets: its per-item view (written with its block, so no
        size or checksum here) and the shard's stacked store."""
        store = self.writer.store

        def asset(key, relpath, media_type, roles, fields) -> WrittenAsset:
            href, https = store.href(relpath), store.https_href(relpath)
            return WrittenAsset(key, href, media_type, roles, None, None, fields, alternate_href=https)

        ds = sample.modalities[modality]
        view = asset_path(sample.key, zarrview.filename(modality))
        return [
            asset(
                zarrstack.asset_key(modality),
                view,
                zarrview.MEDIA_TYPE,
                list(zarrview.ROLES),
                zarrstack.view_fields(modality, ds),
            ),
            asset(
                zarrstack.stack_asset_key(modality),
                self[modality].root,
                zarrstack.MEDIA_TYPE,
                list(zarrstack.ROLES),
                zarrstack.stack_fields(modality, sample.key),
            ),
        ]

    def flush_full(self) -> None:
        for stack in self.stacks.values():
            if stack.block_full:
                stack.flush()

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()


def convert_sample(
    sample: Sample,
    writer: AssetWriter,
    stacks: ShardStacks,
    options: ConvertOptions,
    revision: str | None,
    notes: list | None = None,
) -> pystac.Item:
    """One sample's assets written (Zarr: added to the shard's stacks, written by the caller's
    `stacks.flush_full()` / `close()`) and its item returned."""
    to_zarr, fallback, views = [], set(), {}
    for m in sample.modalities:
        if (options.modalities is None or m in options.modalities) and Format.ZARR in options.formats_for(m):
            try:
                stacks[m].check(sample.modalities[m])
                view = stacks[m].view(sample.modalities[m], sample.originals[m])
                views[m] = (asset_path(sample.key, zarrview.filename(m)), view)
                to_zarr.append(m)
            except (zarrstack.StackMismatch, zarrview.ViewMismatch) as e:
                fallback.add(m)
                if notes is not None:
                    notes.append(
                        SampleError(
                            sample.key, sample.shard, m, f"not stacked into the shard's Zarr: {e}; COG written instead"
                        ).to_dict()
                    )

    def formats_for(m: str) -> tuple[Format, ...]:
        return (*options.formats_for(m), Format.COG) if m in fallback else options.formats_for(m)

    encoded = encode_sample(sample, options.modalities, formats_for, notes)
    described = describe_assets(sample, encoded, writer.store)
    for m in to_zarr:
        for asset in stacks.describe(sample, m):
            described[asset.key] = asset
    item = create_item(sample, described, collection_id=options.collection_id, revision=revision)
    # written only once the item is built: a sample that fails leaves no asset behind
    for asset in encoded:
        writer.put(asset_path(sample.key, asset.filename), asset.data, described[asset.key].checksum)
    for m in to_zarr:
        stacks[m].add(sample.key, sample.modalities[m], views[m])
    return item


def shard_settings(options: ConvertOptions, limit: int | None) -> dict:
    """The options that change what a shard's conversion writes (part of its content id):
    plain strings (formats by their lower-case values), so content ids stay stable."""
    return {
        "collection": options.collection_id,
        "formats": [str(f) for f in options.formats],
        "modality_formats": {m: [str(f) for f in fs] for m, fs in options.modality_formats},
        "modalities": sorted(options.modalities) if options.modalities else None,
        "revision": options.revision,
        "limit": limit,
        "s3_public_url": options.s3_public_url,
    }


def convert_shard(
    source_url: str,
    split: str,
    shard: str,
    options: ConvertOptions,
    *,
    limit: int | None = None,
    force: bool = False,
    on_sample=None,
) -> ShardReport:
    """Convert one shard unless its manifest says the same source and settings are done.

    Transient storage/network errors restart the shard with backoff (its writes are
    idempotent); corrupt data is reported, never retried. Writes, in this order: assets,
    byte index, items, report, manifest. Returns the shard's report.
    """
    retries = []
    for attempt in retrying(on_retry=lambda e: retries.append(f"{type(e).__name__}: {e}")):
        with attempt:
            report = _convert_shard_once(source_url, split, shard, options, limit, force, on_sample)
    report.retries = retries
    return report


def _convert_shard_once(source_url, split, shard, options, limit, force, on_sample) -> ShardReport:
    t0 = time.perf_counter()
    source = open_source(source_url, endpoint_url=options.s3_endpoint_url, revision=options.revision)
    store = options.store()
    fingerprint = source_fingerprint(source, split, shard, options.modalities)
    settings = shard_settings(options, limit)
    cid = content_id(fingerprint, settings)
    previous = read_manifest(store, split, shard)
    if previous is not None and previous.content_id == cid and not force:
        # a run killed between the manifest and the cleanup left the staging folder behind
        store.staged(staging_path(split, shard)).discard_staging()
        return ShardReport.from_manifest(previous)

    store = store.staged(staging_path(split, shard))
    try:
        return _write_shard(source, split, shard, options, limit, on_sample, store, previous, fingerprint, cid, t0)
    except BaseException:
        # a failed attempt (a full disk, a lost connection) leaves no temporary file behind
        try:
            store.discard_staging()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise


def _write_shard(source, split, shard, options, limit, on_sample, store, previous, fingerprint, cid, t0) -> ShardReport:
    settings = shard_settings(options, limit)
    revision = source.revision or cid
    metadata = source.read_metadata(split, shard=shard)  # only this shard's rows
    writer = AssetWriter(store, previous)
    index = ShardIndex(split, shard)
    report = ShardReport(split=split, shard=shard, content_id=cid, revision=revision)
    counts = report.samples
    counts.in_metadata = None if metadata is None else len(metadata)
    problem_keys = set()  # keys with an error: their item (if any) is partial
    stacks = ShardStacks(writer, split, shard)
    lines, ids = [], {}

    def problem(error: SampleError) -> None:
        report.errors.append(error.to_dict())
        problem_keys.add(error.key)

    pending = []  # errors come before their sample: kept until it is known to be converted
    for result in iter_samples(source, split, shard, options.modalities, metadata, index=index):
        if isinstance(result, SampleError):
            pending.append(result)
            continue
        if limit is not None and counts.total >= limit:
            pending = []  # the next sample's, beyond the limit
            break
        for error in pending:
            problem(error)
        pending = []
        counts.total += 1
        if metadata is not None and result.metadata is None:
            counts.not_in_metadata += 1
            if result.modalities:
                problem(
                    SampleError(
                        result.key,
                        shard,
                        None,
                        f"no row in {split}_metadata.parquet; eo:cloud_cover computed from the cloud mask",
                    )
                )
        item = None
        if result.modalities:  # none: every modality of the sample failed, reported above
            try:
                item = convert_sample(result, writer, stacks, options, revision, report.notes)
            except Exception as e:  # one bad sample must not stop the shard
                if is_transient(e) or isinstance(e, DestinationError):
                    raise
                problem(SampleError(result.key, shard, None, f"{type(e).__name__}: {e}"))
        if item is None:
            counts.failed += 1
        else:
            stacks.flush_full()  # outside the per-sample guard: a failed block fails the shard
            lines.append(json.dumps(item.to_dict(include_self_link=False), separators=(",", ":")))
            ids[item.id] = item.datetime.isoformat() if item.datetime else None
            report.add_item(item)
            if result.key in problem_keys:
                counts.partial += 1
            else:
                counts.converted += 1
        if on_sample:
            on_sample(counts.total)
    for error in pending:  # after the last sample: problems of the shard, of no sample
        problem(error)
    stacks.close()
    writer.retire_unused()
    store.put(index_path(split, shard), index.to_parquet())
    items_data = ("\n".join(lines) + "\n").encode() if lines else b""
    store.put(items_path(split, shard), items_data)
    report.assets = dict(writer.counts)
    report.seconds = time.perf_counter() - t0
    store.put(report_path(split, shard), json.dumps(report.to_dict(), indent=1).encode())
    removed = sorted(set(previous.items.ids) - set(ids)) if previous else []
    write_manifest(
        store,
        Manifest(
            split=split,
            shard=shard,
            content_id=cid,
            revision=revision,
            source=SourceRecord(url=source.root, revision=source.revision, tars=fingerprint),
            settings=settings,
            items=ItemsRecord(
                path=items_path(split, shard),
                count=len(ids),
                ids=ids,
                sha256=hashlib.sha256(items_data).hexdigest(),
                removed=removed,
            ),
            extent=report.extent,
            summary=report.summary,
            errors=report.errors,
            notes=report.notes,
            assets=writer.assets,
            superseded=writer.superseded,
            samples=counts.to_dict(),
            index=index_path(split, shard),
            report=report_path(split, shard),
        ),
    )
    store.discard_staging()
    return report
