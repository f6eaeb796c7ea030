"""What converted items cover: the collection's extent and summaries, from the items themselves.

Each shard accumulates an `Extent` and a `Summary` item by item while it converts (`add_item`)
and stores them in its manifest; the collection is the `union` of all manifests'. Nothing
here is a fixed list: a val-only Major TOM conversion says split val, source majortom, SAR
RTC and no GRD, because that is what its items hold.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime

import pystac

from . import references, zarrstack
from .formats import Format
from .item_assets import SAR_FIELDS
from .modalities import MODALITIES, MODALITY_INFO


def union_bbox(a: list[float] | None, b: list[float] | None) -> list[float] | None:
    """The box holding both (None: no box). A box whose west exceeds its east crosses the
    antimeridian: the union then spans all longitudes (simple and never too small)."""
    if a is None or b is None:
        return None if a is None and b is None else list(a or b)
    if a[0] > a[2] or b[0] > b[2]:
        return [-180.0, min(a[1], b[1]), 180.0, max(a[3], b[3])]
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def _earliest(a: str | None, b: str | None) -> str | None:
    return min(a or b, b or a) if a or b else None


def _latest(a: str | None, b: str | None) -> str | None:
    return max(a or b, b or a) if a or b else None


@dataclass
class Extent:
    """Union of item bboxes and of their start/end times (ISO strings); None: no item yet."""

    bbox: list[float] | None = None
    start: str | None = None
    end: str | None = None

    def add_item(self, item: pystac.Item) -> None:
        md = item.common_metadata
        for t in (md.start_datetime or item.datetime, md.end_datetime or item.datetime):
            if t is not None:
                self.start, self.end = _earliest(self.start, t.isoformat()), _latest(self.end, t.isoformat())
        self.bbox = union_bbox(self.bbox, item.bbox)

    def union(self, other: Extent) -> Extent:
        return Extent(
            union_bbox(self.bbox, other.bbox), _earliest(self.start, other.start), _latest(self.end, other.end)
        )

    def to_stac(self) -> pystac.Extent | None:
        if self.bbox is None:
            return None
        interval = [datetime.fromisoformat(t) if t else None for t in (self.start, self.end)]
        return pystac.Extent(pystac.SpatialExtent([self.bbox]), pystac.TemporalExtent([interval]))

    @classmethod
    def from_dict(cls, d: dict) -> Extent:
        return cls(bbox=d.get("bbox"), start=d.get("start"), end=d.get("end"))


@dataclass
class Range:
    minimum: float
    maximum: float

    def union(self, other: Range | None) -> Range:
        if other is None:
            return self
        return Range(min(self.minimum, other.minimum), max(self.maximum, other.maximum))


# item asset key -> (modality, format) of the assets a modality can have
_MODALITY_ASSETS = {
    **{m: (m, Format.COG) for m in MODALITIES},
    **{zarrstack.asset_key(m): (m, Format.ZARR) for m in MODALITIES},
    **{zarrstack.stack_asset_key(m): (m, Format.ZARR) for m in MODALITIES},
    **{references.asset_key(m): (m, Format.REF) for m in MODALITIES},
}


def _insert(values: list, value) -> None:
    """Add to a sorted list of distinct values (lists stay sorted: manifests are deterministic)."""
    if value is not None and value not in values:
        bisect.insort(values, value)


def _insert_all(values: list, value) -> None:
    for v in value if isinstance(value, list) else [value]:
        _insert(values, v)


@dataclass
class Summary:
    """The distinct values items hold, as the collection's `summaries` report them."""

    split: list[str] = field(default_factory=list)  # terramesh:split
    source: list[str] = field(default_factory=list)  # terramesh:source
    modalities: dict[str, list[str]] = field(default_factory=dict)  # modality -> formats written
    auxiliary: list[str] = field(default_factory=list)  # other asset keys: cloud_mask, thumbnail
    gsd: list[float] = field(default_factory=list)
    proj_code: list[str] = field(default_factory=list)
    cloud_cover: Range | None = None  # eo:cloud_cover
    sar: dict[str, list] = field(default_factory=dict)  # sar:* field -> values; only with S1 data

    def add_item(self, item: pystac.Item) -> None:
        props = item.properties
        _insert(self.split, props.get("terramesh:split"))
        _insert(self.source, props.get("terramesh:source"))
        _insert(self.gsd, props.get("gsd"))
        _insert(self.proj_code, props.get("proj:code"))
        if (cc := props.get("eo:cloud_cover")) is not None:
            self.cloud_cover = Range(cc, cc).union(self.cloud_cover)
        sar = {k: v for k, v in props.items() if k.startswith("sar:")}
        for key in item.assets:
            if key.endswith("_source"):  # the original bytes: every item has them, nothing converted
                continue
            if key not in _MODALITY_ASSETS:
                _insert(self.auxiliary, key)
                continue
            modality, fmt = _MODALITY_ASSETS[key]
            _insert(self.modalities.setdefault(modality, []), str(fmt))
            # what the modality is (e.g. sar:product_type RTC), whatever format it was written in
            facts = {**MODALITY_INFO[modality].extra, **(SAR_FIELDS if modality in ("S1GRD", "S1RTC") else {})}
            for k, v in facts.items():
                if k.startswith("sar:"):
                    _insert_all(self.sar.setdefault(k, []), v)
        for k, v in sar.items():
            _insert_all(self.sar.setdefault(k, []), v)

    def union(self, other: Summary) -> Summary:
        out = Summary.from_dict(self.to_dict())  # a copy: self stays as it was
        for name in ("split", "source", "auxiliary", "gsd", "proj_code"):
            _insert_all(getattr(out, name), getattr(other, name))
        for mine, theirs in ((out.modalities, other.modalities), (out.sar, other.sar)):
            for k, values in theirs.items():
                _insert_all(mine.setdefault(k, []), values)
        if other.cloud_cover is not None:
            out.cloud_cover = other.cloud_cover.union(out.cloud_cover)
        return out

    @property
    def formats(self) -> list[str]:
        return sorted({f for fs in self.modalities.values() for f in fs})

    def to_stac(self) -> dict:
        """The collection's `summaries`: only fields some item holds."""
        out = {
            "gsd": self.gsd,
            "terramesh:split": self.split,
            "terramesh:source": self.source,
            "terramesh:modalities": [m for m in MODALITIES if m in self.modalities],
            "terramesh:formats": self.formats,
            "proj:code": self.proj_code,
            **self.sar,
        }
        if self.cloud_cover is not None:
            out["eo:cloud_cover"] = {"minimum": self.cloud_cover.minimum, "maximum": self.cloud_cover.maximum}
        return {k: v for k, v in out.items() if v}

    def to_dict(self) -> dict:
        return {
            "split": list(self.split),
            "source": list(self.source),
            "modalities": {m: list(f) for m, f in self.modalities.items()},
            "auxiliary": list(self.auxiliary),
            "gsd": list(self.gsd),
            "proj_code": list(self.proj_code),
            "cloud_cover": None
            if self.cloud_cover is None
            else {"minimum": self.cloud_cover.minimum, "maximum": self.cloud_cover.maximum},
            "sar": {k: list(v) for k, v in self.sar.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        cc = d.get("cloud_cover")
        return cls(
            split=list(d.get("split", [])),
            source=list(d.get("source", [])),
            modalities={m: list(f) for m, f in d.get("modalities", {}).items()},
            auxiliary=list(d.get("auxiliary", [])),
            gsd=list(d.get("gsd", [])),
            proj_code=list(d.get("proj_code", [])),
            cloud_cover=None if cc is None else Range(cc["minimum"], cc["maximum"]),
            sar={k: list(v) for k, v in d.get("sar", {}).items()},
        )
