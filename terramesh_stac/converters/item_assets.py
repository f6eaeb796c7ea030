"""What every TerraMesh item shares, kept once in the collection's `item_assets`, and
`lean_asset`, which leaves in an item's asset only what differs from it.

Why: a TerraMesh item is one 264 px sample, and most of an asset's description (title,
media type, roles, band lists with names, common names and wavelengths, data type, unit,
classes, gsd, SAR facts) is the same for all 9.2 M items. Repeated in every item it made
an item ~18 kB; kept once here, an item holds its hrefs, sizes and the few per-sample
values (S2 nodata, which changed with the 2022 processing baseline). pgstac merges the
collection's `item_assets` back into every item it serves (its `base_item`), so STAC API
clients still see the whole asset; readers of the static NDJSON read `item_assets` from
collection.json (STAC's item-assets convention).

`ITEM_ASSETS` is fixed and complete: every key an item may have, whatever was converted.
pgstac dehydrates each item against the collection's base_item at load time and hydrates
with the base_item of query time, so a base_item that changed between the two (say, a Zarr
entry added by a later `convert --format zarr`) would add assets without an href to items
loaded before. A fixed set makes that impossible.
"""

from __future__ import annotations

from . import references, zarrstack
from .cog import COG_MEDIA_TYPE, classes_field
from .modalities import CLOUD_MASK_CLASSES, CLOUD_MASK_NODATA, LULC_CLASSES, MODALITIES, MODALITY_INFO
from .source_assets import source_asset_key, source_item_asset

GSD = 10
SHAPE = [264, 264]

# Sentinel-1 facts shared by S1GRD and S1RTC (IW mode, C band).
SAR_FIELDS = {
    "sar:instrument_mode": "IW",
    "sar:frequency_band": "C",
    "sar:center_frequency": 5.405,
}


def raster_item_asset(modality: str, *, data_type: str | None = None) -> dict:
    """A modality's raster description: bands, data type (`data_type`, else what the COG
    stores: float16 is written as float32), nodata where it is fixed, unit, classes, SAR."""
    info = MODALITY_INFO[modality]
    d: dict = {
        "title": info.title,
        "gsd": GSD,
        "proj:shape": list(SHAPE),
        "data_type": data_type or ("float32" if info.dtype == "float16" else info.dtype),
        "bands": [b.stac_fields() for b in info.bands],
    }
    if info.dtype == "float16" and data_type is None:
        d["terramesh:source_data_type"] = "float16"
    if info.dtype == "float16":
        d["nodata"] = "nan"
    if modality == "LULC":
        d["nodata"] = 0
        d["classification:classes"] = classes_field(LULC_CLASSES, nodata_value=0)
    if info.unit:
        d["unit"] = info.unit
    if info.scale:
        d["raster:scale"] = info.scale
    if modality in ("S1GRD", "S1RTC"):
        d.update(SAR_FIELDS)
        d.update(info.extra)  # sar:product_type, sar:polarizations
    return d


def _cog(modality: str) -> dict:
    return {"type": COG_MEDIA_TYPE, "roles": list(MODALITY_INFO[modality].roles), **raster_item_asset(modality)}


def _zarr(modality: str) -> dict:
    return {
        **raster_item_asset(modality, data_type=MODALITY_INFO[modality].dtype),
        **zarrstack.how_to_open_view(modality),
        "description": (
            "This sample as a zarr v2 group whose pixels are read from the shard's stacked store "
            "(kerchunk references): xr.open_dataset(href, **xarray:open_kwargs) gives the sample "
            "with its x/y coordinates and CRS, as the source .zarr.zip reads."
        ),
    }


def _zarr_stack(modality: str) -> dict:
    return {
        **raster_item_asset(modality, data_type=MODALITY_INFO[modality].dtype),
        **zarrstack.how_to_open(modality),
        "description": (
            "The shard's samples stacked along `item`, for reading many samples at once: open with "
            "xarray as xarray:open_kwargs says and select this item's sample with "
            "ds.sel(**asset['terramesh:sample_selection']); terramesh_stac.converters.zarrstack.unstack "
            "gives it back its x/y coordinates and CRS."
        ),
    }


def _references(modality: str) -> dict:
    return {
        "title": f"{modality}: kerchunk references into the original shard (no copy)",
        "type": references.MEDIA_TYPE,
        "roles": list(references.ROLES),
    }


CLOUD_MASK = {
    "title": "Sentinel-2 cloud mask",
    "type": COG_MEDIA_TYPE,
    "roles": ["data", "cloud"],
    "gsd": GSD,
    "proj:shape": list(SHAPE),
    "data_type": "uint8",
    "nodata": CLOUD_MASK_NODATA,
    "bands": [{"name": "cloud_mask", "description": "Cloud mask class"}],
    "classification:classes": classes_field(CLOUD_MASK_CLASSES, nodata_value=CLOUD_MASK_NODATA),
}
THUMBNAIL = {"title": "True-colour thumbnail (S2RGB)", "type": "image/jpeg", "roles": ["thumbnail"]}


def _all() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in MODALITIES:
        out[m] = _cog(m)
        out[zarrstack.asset_key(m)] = _zarr(m)
        out[zarrstack.stack_asset_key(m)] = _zarr_stack(m)
        out[references.asset_key(m)] = _references(m)
        out[source_asset_key(m)] = source_item_asset(m)
    out["cloud_mask"] = CLOUD_MASK
    out["thumbnail"] = THUMBNAIL
    return out


ITEM_ASSETS: dict[str, dict] = _all()

# Projection fields an item states once for all its raster assets (they share the grid).
ITEM_LEVEL_PROJ = ("proj:code", "proj:shape", "proj:transform", "proj:bbox")


def lean_asset(key: str, asset: dict, properties: dict) -> dict:
    """`asset` without what the collection's item_assets entry of `key` or the item's own
    properties (projection) already say with the same value."""
    shared = ITEM_ASSETS.get(key, {})
    out = {}
    for field, value in asset.items():
        if field in shared:  # hydration puts the shared value back: keep only a different one
            if field != "href" and shared[field] == value:
                continue
        elif field in ITEM_LEVEL_PROJ and properties.get(field, _MISSING) == value:
            continue
        out[field] = value
    return out


_MISSING = object()


def full_asset(key: str, asset: dict, item_assets: dict | None = None) -> dict:
    """A lean asset with what the collection's `item_assets` (default ITEM_ASSETS) says put
    back: the asset a STAC API serves, for readers of the static NDJSON and for the loader
    (pgstac stores only what differs from item_assets, and serves what was loaded)."""
    return {**(ITEM_ASSETS if item_assets is None else item_assets).get(key, {}), **asset}


def full_item(item: dict, item_assets: dict | None = None) -> dict:
    """A lean item with every asset made whole by full_asset (a copy)."""
    assets = item.get("assets") or {}
    return {**item, "assets": {k: full_asset(k, a, item_assets) for k, a in assets.items()}}
