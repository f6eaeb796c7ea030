"""Zarr assets: the samples of one shard and modality stacked along `item` in one Zarr v3 store.

Layout (chosen in benchmarks/zarr_layouts.py, numbers in benchmarks/RESULTS.md): a group per
sample keeps each sample's georeferencing but costs ~58-168 objects per sample, 6-19x the
COGs; stacking a shard's samples costs one object per block of SAMPLES_PER_BLOCK samples
for the pixels plus ~25 per store (metadata, and the small per-item arrays sharded whole).
So one store per shard and modality, `assets/zarr/<split>/<shard>/<MODALITY>.zarr`:

    bands        (item, time, band, y, x)  the source dtype (float16 stays float16); one
                 chunk per sample (all bands: one read), sharded SAMPLES_PER_BLOCK samples
                 per object; Blosc zstd 5 + byte shuffle, the codec of the source samples
    cloud_mask   (item, time, y, x)        when the modality has one
    item         (item)                    index: the STAC item ids
    item_x, item_y, item_time              each sample's own coordinates (item, x) ...
    spatial_ref_attrs (item)               each sample's CF grid mapping (crs_wkt,
                                           GeoTransform) as JSON: samples differ in UTM zone
    center_lat, center_lon, crs, file_id, sample   as in the source, per item

Consolidated metadata in the root `zarr.json`: opening costs one request. One sample with
its own CRS and transform, exactly as the source `.zarr.zip` reads in xarray:

    ds = xr.open_dataset(href, engine="zarr", consolidated=True)   # lazy
    sample = unstack(ds.sel(item=item_id))   # or open_sample(href, item_id)

Values, NaNs, dtypes and attributes are the source's; DEM's "no time" is stored as the raw
value TerraMesh stores (0 ns = 1970-01-01), as xarray reads the original.

An item carries two Zarr assets per modality: `<MODALITY>_zarr`, its own sample as a
per-item view (zarrview: kerchunk references to the sample's inner chunks of this store,
opened georeferenced by plain xarray), and `<MODALITY>_zarr_stack`, this store.
"""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import numcodecs
import numpy as np
import xarray as xr
import zarr
from zarr.storage import MemoryStore

from terramesh_stac.converters import zarrview
from terramesh_stac.converters.cog import raster_fields
from terramesh_stac.converters.sample import SourceMember
from terramesh_stac.converters.zarrzip import single_threaded_blosc

MEDIA_TYPE = "application/vnd.zarr"
ROLES = ["data"]
SAMPLES_PER_BLOCK = 32  # samples per pixel shard object: bounds a worker's buffer
PER_ITEM_SHARD = 1024  # samples per shard object of the small per-item arrays (coordinates ...)
PIXEL_ARRAYS = ("bands", "cloud_mask")
PER_ITEM_COORDS = ("time", "y", "x")  # index coordinates every sample has its own of
GRID_MAPPING = "spatial_ref"
GRID_MAPPING_ATTRS = "spatial_ref_attrs"
LAYOUT = "terramesh stacked samples v1"
# the pixels' codec as numcodecs names it (what the per-item views' zarr v2 metadata says)
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
# no `chunks`: xarray's lazy arrays read only what is selected, without dask's overhead on a
# single sample (add chunks={} for dask)
OPEN_KWARGS = {"engine": "zarr", "consolidated": True, "zarr_format": 3}


class StackMismatch(ValueError):
    """A sample that cannot join its shard's stack (other shape, dtype or bands)."""


def asset_key(modality: str) -> str:
    """The item's Zarr asset: its own sample, a per-item view into the stack (zarrview)."""
    return f"{modality}_zarr"


def stack_asset_key(modality: str) -> str:
    """The item's link to the whole stacked store of its shard (many-sample readers)."""
    return f"{modality}_zarr_stack"


