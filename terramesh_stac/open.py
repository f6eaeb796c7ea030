"""Open one modality of one item with xarray, from its Zarr or reference asset (both are
kerchunk references: into the shard's stacked Zarr, or into the original tar shard).

    from terramesh_stac.open import open_sample
    ds = open_sample(item, "S2L2A")   # a pystac.Item or an item dict from the STAC API

The Dataset equals xarray's reading of the source `.zarr.zip` (values, NaNs, dtype,
coordinates, CRS attributes). Extra keyword arguments go to xarray.open_dataset, e.g. for
an S3-compatible server (the reference file and the bytes it points at):
`s3 = {"client_kwargs": {"endpoint_url": ...}}`,
`storage_options={"target_options": s3, "remote_options": s3}` (copied here: kerchunk
changes remote_options in place, and one dict for both would then break the first).

`odc_stac_config(collection_id)`: odc-stac's `stac_cfg` naming S2L2A's bands by band name
and common name (`odc.stac.load(items, bands=["red"], stac_cfg=odc_stac_config())`).
"""

from __future__ import annotations

import copy

import xarray as xr

from terramesh_stac.converters import references, zarrstack
from terramesh_stac.converters.item_assets import ITEM_ASSETS, full_asset


def open_sample(item, modality: str, **open_kwargs) -> xr.Dataset:
    d = item.to_dict() if hasattr(item, "to_dict") else item
    assets = d["assets"]
    for key in (zarrstack.asset_key(modality), references.asset_key(modality)):
        if (asset := assets.get(key)) is not None:
            asset = full_asset(key, asset)  # a lean item from the NDJSON: what item_assets says put back
            kwargs = dict(asset["xarray:open_kwargs"])
            for name, value in open_kwargs.items():
                kwargs[name] = {**kwargs.get(name, {}), **value} if isinstance(value, dict) else value
            # a copy: kerchunk and fsspec change storage options in place
            return xr.open_dataset(asset["href"], **copy.deepcopy(kwargs)).load()
    if (asset := assets.get(zarrstack.stack_asset_key(modality))) is not None:
        return zarrstack.open_sample(asset["href"], d["id"], **open_kwargs)
    raise KeyError(
        f"item {d['id']!r} has no Zarr or reference asset for {modality!r} (assets: {', '.join(sorted(assets))})"
    )


def odc_stac_config(collection_id: str = "terramesh", asset: str = "S2L2A") -> dict:
    """odc-stac's `stac_cfg` that names `asset`'s bands by band name and common name:
    `odc.stac.load(items, bands=["red"], stac_cfg=odc_stac_config())` (or `["B04"]`).

    Why a config: odc-stac 0.5 takes band aliases only from the eo v1 `eo:bands` of an
    asset, and items declare eo v2.0.0 (STAC 1.1 `bands` with `eo:common_name`), whose
    schema forbids `eo:bands`. The aliases come from the collection's item_assets, so they
    name the same bands the items describe."""
    aliases = {}
    for index, band in enumerate(ITEM_ASSETS[asset]["bands"], start=1):
        for name in (band["name"], band.get("eo:common_name")):
            if name:
                aliases[name] = (asset, index)
    return {collection_id: {"aliases": aliases}}
