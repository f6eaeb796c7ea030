"""COG assets: lossless pixels, exact georeferencing, valid COGs, STAC-ready fields.

`make_ds` builds a small in-memory modality Dataset with TerraMesh's zarr layout (see
shared/TERRAMESH_FORMAT.md section 3); the synth generator will replace it later.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_validate

from terramesh_stac.converters.cog import COG_MEDIA_TYPE, encode_cloud_mask, encode_cog, s2_nodata
from terramesh_stac.converters.footprint import grid_of
from terramesh_stac.converters.modalities import MODALITIES, MODALITY_INFO

N = 264


def make_ds(
    modality: str,
    *,
    epsg: int = 32633,
    x0: float = 500_005.0,  # first pixel centre
    y0: float = 4_200_005.0,
    time: str | None = "2021-06-01T10:20:30",
    size: int = N,
    seed: int = 0,
    scalar_shape: tuple = (),
    with_mask: bool | None = None,
    file_id: str | None = None,
    sample_id: str = "0194630_1",
) -> xr.Dataset:
    """A modality Dataset as TerraMesh stores it: bands (time, band, y, x) + metadata."""
    info = MODALITY_INFO[modality]
    rng = np.random.default_rng(seed)
    c = len(info.bands)
    shape = (1, c, size, size)
    if info.dtype == "int16" and modality.startswith("S2L"):
        data = rng.integers(-999, 12000, shape).astype("int16")
        data[..., :3, :5] = 0  # some nodata-ish pixels
    elif modality == "S2RGB":
        data = rng.integers(0, 256, shape).astype("int16")
    elif modality == "DEM":
        data = rng.integers(-50, 3000, shape).astype("int16")
    elif modality == "LULC":
        data = rng.integers(0, 10, shape).astype("uint8")
    else:  # float16: dB or NDVI, with NaN holes and extreme float16 values
        lo, hi = (-1.0, 1.0) if modality == "NDVI" else (-40.0, 10.0)
        data = rng.uniform(lo, hi, shape).astype("float16")
        data[..., 10:20, 30:40] = np.nan
        data[0, 0, 0, 0] = np.float16(65504)
        data[0, 0, 0, 1] = np.float16(6e-8)  # subnormal
    x = x0 + 10.0 * np.arange(size)
    y = y0 - 10.0 * np.arange(size)
    if time is None or not info.has_time:
        t = np.array(["1970-01-01T00:00:00"], dtype="datetime64[ns]")
    else:
        t = np.array([time], dtype="datetime64[ns]")

    def sc(v):
        return np.asarray(v).reshape(scalar_shape)

    fid = file_id or f"{modality}_PRODUCT_{seed}"
    ds = xr.Dataset(
        {
            "bands": (("time", "band", "y", "x"), data),
            "center_lat": ((), 0.0) if not scalar_shape else (("one",), sc(0.0)),
            "center_lon": ((), 0.0) if not scalar_shape else (("one",), sc(0.0)),
            "crs": ((), np.int64(epsg)) if not scalar_shape else (("one",), sc(np.int64(epsg))),
            "file_id": (("time",), np.array([fid])),
        },
        coords={"band": info.band_names, "time": t, "x": x, "y": y, "sample": sample_id},
    )
    # centre lat/lon from the grid, as TerraMesh records it
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform((x[0] + x[-1]) / 2, (y[0] + y[-1]) / 2)
    ds["center_lat"] = ds["center_lat"] * 0 + lat
    ds["center_lon"] = ds["center_lon"] * 0 + lon
    if with_mask is None:
        with_mask = modality in ("S2L1C", "S2L2A", "S2RGB", "LULC")
    if with_mask:
        m = rng.integers(0, 6, (1, size, size)).astype("uint8")
        m[0, :4, :] = 6
        ds["cloud_mask"] = (("time", "y", "x"), m)
    return ds


def _read(data: bytes):
    with MemoryFile(data) as mem, mem.open() as src:
        return src.read(), src.profile, src.descriptions, src.crs, src.transform, src.nodata


@pytest.mark.parametrize("modality", MODALITIES)
def test_cog_is_lossless_and_georeferenced(modality):
    ds = make_ds(modality)
    asset = encode_cog(ds, modality)
    pixels, profile, descriptions, crs, transform, nodata = _read(asset.data)
    src = ds["bands"].values[0]

    # pixels equal the source, NaN positions too
    if src.dtype == np.float16:
        assert pixels.dtype == np.float32
        assert asset.fields["terramesh:source_data_type"] == "float16"
        np.testing.assert_array_equal(np.isnan(pixels), np.isnan(src))
        assert np.array_equal(pixels.astype(np.float16), src, equal_nan=True)
        assert np.array_equal(pixels, src.astype(np.float32), equal_nan=True)
    else:
        assert pixels.dtype == src.dtype
        np.testing.assert_array_equal(pixels, src)
        assert "terramesh:source_data_type" not in asset.fields

    # georeferencing from x/y centres and crs
    x, y = ds["x"].values, ds["y"].values
    assert crs.to_epsg() == 32633
    assert transform == Affine(10, 0, x[0] - 5, 0, -10, y[0] + 5)
    assert asset.fields["proj:transform"] == list(transform)[:6]
    assert asset.fields["proj:code"] == "EPSG:32633"
    assert asset.fields["proj:shape"] == [N, N]
    assert asset.fields["proj:bbox"] == [x[0] - 5, y[-1] - 5, x[-1] + 5, y[0] + 5]

    # band descriptions and STAC band list
    assert list(descriptions) == MODALITY_INFO[modality].band_names
    assert [b["name"] for b in asset.fields["bands"]] == MODALITY_INFO[modality].band_names
    assert asset.media_type == COG_MEDIA_TYPE

    # a valid COG: one 272 px tile, no overviews
    with MemoryFile(asset.data) as mem:
        is_valid, errors, _ = cog_validate(mem.name, quiet=True)
    assert is_valid, errors
    assert profile["blockxsize"] == 272 and profile["blockysize"] == 272
    assert profile["compress"].lower() == "zstd"
    with MemoryFile(asset.data) as mem, mem.open() as cog:
        structure = cog.tags(ns="IMAGE_STRUCTURE")
        assert cog.overviews(1) == []
    assert structure["PREDICTOR"] == ("3" if pixels.dtype.kind == "f" else "2")
    assert structure["INTERLEAVE"] == ("PIXEL" if pixels.shape[0] > 1 else "BAND")


@pytest.mark.parametrize(
    "modality,expected",
    [("S1GRD", "nan"), ("NDVI", "nan"), ("LULC", 0), ("DEM", None), ("S2RGB", None)],
)
def test_nodata_per_modality(modality, expected):
    asset = encode_cog(make_ds(modality), modality)
    nodata = _read(asset.data)[5]
    assert asset.fields.get("nodata") == expected
    if expected == "nan":
        assert math.isnan(nodata)
    else:
        assert nodata == expected


@pytest.mark.parametrize(
    "time,expected", [("2021-12-31T23:59:59", 0), ("2022-01-25T00:00:00", -1000), ("2023-07-01T10:00:00", -1000)]
)
def test_s2_nodata_follows_the_baseline_change(time, expected):
    ds = make_ds("S2L2A", time=time, size=32)
    assert s2_nodata(ds) == expected
    asset = encode_cog(ds, "S2L2A")
    assert asset.fields["nodata"] == expected
    assert _read(asset.data)[5] == expected


def test_cloud_mask_asset():
    ds = make_ds("S2L2A")
    asset = encode_cloud_mask(ds)
    pixels, profile, descriptions, crs, transform, nodata = _read(asset.data)
    np.testing.assert_array_equal(pixels[0], ds["cloud_mask"].values[0])
    assert pixels.dtype == np.uint8 and nodata == 6
    assert asset.fields["nodata"] == 6
    assert [c["value"] for c in asset.fields["classification:classes"]] == list(range(7))
    assert transform == grid_of(ds).transform
    with MemoryFile(asset.data) as mem:
        assert cog_validate(mem.name, quiet=True)[0]


def test_metadata_scalars_of_shape_one_and_spacing_from_coords():
    ds = make_ds("DEM", scalar_shape=(1,), size=40)
    # 20 m spacing: must be derived, not assumed
    ds = ds.assign_coords(x=ds.x.values[0] + 20.0 * np.arange(40), y=ds.y.values[0] - 20.0 * np.arange(40))
    asset = encode_cog(ds, "DEM")
    _, _, _, crs, transform, _ = _read(asset.data)
    assert transform == Affine(20, 0, ds.x.values[0] - 10, 0, -20, ds.y.values[0] + 10)
    assert "datetime" not in asset.fields  # DEM has no time
