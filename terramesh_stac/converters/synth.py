"""Write a small TerraMesh-format tree with generated pixels at real locations.

The layout, member names, zarr encoding, band lists, dtypes, grids, ids and metadata parquet
follow shared/TERRAMESH_FORMAT.md; only the pixel values are made up (smooth fields, so
thumbnails and COGs look like land, water and clouds, deterministic from the seed).

- `ssl4eos12` samples sit on real SSL4EO-S12 v1.1 patch grids and dates
  (data/ssl4eos12_locations.parquet, CC-BY-4.0 DLR, see data/ATTRIBUTION.md), including a
  patch whose grid is in another UTM zone than its Sentinel-2 tile.
- `majortom` samples sit on Major TOM grid cells (names like `47U_1147R_0_0`) in several
  zones on both hemispheres, one of them a zone-60 patch whose footprint crosses 180 deg.
- S2 nodata is 0 before the 2022-01-25 baseline change and -1000 from then on; samples
  alternate between both eras.

`generate(out_dir)` is the entry point; its keyword options write the variants the reader
must tolerate (DEFLATED zip entries, (1,)-shaped metadata arrays, no cloud mask, other
metadata column encodings).
"""

from __future__ import annotations

import io
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import shapely.affinity
import xarray as xr
from pyproj import CRS, Transformer

from . import metadata as _metadata
from .modalities import CLOUD_MASK_MODALITIES, MODALITIES, MODALITY_INFO, S2_BASELINE_CHANGE, modalities_for_source
from .zarrzip import encode_zarr_zip

SIZE = 264  # pixels per side
RES = 10.0  # metres
LOCATIONS_FILE = Path(__file__).parent / "data" / "ssl4eos12_locations.parquet"
_TAR_MTIME = 1_700_000_000  # fixed, so the same seed writes the same tar bytes

# --- Major TOM grid (format notes section 5) --------------------------------------------

EARTH_RADIUS_KM = 6378.137
CELL_KM = 10.0
ROW_STEP = 180.0 / 2004  # degrees of latitude between grid rows
CELL_PX = 1068  # a cell is 1068 px; it yields up to 4 x 4 patches of 264 px


def majortom_columns(row_lat: float) -> int:
    return math.ceil(2 * math.pi * EARTH_RADIUS_KM * math.cos(math.radians(row_lat)) / CELL_KM)


def majortom_cell(lat: float, lon: float) -> tuple[str, float, float]:
    """The cell holding (lat, lon): (name like `47U_1147R`, south-west corner lat, lon)."""
    row, sw_lat = _grid_step(lat, ROW_STEP, "U", "D")
    col, sw_lon = _grid_step(lon, 360.0 / majortom_columns(sw_lat), "R", "L")
    return f"{row}_{col}", sw_lat, sw_lon


def _grid_step(value: float, step: float, positive: str, negative: str) -> tuple[str, float]:
    """Major TOM's row or column of a coordinate (`47U`, `3L`) and the cell's south-west edge:
    counted from 0 upwards (U, R) on the positive side and from 1 downwards (D, L) below zero."""
    if value >= 0:
        k = math.floor(value / step)
        return f"{k}{positive}", k * step
    k = math.ceil(-value / step)
    return f"{k}{negative}", -k * step


