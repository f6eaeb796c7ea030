"""Decode and encode one TerraMesh sample file, `<key>.zarr.zip` (format notes section 3).

A sample is a zarr v2 group with consolidated metadata, zipped. We read the zip entries
with `zipfile` into a zarr 3 memory store: opening the zip through fsspec's zip filesystem
with zarr 3 failed about once in 30 opens on this machine, the memory store never did.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile

import numcodecs
import numpy as np
import xarray as xr
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

# Raw time values at or below this are "no time" (DEM stores 0); same threshold as the
# official loader (`terramesh.py` compares the raw value with 1e6).
NO_TIME_THRESHOLD = 1_000_000
TIME_UNITS = "nanoseconds since 1970-01-01"
# The arrays the official loader reads of a sample (`zarr_metadata_decoding`)
LOADER_ARRAYS = ("bands", "cloud_mask", "center_lon", "center_lat", "time")
# Fixed zip entry date so the same dataset always zips to the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class CorruptSampleError(ValueError):
    """The bytes are not a readable TerraMesh sample; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _zip_entries(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            # STORED and DEFLATED both read here; directory entries carry no data
            return {i.filename.lstrip("/"): zf.read(i) for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
        raise CorruptSampleError(f"not a readable zip: {type(e).__name__}: {e}") from e
    except Exception as e:  # zlib.error on a damaged DEFLATED entry, etc.
        raise CorruptSampleError(f"zip entry unreadable: {type(e).__name__}: {e}") from e


def _strip_common_prefix(entries: dict[str, bytes]) -> dict[str, bytes]:
    """Accept a zip whose group sits in one top folder (`x.zarr/.zmetadata`) too."""
    if ".zmetadata" in entries:
        return entries
    tops = {name.split("/", 1)[0] for name in entries}
    if len(tops) == 1 and "/" in next(iter(entries)):
        prefix = tops.pop() + "/"
        return {name[len(prefix) :]: v for name, v in entries.items() if name.startswith(prefix)}
    return entries


def sample_files(data: bytes) -> dict[str, bytes]:
    """The files of a sample's zip (STORED or DEFLATED), without a common top folder.
    Raises CorruptSampleError."""
    return _strip_common_prefix(_zip_entries(data))


def _group_metadata(entries: dict[str, bytes]) -> dict:
    if ".zmetadata" not in entries:
        raise CorruptSampleError("no .zmetadata in the zip (not a consolidated zarr v2 group)")
    try:
        meta = json.loads(entries[".zmetadata"])["metadata"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptSampleError(f".zmetadata is not consolidated zarr metadata: {e}") from e
    _check_chunks(meta, entries)
    return meta


def _fill_value(zarray: dict):
    """A zarr v2 fill value as zarr reads it (JSON's "NaN"/"Infinity" spelled out)."""
    fill = zarray.get("fill_value")
    if fill is None:
        return None
    dtype = np.dtype(zarray["dtype"])
    if dtype.kind == "f" and isinstance(fill, str):
        return dtype.type({"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[fill])
    return dtype.type(fill)


def decode_zarr_zip(data: bytes) -> xr.Dataset:
    """One sample's bytes -> its Dataset, in memory: every array decoded straight with
    numcodecs from the zarr v2 metadata (decode_arrays), then CF-decoded by xarray as
    `open_zarr` does (`_FillValue`, `coordinates`), ~10x faster than opening the group
    through zarr and xarray, which decode_zarr_zip_with_zarr still does (the reference:
    tests/test_reader.py finds the two identical on every sample kind).

    Time is decoded to datetime64[ns]; a raw value <= 1e6 ns (DEM's 0) becomes NaT, our
    "no time". Metadata arrays keep the shape they were stored with (0-d or (1,)); read
    them with `sample_scalar`. Raises CorruptSampleError on anything unreadable.
    """
    entries = sample_files(data)
    meta = _group_metadata(entries)
    names = [key.removesuffix("/.zarray") for key in meta if key.endswith("/.zarray")]
    arrays = decode_arrays(meta, entries.get, tuple(names))
    variables = {}
    try:
        for name in names:
            attrs = dict(meta.get(f"{name}/.zattrs", {}))
            dims = tuple(attrs.pop("_ARRAY_DIMENSIONS"))
            if (fill := _fill_value(meta[f"{name}/.zarray"])) is not None:
                attrs["_FillValue"] = fill
            variables[name] = xr.Variable(dims, arrays[name], attrs)
        if "time" in variables:  # decoded here, by the "no time" rule (DEM's 0), not by decode_cf
            variables["time"] = _time_variable(variables["time"])
        ds = xr.decode_cf(xr.Dataset(variables, attrs=meta.get(".zattrs", {})), decode_times=False)
    except Exception as e:  # metadata xarray cannot make a Dataset of
        raise CorruptSampleError(f"zarr group unreadable: {type(e).__name__}: {e}") from e
    if "bands" not in ds:
        raise CorruptSampleError("zarr group has no 'bands' array")
    return ds


def decode_zarr_zip_with_zarr(data: bytes) -> xr.Dataset:
    """decode_zarr_zip through zarr 3 and xarray's `open_zarr` (a memory store of the zip's
    entries): the reference reading, slower (~10 ms a modality, most of it opening the group)."""
    entries = sample_files(data)
    _group_metadata(entries)
    store = MemoryStore({k: cpu.Buffer.from_bytes(v) for k, v in entries.items()})
    try:
        ds = xr.open_zarr(store, zarr_format=2, consolidated=True, chunks=None, decode_times=False).load()
    except Exception as e:  # codec errors, bad metadata, short chunks ...
        raise CorruptSampleError(f"zarr group unreadable: {type(e).__name__}: {e}") from e
    if "bands" not in ds:
        raise CorruptSampleError("zarr group has no 'bands' array")
    return _decode_time(ds)


def read_arrays(data: bytes, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The raw arrays `names` of one sample (those it has), decoded straight with numcodecs
    from the zarr v2 metadata (decode_arrays): what zarr 2's `group[name][...]` gives,
    several times faster than opening the group with xarray (decode_zarr_zip;
    tests/test_reader.py compares the two on every sample kind). Only the entries of these
    arrays are read from the zip. Time stays the raw int64 the file stores. Raises
    CorruptSampleError."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise CorruptSampleError(f"not a readable zip: {type(e).__name__}: {e}") from e
    with zf:
        files = {n.lstrip("/"): n for n in zf.namelist() if not n.endswith("/")}
        prefix = (
            ""
            if ".zmetadata" in files
            else next((n[: -len(".zmetadata")] for n in files if n.endswith("/.zmetadata")), "")
        )

        def entry(name: str) -> bytes | None:
            full = files.get(prefix + name)
            return None if full is None else zf.read(full)

        try:
            meta = json.loads(entry(".zmetadata"))["metadata"]
        except Exception as e:  # no .zmetadata, bad JSON, a damaged entry
            raise CorruptSampleError(f"unreadable: {type(e).__name__}: {e}") from e
        return decode_arrays(meta, entry, names)


def decode_arrays(meta: dict, entry, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `names` (those `meta` has) of a zarr v2 group: `meta` its metadata by key
    (`bands/.zarray`, ...), `entry(key)` a chunk's stored bytes or None (a missing chunk
    reads as the fill value). Dtype, shape, chunks, order, compressor, filters and fill value
    come from the metadata; a whole-array chunk is decompressed straight into the result.
    Raises CorruptSampleError."""
    import itertools
    import math

    out = {}
    try:
        for name in names:
            zarray = meta.get(f"{name}/.zarray")
            if zarray is None:
                continue
            dtype = np.dtype(zarray["dtype"])
            shape, chunks = tuple(zarray["shape"]), tuple(zarray["chunks"])
            order = zarray.get("order", "C")
            sep = zarray.get("dimension_separator") or "."
            filters = [numcodecs.get_codec(f) for f in zarray.get("filters") or []]
            compressor = numcodecs.get_codec(zarray["compressor"]) if zarray.get("compressor") else None
            grid = list(itertools.product(*[range(math.ceil(n / c)) for n, c in zip(shape, chunks)]))
            key = lambda idx: f"{name}/" + (sep.join(map(str, idx)) if idx else "0")  # noqa: E731
            if len(grid) == 1 and chunks == shape and order == "C" and not filters and compressor:
                raw = entry(key(grid[0]))
                if raw is not None:  # the usual case: one chunk, the whole array, no copy
                    array = np.empty(shape, dtype)
                    compressor.decode(raw, out=array)
                    out[name] = array
                    continue
            fill = zarray.get("fill_value")
            array = np.full(shape, fill if fill is not None else 0, dtype=dtype)
            for idx in grid:
                raw = entry(key(idx))
                if raw is None:
                    continue  # a missing chunk is the fill value, as zarr reads it
                chunk = compressor.decode(raw) if compressor else raw
                for codec in reversed(filters):
                    chunk = codec.decode(chunk)
                block = np.frombuffer(chunk, dtype=dtype).reshape(chunks, order=order)
                where = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))
                array[where] = block[tuple(slice(0, w.stop - w.start) for w in where)]
            out[name] = array
    except CorruptSampleError:
        raise
    except Exception as e:  # codec errors, short chunks, bad metadata, a damaged entry
        raise CorruptSampleError(f"unreadable: {type(e).__name__}: {e}") from e
    return out


def _check_chunks(meta: dict, entries: dict) -> None:
    """zarr reads a missing chunk as fill value; for the pixel arrays that hides damage."""
    import itertools
    import math

    for name in ("bands", "cloud_mask"):
        zarray = meta.get(f"{name}/.zarray")
        if zarray is None:
            continue
        sep = zarray.get("dimension_separator") or "."
        grid = [range(math.ceil(s / c)) for s, c in zip(zarray["shape"], zarray["chunks"])]
        for idx in itertools.product(*grid):
            key = f"{name}/" + (sep.join(map(str, idx)) if idx else "0")
            if key not in entries:
                raise CorruptSampleError(f"chunk {key} missing (zarr would read fill values)")


def _time_variable(raw: xr.Variable) -> xr.Variable:
    """The stored time (int64 with CF units) as datetime64[ns], a raw value <= 1e6 as NaT."""
    attrs = dict(raw.attrs)
    if not (np.issubdtype(raw.dtype, np.integer) and "since" in str(attrs.get("units", ""))):
        return raw
    values = np.asarray(raw.values).astype("int64")
    no_time = values <= NO_TIME_THRESHOLD
    var = xr.Variable(raw.dims, np.where(no_time, 0, values), attrs)
    decoded = xr.coders.CFDatetimeCoder(time_unit="ns").decode(var).values.astype("datetime64[ns]")
    decoded = np.where(no_time, np.datetime64("NaT", "ns"), decoded)
    attrs.pop("units", None), attrs.pop("calendar", None)
    return xr.Variable(raw.dims, decoded, attrs, encoding={"units": raw.attrs.get("units"), "dtype": "int64"})


def _decode_time(ds: xr.Dataset) -> xr.Dataset:
    if "time" not in ds.variables or (var := _time_variable(ds["time"].variable)) is ds["time"].variable:
        return ds
    return ds.assign_coords(time=var)


def sample_scalar(ds: xr.Dataset, name: str):
    """A metadata value (`center_lat`, `center_lon`, `crs`, `sample` ...) as a Python scalar,
    whether it was stored 0-d or with shape (1,)."""
    v = np.asarray(ds[name].values)
    if v.size != 1:
        raise ValueError(f"{name!r} should hold one value, has shape {v.shape}")
    return v.reshape(()).item()


def sample_time(ds: xr.Dataset):
    """The Dataset's acquisition time as numpy datetime64[ns], or None (DEM, missing)."""
    if "time" not in ds.coords or ds["time"].size == 0:
        return None
    t = np.asarray(ds["time"].values).reshape(-1)[0]
    return None if np.isnat(t) else np.datetime64(t, "ns")


# --- writing (used by the generator) ---------------------------------------------------


@contextlib.contextmanager
def single_threaded_blosc():
    # Multi-threaded Blosc compresses the same array to different bytes run to run.
    old = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = old


def encode_zarr_zip(ds: xr.Dataset, *, deflate: bool = False, clevel: int = 5) -> bytes:
    """A Dataset -> `.zarr.zip` bytes the way TerraMesh stores a sample.

    zarr v2 group, consolidated metadata, `bands` one chunk compressed with Blosc(zstd),
    `time` int64 nanoseconds since 1970-01-01 (a NaT time is written as 0, DEM's "no time").
    Zip entries are STORED unless `deflate` (a tolerance case for tests).
    """
    ds = ds.copy()
    if "time" in ds.variables and np.issubdtype(ds["time"].dtype, np.datetime64):
        t = ds["time"].values.astype("datetime64[ns]").astype("int64")
        t = np.where(t == np.iinfo(np.int64).min, 0, t)  # NaT -> 0
        ds = ds.assign_coords(
            time=(ds["time"].dims, t, {**ds["time"].attrs, "units": TIME_UNITS, "calendar": "proleptic_gregorian"})
        )
    for name in ds.variables:
        ds[name].encoding = {}
    encoding = {
        "bands": {
            "compressors": (numcodecs.Blosc(cname="zstd", clevel=clevel, shuffle=numcodecs.Blosc.SHUFFLE),),
            "chunks": ds["bands"].shape,
        }
    }
    if "cloud_mask" in ds:
        encoding["cloud_mask"] = {"chunks": ds["cloud_mask"].shape}
    entries: dict = {}
    with single_threaded_blosc():
        # a plain dict-backed memory store: zarr 3's ZipStore through xarray writes duplicates
        ds.to_zarr(
            MemoryStore(entries), zarr_format=2, consolidated=True, mode="w", write_empty_chunks=True, encoding=encoding
        )
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method, allowZip64=True) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, entries[name].to_bytes())
    return out.getvalue()
