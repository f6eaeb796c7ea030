"""Write TerraMesh-scale `{split}_metadata.parquet` files without shards (generated rows).

`generate_metadata(out_dir, rows)` writes `train_metadata.parquet` and `val_metadata.parquet`
with metadata.COLUMNS in write_metadata's types, for the scale benchmarks: 9,178,624 rows
(the real count) by default, any smaller or somewhat larger count in the same proportions.

Counts (format notes sections 1-2, the original card): train 9,089,536 = 8,113,664 majortom +
975,872 ssl4eos12, val 89,088 = 80,384 + 8,704; `rows` is split in these ratios (ssl4eos12
in multiples of 4 seasons). Keys are numbered per split, majortom first; shards hold 10,240
samples, numbered globally per split (majortom_shard_000001.. then ssl4eos12), so the full
count gives the card's 793 + 96 train and 8 + 1 val shards.

- `majortom` rows sit on Major TOM grid cells (synth.majortom_patch_grid's convention) whose
  centre is on land (data/land_mask.npz: Natural Earth 1:110m, public domain) within Sentinel-2's 56 S - 84 N, 1-16 patches per
  cell (a patch is kept only if its own centre is on land); train and val use disjoint cells.
  S2 dates uniform over 2017-2024 at ~10:36 local solar time, S1 at ~06:00 or ~18:00 local
  time within 3 days of it.
- `ssl4eos12` rows: locations scattered (25 km Gaussian) around the 2,176 real SSL4EO-S12
  val locations (data/ssl4eos12_centres.npz, which sit around big cities), on land, 4
  seasons each ~91 days apart from a first date in Dec 2019 - Dec 2020 as the real ones;
  sample_id `<7-digit location>_<season>`, location ids unique over both splits.
- cloud_cover: percent, 30 % of rows 0; the rest 100 x Beta(0.6, 5) for majortom (median
  ~6 %, 62 % under 10 %), 10 x Beta(0.8, 2.5) for ssl4eos12 (SSL4EO-S12 kept scenes under
  10 %). No NaN.
- bounds: the pixel edges in the UTM zone `crs` [xmin, ymin, xmax, ymax] on the 10 m grid;
  geometry: the WKB footprint of its 4 corners in WGS84 (a MultiPolygon split at 180 deg for
  the few that cross it); center_lon/lat: the grid centre (all as synth.py).

Whole columns at a time (numpy, pyproj per UTM zone, shapely, pyarrow compute), streamed in
row groups of 10 shards (102,400 rows), so memory stays bounded and read_metadata's shard
filter reads one row group. Deterministic per seed; a split's file does not depend on
whether the other split is written.

Measured for the full 9,178,624 rows (README, "Generated metadata at TerraMesh scale"):
126 s of CPU on the shared 2-core dev machine (5 min 39 s wall clock at load average ~7),
peak RSS 490 MB, train file 1.00 GB, val 9.9 MB.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from pyproj import Transformer

from . import metadata as _metadata
from .synth import CELL_PX, EARTH_RADIUS_KM, RES, ROW_STEP, SIZE, footprint_wgs84

DATA = Path(__file__).parent / "data"
SPLIT_ROWS = {"train": 9_089_536, "val": 89_088}
SSL4EOS12_ROWS = {"train": 975_872, "val": 8_704}
FULL_ROWS = sum(SPLIT_ROWS.values())
MAX_ROWS = 10_000_000  # the land cells hold ~11 M majortom patches at 1-16 per cell
SPLITS = ("train", "val")
SAMPLES_PER_SHARD = 10_240
SHARDS_PER_ROW_GROUP = 10
S2_LATITUDES = (-56.0, 84.0)  # Sentinel-2's systematic land coverage
VAL_CELL_SHARE = 0.05  # the tail of the shuffled land cells is val's pool
CELL_BATCH = 8_192  # Major TOM cells per generation step
LOCATION_BATCH = 8_192  # SSL4EO-S12 locations per generation step
SSL4EOS12_SCATTER_KM = 25.0
SSL4EOS12_LOCATION_IDS = 251_079  # SSL4EO-S12's id range (the real val ids reach 0251048)
KM_PER_DEG = math.pi * EARTH_RADIUS_KM / 180
NS_PER_HOUR = 3_600_000_000_000
NS_PER_DAY = 24 * NS_PER_HOUR
HALF = SIZE * RES / 2


def split_counts(rows: int) -> dict[str, dict[str, int]]:
    """{split: {source: rows}} for `rows` in all, in TerraMesh's proportions."""
    n_val = round(rows * SPLIT_ROWS["val"] / FULL_ROWS)
    out = {}
    for split, n in (("train", rows - n_val), ("val", n_val)):
        ssl = 4 * round(n * SSL4EOS12_ROWS[split] / SPLIT_ROWS[split] / 4)
        out[split] = {"majortom": n - ssl, "ssl4eos12": ssl}
    return out


