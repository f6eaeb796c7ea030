"""A per-item view of a stacked Zarr store: one sample that opens georeferenced with plain xarray.

The shard's stacked store (zarrstack) keeps each sample's pixels as one inner chunk of a
sharded Zarr v3 array, and its x/y, time and CRS as per-item arrays that only
`zarrstack.unstack` turns back into coordinates. The view is a kerchunk (version 1)
reference file of the sample as TerraMesh wrote it, a zarr v2 group:

- its metadata and small arrays (x, y, time, band, spatial_ref with the CRS, centre, ...)
  are the source sample's own, inlined, so xarray decodes them exactly as it decodes the
  source `.zarr.zip`;
- `bands` and `cloud_mask` are one whole-array chunk each, a byte range of the stack's
  shard object: the inner chunk the stack holds for this sample. Their `.zarray` says the
  stack's codec (Blosc; a Blosc frame carries its own type size and shuffle).

So the item alone gives one sample with its x/y pixel centres and a CRS rioxarray reads:

    xr.open_dataset(asset["href"], **asset["xarray:open_kwargs"])   # engine="kerchunk"

and nothing is copied: the pixels stay in the stack, which many-sample readers open whole.
"""

from __future__ import annotations

import base64
import copy
import json

import numcodecs
import numpy as np

from terramesh_stac.converters.sample import SourceMember
from terramesh_stac.converters.zarrzip import sample_files

MEDIA_TYPE = "application/json"  # kerchunk references, as xpystac and STAC practice expect
ROLES = ["data", "references"]
# The stack URL in each reference names its protocol. skip_instance_cache: fsspec keeps
# every filesystem it makes, keyed by its arguments; one per reference file would grow
# without bound in a loop over samples, and would serve a rewritten view's old references.
# chunks None: xarray's lazy arrays (no dask for one sample), as the stacked store opens.
OPEN_KWARGS = {
    "engine": "kerchunk",
    "storage_options": {"skip_instance_cache": True},
    "open_dataset_options": {"chunks": None},
}
PIXEL_ARRAYS = ("bands", "cloud_mask")
METADATA_FILES = (".zmetadata", ".zarray", ".zattrs", ".zgroup")
# encodings whose stored values differ from the decoded ones the stack holds
VALUE_ENCODINGS = ("scale_factor", "add_offset", "_Unsigned")
SHARD_INDEX_ENTRY = 16  # (offset, nbytes) as two little-endian uint64 per inner chunk
CHECKSUM_SIZE = 4  # the crc32c after the shard index (zarr's default index codecs)
NO_CHUNK = 2**64 - 1


class ViewMismatch(ValueError):
    """A sample whose stored pixels are not what the stack holds (a value encoding)."""


FILE_SUFFIX = ".zarr-view.json"


def filename(modality: str) -> str:
    return f"{modality}{FILE_SUFFIX}"


def partial_view(member: SourceMember, pixel_dtypes: dict[str, np.dtype], codec: numcodecs.abc.Codec) -> dict:
    """The view's references without the pixel chunks (their place in the stack is known
    when its block is written: `complete`). `pixel_dtypes`: what the stack stores of each
    pixel array; `codec`: the stack's compressor. Raises ViewMismatch."""
    files = sample_files(member.data)  # STORED or DEFLATED, without a common top folder
    meta = json.loads(files[".zmetadata"])["metadata"]
    # the metadata from the consolidated copy (a zip need not hold the per-array files):
    # kerchunk's engine opens the group unconsolidated
    refs: dict = {key: json.dumps(value) for key, value in meta.items()}
    for name, data in files.items():
        if name.rsplit("/", 1)[-1] in METADATA_FILES or name.split("/", 1)[0] in PIXEL_ARRAYS:
            continue  # metadata: above; a pixel chunk of the source: the view reads the stack's
        refs[name] = "base64:" + base64.b64encode(data).decode("ascii")
    for array, dtype in pixel_dtypes.items():
        zarray = meta.get(f"{array}/.zarray")
        if zarray is None:
            raise ViewMismatch(f"the sample has no {array}, the stack has")
        attrs = meta.get(f"{array}/.zattrs") or {}
        stored = np.dtype(zarray["dtype"]).newbyteorder("<")
        if stored != np.dtype(dtype).newbyteorder("<") or any(k in attrs for k in VALUE_ENCODINGS):
            raise ViewMismatch(f"{array} is stored as {zarray['dtype']} {attrs}, the stack holds {np.dtype(dtype)}")
        zarray = {
            **zarray,
            "chunks": list(zarray["shape"]),  # the stack: one chunk per sample, all bands
            "compressor": codec.get_config(),
            "filters": None,
            "order": "C",
            "dtype": np.dtype(dtype).newbyteorder("<").str,  # the stack's bytes codec: little endian
            "dimension_separator": ".",
        }
        refs[f"{array}/.zarray"] = json.dumps(zarray)
    return {"version": 1, "refs": refs}


def chunk_key(array: str, ndim: int) -> str:
    return f"{array}/" + ".".join("0" * ndim)


def samples_per_object(meta: dict) -> int:
    """Inner chunks (samples) per shard object of a stacked pixel array, from its zarr.json
    (index at the end, one chunk per sample)."""
    sharding = next(c["configuration"] for c in meta["codecs"] if c["name"] == "sharding_indexed")
    if sharding.get("index_location", "end") != "end":
        raise ValueError("shard index not at the end of its object")
    outer, inner = meta["chunk_grid"]["configuration"]["chunk_shape"], sharding["chunk_shape"]
    if inner[0] != 1 or inner[1:] != meta["shape"][1:]:
        raise ValueError(f"not one chunk per sample: chunks {inner} of shape {meta['shape']}")
    return outer[0]


def object_key(array: str, number: int, ndim: int) -> str:
    """The key of a pixel array's `number`-th shard object (ndim: with `item`)."""
    return f"{array}/c/{number}" + "/0" * (ndim - 1)


def inner_chunks(shard: bytes, count: int) -> np.ndarray:
    """(offset, nbytes) of each of the `count` inner chunks of a zarr v3 shard object
    (index at the end, then its crc32c); missing chunks are NO_CHUNK."""
    size = count * SHARD_INDEX_ENTRY + CHECKSUM_SIZE
    if len(shard) < size:
        raise ValueError(f"shard object of {len(shard)} bytes is shorter than its index ({size})")
    return np.frombuffer(shard[-size:-CHECKSUM_SIZE], dtype="<u8").reshape(count, 2)


def complete(view: dict, array: str, url: str, offset: int, nbytes: int) -> None:
    """Point the view's whole-array chunk of `array` at its bytes in the stack."""
    if offset == NO_CHUNK:
        raise ValueError(f"{array}: the stack has no chunk for this sample")
    ndim = len(json.loads(view["refs"][f"{array}/.zarray"])["shape"])
    view["refs"][chunk_key(array, ndim)] = [url, int(offset), int(nbytes)]


def asset_fields() -> dict:
    return {"xarray:open_kwargs": copy.deepcopy(OPEN_KWARGS)}
