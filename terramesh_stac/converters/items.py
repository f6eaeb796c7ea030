"""Build the STAC Item of one TerraMesh sample: `create_item(sample, assets, ...)` (pure).

STAC version: 1.1.0, the unified `bands` array (eo v2.0.0 fields inside `bands`,
`nodata`/`data_type`/`unit` at asset level) and projection **v1.2.0**, which allows both
`proj:code` and the deprecated `proj:epsg`. Items are lean (item_assets.py): the fields all
items share live once in the collection's `item_assets`, the grid once in the item's
properties (all raster assets share it). Checked against the clients that read our items
(tests/test_clients.py loads a search with each):

- GDAL STACIT: 3.6 (Debian 12) reads only `proj:epsg` (3.10.2+ reads `proj:code` first,
  OSGeo/gdal#11760) -> both are written.
- stackstac 0.5: `proj:epsg` only ("Cannot pick a common CRS" without it), from the asset or
  the item properties.
- pystac / pystac-client 1.15 / 0.9, titiler / rio-tiler 9, odc-stac 0.5: `proj:code` via
  pystac; titiler takes band names from `bands`; odc-stac only from eo v1 `eo:bands`, which
  eo v2.0.0 forbids: its aliases come from a config (terramesh_stac.open.odc_stac_config).
- `<MODALITY>_source` tars null `proj:code`/`proj:epsg` (source_assets.py): STACIT offered
  them as rasters on the item's grid.
- `proj:epsg` and `proj:code` cannot both appear under projection v2.0.0 (its schema forbids
  unknown `proj:` fields), hence v1.2.0.

Time: `datetime` is the S2 acquisition (S1 when a sample has no S2 modality);
`terramesh:s1_datetime` the S1 acquisition. There is no start/end_datetime: pgstac sorts
and filters by start_datetime when an item has one, and users filtering or sorting by
`datetime` expect `properties.datetime`.

Geometry: the pixel-edge footprint from footprint.footprint (densified, antimeridian split).
Cloud cover rule (`eo:cloud_cover`, percent):
  1. the metadata parquet's `cloud_cover` when present and finite (already 0-100);
  2. else from the S2 cloud mask (first of S2L2A, S2L1C, S2RGB, LULC that has one):
     100 * (pixels in classes 3 thin cloud or 4 thick cloud) / (pixels with class != 6 no data);
  3. else (no mask, or no valid pixel) the field is left out.
Provenance: `derived_from` links to the Copernicus Data Space Ecosystem STAC items of the
source Sentinel products; CDSE STAC item ids are the product names without `.SAFE`
(ESA's CDSE STAC attribute mapping: "STAC id is without .SAFE"), under
https://stac.dataspace.copernicus.eu/v1/collections/<collection>/items/<id>.
Ids that do not look like ESA product names (e.g. Earth Engine style ids) get no link, only
the `terramesh:*_product_id` property (an ESA id is said once, by its link). Each modality's original bytes: the `<MODALITY>_source`
asset (source_assets.py), with the member's byte range.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

import numpy as np
import pystac
import xarray as xr

from .cog import sample_time
from .footprint import Grid, footprint, grid_of, scalar
from .item_assets import lean_asset
from .modalities import CLOUD_MASK_MODALITIES, CLOUD_MASK_NODATA, CLOUDY_CLASSES, MODALITIES
from .sample import Sample, WrittenAsset
from .source_assets import ARCHIVE_EXTENSION, source_asset, source_asset_key

STAC_VERSION = "1.1.0"
EXTENSIONS = {
    "proj:": "https://stac-extensions.github.io/projection/v1.2.0/schema.json",
    "eo:": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "raster:": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "sar:": "https://stac-extensions.github.io/sar/v1.3.0/schema.json",
    "classification:": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "file:": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "alternate": "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json",
    "sci:": "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
    "renders": "https://stac-extensions.github.io/render/v2.0.0/schema.json",
    "xarray:": "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json",
    "archive:": ARCHIVE_EXTENSION,
}

CDSE_STAC = "https://stac.dataspace.copernicus.eu/v1"
_S2_ID = re.compile(r"^S2[A-D]_MSI(L1C|L2A)_\d{8}T\d{6}_N\d{4}_R\d{3}_T\w{5}_\d{8}T\d{6}$")
_S1_GRD_ID = re.compile(r"^S1[A-D]_(IW|EW|SM)_GRD[HMF]_1S[DS][VH]_\d{8}T\d{6}_\d{8}T\d{6}_\w+$")

CENTER_DECIMALS = 6  # 0.1 m: what a recorded centre is good for, half the characters of a float
S2_MODALITIES = ("S2L2A", "S2L1C", "S2RGB", "NDVI", "LULC")  # carry the S2 time
S1_MODALITIES = ("S1GRD", "S1RTC")


def _iso(t) -> datetime:
    return t.to_pydatetime()


def rfc3339(t) -> str:
    """A UTC time as STAC writes it: second precision unless it has a fraction, `Z`."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def grid_properties(grid: Grid) -> dict:
    """The item-level projection fields (projection v1.2.0: proj:epsg for GDAL 3.6 and stackstac)."""
    return {"proj:epsg": grid.epsg, **grid.stac_proj_fields()}