def parse_rows(value) -> int:
    """A row count the generator accepts (1 to MAX_ROWS), or ValueError saying why not."""
    try:
        rows = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"rows must be a whole number, got {value!r}") from None
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"rows must be from 1 to {MAX_ROWS:,}, got {rows:,}")
    return rows


# --- land ---------------------------------------------------------------------------------


@functools.cache
def _land_mask() -> tuple[np.ndarray, float]:
    """(bool grid, row 0 at 90 N, column 0 at 180 W; cell size in degrees), see data/ATTRIBUTION.md."""
    with np.load(DATA / "land_mask.npz") as z:
        shape = tuple(int(n) for n in z["shape"])
        mask = np.unpackbits(z["packed"])[: shape[0] * shape[1]].reshape(shape).astype(bool)
        return mask, float(z["cell_deg"])


def on_land(lon, lat) -> np.ndarray:
    """Whether each point is in a land cell of the shipped 0.5 degree mask."""
    mask, deg = _land_mask()
    r = np.clip(np.floor((90 - np.asarray(lat)) / deg).astype(np.int64), 0, mask.shape[0] - 1)
    c = np.clip(np.floor((np.asarray(lon) + 180) / deg).astype(np.int64), 0, mask.shape[1] - 1)
    return mask[r, c]


def _in_s2_coverage(lon, lat) -> np.ndarray:
    return on_land(lon, lat) & (lat >= S2_LATITUDES[0]) & (lat <= S2_LATITUDES[1])


# --- projections ----------------------------------------------------------------------------


