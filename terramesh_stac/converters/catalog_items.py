"""STAC items from the metadata parquet alone (the `catalog` command): `items_of_table`.

One item per row of `{split}_metadata.parquet`, without reading a pixel, equal to what
`convert` writes for the same sample in id, geometry, bbox, datetime, the `terramesh:*`
properties, `eo:cloud_cover`, `gsd`, the item-level projection fields, `collection` and
its link, `stac_extensions` and the `<MODALITY>_source` assets (items.py has the rules).
What only the pixels know is left out: the COG/Zarr/reference assets, `derived_from`
links (the parquet has no product ids). A later `convert` replaces the item (same id).

Whole columns at a time: a table (one row group of the parquet) is cut by shard, each
shard's footprints come from `footprint.footprints` per UTM zone (one pyproj call), times
are formatted with numpy; the per-row Python work is building the item dict and orjson.

Differences from `convert` that the parquet cannot avoid:
- `terramesh:revision`: `--revision` or the Hub URL's `resolve/<rev>/`; for a folder or a
  bucket without `--revision`, convert records the shard's content id (of the tars and its
  options), which the parquet cannot know, so the catalog item has no revision;
- `terramesh:sample_id` and `terramesh:center` are the parquet's, convert takes them from
  the sample's zarr (they are the same values in TerraMesh);
- `eo:cloud_cover`: the parquet's value (convert's rule 1); a fraction column (max <= 1)
  is scaled to percent by `cloud_cover_scale` (decided once per file, not per shard).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import metadata as _metadata
from .footprint import footprints, proj_fields
from .item_assets import GSD
from .items import CENTER_DECIMALS, STAC_VERSION, stac_extensions_for
from .metadata import key_of_member
from .shards import shard_modalities
from .source_assets import source_asset, source_asset_key
from .summary import Extent, Range, Summary, union_bbox

COLUMNS = ("tar", "zarr", "sample_id", "center_lon", "center_lat", "crs", "bounds", "S2_time", "S1_time", "cloud_cover")
COLLECTION_LINK = {"rel": "collection", "href": "../collection.json", "type": "application/json"}


@dataclass(frozen=True)
class CatalogContext:
    """What every row's item needs besides the row: settings passed down to the workers."""

    split: str
    collection_id: str
    revision: str | None
    tar_url: object  # (split, modality, shard) -> the shard tar's URL, as convert names it
    cloud_cover_scale: float = 1.0  # 100.0 when the parquet's cloud_cover is a fraction


@dataclass
class ShardItems:
    """The NDJSON lines of one shard's rows (of one table) and what they cover."""

    shard: str
    lines: list[bytes]
    extent: Extent
    summary: Summary
    errors: list[dict] = field(default_factory=list)  # {key, shard, reason}

    def ndjson(self) -> bytes:
        return b"\n".join(self.lines) + b"\n" if self.lines else b""


def _strings(col: pa.ChunkedArray) -> list:
    return col.cast(pa.string()).to_pylist()


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype("float64")


def _bounds(col: pa.ChunkedArray) -> np.ndarray:
    """(n, 4) float64, NaN rows where a row has no 4 numbers (list or string column)."""
    n = len(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        out = np.full((n, 4), np.nan)
        ok = lengths == 4
        if ok.all():
            values = pc.list_flatten(col)
            return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).reshape(n, 4)
        for i in np.flatnonzero(ok):
            out[i] = col[int(i)].values.to_numpy(zero_copy_only=False)
        return out
    out = np.full((n, 4), np.nan)  # strings such as "[a, b, c, d]": per row, as metadata.py reads them
    for i, v in enumerate(col.to_pylist()):
        try:
            b = _metadata._bounds(v)
        except ValueError:
            b = None
        if b is not None:
            out[i] = b
    return out


def _times(col: pa.ChunkedArray | None, n: int) -> np.ndarray:
    """datetime64[us] in UTC (NaT where missing); naive times are UTC, as metadata.py reads them."""
    if col is None:
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    t = pd.to_datetime(col.to_pandas(), utc=True, errors="coerce")
    return t.dt.tz_convert(None).to_numpy().astype("datetime64[us]")


def rfc3339_strings(t: np.ndarray) -> list[str | None]:
    """items.rfc3339 over an array: second precision unless a time has a fraction, `Z`."""
    s = np.datetime_as_string(t, unit="us")
    return [None if v == "NaT" else (v[:19] if v.endswith(".000000") else v) + "Z" for v in s.tolist()]


