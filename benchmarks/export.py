"""`terramesh-stac export geoparquet` and search_parquet on a synthetic catalog.

    .venv/bin/python benchmarks/export.py [--rows 30000] [--queries 50] [--row-group-sizes 10000,1000]

Starts its own throwaway pgstac cluster (removed at the end). Items: one lean item per row of
the synthetic metadata parquets (`synth --metadata-only`: Major TOM grid cells over land,
SSL4EO-S12-like clusters, S2 times 2017-2024, cloud cover skewed to clear), shaped like the
converter's items (footprint, datetime, eo:cloud_cover, proj:code, terramesh:*, 9 assets with
href and file:size; the rest comes from the collection's item_assets on hydration), loaded with
terramesh_stac.catalog.loader.load. Then, per row group size: the export (time, bytes per
item, files, row groups) and the search of issue 12 item 6 (a random 1-degree bbox around a
sample + a random year + eo:cloud_cover < 20, limit 10) answered from the parquet with DuckDB
(search_parquet), next to pgstac's own `search()` of the same bodies (pgstac-side hydration,
no HTTP: the database's part of an API search).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, pgstac_cluster, summary_ms  # noqa: E402

CID = "terramesh-exportbench"
MODALITIES = ("S2L1C", "S2L2A", "S2RGB", "DEM", "NDVI", "LULC")


def write_items(source: Path, dest: Path) -> int:
    """collection.json + items/<split>.ndjson from the metadata parquets; returns the count."""
    import pyarrow.parquet as pq
    import shapely

    from terramesh_stac.converters.collection import create_collection

    dest.mkdir(parents=True)
    collection = create_collection(collection_id=CID).to_dict(include_self_link=False, transform_hrefs=False)
    (dest / "collection.json").write_text(json.dumps(collection))
    (dest / "items").mkdir()
    count = 0
    for f in sorted(source.glob("*_metadata.parquet")):
        t = pq.read_table(f).to_pylist()
        with open(dest / "items" / f.name.replace("_metadata.parquet", ".ndjson"), "w") as out:
            for row in t:
                key = row["zarr"].removesuffix(".zarr.zip")
                geom = shapely.from_wkb(row["geometry"])
                s1 = "S1RTC" if key.startswith("majortom") else "S1GRD"
                assets = {m: {"href": f"s3://terramesh/assets/{key}/{m}.tif", "file:size": 400_000} for m in MODALITIES}
                assets[s1] = {"href": f"s3://terramesh/assets/{key}/{s1}.tif", "file:size": 550_000}
                assets["cloud_mask"] = {"href": f"s3://terramesh/assets/{key}/cloud_mask.tif", "file:size": 9_000}
                assets["thumbnail"] = {"href": f"s3://terramesh/assets/{key}/thumbnail.jpg", "file:size": 12_000}
                item = {
                    "type": "Feature",
                    "stac_version": "1.1.0",
                    "stac_extensions": [
                        "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
                        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                        "https://stac-extensions.github.io/file/v2.1.0/schema.json",
                    ],
                    "id": key,
                    "collection": CID,
                    "geometry": shapely.geometry.mapping(geom),
                    "bbox": list(geom.bounds),
                    "properties": {
                        "datetime": row["S2_time"].isoformat() + "Z",
                        "eo:cloud_cover": row["cloud_cover"],
                        "proj:code": f"EPSG:{row['crs']}",
                        "terramesh:split": row["split"],
                        "terramesh:source": key.split("_", 1)[0],
                        "terramesh:s1_datetime": row["S1_time"].isoformat() + "Z",
                    },
                    "links": [],
                    "assets": assets,
                }
                out.write(json.dumps(item) + "\n")
                count += 1
    return count


def queries(source: Path, count: int, seed: int) -> list[dict]:
    """benchmarks/scale.py's search bodies (a 1-degree bbox around a random sample, a random
    year, cloud < 20, limit 10), for this benchmark's collection."""
    from scale import sample_queries

    bodies, _ = sample_queries(source, count, seed)
    return [{**b, "collections": [CID]} for b in bodies]