def utm_epsg(lat: float, lon: float) -> int:
    zone = min(max(int((lon + 180) // 6) + 1, 1), 60)  # 1 also for -180 less a rounding error
    return (32600 if lat >= 0 else 32700) + zone


def majortom_patch_grid(lat: float, lon: float, a: int, b: int) -> tuple[str, int, float, float]:
    """(sample_id, epsg, west edge, north edge) of patch (a, b) of the cell holding (lat, lon).

    Major TOM projects a cell into the UTM zone of its south-west corner. How `_a_b` maps to
    a position is not documented [U]: here a counts patch rows from the north, b columns
    from the west, and the 4 x 264 px patches are centred in the 1068 px cell."""
    name, sw_lat, sw_lon = majortom_cell(lat, lon)
    epsg = utm_epsg(sw_lat, sw_lon)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(sw_lon, sw_lat)
    margin = (CELL_PX - 4 * SIZE) // 2 * RES
    x0 = round(x / RES) * RES + margin + b * SIZE * RES
    y0 = round(y / RES) * RES + CELL_PX * RES - margin - a * SIZE * RES
    return f"{name}_{a}_{b}", epsg, x0, y0


# --- locations ----------------------------------------------------------------------------


@dataclass
class Location:
    sample_id: str  # metadata sample_id and the zarr `sample` coordinate
    epsg: int  # the pixel grid's UTM zone
    x0: float  # west edge, metres
    y0: float  # north edge, metres
    s2_time: pd.Timestamp | None = None  # real date for ssl4eos12, generated for majortom
    tile_id: str | None = None  # MGRS tile, e.g. T33SWC


# Places for majortom cells: varied zones, both hemispheres; index 1 crosses the antimeridian.
_MAJORTOM_PLACES = [
    (48.14, 11.58),  # Munich, 32N
    None,  # antimeridian case, see _antimeridian_patch
    (-15.79, -47.88),  # Brasilia, 23S
    (-33.87, 151.21),  # Sydney, 56S
    (40.02, -105.27),  # Boulder, 13N
    (-1.29, 36.82),  # Nairobi, 37S
    (35.68, 139.69),  # Tokyo, 54N
    (64.14, -21.94),  # Reykjavik, 27N
]


def _antimeridian_patch() -> Location:
    """A zone-60 patch of a Major TOM cell at 65 N whose footprint spans 180 deg."""
    for lon in np.arange(179.70, 180.0, 0.02):
        for b in range(4):
            sid, epsg, x0, y0 = majortom_patch_grid(65.05, float(lon), 0, b)
            t = Transformer.from_crs(epsg, 4326, always_xy=True)
            lons, _ = t.transform([x0, x0 + SIZE * RES], [y0, y0])
            if epsg == 32660 and lons[0] > 0 > lons[1]:
                return Location(sid, epsg, x0, y0)
    raise RuntimeError("no antimeridian patch found")  # cannot happen with the grid above


def majortom_location(i: int) -> Location:
    place = _MAJORTOM_PLACES[i % len(_MAJORTOM_PLACES)]
    if place is None:
        return _antimeridian_patch()
    lap = i // len(_MAJORTOM_PLACES)
    a, b = (i + lap) % 4, (i // 4 + lap) % 4
    sid, epsg, x0, y0 = majortom_patch_grid(*place, a, b)
    return Location(sid, epsg, x0, y0)


def ssl4eos12_locations() -> list[Location]:
    df = pd.read_parquet(LOCATIONS_FILE)
    return [
        Location(
            f"{r.sample_id}_{r.time_id}",
            int(r.grid_crs),
            float(r.grid_x0),
            float(r.grid_y0),
            pd.Timestamp(r.time).tz_localize("UTC"),
            r.tile_id,
        )
        for r in df.itertuples()
    ]


# --- ids ------------------------------------------------------------------------------------

_MGRS_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def mgrs_tile(lat: float, lon: float, epsg: int) -> str:
    """Sentinel-2 tile name (`T33SWC`) of a point, in zone `epsg` (a UTM EPSG code)."""
    zone = epsg % 100
    band = _MGRS_LAT_BANDS[min(max(int((lat + 80) // 8), 0), 19)]
    e, n = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    if epsg >= 32700:
        n -= 10_000_000  # letters count from the equator in both hemispheres
    col = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(e // 100_000) - 1]
    row = "ABCDEFGHJKLMNPQRSTUV"[(int(n // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"T{zone:02d}{band}{col}{row}"


def s2_product_id(t: pd.Timestamp, tile: str, level: str, rng) -> str:
    """e.g. S2A_MSIL2A_20200419T094031_N0214_R036_T33SWC_20200419T120412."""
    post = t >= pd.Timestamp(S2_BASELINE_CHANGE, tz="UTC")
    baseline = ("N0400" if post else "N0214") if level == "L2A" else ("N0400" if post else "N0209")
    sat = "S2A" if rng.random() < 0.5 else "S2B"
    orbit = int(rng.integers(1, 144))
    gen = t + pd.Timedelta(minutes=int(rng.integers(60, 240)))
    return f"{sat}_MSI{level}_{t:%Y%m%dT%H%M%S}_{baseline}_R{orbit:03d}_{tile}_{gen:%Y%m%dT%H%M%S}"


def s1_product_id(t: pd.Timestamp, rng) -> str:
    """e.g. S1A_IW_GRDH_1SDV_20201105T020809_20201105T020834_035106_041925_5D91."""
    stop = t + pd.Timedelta(seconds=25)
    # S1A: 175 orbits per 12-day cycle since 2014-04-03
    orbit = int((t - pd.Timestamp("2014-04-03", tz="UTC")).days * 175 / 12)
    take = int(rng.integers(0x10000, 0x7FFFF))
    crc = int(rng.integers(0, 0xFFFF))
    return f"S1A_IW_GRDH_1SDV_{t:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}_{orbit:06d}_{take:06X}_{crc:04X}"


def dem_id(lat: float, lon: float) -> str:
    la, lo = math.floor(lat), math.floor(lon)
    return (
        f"Copernicus_DSM_COG_10_{'N' if la >= 0 else 'S'}{abs(la):02d}_00_{'E' if lo >= 0 else 'W'}{abs(lo):03d}_00_DEM"
    )


# --- geometry -------------------------------------------------------------------------------


def grid_coords(x0: float, y0: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, 10 m spacing, y decreasing."""
    i = np.arange(SIZE, dtype="float64")
    return x0 + RES / 2 + RES * i, y0 - RES / 2 - RES * i


def footprint_wgs84(epsg: int, x0: float, y0: float, per_edge: int = 8):
    """WGS84 footprint of the pixel edges (densified); split at 180 deg if it crosses it."""
    x1, y1 = x0 + SIZE * RES, y0 - SIZE * RES
    t = np.linspace(0, 1, per_edge, endpoint=False)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(per_edge, x1), x1 + (x0 - x1) * t, np.full(per_edge, x0)])
    ys = np.concatenate([np.full(per_edge, y0), y0 + (y1 - y0) * t, np.full(per_edge, y1), y1 + (y0 - y1) * t])
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
    lon = np.asarray(lon)
    if lon.max() - lon.min() > 180:  # crosses the antimeridian
        lon = np.where(lon < 0, lon + 360, lon)
        poly = shapely.Polygon(np.column_stack([lon, lat]))
        east = shapely.intersection(poly, shapely.box(-180, -90, 180, 90))
        west = shapely.affinity.translate(shapely.intersection(poly, shapely.box(180, -90, 540, 90)), -360)
        return shapely.MultiPolygon([shapely.orient_polygons(east), shapely.orient_polygons(west)])
    return shapely.orient_polygons(shapely.Polygon(np.column_stack([lon, lat])))


def grid_center(epsg: int, x0: float, y0: float) -> tuple[float, float]:
    """(lon, lat) of the centre of the pixel grid."""
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x0 + SIZE * RES / 2, y0 - SIZE * RES / 2)
    return float(lon), float(lat)


# --- pixels -----------------------------------------------------------------------------------


def _smooth(rng, sigma_px: float) -> np.ndarray:
    """A smooth random field, mean 0 std 1 (Gaussian-filtered noise, via FFT)."""
    f = np.fft.rfft2(rng.standard_normal((SIZE, SIZE)))
    ky, kx = np.fft.fftfreq(SIZE)[:, None], np.fft.rfftfreq(SIZE)[None, :]
    f *= np.exp(-2 * math.pi**2 * sigma_px**2 * (kx**2 + ky**2))
    out = np.fft.irfft2(f, s=(SIZE, SIZE))
    return (out - out.mean()) / (out.std() + 1e-12)


# Typical surface reflectance (x 10000) of water, vegetation, bare soil and cloud, per L1C band.
_L1C_BANDS = MODALITY_INFO["S2L1C"].band_names
_REFLECTANCE = {  # B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12
    "water": [900, 700, 600, 400, 300, 250, 220, 200, 180, 100, 10, 80, 50],
    "veg": [600, 500, 800, 500, 1300, 2800, 3300, 3600, 3700, 1200, 15, 2000, 1000],
    "soil": [1200, 1300, 1700, 2200, 2500, 2700, 2800, 2900, 3000, 1100, 20, 3500, 2800],
    "cloud": [7000, 7200, 7000, 7100, 7200, 7300, 7300, 7400, 7300, 3500, 600, 4500, 3500],
}
_TOA_BOOST = np.array([800, 600, 350, 200, 150, 100, 80, 60, 60, 0, 0, 20, 10])  # path radiance


@dataclass
class Scene:
    """Generated fields of one sample, shared by all its modalities."""

    l2a: np.ndarray  # (13, y, x) float reflectance x 10000 in L1C band order (B10 for L1C only)
    elevation: np.ndarray  # metres
    water: np.ndarray  # bool
    veg: np.ndarray  # 0..1
    cloud_mask: np.ndarray  # uint8 classes 0..6
    nodata: np.ndarray  # bool, no S2 data
    s1_nan: np.ndarray  # bool


def make_scene(rng, lat: float) -> Scene:
    relief = _smooth(rng, 30)
    elevation = np.clip(300 + 400 * relief + 40 * _smooth(rng, 4) + 600 * abs(lat) / 60, -20, 4000)
    water = relief < -1.0
    veg = np.clip(0.55 + 0.3 * _smooth(rng, 12), 0, 1) * ~water
    clouds = _smooth(rng, 18) + rng.uniform(-1.0, 0.6)  # from clear to very cloudy
    shadow = np.roll(clouds, (12, 9), axis=(0, 1))
    snow = (elevation > 1500) | (abs(lat) > 62) & (relief > 0.8)
    cm = np.zeros((SIZE, SIZE), np.uint8)
    cm[water] = 1
    cm[snow & ~water] = 2
    cm[shadow > 1.3] = 5
    cm[clouds > 0.9] = 3
    cm[clouds > 1.4] = 4
    # a swath edge: no data beyond a random line in about half the samples
    nodata = np.zeros((SIZE, SIZE), bool)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        nodata = xx + 0.6 * yy > SIZE * rng.uniform(1.1, 1.5)
    cm[nodata] = 6
    ref = {k: np.asarray(v, float)[:, None, None] for k, v in _REFLECTANCE.items()}
    l2a = veg * ref["veg"] + (1 - veg) * ref["soil"]
    l2a = np.where(water, ref["water"], l2a)
    l2a = np.where(snow & ~water, ref["cloud"] * 1.1, l2a)
    cover = np.clip((clouds - 0.7) / 0.8, 0, 1)
    l2a = (1 - cover) * l2a + cover * ref["cloud"]
    l2a = np.where(shadow > 1.3, l2a * 0.5, l2a)
    l2a = l2a * (1 + 0.08 * _smooth(rng, 3)) + rng.normal(0, 40, l2a.shape)
    s1_nan = np.zeros((SIZE, SIZE), bool)
    if rng.random() < 0.5:
        s1_nan[:, : int(rng.integers(3, 20))] = True  # border without SAR coverage
    return Scene(l2a, elevation, water, veg, cm, nodata, s1_nan)


def modality_bands(scene: Scene, modality: str, post_2022: bool, rng) -> np.ndarray:
    """(band, y, x) array of `modality` in its TerraMesh dtype."""
    s2_nodata = -1000 if post_2022 else 0
    if modality in ("S2L2A", "S2L1C"):
        v = scene.l2a if modality == "S2L1C" else np.delete(scene.l2a, _L1C_BANDS.index("B10"), axis=0)
        if modality == "S2L1C":
            v = v + _TOA_BOOST[:, None, None]
        # post-2022 values keep the dark pixels' negative reflectance; before, DN >= 1
        v = np.clip(v, -900 if post_2022 else 1, 30000)
        v = np.round(v).astype(np.int16)
        v[:, scene.nodata] = s2_nodata
        return v
    if modality == "S2RGB":
        rgb = scene.l2a[[3, 2, 1]]  # B04 B03 B02
        v = np.clip(np.round(rgb / 3000 * 255), 0, 255).astype(np.int16)
        v[:, scene.nodata] = 0
        return v
    if modality == "NDVI":
        nir, red = np.clip(scene.l2a[7], 1, None), np.clip(scene.l2a[3], 1, None)
        v = ((nir - red) / (nir + red)).astype(np.float16)[None]
        v[:, scene.nodata] = np.nan
        return v
    if modality in ("S1GRD", "S1RTC"):
        speckle = rng.normal(0, 1.2, (2, SIZE, SIZE))
        slope = np.gradient(scene.elevation, axis=1) / RES
        vv = -11 + 4 * scene.veg - 9 * scene.water + (0 if modality == "S1RTC" else 8 * slope)
        v = np.stack([vv, vv - 7 + 2 * scene.veg]) + speckle
        v = v.astype(np.float16)
        v[:, scene.s1_nan] = np.nan
        return v
    if modality == "DEM":
        return np.round(scene.elevation).astype(np.int16)[None]
    if modality == "LULC":
        c = np.full((SIZE, SIZE), 9, np.uint8)  # rangeland
        c[scene.veg > 0.45] = 4  # crops
        c[scene.veg > 0.7] = 2  # trees
        c[(scene.veg < 0.2) & ~scene.water] = 6  # bare
        c[(scene.elevation < 320) & (scene.veg > 0.35) & (scene.veg < 0.45)] = 5  # built
        c[scene.water] = 1
        c[scene.cloud_mask == 2] = 7
        c[scene.cloud_mask == 4] = 8
        c[scene.nodata] = 0
        return c[None]
    raise ValueError(f"unknown modality {modality!r}")


# --- one sample -------------------------------------------------------------------------------


@dataclass
class SampleSpec:
    """Everything about one generated sample except its pixels."""

    key: str
    source: str
    shard: str
    loc: Location
    s2_time: pd.Timestamp
    s1_time: pd.Timestamp
    file_ids: dict  # modality -> product id


def _spatial_ref(epsg: int, x0: float, y0: float) -> dict:
    crs = CRS.from_epsg(epsg)
    return {"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(), "GeoTransform": f"{x0} {RES} 0.0 {y0} 0.0 {-RES}"}


def modality_dataset(
    spec: SampleSpec, modality: str, bands: np.ndarray, cloud_mask: np.ndarray | None, *, scalar_shape: tuple = ()
) -> xr.Dataset:
    """The zarr group of one modality of a sample as an xarray Dataset."""
    loc = spec.loc
    x, y = grid_coords(loc.x0, loc.y0)
    lon, lat = grid_center(loc.epsg, loc.x0, loc.y0)
    info = MODALITY_INFO[modality]
    if not info.has_time:
        t = np.datetime64("NaT", "ns")  # written as 0 (DEM has no date)
    else:
        t = (spec.s1_time if modality.startswith("S1") else spec.s2_time).tz_convert(None).to_datetime64()
    sdims = ("time",) if scalar_shape == (1,) else ()

    def scalar(v, dtype):
        return (sdims, np.asarray(v, dtype).reshape(scalar_shape))

    data_vars = {
        "bands": (("time", "band", "y", "x"), bands[None]),
        "center_lat": scalar(lat, "float64"),
        "center_lon": scalar(lon, "float64"),
        "crs": scalar(loc.epsg, "int64"),
        "file_id": (("time",), np.array([spec.file_ids[modality]])),
    }
    if cloud_mask is not None:
        data_vars["cloud_mask"] = (("time", "y", "x"), cloud_mask[None])
    coords = {
        "time": ("time", np.array([t], "datetime64[ns]")),
        "band": ("band", np.array(info.band_names)),
        "x": ("x", x),
        "y": ("y", y),
        "sample": ((), np.array(loc.sample_id)),
        "spatial_ref": ((), np.int64(0), _spatial_ref(loc.epsg, loc.x0, loc.y0)),
    }
    return xr.Dataset(data_vars, coords=coords)


def sample_datasets(
    spec: SampleSpec, seed: int, index: int, *, scalar_shape: tuple = (), cloud_mask: bool = True, modalities=None
) -> dict[str, xr.Dataset]:
    """All modality Datasets of one sample; pixels deterministic from (seed, index)."""
    lon, lat = grid_center(spec.loc.epsg, spec.loc.x0, spec.loc.y0)
    rng = np.random.default_rng([seed, index])
    scene = make_scene(rng, lat)
    post = spec.s2_time >= pd.Timestamp(S2_BASELINE_CHANGE, tz="UTC")
    out = {}
    for m in modalities_for_source(spec.source):
        if modalities is not None and m not in modalities:
            continue
        bands = modality_bands(scene, m, post, rng)
        cm = scene.cloud_mask if cloud_mask and m in CLOUD_MASK_MODALITIES else None
        out[m] = modality_dataset(spec, m, bands, cm, scalar_shape=scalar_shape)
    return out


def cloud_cover_percent(cm: np.ndarray) -> float:
    valid = cm != 6
    return round(100.0 * float(np.isin(cm, (3, 4)).sum()) / max(int(valid.sum()), 1), 3)


# --- the tree -------------------------------------------------------------------------------


def plan(
    split: str = "val", shards: int = 2, samples_per_shard: int = 4, seed: int = 0, shard_numbering: str = "global"
) -> list[SampleSpec]:
    """Which samples go where: majortom shards first, then ssl4eos12 (at least one of each
    when shards >= 2), keys numbered across the split, shard numbers global or per source."""
    n_ssl = 0 if shards < 2 else max(1, shards // 3)
    n_mt = shards - n_ssl
    rng = np.random.default_rng([seed, 1_000_003])
    ssl_locs = ssl4eos12_locations()
    specs, n = [], 0
    for s in range(shards):
        source = "majortom" if s < n_mt else "ssl4eos12"
        number = s + 1 if shard_numbering == "global" else (s + 1 if source == "majortom" else s - n_mt + 1)
        shard = f"{source}_shard_{number:06d}.tar"
        for _ in range(samples_per_shard):
            n += 1
            i = n - 1 if source == "majortom" else n - 1 - n_mt * samples_per_shard
            key = f"{source}_{split}_{n:07d}"
            if source == "majortom":
                loc = majortom_location(i)
                # alternate pre / post 2022-01-25 (nodata 0 vs -1000)
                year = (2019, 2022)[i % 2] + int(rng.integers(0, 3))
                day = pd.Timestamp(f"{year}-01-01", tz="UTC") + pd.Timedelta(days=int(rng.integers(0, 365)))
                lon, lat = grid_center(loc.epsg, loc.x0, loc.y0)
                hour = (10.5 - lon / 15) % 24  # about 10:30 local solar time
                s2_time = (day + pd.Timedelta(hours=hour) + pd.Timedelta(seconds=int(rng.integers(0, 60)))).floor("s")
                loc.tile_id = mgrs_tile(lat, lon, loc.epsg)
            else:
                loc = ssl_locs[i % len(ssl_locs)]
                lon, lat = grid_center(loc.epsg, loc.x0, loc.y0)
                s2_time = loc.s2_time
            s1_time = (s2_time + pd.Timedelta(hours=float(rng.uniform(-96, 96)))).floor("s")
            id_rng = np.random.default_rng([seed, n, 7])
            l2a = s2_product_id(s2_time, loc.tile_id, "L2A", id_rng)
            l1c = s2_product_id(s2_time, loc.tile_id, "L1C", id_rng)
            s1 = s1_product_id(s1_time, id_rng)
            file_ids = {
                "S2L2A": l2a,
                "S2L1C": l1c,
                "S2RGB": l2a,
                "NDVI": l2a,
                "LULC": l2a,
                "S1GRD": s1,
                "S1RTC": s1,
                "DEM": dem_id(lat, lon),
            }
            specs.append(SampleSpec(key, source, shard, loc, s2_time, s1_time, file_ids))
    return specs


def _metadata_row(spec: SampleSpec, split: str, cm: np.ndarray | None) -> dict:
    loc = spec.loc
    lon, lat = grid_center(loc.epsg, loc.x0, loc.y0)
    return {
        "tar": spec.shard,
        "zarr": f"{spec.key}.zarr.zip",
        "sample_id": loc.sample_id,
        "split": split,
        "center_lon": lon,
        "center_lat": lat,
        "crs": loc.epsg,
        "bounds": [loc.x0, loc.y0 - SIZE * RES, loc.x0 + SIZE * RES, loc.y0],
        "geometry": footprint_wgs84(loc.epsg, loc.x0, loc.y0),
        "S2_time": spec.s2_time,
        "S1_time": spec.s1_time,
        "cloud_cover": None if cm is None else cloud_cover_percent(cm),
    }


def _tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
    tf.addfile(info, io.BytesIO(data))


def generate(
    out_dir,
    split: str = "val",
    shards: int = 2,
    samples_per_shard: int = 4,
    seed: int = 0,
    *,
    deflate: bool = False,
    scalar_shape: tuple = (),
    cloud_mask: bool = True,
    metadata: bool = True,
    metadata_options: dict | None = None,
    shard_numbering: str = "global",
) -> list[str]:
    """Write `{split}/{modality}/<source>_shard_<NNNNNN>.tar` for the 8 modality folders plus
    `{split}_metadata.parquet` under `out_dir`; return the sample keys in order.

    Tolerance variants: `deflate` (DEFLATED zip entries), `scalar_shape=(1,)` (metadata
    arrays of shape (1,)), `cloud_mask=False` (no cloud_mask arrays), `metadata=False` (no
    parquet), `metadata_options` (write_metadata's geometry_as / bounds_as / cloud_cover_as),
    `shard_numbering` "global" (original layout) or "per_source" (2026 layout).
    """
    out = Path(out_dir)
    for m in MODALITIES:
        (out / split / m).mkdir(parents=True, exist_ok=True)
    specs = plan(split, shards, samples_per_shard, seed, shard_numbering)
    rows = []
    for shard in dict.fromkeys(s.shard for s in specs):
        members = [(n, s) for n, s in enumerate(specs) if s.shard == shard]
        source = members[0][1].source
        tars = {m: tarfile.open(out / split / m / shard, "w") for m in modalities_for_source(source)}
        try:
            for index, spec in members:
                datasets = sample_datasets(spec, seed, index, scalar_shape=scalar_shape, cloud_mask=cloud_mask)
                for m, ds in datasets.items():
                    _tar_member(tars[m], f"{spec.key}.zarr.zip", encode_zarr_zip(ds, deflate=deflate))
                cm = datasets["S2L2A"]["cloud_mask"].values[0] if "cloud_mask" in datasets["S2L2A"] else None
                rows.append(_metadata_row(spec, split, cm))
        finally:
            for tf in tars.values():
                tf.close()
    if metadata:
        _metadata.write_metadata(rows, out / f"{split}_metadata.parquet", **(metadata_options or {}))
    return [s.key for s in specs]