def _iso(t: np.datetime64) -> str:
    """What summary.Extent records: the aware datetime's isoformat."""
    return pd.Timestamp(t).tz_localize(UTC).to_pydatetime().isoformat()


def items_of_table(table: pa.Table, ctx: CatalogContext, byte_ranges=None) -> list[ShardItems]:
    """The items of a metadata table's rows, per shard (in order of first appearance).

    byte_ranges(shard) -> {(key, modality): (start, end)} (from the byte index) or {}.
    Rows without a usable crs, bounds or time are reported in the shard's `errors` and left out.
    """
    cols = _Columns(table, ctx)
    order: dict[str | None, list[int]] = {}
    for i, t in enumerate(cols.tars):
        order.setdefault(t, []).append(i)
    return [
        _shard_items(cols, rows, shard, ctx, byte_ranges(shard) if byte_ranges and shard else {})
        for shard, rows in order.items()
    ]


class _Columns:
    """A table's columns as what the items need, computed over all rows at once: footprints
    per UTM zone (one pyproj call each), times formatted, and why a row cannot be an item."""

    def __init__(self, table: pa.Table, ctx: CatalogContext):
        n = table.num_rows
        names = table.column_names
        self.tars = _strings(table.column("tar"))
        self.zarrs = _strings(table.column("zarr"))
        self.keys = [key_of_member(z) if z else None for z in self.zarrs]
        self.sample_ids = _strings(table.column("sample_id")) if "sample_id" in names else [None] * n
        crs = pc.cast(table.column("crs"), pa.float64()).to_numpy(zero_copy_only=False) if "crs" in names else None
        crs = np.full(n, np.nan) if crs is None else crs.astype("float64")
        bounds = _bounds(table.column("bounds")) if "bounds" in names else np.full((n, 4), np.nan)
        s2 = _times(table.column("S2_time") if "S2_time" in names else None, n)
        s1 = _times(table.column("S1_time") if "S1_time" in names else None, n)
        self.main = np.where(np.isnat(s2), s1, s2)
        self.cc = (
            _floats(table.column("cloud_cover")) * ctx.cloud_cover_scale
            if "cloud_cover" in names
            else np.full(n, np.nan)
        )
        centre = [
            np.round(_floats(table.column(c)), CENTER_DECIMALS) if c in names else np.full(n, np.nan)
            for c in ("center_lon", "center_lat")
        ]

        # bad rows: reported with the reason, the rest goes on
        self.reasons: list[str | None] = [None] * n
        width, height = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
        checks = (
            (np.array([k is None for k in self.keys], dtype=bool), "no zarr member name"),
            (np.array([t is None for t in self.tars], dtype=bool), "no tar (shard) name"),
            (np.isnan(crs) | (crs <= 0), "no crs (EPSG code)"),
            (~np.isfinite(bounds).all(axis=1), "no bounds (4 numbers)"),
            (~(width > 0) | ~(height > 0), "bounds are empty (xmin >= xmax or ymin >= ymax)"),
            (np.isnat(self.main), "no S2_time nor S1_time"),
        )
        for bad, reason in checks:
            for i in np.flatnonzero(bad):
                self.reasons[i] = self.reasons[i] or reason

        self.geometries: list = [None] * n
        good = np.array([r is None for r in self.reasons], dtype=bool)
        self.epsg = np.where(good, crs, 0).astype("int64")
        for code in np.unique(self.epsg[good]):
            idx = np.flatnonzero(good & (self.epsg == code))
            try:
                for i, fp in zip(idx, footprints(int(code), bounds[idx], arrays=True)):
                    self.geometries[i] = fp
            except Exception as e:  # noqa: BLE001 - pyproj's errors for an unknown code vary
                for i in idx:
                    self.reasons[i] = f"crs EPSG:{int(code)} cannot be used: {e}"

        self.datetimes, self.s1_datetimes = rfc3339_strings(self.main), rfc3339_strings(s1)
        self.shape_cols = np.rint(width / GSD).astype("int64").tolist() if n else []
        self.shape_rows = np.rint(height / GSD).astype("int64").tolist() if n else []
        self.bounds, self.widths, self.heights = bounds.tolist(), width.tolist(), height.tolist()
        self.epsgs = self.epsg.tolist()
        self.cc_list, self.lon, self.lat = self.cc.tolist(), centre[0].tolist(), centre[1].tolist()