@functools.cache
def _transformer(src: int, dst: int) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _by_zone(epsg: np.ndarray, x: np.ndarray, y: np.ndarray, to_wgs84: bool) -> tuple[np.ndarray, np.ndarray]:
    """Transform points between WGS84 and each one's UTM zone `epsg` (points may be (n, k))."""
    out_x, out_y = np.empty_like(x, dtype="float64"), np.empty_like(y, dtype="float64")
    zones, inverse = np.unique(epsg, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    ends = np.cumsum(np.bincount(inverse, minlength=len(zones)))
    for zone, idx in zip(zones, np.split(order, ends[:-1])):
        t = _transformer(int(zone), 4326) if to_wgs84 else _transformer(4326, int(zone))
        out_x[idx], out_y[idx] = t.transform(x[idx], y[idx])
    return out_x, out_y


def utm_epsg(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """synth.utm_epsg on arrays."""
    zone = np.clip(np.floor((lon + 180) / 6).astype(np.int64) + 1, 1, 60)
    return np.where(lat >= 0, 32600, 32700) + zone


def _grid_geometry(epsg: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> dict[str, np.ndarray]:
    """center_lon/lat and WGS84 corners (n, 4, 2: SW SE NE NW, counter-clockwise) of grids."""
    x1, y1 = x0 + SIZE * RES, y0 - SIZE * RES
    xs = np.column_stack([x0 + HALF, x0, x1, x1, x0])
    ys = np.column_stack([y0 - HALF, y1, y1, y0, y0])
    lon, lat = _by_zone(epsg, xs, ys, to_wgs84=True)
    return {
        "center_lon": lon[:, 0],
        "center_lat": lat[:, 0],
        "corners": np.stack([lon[:, 1:], lat[:, 1:]], axis=-1),
    }


# --- times and cloud cover -------------------------------------------------------------------


def _at_solar_time(day_ns: np.ndarray, lon: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """UTC ns of local solar time `hours` on the local day starting at `day_ns`, whole seconds."""
    return day_ns + np.round((hours - lon / 15) * 3600).astype(np.int64) * 1_000_000_000


def _s2_solar_hours(rng, n: int) -> np.ndarray:
    return rng.normal(10.6, 0.3, n)  # Sentinel-2's 10:30 descending node, as in SSL4EO-S12's times


def _s1_times(rng, s2_day_ns: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Sentinel-1 passes (~06:00 or ~18:00 local solar time) within 3 days of the S2 day."""
    n = len(s2_day_ns)
    day = s2_day_ns + rng.integers(-3, 4, n) * NS_PER_DAY
    hours = np.where(rng.random(n) < 0.5, 6.0, 18.0) + rng.normal(0, 0.25, n)
    return _at_solar_time(day, lon, hours)


def _cloud_cover(rng, n: int, a: float, b: float, scale: float) -> np.ndarray:
    cc = scale * rng.beta(a, b, n)
    return np.round(np.where(rng.random(n) < 0.3, 0.0, cc), 3)


def _days_ns(start: str, end: str, rng, n: int) -> np.ndarray:
    """Midnights of n uniform random days in [start, end)."""
    lo, hi = (np.datetime64(d, "D").astype(np.int64) for d in (start, end))
    return rng.integers(lo, hi, n) * NS_PER_DAY


# --- Major TOM -----------------------------------------------------------------------------


@functools.cache
def majortom_land_cells() -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the Major TOM cells whose centre is on land in S2 coverage; rows and
    columns signed (negative = D / L). Only cells wholly inside [-180, 180] are counted."""
    r = np.arange(-1002, 1002)
    n = np.ceil(2 * math.pi * EARTH_RADIUS_KM * np.cos(np.radians(r * ROW_STEP)) / 10.0).astype(np.int64)
    lo, hi = -(n // 2), n // 2 - 1  # south-west corner >= -180, east edge <= 180
    count = hi - lo + 1
    rows = np.repeat(r, count)
    cols = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    step = 360.0 / np.repeat(n, count)
    keep = _in_s2_coverage((cols + 0.5) * step, (rows + 0.5) * ROW_STEP)
    return rows[keep], cols[keep]


def _majortom_batch(rows: np.ndarray, cols: np.ndarray, rng) -> dict[str, np.ndarray]:
    """The patches of a batch of cells: 1-16 random ones per cell, those centred on land."""
    sw_lat = rows * ROW_STEP
    n_cols = np.ceil(2 * math.pi * EARTH_RADIUS_KM * np.cos(np.radians(sw_lat)) / 10.0)
    sw_lon = cols * (360.0 / n_cols)
    k = rng.integers(1, 17, len(rows))
    order = np.argsort(rng.random((len(rows), 16)), axis=1)
    cell, rank = np.nonzero(np.arange(16) < k[:, None])
    pos = order[cell, rank]
    a, b = pos // 4, pos % 4
    epsg_cell = utm_epsg(sw_lat, sw_lon)
    x_sw, y_sw = _by_zone(epsg_cell, sw_lon, sw_lat, to_wgs84=False)
    margin = (CELL_PX - 4 * SIZE) // 2 * RES
    epsg = epsg_cell[cell]
    x0 = np.round(x_sw[cell] / RES) * RES + margin + b * SIZE * RES
    y0 = np.round(y_sw[cell] / RES) * RES + CELL_PX * RES - margin - a * SIZE * RES
    geo = _grid_geometry(epsg, x0, y0)
    keep = _in_s2_coverage(geo["center_lon"], geo["center_lat"])
    n = int(keep.sum())
    lon = geo["center_lon"][keep]
    day = _days_ns("2017-01-02", "2024-12-31", rng, n)
    return {
        "row": rows[cell][keep],
        "col": cols[cell][keep],
        "a": a[keep],
        "b": b[keep],
        "crs": epsg[keep],
        "x0": x0[keep],
        "y0": y0[keep],
        "center_lon": lon,
        "center_lat": geo["center_lat"][keep],
        "corners": geo["corners"][keep],
        "S2_time": _at_solar_time(day, lon, _s2_solar_hours(rng, n)),
        "S1_time": _s1_times(rng, day, lon),
        "cloud_cover": _cloud_cover(rng, n, 0.6, 5.0, 100.0),
    }


def _majortom_batches(pool_rows, pool_cols, seed: int, split: str) -> Iterator[dict]:
    for i, start in enumerate(range(0, len(pool_rows), CELL_BATCH)):
        rng = np.random.default_rng([seed, SPLITS.index(split), 0, i])
        yield _majortom_batch(pool_rows[start : start + CELL_BATCH], pool_cols[start : start + CELL_BATCH], rng)


def _majortom_pool(seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """This split's land cells in a seeded random order: train the head, val the tail."""
    rows, cols = majortom_land_cells()
    order = np.random.default_rng([seed, 0xCE11]).permutation(len(rows))
    n_val = int(len(order) * VAL_CELL_SHARE)
    order = order[:-n_val] if split == "train" else order[-n_val:]
    return rows[order], cols[order]


def _majortom_sample_ids(b: dict) -> pa.Array:
    def signed(v, pos, neg):
        return pc.binary_join_element_wise(
            pc.cast(pa.array(np.abs(v)), pa.string()), pc.if_else(pa.array(v >= 0), pos, neg), ""
        )

    parts = [
        signed(b["row"], "U", "D"),
        signed(b["col"], "R", "L"),
        *(pc.cast(pa.array(b[k]), pa.string()) for k in "ab"),
    ]
    return pc.binary_join_element_wise(*parts, "_")


# --- SSL4EO-S12 --------------------------------------------------------------------------------


@functools.cache
def _ssl4eos12_centres() -> np.ndarray:
    with np.load(DATA / "ssl4eos12_centres.npz") as z:
        return z["lonlat_centideg"].astype("float64") / 100


def _ssl4eos12_grids(rng, n: int) -> dict[str, np.ndarray]:
    """n patch grids on land, scattered around real SSL4EO-S12 places (rejection sampling)."""
    centres = _ssl4eos12_centres()
    out = {k: np.empty(n, "float64") for k in ("x0", "y0")}
    out["crs"] = np.empty(n, np.int64)
    pending = np.arange(n)
    for _ in range(100):
        c = centres[rng.integers(0, len(centres), len(pending))]
        lat = np.clip(c[:, 1] + rng.normal(0, SSL4EOS12_SCATTER_KM / KM_PER_DEG, len(pending)), -80, 80)
        dlon = rng.normal(0, SSL4EOS12_SCATTER_KM / KM_PER_DEG, len(pending)) / np.cos(np.radians(lat))
        lon = (c[:, 0] + dlon + 180) % 360 - 180
        epsg = utm_epsg(lat, lon)
        x, y = _by_zone(epsg, lon, lat, to_wgs84=False)
        x0, y0 = np.round((x - HALF) / RES) * RES, np.round((y + HALF) / RES) * RES
        clon, clat = _by_zone(epsg, x0 + HALF, y0 - HALF, to_wgs84=True)
        ok = _in_s2_coverage(clon, clat)
        done = pending[ok]
        out["x0"][done], out["y0"][done], out["crs"][done] = x0[ok], y0[ok], epsg[ok]
        pending = pending[~ok]
        if not len(pending):
            return out
    raise RuntimeError("could not place SSL4EO-S12 locations on land")  # 100 tries: does not happen


def _ssl4eos12_batch(location_ids: np.ndarray, rng) -> dict[str, np.ndarray]:
    """4 seasons of each location: same grid, dates ~91 days apart."""
    n = len(location_ids)
    grid = _ssl4eos12_grids(rng, n)
    geo = _grid_geometry(grid["crs"], grid["x0"], grid["y0"])
    first = _days_ns("2019-12-15", "2021-01-01", rng, n)
    gaps = np.column_stack([np.zeros(n), rng.normal(91, 9, (n, 3))]).round().astype(np.int64)
    day = (first[:, None] + np.cumsum(gaps, axis=1) * NS_PER_DAY).ravel()
    out = {k: np.repeat(v, 4, axis=0) for k, v in {**grid, **geo}.items()}
    out["location"] = np.repeat(location_ids, 4)
    out["season"] = np.tile(np.arange(4), n)
    m = 4 * n
    out["S2_time"] = _at_solar_time(day, out["center_lon"], _s2_solar_hours(rng, m))
    out["S1_time"] = _s1_times(rng, day, out["center_lon"])
    out["cloud_cover"] = _cloud_cover(rng, m, 0.8, 2.5, 10.0)
    return out


def _ssl4eos12_batches(seed: int, split: str, n_train: int, n_val: int) -> Iterator[dict]:
    """Location ids: a seeded permutation of the id range, train from its head, val its tail."""
    ids = np.random.default_rng([seed, 0x55E]).permutation(max(SSL4EOS12_LOCATION_IDS, n_train + n_val))
    ids = ids[:n_train] if split == "train" else ids[len(ids) - n_val :]
    for i, start in enumerate(range(0, len(ids), LOCATION_BATCH)):
        rng = np.random.default_rng([seed, SPLITS.index(split), 1, i])
        yield _ssl4eos12_batch(ids[start : start + LOCATION_BATCH], rng)


def _ssl4eos12_sample_ids(b: dict) -> pa.Array:
    loc = pc.utf8_lpad(pc.cast(pa.array(b["location"]), pa.string()), 7, "0")
    return pc.binary_join_element_wise(loc, pc.cast(pa.array(b["season"]), pa.string()), "_")


# --- table ---------------------------------------------------------------------------------------


def _rechunk(batches: Iterator[dict], total: int, size: int) -> Iterator[dict]:
    """Exactly `total` rows from `batches`, in pieces of `size` (the last one smaller)."""
    if total == 0:
        return
    buffer: list[dict] = []
    held = done = 0
    for batch in batches:
        buffer.append(batch)
        held += len(batch["crs"])
        while held >= size or (held and done + held >= total):
            merged = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
            take = min(size, total - done)
            yield {k: v[:take] for k, v in merged.items()}
            done += take
            if done == total:
                return
            buffer, held = [{k: v[take:] for k, v in merged.items()}], held - take
    raise RuntimeError(f"{total:,} rows need more locations than the grid offers; use fewer rows")


def _footprints(b: dict) -> pa.Array:
    """WKB polygons of the corners; the few crossing 180 deg split as synth.footprint_wgs84 does."""
    corners = b["corners"]
    ring = np.concatenate([corners, corners[:, :1]], axis=1)
    geoms = shapely.polygons(ring)
    lon = corners[..., 0]
    for i in np.flatnonzero(lon.max(axis=1) - lon.min(axis=1) > 180):
        geoms[i] = footprint_wgs84(int(b["crs"][i]), float(b["x0"][i]), float(b["y0"][i]), per_edge=1)
    return pa.array(shapely.to_wkb(geoms), pa.binary())


def _table(b: dict, *, source: str, split: str, offset: int, key_base: int, first_shard: int, spp: int) -> pa.Table:
    """A row group of `source`'s rows offset.. of the split: key numbers key_base + 1 + offset..,
    `spp` samples per shard from shard number first_shard on."""
    n = len(b["crs"])
    pos = offset + np.arange(n)
    numbers = pa.array(key_base + 1 + pos)
    shard_no = first_shard + pos // spp
    names = pa.array([f"{source}_shard_{k:06d}.tar" for k in range(shard_no[0], shard_no[-1] + 1)])
    x0, y0 = b["x0"], b["y0"]
    bounds = np.column_stack([x0, y0 - SIZE * RES, x0 + SIZE * RES, y0]).ravel()
    cols = {
        "tar": pc.take(names, pa.array(shard_no - shard_no[0])),
        "zarr": pc.binary_join_element_wise(
            f"{source}_{split}_", pc.utf8_lpad(pc.cast(numbers, pa.string()), 7, "0"), ".zarr.zip", ""
        ),
        "sample_id": _majortom_sample_ids(b) if source == "majortom" else _ssl4eos12_sample_ids(b),
        "split": pa.repeat(pa.scalar(split), n),
        "center_lon": pa.array(b["center_lon"]),
        "center_lat": pa.array(b["center_lat"]),
        "crs": pa.array(b["crs"], pa.int64()),
        "bounds": pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * n + 1, 4, dtype=np.int32)), pa.array(bounds)),
        "geometry": _footprints(b),
        "S2_time": pa.array(b["S2_time"].astype("datetime64[ns]"), pa.timestamp("ns")),
        "S1_time": pa.array(b["S1_time"].astype("datetime64[ns]"), pa.timestamp("ns")),
        "cloud_cover": pa.array(b["cloud_cover"]),
    }
    return pa.table(cols, schema=SCHEMA)


SCHEMA = pa.schema(
    [
        ("tar", pa.string()),
        ("zarr", pa.string()),
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("center_lon", pa.float64()),
        ("center_lat", pa.float64()),
        ("crs", pa.int64()),
        ("bounds", pa.list_(pa.float64())),
        ("geometry", pa.binary()),
        ("S2_time", pa.timestamp("ns")),
        ("S1_time", pa.timestamp("ns")),
        ("cloud_cover", pa.float64()),
    ]
)


def generate_metadata(
    out_dir,
    rows: int = FULL_ROWS,
    *,
    seed: int = 0,
    splits=SPLITS,
    samples_per_shard: int = SAMPLES_PER_SHARD,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write `{split}_metadata.parquet` for each of `splits` under out_dir (rows counted over
    both splits, as if both were written); return {split: rows written}. `progress(n)` is
    called after each row group with the rows it held."""
    rows = parse_rows(rows)
    if samples_per_shard < 1:
        raise ValueError(f"samples per shard must be >= 1, got {samples_per_shard}")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {', '.join(SPLITS)}")
    counts = split_counts(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = SHARDS_PER_ROW_GROUP * samples_per_shard
    written = {}
    for split in splits:
        n_mt, n_ssl = counts[split]["majortom"], counts[split]["ssl4eos12"]
        streams = [
            ("majortom", n_mt, _majortom_batches(*_majortom_pool(seed, split), seed, split), 0, 1),
            (
                "ssl4eos12",
                n_ssl,
                _ssl4eos12_batches(seed, split, counts["train"]["ssl4eos12"] // 4, counts["val"]["ssl4eos12"] // 4),
                n_mt,
                -(-n_mt // samples_per_shard) + 1,
            ),
        ]
        path = out / f"{split}_metadata.parquet"
        partial = path.with_name(path.name + ".partial")  # renamed when complete: no half file
        schema = SCHEMA.with_metadata(_metadata.geoparquet_metadata(["Polygon", "MultiPolygon"]))
        try:
            _write_split(partial, schema, streams, split, group, samples_per_shard, progress)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        written[split] = n_mt + n_ssl
    return written


def _write_split(path, schema, streams, split, group, samples_per_shard, progress) -> None:
    with pq.ParquetWriter(path, schema) as writer:
        for source, total, batches, key_base, first_shard in streams:
            done = 0
            for chunk in _rechunk(batches, total, group):
                table = _table(
                    chunk,
                    source=source,
                    split=split,
                    offset=done,
                    key_base=key_base,
                    first_shard=first_shard,
                    spp=samples_per_shard,
                )
                writer.write_table(table, row_group_size=len(chunk["crs"]))
                done += table.num_rows
                if progress:
                    progress(table.num_rows)
