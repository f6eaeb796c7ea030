"""Tiles from Zarr assets: rio-tiler's XarrayReader on one sample of a stacked store.

titiler-pgstac's readers handle GDAL-readable assets only; `ItemReader` (item endpoints)
and `MosaicItemReader` (search and collection mosaics) add the
`application/vnd.zarr` assets the converter writes (terramesh_stac.converters.zarrstack): the sample is
selected by item id, given back its own x/y and CRS, and served by rio-tiler's
XarrayReader, so tiles, previews, info, statistics and the collection's render presets work
as for a COG. A preset names the modality (`assets=S2L2A|bidx=4,3,2`);
on an item converted to Zarr only, that name resolves to its `S2L2A_zarr_stack` asset.

float16 samples are widened to float32 (exact) because GDAL's warper has no float16.

Both readers also bound the output of a request (catalog/tile_limits.py): every asset read,
COG or Zarr, is counted against one `OutputBudget` per item reader, and a mosaic's item
reader declines to open once the mosaic's read deadline has passed.
"""

from __future__ import annotations

import json
import threading

import attr
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor XarrayReader uses)
import xarray as xr
from cachetools import TTLCache
from rio_tiler.constants import WGS84_CRS
from rio_tiler.io.stac import DEFAULT_VALID_TYPE
from rio_tiler.io.xarray import XarrayReader
from rio_tiler.utils import output_size
from titiler.pgstac.reader import PgSTACReader, SimpleSTACReader

from terramesh_stac.catalog.guard import Budget
from terramesh_stac.catalog.tile_limits import (
    BoundedReader,
    OutputBudget,
    bands_asked,
    check_deadline,
    check_part,
)
from terramesh_stac.converters import zarrstack


class OpenStacks:
    """Opened (lazy) stacked stores, kept `ttl` seconds: a tile request then skips the open
    (root zarr.json and the `item` index); a store rewritten by a new conversion is seen
    after at most `ttl` seconds."""

    def __init__(self, ttl: float = 60.0, size: int = 256):
        self._stacks: TTLCache = TTLCache(maxsize=size, ttl=ttl)
        self._lock = threading.Lock()

    def get(self, href: str, storage_options: dict | None = None) -> xr.Dataset:
        key = json.dumps([href, storage_options], sort_keys=True)
        with self._lock:
            if (stack := self._stacks.get(key)) is not None:
                return stack
        kwargs = {"storage_options": storage_options} if storage_options else {}
        stack = zarrstack.open_stack(href, **kwargs)
        with self._lock:
            self._stacks[key] = stack
        return stack


OPEN_STACKS = OpenStacks()


def sample_bands(href: str, item_id: str, nodata=None, storage_options: dict | None = None) -> xr.DataArray:
    """One sample's `bands` as a georeferenced (band, y, x) DataArray."""
    # the pixels and their coordinates only: not the cloud mask and metadata arrays
    ds = zarrstack.unstack(OPEN_STACKS.get(href, storage_options)[["bands"]].sel(item=item_id))
    da = ds["bands"].isel(time=0) if "time" in ds["bands"].dims else ds["bands"]
    if da.dtype == np.float16:
        da = da.astype(np.float32)
    if nodata is not None:
        da = da.rio.write_nodata(float("nan") if nodata == "nan" else nodata)
    return da


@attr.s
class ZarrSampleReader(XarrayReader):
    """XarrayReader opened from a stacked store's href (`input`) and the item id to select."""

    item_id: str = attr.ib(kw_only=True)
    nodata: float | int | str | None = attr.ib(default=None, kw_only=True)
    storage_options: dict | None = attr.ib(default=None, kw_only=True)
    budget: OutputBudget | None = attr.ib(default=None, kw_only=True)

    def __attrs_post_init__(self):
        self.input = sample_bands(self.input, self.item_id, self.nodata, self.storage_options)
        super().__attrs_post_init__()

    def info(self, indexes=None, **kwargs):
        return super().info()  # band options of the asset (`|bidx=`) do not apply to info

    def _bands(self, indexes) -> int:
        return bands_asked(indexes, None, self.input.shape[0] if self.input.ndim == 3 else 1)

    def part(self, bbox, dst_crs=None, bounds_crs=WGS84_CRS, indexes=None, **kwargs):
        # explicit output size (rioxarray reprojects to it); never its native-resolution VRT
        kwargs = check_part(self, self.budget, bbox, bounds_crs, self._bands(indexes), {**kwargs, "dst_crs": dst_crs})
        kwargs.pop("vrt_options", None)  # GDAL VRTs are for COGs; xarray reprojects to the output size
        return super().part(bbox, bounds_crs=bounds_crs, indexes=indexes, **kwargs)

    def preview(self, max_size=1024, height=None, width=None, indexes=None, **kwargs):
        if self.budget is not None:
            h, w = output_size(
                dataset_height=self.height,
                dataset_width=self.width,
                output_height=height,
                output_width=width,
                max_size=None if (height or width) else max_size,
            )
            self.budget.take(h, w, self._bands(indexes))
        return super().preview(max_size=max_size, height=height, width=width, indexes=indexes, **kwargs)