def _shard_items(c: _Columns, rows: list[int], shard: str | None, ctx: CatalogContext, ranges: dict) -> ShardItems:
    to_open = shard_modalities(shard or "")[0]
    tar_urls = [(m, source_asset_key(m), ctx.tar_url(ctx.split, m, shard)) for m in to_open] if shard else []
    extensions: dict[tuple, list[str]] = {}
    result = ShardItems(shard=shard or "", lines=[], extent=Extent(), summary=Summary())
    codes, sources, kept, bbox_union = set(), set(), [], None
    for i in rows:
        key = c.keys[i]
        if c.reasons[i] is not None or c.geometries[i] is None:
            result.errors.append({"key": key, "shard": shard, "reason": c.reasons[i] or "no footprint"})
            continue
        geometry, bbox = c.geometries[i]
        xmin, _, _, ymax = c.bounds[i]
        w, h, code = c.shape_cols[i], c.shape_rows[i], c.epsgs[i]
        props = {
            "gsd": GSD,
            "proj:epsg": code,
            **proj_fields(code, (h, w), [c.widths[i] / w, 0.0, xmin, 0.0, -c.heights[i] / h, ymax], c.bounds[i]),
        }
        if c.s1_datetimes[i]:
            props["terramesh:s1_datetime"] = c.s1_datetimes[i]
        if c.cc_list[i] == c.cc_list[i]:  # not NaN
            props["eo:cloud_cover"] = c.cc_list[i]
        source = key.split("_", 1)[0]
        props["terramesh:source"] = source
        props["terramesh:split"] = ctx.split
        props["terramesh:shard"] = shard
        if c.sample_ids[i] is not None:
            props["terramesh:sample_id"] = c.sample_ids[i]
        if ctx.revision is not None:
            props["terramesh:revision"] = ctx.revision
        if c.lon[i] == c.lon[i] and c.lat[i] == c.lat[i]:
            props["terramesh:center"] = [c.lon[i], c.lat[i]]
        props["datetime"] = c.datetimes[i]
        member = c.zarrs[i].rsplit("/", 1)[-1]
        if ranges:
            assets = {k: source_asset(href, member, *ranges.get((key, m), ())) for m, k, href in tar_urls}
        else:
            assets = {k: {"href": href, "archive:href": member} for _, k, href in tar_urls}
        item = {
            "type": "Feature",
            "stac_version": STAC_VERSION,
            "stac_extensions": None,
            "id": key,
            "geometry": geometry,
            "bbox": bbox,
            "properties": props,
            "links": [COLLECTION_LINK],
            "assets": assets,
            "collection": ctx.collection_id,
        }
        # which extensions an item uses depends only on which fields it has
        shape = (tuple(props), bool(assets))
        if shape not in extensions:
            extensions[shape] = stac_extensions_for(item)
        item["stac_extensions"] = extensions[shape]
        result.lines.append(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY))
        kept.append(i)
        codes.add(props["proj:code"])
        sources.add(source)
        if bbox[0] > bbox[2]:  # crosses the antimeridian
            bbox_union = union_bbox(bbox_union, bbox)
    if kept:
        boxes = np.array([c.geometries[i][1] for i in kept])
        simple = boxes[boxes[:, 0] <= boxes[:, 2]]
        if len(simple):
            box = [simple[:, 0].min(), simple[:, 1].min(), simple[:, 2].max(), simple[:, 3].max()]
            bbox_union = union_bbox(bbox_union, [float(v) for v in box])
        times, ccs = c.main[kept], c.cc[kept]
        ccs = ccs[~np.isnan(ccs)]
        cc_range = Range(float(ccs.min()), float(ccs.max())) if ccs.size else None
        result.extent = Extent(bbox=bbox_union, start=_iso(times.min()), end=_iso(times.max()))
        result.summary = Summary(
            split=[ctx.split], source=sorted(sources), gsd=[GSD], proj_code=sorted(codes), cloud_cover=cc_range
        )
    return result


def cloud_cover_scale(parquet_file) -> float:
    """100.0 when the file's cloud_cover column is a fraction (its maximum <= 1), else 1.0
    (metadata.normalise's rule, once for the whole file: from the row groups' statistics
    when they are there, else from the column)."""
    md = parquet_file.metadata
    names = parquet_file.schema_arrow.names
    if "cloud_cover" not in names:
        return 1.0
    col = names.index("cloud_cover")
    maxima = []
    for rg in range(md.num_row_groups):
        stats = md.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max:
            maxima = None
            break
        maxima.append(float(stats.max))
    if maxima is None:
        values = parquet_file.read(columns=["cloud_cover"]).column(0)
        m = pc.max(pc.cast(values, pa.float64())).as_py()
        maxima = [] if m is None else [m]
    maxima = [m for m in maxima if m == m]
    return 100.0 if maxima and max(maxima) <= 1.0 else 1.0