def how_to_open(modality: str) -> dict:
    """What every stacked-store asset of a modality says (item asset and collection
    item_assets): `zarr:*` and `xarray:open_kwargs` are what xpystac 0.5 passes to
    xarray.open_dataset."""
    return {
        "title": f"{modality}: the shard's samples stacked along `item` (Zarr v3)",
        "type": MEDIA_TYPE,
        "roles": list(ROLES),
        "zarr:zarr_format": 3,
        "zarr:consolidated": True,
        "xarray:open_kwargs": dict(OPEN_KWARGS),
    }


def how_to_open_view(modality: str) -> dict:
    """What every per-item view of a modality says."""
    return {
        "title": f"{modality}: this sample as Zarr (references into the shard's stacked store)",
        "type": zarrview.MEDIA_TYPE,
        "roles": list(zarrview.ROLES),
        **zarrview.asset_fields(),
    }


def view_fields(modality: str, ds: xr.Dataset) -> dict:
    """The item's Zarr asset fields: raster metadata of the sample plus how to open it."""
    opening = how_to_open_view(modality)
    del opening["type"], opening["roles"]  # WrittenAsset fields, not extra fields
    return {**raster_fields(ds, modality), **opening}


def stack_fields(modality: str, item_id: str) -> dict:
    """The stacked-store asset's fields: `terramesh:sample_selection` is the `Dataset.sel`
    that picks this item's sample."""
    opening = how_to_open(modality)
    del opening["type"], opening["roles"]
    return {**opening, "terramesh:sample_selection": {"item": item_id}}


def _signature(ds: xr.Dataset) -> dict:
    """What must be equal for samples to share a stack."""
    sig = {
        name: (v.dims, v.shape, v.dtype.kind if v.dtype.kind in "UO" else str(v.dtype))
        for name, v in ds.variables.items()
        if name not in PER_ITEM_COORDS
    }
    if "band" in ds.coords:
        sig["band values"] = tuple(map(str, ds["band"].values))
    return sig


def stack_member(item_id: str, ds: xr.Dataset) -> xr.Dataset:
    """One sample as a slice of the stack (an `item` dimension of length 1)."""
    ds = ds.copy()
    for var in ds.variables.values():
        var.encoding = {}
    if "time" in ds.coords and np.issubdtype(ds["time"].dtype, np.datetime64):
        # the reader's NaT ("no time") back to the value stored in the source
        t = ds["time"].values.astype("datetime64[ns]")
        ds = ds.assign_coords(
            time=(ds["time"].dims, np.where(np.isnat(t), np.datetime64(0, "ns"), t), ds["time"].attrs)
        )
    grid_mapping = dict(ds[GRID_MAPPING].attrs) if GRID_MAPPING in ds.variables else None
    ds = ds.drop_vars(GRID_MAPPING, errors="ignore")
    per_item = [c for c in PER_ITEM_COORDS if c in ds.indexes]
    ds = ds.drop_indexes(per_item).rename_vars({c: f"item_{c}" for c in per_item})
    coords = [c for c in ds.coords if c not in ds.indexes]
    ds = ds.reset_coords(coords)
    ds[GRID_MAPPING_ATTRS] = json.dumps(grid_mapping, sort_keys=True)
    ds = ds.expand_dims(item=[item_id])
    ds.attrs["terramesh:per_item_coords"] = [*coords, GRID_MAPPING_ATTRS]
    for name in list(ds.variables):
        if ds[name].dtype.kind == "U":  # variable-length strings: zarr v3's specified type
            ds[name] = ds[name].astype(object)
    return ds


def concat(members: list[xr.Dataset]) -> xr.Dataset:
    stacked = xr.concat(
        members,
        dim="item",
        data_vars="all",
        coords="different",
        compat="equals",
        join="exact",
        combine_attrs="override",
    )
    stacked = stacked.set_coords(stacked.attrs.pop("terramesh:per_item_coords"))
    stacked.attrs["terramesh:layout"] = LAYOUT
    return stacked


