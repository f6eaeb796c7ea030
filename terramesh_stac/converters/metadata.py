"""Read and write TerraMesh's `{split}_metadata.parquet` (format notes section 4).

Column types of the real file are partly unknown, so reading normalises them:

- `key`: the `zarr` column minus `.zarr.zip` (the sample key used in the tars);
- `crs` int EPSG, `center_lon`/`center_lat` float;
- `bounds`: list of 4 floats, from a list/array or from a string such as "[a, b, c, d]";
- `geometry`: shapely geometry, from WKB bytes, hex WKB or WKT;
- `S2_time`/`S1_time`: tz-aware UTC pandas Timestamp, or None;
- `cloud_cover`: percent 0-100. If the column's maximum is <= 1 the column is taken as a
  fraction and multiplied by 100. (A 0-100 column whose samples are all <= 1 % cloudy would
  be misread as a fraction; with thousands of rows per file that does not happen.)
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

COLUMNS = (
    "tar",
    "zarr",
    "sample_id",
    "split",
    "center_lon",
    "center_lat",
    "crs",
    "bounds",
    "geometry",
    "S2_time",
    "S1_time",
    "cloud_cover",
)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def key_of_member(name: str) -> str:
    """`majortom_val_0000001.zarr.zip` -> `majortom_val_0000001` (WebDataset: split at first dot)."""
    base = name.rsplit("/", 1)[-1]
    return base.split(".", 1)[0]


def _bounds(v) -> list[float] | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (str, bytes)):
        nums = _NUMBER.findall(v.decode() if isinstance(v, bytes) else v)
    else:
        nums = list(v)
    if len(nums) != 4:
        raise ValueError(f"bounds should hold 4 numbers, got {v!r}")
    return [float(n) for n in nums]


def _geometry(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return shapely.from_wkb(bytes(v))
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"[0-9A-Fa-f]+", s):  # hex WKB
            return shapely.from_wkb(bytes.fromhex(s))
        return shapely.from_wkt(s)
    if isinstance(v, shapely.Geometry):
        return v
    raise ValueError(f"unsupported geometry value of type {type(v).__name__}")


def _time(v) -> pd.Timestamp | None:
    if v is None:
        return None
    t = pd.Timestamp(v)
    if pd.isna(t):
        return None
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def normalise(df: pd.DataFrame) -> dict[str, dict]:
    """A metadata table -> {key: row dict}, with the value types listed in the module doc."""
    if "zarr" not in df.columns:
        raise ValueError("metadata table has no 'zarr' column")
    cc = None
    if "cloud_cover" in df.columns:
        cc = pd.to_numeric(df["cloud_cover"], errors="coerce").astype(float)
        if cc.max(skipna=True) <= 1.0:  # a fraction, not percent
            cc = cc * 100.0
    rows: dict[str, dict] = {}
    records = df.to_dict("records")
    for i, r in enumerate(records):
        key = key_of_member(str(r["zarr"]))
        row = {"key": key}
        for col in ("tar", "sample_id", "split"):
            if col in r:
                row[col] = None if r[col] is None else str(r[col])
        for col in ("center_lon", "center_lat"):
            if col in r:
                row[col] = None if pd.isna(r[col]) else float(r[col])
        if "crs" in r:
            row["crs"] = None if pd.isna(r["crs"]) else int(r["crs"])
        if "bounds" in r:
            row["bounds"] = _bounds(r["bounds"])
        if "geometry" in r:
            row["geometry"] = _geometry(r["geometry"])
        for col in ("S2_time", "S1_time"):
            if col in r:
                row[col] = _time(r[col])
        if cc is not None:
            v = cc.iloc[i]
            row["cloud_cover"] = None if pd.isna(v) else float(v)
        rows[key] = row
    return rows


def read_metadata(file, *, shard: str | None = None) -> dict[str, dict]:
    """Read a metadata parquet (path or binary file object); only `shard`'s rows if given
    (row-group filtering keeps the train file's 9 M rows out of memory)."""
    filters = [("tar", "==", shard)] if shard else None
    table = pq.read_table(file, filters=filters)
    return normalise(table.to_pandas())


def write_metadata(
    rows: list[dict], path, *, geometry_as: str = "wkb", bounds_as: str = "list", cloud_cover_as: str = "percent"
) -> None:
    """Write rows (keys = COLUMNS; geometry shapely, times Timestamp/None, cloud_cover percent)
    as a GeoParquet-style file like SSL4EO-S12's: WKB geometry, timestamp[ns] columns.

    The keyword options write the other plausible variants the reader accepts:
    geometry_as "wkb" | "wkt", bounds_as "list" | "string", cloud_cover_as "percent" | "fraction".
    """

    def geom(g):
        return shapely.to_wkb(g) if geometry_as == "wkb" else shapely.to_wkt(g, rounding_precision=-1)

    def bounds(b):
        return [float(x) for x in b] if bounds_as == "list" else json.dumps([float(x) for x in b])

    def ts(t):
        t = _time(t)
        return None if t is None else t.tz_convert(None).as_unit("ns")

    scale = 1.0 if cloud_cover_as == "percent" else 0.01
    cols = {
        "tar": pa.array([r["tar"] for r in rows], pa.string()),
        "zarr": pa.array([r["zarr"] for r in rows], pa.string()),
        "sample_id": pa.array([r["sample_id"] for r in rows], pa.string()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
        "center_lon": pa.array([r["center_lon"] for r in rows], pa.float64()),
        "center_lat": pa.array([r["center_lat"] for r in rows], pa.float64()),
        "crs": pa.array([r["crs"] for r in rows], pa.int64()),
        "bounds": pa.array(
            [bounds(r["bounds"]) for r in rows], pa.list_(pa.float64()) if bounds_as == "list" else pa.string()
        ),
        "geometry": pa.array([geom(r["geometry"]) for r in rows], pa.binary() if geometry_as == "wkb" else pa.string()),
        "S2_time": pa.array([ts(r.get("S2_time")) for r in rows], pa.timestamp("ns")),
        "S1_time": pa.array([ts(r.get("S1_time")) for r in rows], pa.timestamp("ns")),
        "cloud_cover": pa.array(
            [None if r.get("cloud_cover") is None else r["cloud_cover"] * scale for r in rows], pa.float64()
        ),
    }
    table = pa.table(cols)
    if geometry_as == "wkb":
        names = {3: "Polygon", 6: "MultiPolygon"}
        types = [names.get(t, "Unknown") for t in sorted({shapely.get_type_id(r["geometry"]) for r in rows})]
        table = table.replace_schema_metadata(geoparquet_metadata(types))
    pq.write_table(table, path)


def geoparquet_metadata(geometry_types: list[str]) -> dict[bytes, bytes]:
    """The schema metadata declaring `geometry` a GeoParquet WKB column of these types."""
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": geometry_types}},
    }
    return {b"geo": json.dumps(geo).encode()}