class ZarrAssets:
    """For rio-tiler multi-asset readers: stacked Zarr assets go to ZarrSampleReader; a
    name without an asset of its own (`S2L2A`) and a per-item view (`S2L2A_zarr`) resolve
    to the stacked store (`S2L2A_zarr_stack`)."""

    s3_endpoint_url: str | None = None  # set by the app from its settings
    max_values: int | None = None  # output pixels x bands per item reader (tile_limits.OutputBudget)
    max_side: int | None = None

    def _add_budget(self, max_values: int | None = None):
        """One OutputBudget for all the assets this reader reads."""
        if max_values := max_values or self.max_values:
            budget = OutputBudget(max_values, self.max_side or max_values)
            self.reader_options = {**self.reader_options, "budget": budget}

    def _stac_asset(self, name: str) -> tuple[str, dict]:
        """(item id, the asset as a dict) of the item being read."""
        raise NotImplementedError

    def _get_asset_info(self, asset):
        asset = {"name": asset} if isinstance(asset, str) else dict(asset)
        name = asset.get("name")
        # the stacked store serves the pixels of both a bare modality name (an item converted
        # to Zarr only) and of its per-item view (`S2L2A_zarr`: the same bytes)
        modality = name.removesuffix("_zarr")
        if (name not in self.assets or name != modality) and zarrstack.stack_asset_key(modality) in self.assets:
            asset["name"] = zarrstack.stack_asset_key(modality)
        info = super()._get_asset_info(asset)
        if info.get("media_type") == zarrstack.MEDIA_TYPE:
            item_id, stac_asset = self._stac_asset(info["name"])
            options = {"item_id": item_id, "nodata": stac_asset.get("nodata")}
            if stac_asset["href"].startswith("s3://") and self.s3_endpoint_url:
                options["storage_options"] = {"client_kwargs": {"endpoint_url": self.s3_endpoint_url}}
            info["reader_options"] = {**info.get("reader_options", {}), **options}
            info["url"] = stac_asset["href"]  # the store itself, not an https alternate
        return info

    def _get_reader(self, asset_info):
        if asset_info.get("media_type") == zarrstack.MEDIA_TYPE:
            return ZarrSampleReader
        return super()._get_reader(asset_info)


@attr.s
class ItemReader(ZarrAssets, PgSTACReader):
    """Item endpoints: titiler-pgstac's reader plus Zarr assets."""

    include_asset_types: set[str] = attr.ib(default=DEFAULT_VALID_TYPE | {zarrstack.MEDIA_TYPE})
    reader: type = attr.ib(default=BoundedReader)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self._add_budget()

    def _stac_asset(self, name):
        return self.item.id, self.item.assets[name].to_dict()


@attr.s
class MosaicItemReader(ZarrAssets, SimpleSTACReader):
    """Mosaic endpoints (searches, collections): each item of the mosaic, plus Zarr assets.
    `deadline` (time.monotonic), `request` (the request's catalog.guard.Budget: cancelled
    when its client goes away) and `item_max_values` come from tile_limits.BudgetedBackend:
    after the deadline or the cancellation the item is skipped; its reads count against its
    share of values."""

    reader: type = attr.ib(default=BoundedReader)
    # The mosaic checks its own zooms (tile_limits.mosaic_zoom_check): an item's zoom range,
    # which rio-tiler would compute per item from its bbox (~3 ms of PROJ), is not needed.
    minzoom: int = attr.ib(default=0)
    maxzoom: int = attr.ib(default=24)
    deadline: float | None = attr.ib(default=None, kw_only=True)
    request: Budget | None = attr.ib(default=None, kw_only=True)
    item_max_values: int | None = attr.ib(default=None, kw_only=True)  # this item's share

    def __attrs_post_init__(self):
        check_deadline(self.deadline, self.request)
        super().__attrs_post_init__()
        self._add_budget(self.item_max_values)

    def _stac_asset(self, name):
        return self.input["id"], self.input["assets"][name]

    def tile(self, *args, **kwargs):
        # the mosaic decides how many items are read at once (tile_limits.BudgetedBackend):
        # an item's assets one after the other (rio-tiler's default starts a thread pool per
        # item, even for one asset)
        kwargs.setdefault("threads", 1)
        return super().tile(*args, **kwargs)
