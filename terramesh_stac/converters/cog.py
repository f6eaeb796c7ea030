"""Write one modality (or the cloud mask) of a sample as a lossless Cloud-Optimized GeoTIFF.

`encode_cog(ds, modality)` and `encode_cloud_mask(ds)` return an `EncodedAsset`: the COG
bytes plus STAC-ready asset fields (projection v2, STAC 1.1 `bands`, nodata, data type).

Choices (measured in benchmarks/cog_profiles.py, recorded in benchmarks/RESULTS.md):

- Lossless. Pixels read back equal the source pixels, NaN positions included.
  float16 (S1GRD, S1RTC, NDVI) cannot be written by GDAL 3.10's GTiff driver and is not
  supported by GDAL warping, so it is stored as float32 -- exact, every float16 value is a
  float32 value -- and the asset records `terramesh:source_data_type: float16`.
- One 272 x 272 internal tile (smallest multiple of 16 >= 264), ZSTD level 1 with a predictor
  (2 = horizontal differencing for integers, 3 = floating point for float32).
- No overviews: the whole 264 px image is one tile of ~50-400 kB; an overview level (132 px)
  would add ~25 % encode work and bytes for a read that a tiler can serve from the single
  full-resolution tile anyway (one range request either way).
- Georeferencing only from `crs` and the `x`/`y` pixel centres (see footprint.grid_of).
- Nodata per asset:
  * S2L1C / S2L2A: 0 before the processing-baseline change of 2022-01-25
    (modalities.S2_BASELINE_CHANGE), -1000 from that day on (TerraMesh removed the +1000
    offset, so the L1C/L2A no-data DN 0 became -1000).
  * S2RGB: none. Its nodata is undocumented [U], and 0 is a legitimate 8-bit colour value in
    any single band; the cloud mask's class 6 marks no-data pixels instead.
  * S1GRD / S1RTC / NDVI: NaN.
  * LULC: 0 (class "no data").
  * DEM: none. Copernicus GLO-30 has no voids after its own filling, and 0 or negative
    heights are real terrain (coasts, depressions); any sentinel value would hide them.
  * cloud mask: 6 (class "no data").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from rasterio.io import MemoryFile
from rasterio.session import DummySession

from .footprint import Grid, grid_of
from .modalities import (
    CLOUD_MASK_CLASSES,
    CLOUD_MASK_NODATA,
    LULC_CLASSES,
    MODALITY_INFO,
    S2_BASELINE_CHANGE,
)
from .sample import EncodedAsset

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_NO_TIME = np.datetime64("1970-01-01T00:00:00", "ns")


@dataclass(frozen=True)
class CogProfile:
    """Creation options of GDAL's COG driver; `predictor` None picks 2 (int) or 3 (float)."""

    blocksize: int = 272
    compress: str = "ZSTD"
    level: int | None = 1
    predictor: int | None = None
    overview_level: int = 0

    def creation_options(self, dtype: np.dtype) -> dict:
        opts = {"driver": "COG", "blocksize": self.blocksize, "compress": self.compress}
        if self.level is not None and self.compress in ("ZSTD", "DEFLATE", "LERC_ZSTD"):
            opts["level"] = self.level
        if self.compress.startswith("LERC"):
            opts["max_z_error"] = 0  # lossless
        else:
            pred = self.predictor
            if pred is None:
                pred = 3 if np.dtype(dtype).kind == "f" else 2
            opts["predictor"] = {0: "NO", 2: "STANDARD", 3: "FLOATING_POINT"}[pred]
        if self.overview_level:
            opts["overview_count"] = self.overview_level
        else:
            opts["overviews"] = "NONE"
        return opts


DEFAULT_PROFILE = CogProfile()


# --------------------------------------------------------------------------- helpers


def sample_time(ds: xr.Dataset) -> pd.Timestamp | None:
    """The acquisition time of a modality Dataset; None for DEM's 1970-01-01 'no time'."""
    if "time" not in ds.coords:
        return None
    t = np.asarray(ds["time"].values).reshape(-1)
    if t.size == 0:
        return None
    t0 = np.datetime64(t[0], "ns")
    if np.isnat(t0) or t0 == _NO_TIME:
        return None
    return pd.Timestamp(t0).tz_localize("UTC")


def s2_nodata(ds: xr.Dataset) -> int:
    """0 before the 2022-01-25 baseline change, -1000 from then on (see module doc)."""
    t = sample_time(ds)
    if t is None:
        raise ValueError("an S2 sample needs a time to choose its nodata value")
    return -1000 if t >= pd.Timestamp(S2_BASELINE_CHANGE, tz="UTC") else 0


def nodata_for(ds: xr.Dataset, modality: str) -> float | int | None:
    if modality in ("S2L1C", "S2L2A"):
        return s2_nodata(ds)
    if modality in ("S2RGB", "DEM"):
        return None
    return MODALITY_INFO[modality].nodata  # NaN for S1*/NDVI, 0 for LULC


def stac_nodata(v: float | int | None):
    """STAC 1.1 nodata: a number, or the strings "nan"/"inf"/"-inf"."""
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return int(v) if float(v).is_integer() else float(v)


