"""The in-memory form of one TerraMesh sample, shared by reader, writers and item builder."""

from dataclasses import dataclass, field

import xarray as xr


@dataclass
class Sample:
    """One sample: its key and one decoded xarray Dataset per modality present.

    Each Dataset is the sample's zarr group as written by TerraMesh: variable `bands`
    (time, band, y, x), optional `cloud_mask` (time, y, x), scalars `center_lat`,
    `center_lon`, `crs`, `file_id` (time), coords `band`, `time`, `x`, `y`, `sample`.
    """

    key: str  # e.g. majortom_val_0000001
    split: str  # train | val
    shard: str  # shard file name, e.g. majortom_shard_000001.tar
    modalities: dict[str, xr.Dataset] = field(default_factory=dict)
    metadata: dict | None = None  # the metadata parquet row, normalised; None if missing
    # per modality: where its .zarr.zip sits in the source and its bytes (for references)
    originals: dict[str, "SourceMember"] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.key.split("_", 1)[0]


@dataclass(frozen=True)
class SourceMember:
    """One sample's `.zarr.zip` as it sits in its tar: URL, byte offset, bytes."""

    tar_url: str
    offset: int
    data: bytes = field(repr=False)
    name: str = ""  # the member's name in the tar, e.g. majortom_val_0000001.zarr.zip


@dataclass
class SampleError:
    """A member or sample that could not be read; reported, never fatal for the run."""

    key: str | None
    shard: str
    modality: str | None
    reason: str

    def to_dict(self) -> dict:
        return {"key": self.key, "shard": self.shard, "modality": self.modality, "reason": self.reason}


@dataclass
class EncodedAsset:
    """An asset's bytes plus the STAC fields its encoder knows (proj:*, bands, nodata ...)."""

    key: str  # asset key in the item: a modality name, "cloud_mask" or "thumbnail"
    data: bytes
    media_type: str
    roles: list[str]
    filename: str  # e.g. "S2L2A.tif"
    fields: dict = field(default_factory=dict)  # extra asset fields, STAC-ready


@dataclass
class WrittenAsset:
    """An asset after it was stored: where it lives and what it weighs."""

    key: str
    href: str  # storage URL: absolute local path or s3://bucket/key
    media_type: str
    roles: list[str]
    size: int | None  # file:size (None: a Zarr store, not one file)
    checksum: str | None  # file:checksum, multihash hex (sha2-256)
    fields: dict = field(default_factory=dict)
    alternate_href: str | None = None  # https URL of an S3 object when the endpoint has one
