"""Samples of the items' COGs (the stream's COG path).

A TerraMesh COG is small (one 272 x 272 internal tile per band, no overview, a few hundred
kB), so each is read whole, in one range request of its `file:size`, and decoded in memory
by GDAL (rasterio): a block's COGs are requested together (fsspec's `cat_ranges`, which s3fs
runs concurrently), as a block's members are in one range request on the byte-range path.

What a COG does not hold comes from the subset's manifest, as the item gives it: the
centre (`terramesh:center`, rounded to 1e-6 degree, 0.1 m) and the acquisition times
(`datetime` for the S2 modalities, NDVI and LULC, `terramesh:s1_datetime` for S1, none
for DEM). The pixels are the source's bit for bit: float16 modalities are stored as float32
(exact, converters/cog.py) and cast back.
"""

from __future__ import annotations

from collections import defaultdict

import fsspec
import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.session import DummySession

from terramesh_stac.converters.zarrzip import CorruptSampleError
from terramesh_stac.ml.subset import url_options


def fetch_objects(urls: list[str], sizes: list[int | None], storage_options: dict) -> list:
    """The bytes of each whole object, or the exception that stopped its read: one range
    request each where the size is known (the asset's `file:size`; an S3-compatible server
    serves a range cheaper than a whole object), all at once (s3fs runs them concurrently)."""
    by_fs: dict[str, list[int]] = defaultdict(list)
    for i, url in enumerate(urls):
        by_fs[url.split("://")[0] if "://" in url else ""].append(i)
    out: list = [None] * len(urls)
    for positions in by_fs.values():
        fs, _ = fsspec.core.url_to_fs(urls[positions[0]], **url_options(urls[positions[0]], storage_options))
        ranged = [i for i in positions if sizes[i]]
        if ranged:
            got = fs.cat_ranges([urls[i] for i in ranged], [0] * len(ranged), [sizes[i] for i in ranged])
            for i, data in zip(ranged, got):
                short = isinstance(data, bytes) and len(data) != sizes[i]
                out[i] = OSError(f"{urls[i]}: {len(data)} bytes, the item says {sizes[i]}") if short else data
        if whole := [i for i in positions if not sizes[i]]:
            got = fs.cat([urls[i] for i in whole], on_error="return")
            for i in whole:
                out[i] = got.get(fs._strip_protocol(urls[i]), FileNotFoundError(urls[i]))
    return [d if isinstance(d, bytes | Exception) else OSError(f"{u}: {d!r}") for u, d in zip(urls, out)]


def decode(data: bytes, dtype: str) -> np.ndarray:
    """(band, y, x) of a COG's bytes, in the source dtype."""
    try:  # no cloud session: a process with AWS credentials would build a boto3 one per open (~20 ms)
        with rasterio.Env(session=DummySession()), rasterio.MemoryFile(data) as memory, memory.open() as src:
            values = src.read()
    except RasterioError as e:
        raise CorruptSampleError(f"undecodable COG: {e}") from e
    return values.astype(dtype, copy=False)  # float16 sources are stored as float32, exactly
