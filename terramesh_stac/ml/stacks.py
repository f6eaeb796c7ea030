"""Samples of the converter's stacked Zarr stores, read many at a time (the stream's Zarr path).

A shard's store (converters/zarrstack.py) holds its samples along `item`; a sample's pixels
are one inner chunk of a sharded array, SAMPLES_PER_BLOCK samples per object. Reading a
subset from the stores costs, per process:

- per store, once: its consolidated `zarr.json` and its per-item arrays (ids, centre, time),
  through xarray;
- per pixel object, once: its shard index (a suffix range: one (offset, nbytes) pair per
  inner chunk);
- per sample: its chunks, whose byte ranges the caller reads together with its neighbours'
  (they lie side by side in one object).

No per-sample request: this is what object storage needs (the per-item views are one
request each). The arrays are those the official loader reads from a `.zarr.zip`, raw:
`bands`, `cloud_mask`, `center_lon`, `center_lat`, `time` (int64 ns).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numcodecs
import numpy as np
import xarray as xr
import zarr

from terramesh_stac.converters import zarrstack, zarrview
from terramesh_stac.converters.zarrzip import CorruptSampleError
from terramesh_stac.ml.subset import url_options

PER_ITEM = {"center_lon": "center_lon", "center_lat": "center_lat", "time": "item_time"}  # loader name -> stack


@dataclass
class PixelArray:
    """A sharded pixel array of a store: the shape of one sample, its dtype, samples per object."""

    shape: tuple[int, ...]
    dtype: np.dtype
    per_object: int
    ndim: int  # with `item`

    def object_key(self, name: str, position: int) -> str:
        return zarrview.object_key(name, position // self.per_object, self.ndim)


@dataclass
class OpenStack:
    href: str
    positions: dict[str, int]
    pixels: dict[str, PixelArray]
    per_item: dict[str, np.ndarray]
    indexes: dict[str, np.ndarray] = field(default_factory=dict)  # object key -> (per_object, 2)


def _pixel_array(meta: dict) -> PixelArray:
    try:
        per_object = zarrview.samples_per_object(meta)
    except ValueError as e:
        raise CorruptSampleError(str(e)) from e
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")  # the bytes codec writes little endian
    return PixelArray(tuple(meta["shape"][1:]), dtype, per_object, len(meta["shape"]))


class Stacks:
    """The stores one process reads from, each opened once (thread-safe)."""

    def __init__(self, storage_options: dict | None = None):
        self.storage_options = storage_options or {}
        self._stacks: dict[str, OpenStack] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _options(self, href: str) -> dict:
        return url_options(href, self.storage_options)

    def _fs(self, href: str):
        return fsspec.core.url_to_fs(href, **self._options(href))

    def stack(self, href: str) -> OpenStack:
        with self._lock:
            lock = self._locks.setdefault(href, threading.Lock())
        with lock:
            if href not in self._stacks:
                self._stacks[href] = self._open(href)
            return self._stacks[href]

    def open_all(self, hrefs: set[str]) -> None:
        """Open the stores not yet open side by side (a block reads one per modality); a store
        that cannot be opened is left for `chunk_ranges` to report, sample by sample."""
        todo = [h for h in hrefs if h not in self._stacks]
        if len(todo) > 1:
            with ThreadPoolExecutor(len(todo), thread_name_prefix="terramesh-store") as pool:
                list(pool.map(self._try_open, todo))

    def _try_open(self, href: str) -> None:
        try:
            self.stack(href)
        except (OSError, ValueError, KeyError):
            pass

    def _open(self, href: str) -> OpenStack:
        """The store's metadata, then its item ids and per-item arrays read side by side
        (zarr, consolidated metadata: one request each, at once; xarray's opening reads
        each coordinate in turn, ~10 round trips a store), the times CF-decoded by xarray."""
        options = self._options(href)
        group = zarr.open_group(href, mode="r", zarr_format=3, use_consolidated=True, storage_options=options or None)
        meta = {  # as zarr.json spells it (a data type's name for its object)
            name: json.loads(json.dumps(array.to_dict(), default=str))
            for name, array in group.metadata.consolidated_metadata.metadata.items()
        }
        names = ["item", *(v for v in PER_ITEM.values() if v in meta)]
        with ThreadPoolExecutor(len(names), thread_name_prefix="terramesh-store") as pool:
            values = dict(zip(names, pool.map(lambda n: group[n][...], names)))
        decoded = xr.decode_cf(
            xr.Dataset(
                {
                    n: (tuple(f"{n}_{d}" for d in range(v.ndim)), v, meta[n].get("attributes", {}))
                    for n, v in values.items()
                }
            )
        )
        per_item = {}
        for name, stored in PER_ITEM.items():
            if stored not in decoded.variables:
                continue
            per_item[name] = decoded[stored].values
            if np.issubdtype(per_item[name].dtype, np.datetime64):  # time as the source stores it: int64 ns
                per_item[name] = per_item[name].astype("datetime64[ns]").astype(np.int64)
        pixels = {name: _pixel_array(meta[name]) for name in zarrstack.PIXEL_ARRAYS if name in meta}
        positions = {str(v): i for i, v in enumerate(values["item"])}
        return OpenStack(href, positions, pixels, per_item)

    def _index(self, stack: OpenStack, key: str, array: PixelArray) -> np.ndarray:
        if key not in stack.indexes:  # a race reads it twice at worst
            fs, root = self._fs(stack.href)
            size = array.per_object * zarrview.SHARD_INDEX_ENTRY + zarrview.CHECKSUM_SIZE
            tail = fs.cat_file(f"{root}/{key}", start=-size)
            stack.indexes[key] = zarrview.inner_chunks(tail, array.per_object)
        return stack.indexes[key]

    def chunk_ranges(self, href: str, item_id: str, names: tuple[str, ...]) -> dict[str, tuple[str, int, int]]:
        """{array: (url, offset, size)} of the sample's pixel chunks among `names`."""
        stack = self.stack(href)
        if (position := stack.positions.get(item_id)) is None:
            raise CorruptSampleError(f"not in its Zarr store {href}")
        out = {}
        for name, array in stack.pixels.items():
            if name not in names:
                continue
            key = array.object_key(name, position)
            offset, nbytes = self._index(stack, key, array)[position % array.per_object]
            if offset == zarrview.NO_CHUNK:
                raise CorruptSampleError(f"{name}: no chunk in its Zarr store")
            out[name] = (f"{href.rstrip('/')}/{key}", int(offset), int(nbytes))
        return out

    def arrays(self, href: str, item_id: str, names: tuple[str, ...], chunks: dict[str, bytes]) -> dict:
        """The raw arrays `names` of a sample: its pixel `chunks` (read by the caller from
        chunk_ranges) decoded, and its per-item values."""
        stack = self.stack(href)
        position = stack.positions[item_id]
        out = {}
        for name, raw in chunks.items():
            array = stack.pixels[name]
            values = np.empty(array.shape, array.dtype)
            try:
                numcodecs.Blosc().decode(raw, out=values)
            except Exception as e:  # a damaged chunk
                raise CorruptSampleError(f"{name}: undecodable chunk: {type(e).__name__}: {e}") from e
            out[name] = values
        for name in names:
            if name in stack.per_item:
                out[name] = np.array(stack.per_item[name][position])
        return out