def encoding(stacked: xr.Dataset) -> dict:
    """Pixels: one chunk per sample, one shard object per block. Small per-item arrays
    (coordinates, metadata): a block per chunk, PER_ITEM_SHARD samples per shard object, so
    a 1,000-sample shard has one object per array, not one per block."""
    per_item_shard = -(-PER_ITEM_SHARD // SAMPLES_PER_BLOCK) * SAMPLES_PER_BLOCK
    enc = {}
    for name, var in stacked.variables.items():
        if "item" not in var.dims:
            continue
        shape = var.shape[1:]
        if name in PIXEL_ARRAYS:
            enc[name] = {
                "chunks": (1, *shape),
                "shards": (SAMPLES_PER_BLOCK, *shape),
                "compressors": [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")],  # = COMPRESSOR
            }
        else:
            enc[name] = {"chunks": (SAMPLES_PER_BLOCK, *shape), "shards": (per_item_shard, *shape)}
    return enc


def unstack(selected: xr.Dataset) -> xr.Dataset:
    """One sample of the stack (`ds.sel(item=id)`) -> the source sample's Dataset."""
    # the ~13 arrays of a sample read concurrently (xarray's load reads them one by one: on
    # S3 that is a round trip each); as_numpy: no lazy (dask) array left, whatever opened it
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda var: var.load(), selected.variables.values()))
    ds = selected.load().as_numpy()
    if "item" in ds.dims:
        if ds.sizes["item"] != 1:
            raise ValueError("select one item first: ds.sel(item=item_id)")
        ds = ds.isel(item=0)
    ds = ds.drop_vars("item", errors="ignore")
    grid_mapping = json.loads(str(ds[GRID_MAPPING_ATTRS].values))
    ds = ds.drop_vars(GRID_MAPPING_ATTRS)
    renamed = {f"item_{c}": c for c in PER_ITEM_COORDS if f"item_{c}" in ds.variables}
    ds = ds.rename_vars(renamed)
    for name in renamed.values():
        ds = ds.set_xindex(name)
    for name, var in list(ds.variables.items()):  # strings back to fixed width, as in the source
        if var.dtype.kind in "OT":
            fixed = var.copy(data=np.array(var.values.astype(object).tolist(), dtype=str))
            if name in ds.coords:
                ds.coords[name] = fixed
            else:
                ds[name] = fixed
    if grid_mapping is not None:
        ds = ds.assign_coords({GRID_MAPPING: xr.Variable((), np.int64(0), grid_mapping)})
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("terramesh:")}
    return ds


def open_stack(href: str, **open_kwargs) -> xr.Dataset:
    """The whole stacked store, lazily (what xpystac returns for the asset)."""
    return xr.open_dataset(href, **{**OPEN_KWARGS, **open_kwargs})


def open_sample(href: str, item_id: str, **open_kwargs) -> xr.Dataset:
    """One sample from a Zarr asset: equal to xarray's reading of the source `.zarr.zip`."""
    return unstack(open_stack(href, **open_kwargs).sel(item=item_id))