def write_cog(
    data: np.ndarray,
    grid: Grid,
    *,
    nodata=None,
    descriptions: list[str] | None = None,
    profile: CogProfile = DEFAULT_PROFILE,
) -> bytes:
    """COG bytes of a (bands, rows, cols) array on `grid`: one in-memory write by GDAL's COG
    driver (rasterio stages the array and CreateCopy's it; pixel interleaved)."""
    count, h, w = data.shape
    options = profile.creation_options(data.dtype)
    # no cloud session: with AWS credentials set, rasterio would build a boto3 one per open
    with rasterio.Env(session=DummySession()), MemoryFile() as memory:
        with memory.open(
            width=w,
            height=h,
            count=count,
            dtype=data.dtype.name,
            crs=grid.proj_code,
            transform=grid.transform,
            nodata=nodata,
            **options,
        ) as dst:
            dst.write(data)
            for i, d in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, d)
        return bytes(memory.read())


# --------------------------------------------------------------------------- encoders


def _pixels(ds: xr.Dataset, var: str) -> np.ndarray:
    a = ds[var]
    if "time" in a.dims:
        a = a.isel(time=0)
    return np.asarray(a.values)


def raster_fields(ds: xr.Dataset, modality: str, data_type: np.dtype | None = None) -> dict:
    """STAC asset fields of a modality's pixels, whatever the file format: projection,
    `bands` (names, common names, wavelengths), nodata, unit, data type (`data_type`, or the
    source's), classes. Shared by the COG and Zarr encoders."""
    info = MODALITY_INFO[modality]
    data = _pixels(ds, "bands")  # (band, y, x)
    if data.ndim != 3:
        raise ValueError(f"{modality}: bands should be (band, y, x) after time, got {data.shape}")
    nodata = nodata_for(ds, modality)
    names = [str(b) for b in np.asarray(ds["band"].values)] if "band" in ds.coords else info.band_names
    by_name = {b.name: b for b in info.bands}
    bands = [by_name[n].stac_fields() if n in by_name else {"name": n} for n in names]

    fields: dict = {
        "title": info.title,
        **grid_of(ds).stac_proj_fields(),
        "data_type": np.dtype(data_type or data.dtype).name,
        "bands": bands,
        "gsd": 10,
    }
    if nodata is not None:
        fields["nodata"] = stac_nodata(nodata)
    if info.unit:
        fields["unit"] = info.unit
    if info.scale:
        fields["raster:scale"] = info.scale
    if modality == "LULC":
        fields["classification:classes"] = classes_field(LULC_CLASSES, nodata_value=0)
    return fields


def encode_cog(ds: xr.Dataset, modality: str, *, profile: CogProfile = DEFAULT_PROFILE) -> EncodedAsset:
    """Lossless COG of `ds["bands"]` with its STAC asset fields (see module docstring)."""
    data = _pixels(ds, "bands")  # (band, y, x)
    src_dtype = data.dtype
    if src_dtype == np.float16:
        data = data.astype(np.float32)  # exact
    fields = raster_fields(ds, modality, data.dtype)
    if src_dtype != data.dtype:
        fields["terramesh:source_data_type"] = src_dtype.name
    cog = write_cog(
        data,
        grid_of(ds),
        nodata=nodata_for(ds, modality),
        descriptions=[b["name"] for b in fields["bands"]],
        profile=profile,
    )
    return EncodedAsset(
        key=modality,
        data=cog,
        media_type=COG_MEDIA_TYPE,
        roles=list(MODALITY_INFO[modality].roles),
        filename=f"{modality}.tif",
        fields=fields,
    )


def classes_field(table: dict, *, nodata_value: int | None = None) -> list[dict]:
    """classification:classes (v2.0.0) from a modalities class table."""
    out = []
    for value, (name, title, colour) in sorted(table.items()):
        c = {"value": int(value), "name": name, "description": title, "color_hint": colour.upper()}
        if value == nodata_value:
            c["nodata"] = True
        out.append(c)
    return out


def encode_cloud_mask(ds: xr.Dataset, *, profile: CogProfile = DEFAULT_PROFILE) -> EncodedAsset:
    """uint8 COG of `ds["cloud_mask"]` (classes 0..6, nodata 6) with classification fields."""
    mask = _pixels(ds, "cloud_mask")
    if mask.ndim != 2:
        raise ValueError(f"cloud_mask should be (y, x) after time, got {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError("cloud_mask values outside uint8")
        mask = mask.astype(np.uint8)
    grid = grid_of(ds)
    cog = write_cog(mask[None], grid, nodata=CLOUD_MASK_NODATA, descriptions=["cloud_mask"], profile=profile)
    fields = {
        "title": "Sentinel-2 cloud mask",
        **grid.stac_proj_fields(),
        "data_type": "uint8",
        "nodata": CLOUD_MASK_NODATA,
        "bands": [{"name": "cloud_mask", "description": "Cloud mask class"}],
        "classification:classes": classes_field(CLOUD_MASK_CLASSES, nodata_value=CLOUD_MASK_NODATA),
        "gsd": 10,
    }
    return EncodedAsset(
        key="cloud_mask",
        data=cog,
        media_type=COG_MEDIA_TYPE,
        roles=["data", "cloud"],
        filename="cloud_mask.tif",
        fields=fields,
    )