def _file_id(ds: xr.Dataset) -> str | None:
    if "file_id" not in ds:
        return None
    v = np.asarray(ds["file_id"].values).reshape(-1)
    if v.size == 0:
        return None
    s = str(v[0]).strip()
    return s or None


def product_id(file_id: str | None) -> str | None:
    """The bare product name: no directory, no `.SAFE`/`.zip` suffix."""
    if not file_id:
        return None
    s = file_id.rstrip("/").split("/")[-1]
    for suffix in (".zip", ".SAFE"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    return s


def cdse_item_url(pid: str) -> str | None:
    """CDSE STAC item URL of a Sentinel product id, or None if the id is not an ESA name."""
    if m := _S2_ID.match(pid):
        coll = "sentinel-2-l1c" if m.group(1) == "L1C" else "sentinel-2-l2a"
        return f"{CDSE_STAC}/collections/{coll}/items/{pid}"
    if _S1_GRD_ID.match(pid):
        return f"{CDSE_STAC}/collections/sentinel-1-grd/items/{pid}"
    return None


def cloud_cover_from_mask(mask: np.ndarray) -> float | None:
    """Percent of valid (class != 6) pixels in thin/thick cloud classes (3, 4)."""
    m = np.asarray(mask)
    valid = m != CLOUD_MASK_NODATA
    n = int(valid.sum())
    if n == 0:
        return None
    cloudy = int((np.isin(m, CLOUDY_CLASSES) & valid).sum())
    return round(100.0 * cloudy / n, 3)


def cloud_cover(sample: Sample) -> float | None:
    """The eo:cloud_cover rule, see the module docstring."""
    md = sample.metadata or {}
    v = md.get("cloud_cover")
    if v is not None:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if math.isfinite(f):
            return f
    for m in ("S2L2A", *CLOUD_MASK_MODALITIES):
        ds = sample.modalities.get(m)
        if ds is not None and "cloud_mask" in ds:
            return cloud_cover_from_mask(ds["cloud_mask"].values)
    return None


def _reference(sample: Sample) -> xr.Dataset:
    for m in ("S2L2A", *MODALITIES):
        if m in sample.modalities:
            return sample.modalities[m]
    raise ValueError(f"sample {sample.key} has no modality")


def _asset(wa: WrittenAsset, properties: dict) -> pystac.Asset:
    """The item's asset: only what the collection's item_assets and the item's grid do not say."""
    d = {"href": wa.href, "type": wa.media_type, "roles": list(wa.roles), **wa.fields}
    d.pop("terramesh:source_member", None)  # said by the <MODALITY>_source asset
    if wa.size is not None:  # a file; a Zarr store is many objects. Checksums: in the shard's manifest
        d["file:size"] = int(wa.size)
    if wa.alternate_href:
        d["alternate"] = {"https": {"href": wa.alternate_href}}
    return pystac.Asset.from_dict(lean_asset(wa.key, d, properties))


def _uses(d, prefix: str) -> bool:
    if isinstance(d, dict):
        return any(k.startswith(prefix) or _uses(v, prefix) for k, v in d.items())
    if isinstance(d, list):
        return any(_uses(v, prefix) for v in d)
    return False


def stac_extensions_for(d: dict) -> list[str]:
    """The extension schema URIs whose fields appear anywhere in a STAC dict."""
    body = {k: v for k, v in d.items() if k not in ("stac_extensions", "links")}
    return [uri for prefix, uri in EXTENSIONS.items() if _uses(body, prefix)]


def asset_extensions(item_assets: dict) -> dict[str, list[str]]:
    """Per item_assets key, the extensions whose fields its description holds."""
    return {
        key: [uri for prefix, uri in EXTENSIONS.items() if _uses(d, prefix)]
        for key, d in item_assets.items()
        if isinstance(d, dict)
    }


def served_extensions(item: dict, extensions_of_assets: dict[str, list[str]]) -> list[str]:
    """The item's `stac_extensions` plus those whose fields its collection's item_assets add
    to its assets when it is hydrated (what a STAC API serves: sar:, classification:, ...);
    `extensions_of_assets`: asset_extensions(the collection's item_assets)."""
    declared = item.get("stac_extensions")
    assets = item.get("assets")
    if not isinstance(declared, list) or not isinstance(assets, dict):
        return declared
    added = {uri for key in assets for uri in extensions_of_assets.get(key, ())}.difference(declared)
    return declared + [uri for uri in EXTENSIONS.values() if uri in added]


def create_item(
    sample: Sample,
    assets: dict[str, WrittenAsset],
    *,
    collection_id: str,
    revision: str | None,
) -> pystac.Item:
    """The STAC Item of `sample` with `assets` (keys: modality names, cloud_mask, thumbnail,
    Zarr and reference keys) plus a `<MODALITY>_source` asset per modality read.

    Pure: reads only its arguments. Item id = sample key; geometry/bbox = WGS84 footprint of
    the pixel edges; datetime = the S2 acquisition time (S1 time if no S2 modality),
    terramesh:s1_datetime = the S1 acquisition time.
    """
    ref = _reference(sample)
    grid = grid_of(ref)
    geometry, bbox = footprint(grid)

    times = {m: t for m, ds in sample.modalities.items() if (t := sample_time(ds)) is not None}
    s2_times = [times[m] for m in S2_MODALITIES if m in times]
    s1_times = [times[m] for m in S1_MODALITIES if m in times]
    if not times:
        raise ValueError(f"sample {sample.key} has no dated modality")
    main_time = (s2_times or s1_times or sorted(times.values()))[0]

    props: dict = {"gsd": 10, **grid_properties(grid)}
    if s1_times:
        props["terramesh:s1_datetime"] = rfc3339(s1_times[0])
    cc = cloud_cover(sample)
    if cc is not None:
        props["eo:cloud_cover"] = cc

    sample_id = None
    if "sample" in ref.coords:
        sample_id = str(np.asarray(ref["sample"].values).reshape(-1)[0])
    md = sample.metadata or {}
    props.update(
        {
            "terramesh:source": sample.source,
            "terramesh:split": sample.split,
            "terramesh:shard": sample.shard,
            "terramesh:sample_id": sample_id or md.get("sample_id"),
            "terramesh:revision": revision,
        }
    )
    # centre as recorded by TerraMesh (handy for ML users filtering by location)
    try:
        props["terramesh:center"] = [
            round(float(scalar(ref, c)), CENTER_DECIMALS) for c in ("center_lon", "center_lat")
        ]
    except (KeyError, ValueError):
        pass

    links: list[pystac.Link] = []
    ids: dict[str, str] = {}
    for m in ("S2L2A", "S2L1C", *S1_MODALITIES):
        if m in sample.modalities and (pid := product_id(_file_id(sample.modalities[m]))):
            key = "s1" if m in S1_MODALITIES else ("s2" if m == "S2L2A" else "s2l1c")
            if key == "s2l1c" and ids.get("s2") == pid:
                continue
            ids.setdefault(key, pid)
    for key, pid in ids.items():  # the link names the product; the property only when no link can
        if url := cdse_item_url(pid):
            links.append(pystac.Link("derived_from", url, media_type="application/geo+json"))
        else:
            props[f"terramesh:{key}_product_id"] = pid

    item = pystac.Item(
        id=sample.key,
        geometry=geometry,
        bbox=bbox,
        datetime=_iso(main_time),
        properties={k: v for k, v in props.items() if v is not None},
        collection=collection_id,
    )
    for key in sorted(assets, key=lambda k: (k not in MODALITIES, k)):
        item.add_asset(key, _asset(assets[key], item.properties))
    for m in MODALITIES:  # the original bytes: what references point into, what ML readers fetch
        if member := sample.originals.get(m):
            name = member.name or f"{sample.key}.zarr.zip"
            end = member.offset + len(member.data) - 1
            item.add_asset(
                source_asset_key(m), pystac.Asset.from_dict(source_asset(member.tar_url, name, member.offset, end))
            )
    # STAC requires a `collection` link when the `collection` field is set. Relative, no host:
    # the static layout is <root>/collection.json + <root>/<item id>/<item id>.json, and the
    # STAC API replaces self/parent/collection/root links with its own.
    item.add_link(pystac.Link("collection", "../collection.json", media_type="application/json"))
    for link in links:
        item.add_link(link)
    item.stac_extensions = stac_extensions_for(item.to_dict(include_self_link=False, transform_hrefs=False))
    return item
