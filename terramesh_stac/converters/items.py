"""Build the STAC Item of one TerraMesh sample: `create_item(sample, assets, ...)` (pure).

STAC version: 1.1.0 with projection v2 (`proj:code`) and the unified `bands` array
(eo v2.0.0 / raster v2.0.0 fields inside `bands`, `nodata`/`data_type`/`unit` at asset level).
Checked against the clients that read our items:

- titiler / rio-tiler 9 `STACReader` (installed source, rio_tiler/io/stac.py): band names from
  `bands` or `eo:bands`, statistics from `bands` or `raster:bands`; CRS via pystac's
  `ProjectionExtension.crs_string`, which returns `proj:code` first (pystac 1.15). Both work.
- pystac / pystac-client 1.15 / 0.9: read both; when an item declares projection v1.x pystac
  *migrates* `proj:epsg` into `proj:code` on read, so `proj:code` is what pystac users see anyway.
- GDAL STACIT (rasterio 1.4 bundles GDAL 3.10.3): until 3.10.1 it required `proj:epsg`
  (OSGeo/gdal#11753); "STACIT: STAC 1.1 support" (#11760, backported to 3.10 as #11774 and
  released in 3.10.2) reads `proj:code` first. `tests/test_items.py` opens our items with
  the STACIT driver to prove it on this GDAL.
- odc-stac 0.5.3 (checked its source): CRS through pystac (so `proj:code` works, issue
  opendatacube/odc-stac#187 was pystac < 1.12); nodata/data_type/unit from STAC 1.1 `bands`
  and asset level (`raster:bands` only as a fallback). Its band *aliases* still come from
  `eo:bands` only, so `odc.stac.load(bands=["red"])` needs the asset name instead
  (`S2L2A.4`-style keys work).
- `proj:epsg` and `proj:code` cannot both appear: projection v2.0.0's schema forbids unknown
  `proj:` fields (additionalProperties false), and v1.x has no `proj:code`.

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
the `terramesh:*_product_id` property.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

import numpy as np
import pystac
import xarray as xr

from .cog import sample_time
from .footprint import footprint, grid_of, scalar
from .modalities import CLOUD_MASK_MODALITIES, CLOUD_MASK_NODATA, CLOUDY_CLASSES, MODALITIES
from .sample import Sample, WrittenAsset

STAC_VERSION = "1.1.0"
EXTENSIONS = {
    "proj:": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "eo:": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "raster:": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "sar:": "https://stac-extensions.github.io/sar/v1.3.0/schema.json",
    "classification:": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "file:": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "alternate": "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json",
    "sci:": "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
    "renders": "https://stac-extensions.github.io/render/v2.0.0/schema.json",
    "xarray:": "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json",
}

CDSE_STAC = "https://stac.dataspace.copernicus.eu/v1"
_S2_ID = re.compile(r"^S2[A-D]_MSI(L1C|L2A)_\d{8}T\d{6}_N\d{4}_R\d{3}_T\w{5}_\d{8}T\d{6}$")
_S1_GRD_ID = re.compile(r"^S1[A-D]_(IW|EW|SM)_GRD[HMF]_1S[DS][VH]_\d{8}T\d{6}_\d{8}T\d{6}_\w+$")

# Sentinel-1 facts shared by S1GRD and S1RTC (IW mode, C band).
SAR_FIELDS = {
    "sar:instrument_mode": "IW",
    "sar:frequency_band": "C",
    "sar:center_frequency": 5.405,
}

S2_MODALITIES = ("S2L2A", "S2L1C", "S2RGB", "NDVI", "LULC")  # carry the S2 time
S1_MODALITIES = ("S1GRD", "S1RTC")


def _iso(t) -> datetime:
    return t.to_pydatetime()


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


def _asset(wa: WrittenAsset, modality_ds: xr.Dataset | None) -> pystac.Asset:
    fields = dict(wa.fields)
    title = fields.pop("title", None)
    description = fields.pop("description", None)
    extra = dict(fields)
    if wa.size is not None:  # a file; a Zarr store is many objects
        extra.update({"file:size": int(wa.size), "file:checksum": wa.checksum})
    if wa.key in S1_MODALITIES:
        extra.update(SAR_FIELDS)
        extra.setdefault("sar:polarizations", ["VV", "VH"])
        extra.setdefault("sar:product_type", "RTC" if wa.key == "S1RTC" else "GRD")
    if modality_ds is not None and wa.key != "thumbnail" and (fid := _file_id(modality_ds)):
        extra["terramesh:file_id"] = fid
    if wa.alternate_href:
        extra["alternate"] = {"https": {"href": wa.alternate_href}}
    return pystac.Asset(
        href=wa.href,
        title=title,
        description=description,
        media_type=wa.media_type,
        roles=list(wa.roles),
        extra_fields=extra,
    )


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


def create_item(
    sample: Sample,
    assets: dict[str, WrittenAsset],
    *,
    collection_id: str,
    revision: str | None,
) -> pystac.Item:
    """The STAC Item of `sample` with `assets` (keys: modality names, cloud_mask, thumbnail).

    Pure: reads only its arguments. Item id = sample key; geometry/bbox = WGS84 footprint of
    the pixel edges; datetime = the S2 acquisition time (S1 time if no S2 modality);
    start/end_datetime span all modalities' times except DEM's (it has none).
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

    props: dict = {
        "start_datetime": min(times.values()).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "end_datetime": max(times.values()).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "gsd": 10,
        "proj:code": grid.proj_code,
    }
    cc = cloud_cover(sample)
    if cc is not None:
        props["eo:cloud_cover"] = cc
    if any(m in sample.modalities for m in S1_MODALITIES):
        props.update(SAR_FIELDS)
        props["sar:polarizations"] = ["VV", "VH"]

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
        props["terramesh:center"] = [float(scalar(ref, "center_lon")), float(scalar(ref, "center_lat"))]
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
    for key, pid in ids.items():
        props[f"terramesh:{key}_product_id"] = pid
        if url := cdse_item_url(pid):
            links.append(
                pystac.Link(
                    "derived_from",
                    url,
                    media_type="application/geo+json",
                    title=f"Source product {pid} (Copernicus Data Space STAC)",
                )
            )

    item = pystac.Item(
        id=sample.key,
        geometry=geometry,
        bbox=bbox,
        datetime=_iso(main_time),
        properties={k: v for k, v in props.items() if v is not None},
        collection=collection_id,
    )
    for key in sorted(assets, key=lambda k: (k not in MODALITIES, k)):
        ds = sample.modalities.get(key)
        if key == "cloud_mask":
            ds = None
        item.add_asset(key, _asset(assets[key], ds))
    # STAC requires a `collection` link when the `collection` field is set. Relative, no host:
    # the static layout is <root>/collection.json + <root>/<item id>/<item id>.json, and the
    # STAC API replaces self/parent/collection/root links with its own.
    item.add_link(pystac.Link("collection", "../collection.json", media_type="application/json"))
    for link in links:
        item.add_link(link)
    for key in sorted(assets):  # the original bytes, where references point into
        if member := assets[key].fields.get("terramesh:source_member"):
            end = member["offset"] + member["size"] - 1
            item.add_link(
                pystac.Link(
                    "via",
                    member["href"],
                    media_type="application/x-tar",
                    title=f"Original shard holding this sample's {key.removesuffix('_ref')} .zarr.zip "
                    f"(bytes {member['offset']}-{end})",
                    extra_fields={"terramesh:byte_range": [member["offset"], end]},
                )
            )
    item.stac_extensions = stac_extensions_for(item.to_dict(include_self_link=False, transform_hrefs=False))
    return item