class ShardStackWriter:
    """Writes one modality of one shard as a stacked store, SAMPLES_PER_BLOCK at a time.

    The store is built in memory and every finished object goes out through `put(relpath,
    bytes)` (the shard's AssetWriter: checksums, unchanged objects not rewritten, superseded
    ones kept), so only the current block is held. Metadata goes out last, consolidated.
    """

    def __init__(self, put, root: str, href=None):
        self.put = put
        self.root = root  # relative path of the store, e.g. assets/zarr/val/shard_1/DEM.zarr
        self.href = href or (lambda relpath: relpath)  # the storage URL of a relative path
        self.entries: dict = {}
        self.pending: list[xr.Dataset] = []
        self.views: list[tuple[str, dict]] = []  # (relative path, partial view) of each pending sample
        self.signature: dict | None = None
        self.created = False
        self.count = 0  # samples flushed

    def check(self, ds: xr.Dataset) -> dict:
        """Raise StackMismatch if `ds` cannot join the stack (before anything is built);
        return its signature."""
        sig = _signature(ds)
        if self.signature is not None and sig != self.signature:
            diff = sorted(k for k in set(sig) | set(self.signature) if sig.get(k) != self.signature.get(k))
            raise StackMismatch(f"differs from the shard's first sample in {', '.join(diff)}")
        return sig

    def view(self, ds: xr.Dataset, member: SourceMember) -> dict:
        """The sample's per-item view without its pixel chunks (raises ViewMismatch)."""
        dtypes = {name: ds[name].dtype for name in PIXEL_ARRAYS if name in ds}
        return zarrview.partial_view(member, dtypes, COMPRESSOR)

    def add(self, item_id: str, ds: xr.Dataset, view: tuple[str, dict] | None = None) -> None:
        """Stack a sample; `view`: (relative path, `self.view(...)`) of its per-item view,
        written with its block."""
        sig = self.check(ds)
        self.signature = self.signature or sig
        self.pending.append(stack_member(item_id, ds))
        self.views.append(view)

    @property
    def block_full(self) -> bool:
        return len(self.pending) >= SAMPLES_PER_BLOCK

    def flush(self) -> None:
        if not self.pending:
            return
        block = concat(self.pending)
        views, first = self.views, self.count
        self.pending, self.views = [], []
        self.count += block.sizes["item"]
        store = MemoryStore(self.entries)
        with warnings.catch_warnings(), single_threaded_blosc():  # same bytes every run
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            if not self.created:
                block.to_zarr(
                    store,
                    mode="w",
                    zarr_format=3,
                    consolidated=False,
                    encoding=encoding(block),
                    write_empty_chunks=True,
                )
                self.created = True
            else:
                block.to_zarr(store, append_dim="item", zarr_format=3, consolidated=False, write_empty_chunks=True)
        # pixel shards are final (blocks align with them): out; the small arrays' shards
        # grow with every block and are written at the end
        shards = {}
        for key in sorted(self.entries):
            if not key.endswith("zarr.json") and key.split("/", 1)[0] in PIXEL_ARRAYS:
                shards[key.split("/", 1)[0]] = key, self.entries.pop(key).to_bytes()
                self.put(f"{self.root}/{key}", shards[key.split("/", 1)[0]][1])
        self._write_views(views, first, shards)

    def _write_views(self, views: list, first: int, shards: dict[str, tuple[str, bytes]]) -> None:
        """Each sample's view, its pixel chunks pointed at the shard objects just written
        (blocks align with shard objects: the block's samples are its first inner chunks)."""
        indexes = {}
        for array, (key, data) in shards.items():
            meta = json.loads(self.entries[f"{array}/zarr.json"].to_bytes())
            per_object = zarrview.samples_per_object(meta)
            if key != zarrview.object_key(array, first // per_object, len(meta["shape"])):
                raise RuntimeError(f"unexpected shard object {key} for samples from {first}")
            indexes[array] = zarrview.inner_chunks(data, per_object)
        for position, view in enumerate(views):
            if view is None:
                continue
            relpath, refs = view
            for array, (key, _) in shards.items():
                offset, nbytes = indexes[array][position]
                zarrview.complete(refs, array, self.href(f"{self.root}/{key}"), offset, nbytes)
            self.put(relpath, json.dumps(refs, separators=(",", ":"), sort_keys=True).encode())

    def close(self) -> None:
        """Write the rest: last block, shared arrays, metadata (consolidated, last)."""
        self.flush()
        if not self.entries:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(MemoryStore(self.entries))
        for key in sorted(self.entries, key=lambda k: (k == "zarr.json", k)):
            self.put(f"{self.root}/{key}", self.entries[key].to_bytes())
        self.entries = {}