def run_with_peak_rss(cmd: list[str]) -> int:
    """Run a command to its end; its peak resident memory in bytes (sampled every 0.1 s)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak, ps = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    if proc.wait():
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return peak


def ms(seconds: list[float]) -> str:
    p50, p95, mean = summary_ms(seconds)
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, mean {mean:.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--row-group-sizes", default="10000,1000")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(conditions(command_line()))

    import psycopg
    import pyarrow.parquet as pq

    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.export import search_parquet
    from terramesh_stac.catalog.loader import load
    from terramesh_stac.converters.synth_metadata import generate_metadata

    with tempfile.TemporaryDirectory(prefix="terramesh-exportbench-", dir="/tmp") as work, pgstac_cluster() as settings:
        work = Path(work)
        generate_metadata(work / "source", args.rows, seed=args.seed, samples_per_shard=1024)
        n = write_items(work / "source", work / "dest")
        nd_bytes = sum(f.stat().st_size for f in (work / "dest" / "items").glob("*.ndjson"))
        print(f"\n{n:,} items, {nd_bytes / n:,.0f} B per item as NDJSON")
        t = time.perf_counter()
        load(str(work / "dest"), database.dsn(settings, "loader"), partition="year")
        print(f"loaded in {time.perf_counter() - t:.1f} s")
        bodies = queries(work / "source", args.queries, args.seed)

        with psycopg.connect(database.dsn(settings, "api")) as conn:
            secs, found = [], 0
            for b in bodies:
                t = time.perf_counter()
                found += len(
                    conn.execute("SELECT pgstac.search(%s::text::jsonb)", (json.dumps(b),)).fetchone()[0]["features"]
                )
                secs.append(time.perf_counter() - t)
            print(f"\npgstac search() (in the database, pgstac hydration), {len(bodies)} searches: {ms(secs)}; "
                  f"{found / len(bodies):.1f} items per search")  # fmt: skip

        for size in [int(s) for s in args.row_group_sizes.split(",")]:
            out = work / f"export-{size}"
            cmd = [sys.executable, "-m", "terramesh_stac.cli", "export", "geoparquet", "--quiet"]
            cmd += ["--dsn", database.dsn(settings, "loader"), "--collection", CID, "--out", str(out)]
            t = time.perf_counter()
            peak = run_with_peak_rss(cmd + ["--row-group-size", str(size)])
            seconds = time.perf_counter() - t
            files = sorted(out.rglob("*.parquet"))
            size_bytes = sum(f.stat().st_size for f in files)
            groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
            print(f"\nexport, row groups of {size:,}: {n:,} items in {seconds:.1f} s ({n / seconds:,.0f} items/s); "
                  f"{size_bytes / 1e6:.1f} MB = {size_bytes / n:,.0f} B per item; {len(files)} files, {groups} row groups; peak RSS {peak / 1e6:,.0f} MB")  # fmt: skip
            for label in ("cold (first run)", "warm"):
                secs, found = [], 0
                for b in bodies:
                    t = time.perf_counter()
                    found += len(
                        search_parquet(str(out), bbox=b["bbox"], datetime_range=b["datetime"], max_cloud=20, limit=10)
                    )
                    secs.append(time.perf_counter() - t)
                print(f"    search_parquet (DuckDB), items returned, {label}: {ms(secs)}; "
                      f"{found / len(bodies):.1f} items per search")  # fmt: skip
            secs = []
            for b in bodies:
                t = time.perf_counter()
                search_parquet(str(out), bbox=b["bbox"], datetime_range=b["datetime"], max_cloud=20, ids_only=True)
                secs.append(time.perf_counter() - t)
            print(f"    search_parquet ids only: {ms(secs)}")


if __name__ == "__main__":
    main()
