"""Time per map tile, for each layer at the zooms where the map uses it (issue 13).

    .venv/bin/python benchmarks/map_tiles.py [--rows 1000000] [--requests 100] [--work /tmp] [--keep]

One embedded pgstac cluster (TERRAMESH_STATE_DIR under --work), commands run as a user runs
them, one `terramesh-stac serve`, requests one at a time (httpx, c=1, no HTTP cache):

1. the large catalog: `synth --metadata-only --rows N` -> `catalog` -> `load` (which recounts
   the density: its time is printed), collection `terramesh`; then
   - density tiles z0-z5 (`/vector/density`), at the locations of random samples (so each
     zoom's tiles are the ones a user looking at the data asks for), without and with filters
     (eo:cloud_cover <= 20 and one year);
   - footprint tiles z6-z10 (`/vector/footprints`), same locations, the whole collection and
     a registered search (the same filters); features per tile and tiles truncated.
2. real pixels: the zoom-10 tile holding the most samples (from the density table) and the
   zoom-11 tiles of random samples, every item intersecting them fetched from the STAC API and given an
   S2L2A COG on its own grid (one converted demo sample's pixels, written as the converter
   writes COGs: no overviews), loaded as collection `terramesh-pixels`; then
   - `db mosaic` (the map's mosaic seeded ahead, tile zooms 11-13: catalog/mosaic_cache.py):
     its time, tiles and bytes, and what seeding the 9.2 M catalog would cost at that rate;
   - mosaic tiles z11-z14 at the tiles holding --mosaic-places random samples (where users
     look; their zoom-11 tiles' items get COGs too) and at random places in the densest
     tile, with the items each tile holds: as the map asks them (the seeded tiles at z11-13,
     `/vector/mosaic`; the live mosaic of a registered search at z14), and the live mosaic
     at z11-13 too (what the seeding replaces);
   - one item's tile zoomed out and in (z9-z14): ours (`/raster/.../items/.../tiles`) next to
     plain rio-tiler (`Reader(cog).tile`, in this process) on the same COG and on the same COG
     with 3 overview levels, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import morecantile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, free_port, percentile, temp_dir  # noqa: E402
from scale import cli, run, wait_up  # noqa: E402

CID = "terramesh"
PIXELS_CID = "terramesh-pixels"
FILTER_YEAR = 2020
COG_OPTIONS = (
    "driver",
    "blockxsize",
    "blockysize",
    "tiled",
    "compress",
    "interleave",
    "predictor",
    "zstd_level",
    "nodata",
)


def locations(source: Path, count: int, seed: int) -> list[tuple[float, float]]:
    """`count` random sample centres (lon, lat) from the metadata parquets."""
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    files = sorted(source.glob("*_metadata.parquet"))
    out = []
    while len(out) < count:
        meta = pq.ParquetFile(rng.choice(files))
        t = meta.read_row_group(rng.randrange(meta.num_row_groups), columns=["center_lon", "center_lat"])
        i = rng.randrange(t.num_rows)
        out.append((t["center_lon"][i].as_py(), t["center_lat"][i].as_py()))
    return out


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, z)
    return t.x, t.y


def timed_get(client: httpx.Client, url: str, params: dict | None = None) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = client.get(url, params=params)
    seconds = time.perf_counter() - t
    if r.status_code not in (200, 204):  # 204: a mosaic tile with no item in it
        raise RuntimeError(f"{url} {params}: {r.status_code} {r.text[:300]}")
    return seconds, r


def row(label: str, seconds: list[float], extra: str = "") -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"| {label} | {len(ms)} | {percentile(ms, 50):,.0f} | {percentile(ms, 95):,.0f} | {max(ms):,.0f} |"
        f" {'yes' if percentile(ms, 95) <= 300 else 'NO'} | {extra} |"
    )


TABLE_HEAD = "| layer, zoom | tiles | p50 ms | p95 ms | max ms | p95 <= 300 | notes |\n|---|---|---|---|---|---|---|"


def register(client: httpx.Client, base: str, body: dict) -> str:
    r = client.post(f"{base}/raster/searches/register", json=body)
    r.raise_for_status()
    return r.json()["id"]


def filters_body(cid: str) -> dict:
    return {
        "collections": [cid],
        "datetime": f"{FILTER_YEAR}-01-01T00:00:00Z/{FILTER_YEAR}-12-31T23:59:59Z",
        "filter-lang": "cql2-json",
        "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20]},
    }


def vector_tiles(base: str, points: list[tuple[float, float]]) -> None:
    import mapbox_vector_tile

    print("\n" + TABLE_HEAD)
    with httpx.Client(timeout=120) as client:
        search_all = register(client, base, {"collections": [CID]})
        search_filtered = register(client, base, filters_body(CID))
        density_filters = {"max_cloud": 20, "year_min": FILTER_YEAR, "year_max": FILTER_YEAR}
        for z in range(0, 6):
            for label, params in (("density", {}), ("density, filtered", density_filters)):
                seconds, cells = [], []
                for lon, lat in points:
                    x, y = tile_of(lon, lat, z)
                    s, r = timed_get(client, f"{base}/vector/density/{z}/{x}/{y}.pbf", {"collection": CID, **params})
                    seconds.append(s)
                    cells.append(len(mapbox_vector_tile.decode(r.content).get("density", {}).get("features", [])))
                print(row(f"{label} z{z}", seconds, f"cells per tile p50 {percentile(cells, 50):,.0f}"), flush=True)
        for z in range(6, 11):
            for label, search in (("footprints", search_all), ("footprints, filtered search", search_filtered)):
                seconds, features, truncated = [], [], 0
                for lon, lat in points:
                    x, y = tile_of(lon, lat, z)
                    s, r = timed_get(
                        client, f"{base}/vector/footprints/{z}/{x}/{y}.pbf", {"collection": CID, "search": search}
                    )
                    seconds.append(s)
                    truncated += "x-footprints-truncated" in r.headers
                    features.append(len(mapbox_vector_tile.decode(r.content).get("footprints", {}).get("features", [])))
                print(
                    row(
                        f"{label} z{z}",
                        seconds,
                        f"features p50 {percentile(features, 50):,.0f}, max {max(features):,}; truncated {truncated}",
                    ),
                    flush=True,
                )


def write_cog(data, profile: dict, crs: str, transform: list[float], path: Path, overview_level: int = 0) -> None:
    """`data` as a COG at `path` on the grid (crs, transform), as the converter writes them
    (its tile size and compression), with `overview_level` overview levels."""
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine
    from rio_cogeo.cogeo import cog_translate

    with MemoryFile() as mem:
        with mem.open(**{**profile, "crs": crs, "transform": Affine(*transform[:6])}) as dst:
            dst.write(data)
        with mem.open() as src:
            options = {k: v for k, v in profile.items() if k in COG_OPTIONS}
            cog_translate(
                src, str(path), options, overview_level=overview_level, overview_resampling="nearest",
                quiet=True, add_mask=False, use_cog_driver=False,
            )  # fmt: skip


def densest_tile(dsn: str, z: int) -> tuple[int, int, int]:
    """The zoom-z tile (z <= 10) holding the most samples of the large catalog, from the
    density table (its level-5 cells are the tiles of zoom 10)."""
    import psycopg

    from terramesh_stac.catalog import density

    shift = density.MAX_LEVEL + density.CELLS_ZOOM_OFFSET - z
    with psycopg.connect(dsn) as conn:
        x, y, n = conn.execute(
            "SELECT x >> %s, y >> %s, sum(n) FROM terramesh.density WHERE collection = %s AND level = %s"
            " GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1",
            (shift, shift, CID, density.MAX_LEVEL),
        ).fetchone()
    return x, y, n


def pixel_collection(base: str, demo_dest: Path, out: Path, boxes: list[tuple]) -> tuple[int, str, Path, Path]:
    """Every item of the large catalog within any of `boxes` (as the STAC API serves them),
    with an S2L2A COG written on its own grid (the pixels of one converted demo sample):
    collection PIXELS_CID in folder `out`. Returns the item count, an item near the centre
    of the first box, its COG and the same COG with 3 overview levels (for plain rio-tiler)."""
    import rasterio

    collection = json.loads((demo_dest / "collection.json").read_text())
    demo_items = [json.loads(line) for f in sorted((demo_dest / "items").rglob("*.ndjson")) for line in f.open()]
    template = next(i for i in demo_items if "S2L2A" in i["assets"])
    with rasterio.open(template["assets"]["S2L2A"]["href"].removeprefix("file://")) as src:
        profile, data = src.profile, src.read()
    (out / "assets").mkdir(parents=True, exist_ok=True)
    (out / "items").mkdir(exist_ok=True)
    found: dict[str, dict] = {}
    with httpx.Client(timeout=120) as client:
        for bounds in boxes:
            url, body = f"{base}/stac/search", {"collections": [CID], "bbox": list(bounds), "limit": 1000}
            while url:
                page = client.post(url, json=body).raise_for_status().json()
                found.update((i["id"], i) for i in page["features"])
                nxt = next((link for link in page.get("links", []) if link["rel"] == "next"), None)
                url, body = (nxt["href"], nxt.get("body", body)) if nxt else (None, None)
    items = list(found.values())
    cx, cy = (boxes[0][0] + boxes[0][2]) / 2, (boxes[0][1] + boxes[0][3]) / 2
    lines = []
    for item in items:
        p = item["properties"]
        cog = out / "assets" / f"{item['id']}_S2L2A.tif"
        write_cog(data, profile, p["proj:code"], p["proj:transform"], cog)
        lines.append(
            json.dumps(
                {
                    **{k: item[k] for k in ("type", "stac_version", "stac_extensions", "id", "geometry", "bbox")},
                    "collection": PIXELS_CID,
                    "properties": p,
                    "links": [],
                    "assets": {"S2L2A": {**template["assets"]["S2L2A"], "href": str(cog)}},
                }
            )
        )
    centre = min(items, key=lambda i: (i["bbox"][0] - cx) ** 2 + (i["bbox"][1] - cy) ** 2)
    centre_cog = out / "assets" / f"{centre['id']}_S2L2A.tif"
    with_overviews = out / "centre_with_overviews.tif"
    p = centre["properties"]
    write_cog(data, profile, p["proj:code"], p["proj:transform"], with_overviews, overview_level=3)
    (out / "items" / "pixels.ndjson").write_text("\n".join(lines) + "\n")
    collection.update(id=PIXELS_CID, links=[])
    (out / "collection.json").write_text(json.dumps(collection))
    return len(items), centre["id"], centre_cog, with_overviews


def raster_tiles(base: str, dsn: str, places: dict, centre_id: str, cogs: dict[int, Path], requests: int, seed: int):
    """Mosaic tiles z11-z14 at each set of `places` (label -> [(lon, lat)]: the tile holding
    each): seeded (z11-13) and live; and the centre item's tiles z9-z14, ours and plain
    rio-tiler (COG without and with overviews), interleaved."""
    import psycopg
    from rio_tiler.io import Reader

    print("\n" + TABLE_HEAD)
    with httpx.Client(timeout=120) as client, psycopg.connect(dsn) as conn:
        search = register(client, base, {"collections": [PIXELS_CID]})
        revision = client.get(f"{base}/vector/revision", params={"collection": PIXELS_CID}).json()
        seeded = revision["seeded_mosaic"].get("true-color", {"minzoom": 99, "maxzoom": -1})
        layers = [(z, "seeded") for z in range(seeded["minzoom"], seeded["maxzoom"] + 1)]
        layers += [(z, "live") for z in range(11, 15)]
        for z, kind in layers:
            for label, points in places.items():
                seconds, counts = [], []
                for lon, lat in points:
                    x, y = tile_of(lon, lat, z)
                    if kind == "seeded":  # as the map asks it
                        url = f"{base}/vector/mosaic/true-color/{z}/{x}/{y}.webp"
                        params = {"collection": PIXELS_CID, "v": revision["revision"]}
                    else:
                        url = f"{base}/raster/searches/{search}/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
                        params = {"render": "true-color"}
                    seconds.append(timed_get(client, url, params)[0])
                    counts.append(
                        conn.execute(
                            "SELECT count(*) FROM pgstac.items WHERE collection = %s"
                            " AND geometry && ST_Transform(ST_TileEnvelope(%s, %s, %s), 4326)",
                            (PIXELS_CID, z, x, y),
                        ).fetchone()[0]
                    )
                note = f"{label}: items per tile p50 {percentile(counts, 50):,.0f}, max {max(counts)}"
                print(row(f"mosaic z{z}, {kind}", seconds, note), flush=True)
        print("\n| item tile, zoom | ours p50 ms | ours p95 ms | plain rio-tiler p50 / p95 ms |"
              " plain rio-tiler, COG with 3 overview levels, p50 / p95 ms |")  # fmt: skip
        print("|---|---|---|---|---|")
        with Reader(str(cogs[0])) as cog:
            w, s, e, n = cog.get_geographic_bounds(cog.tms.rasterio_geographic_crs)
        for z in range(9, 15):
            x, y = tile_of((w + e) / 2, (s + n) / 2, z)
            url = f"{base}/raster/collections/{PIXELS_CID}/items/{centre_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
            ours, plain = [], {0: [], 3: []}
            for _ in range(max(3, requests // 10)):  # ours and plain interleaved
                ours.append(timed_get(client, url, {"render": "true-color"})[0])
                for levels, path in cogs.items():
                    t = time.perf_counter()
                    with Reader(str(path)) as cog:
                        img = cog.tile(x, y, z, indexes=(4, 3, 2), resampling_method="nearest")
                        img.rescale(((0, 3000),) * 3)
                        img.render(img_format="PNG")
                    plain[levels].append(time.perf_counter() - t)
            ms = {k: (percentile(v, 50) * 1000, percentile(v, 95) * 1000) for k, v in plain.items()}
            print(
                f"| z{z} | {percentile(ours, 50) * 1000:,.0f} | {percentile(ours, 95) * 1000:,.0f} |"
                f" {ms[0][0]:,.0f} / {ms[0][1]:,.0f} | {ms[3][0]:,.0f} / {ms[3][1]:,.0f} |",
                flush=True,
            )


def seed_mosaic(env: dict, cwd: str, dsn: str) -> None:
    """`db mosaic` on the pixel collection as a user runs it; its tiles and bytes, and the
    cost of seeding the large catalog's tiles (scaled to TerraMesh's 9,178,624 samples)."""
    import psycopg

    from terramesh_stac.catalog import mosaic_cache

    seconds, proc = run(env, cli(), "db", "mosaic", "--collection", PIXELS_CID, "--render", "true-color", cwd=cwd)
    print(f"    `db mosaic` in {seconds:,.1f} s: {proc.stdout.strip()}")
    with psycopg.connect(dsn) as conn:
        spent, total = conn.execute(
            "SELECT seconds, tiles FROM terramesh.mosaic_seeds WHERE collection = %s", (PIXELS_CID,)
        ).fetchone()
        rows = conn.execute(
            "SELECT z, count(*), avg(length(data))::float8 FROM terramesh.mosaic_tiles WHERE collection = %s GROUP BY z",
            (PIXELS_CID,),
        ).fetchall()
        large = {z: mosaic_cache.count_tiles(conn, CID, z) for z, _, _ in rows}
        items = conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s", (CID,)).fetchone()[0]
    scale = 9_178_624 / items
    for z, n, size in sorted(rows):
        print(f"    z{z}: {n:,} tiles seeded here, {size / 1000:,.1f} kB each; the {items:,}-item catalog has"
              f" {large[z]:,} tiles with a footprint at z{z}")  # fmt: skip
    tiles = sum(large.values()) * scale
    hours = tiles * spent / total / 3600
    size = sum(large[z] * s for z, _, s in rows) * scale
    print(f"    seeding the 9.2 M catalog at this rate ({spent / total * 1000:,.0f} ms a tile, one process):"
          f" ~{tiles:,.0f} tiles, ~{hours:,.0f} process-hours, ~{size / 1e9:,.1f} GB in terramesh.mosaic_tiles"
          " (the large catalog's tiles scaled by 9.18 M / its items: an upper bound where samples overlap more)")  # fmt: skip


def serve(env: dict, cwd: str, dest: Path, collection_id: str, port: int, log) -> subprocess.Popen:
    server = subprocess.Popen(
        [cli(), "serve", "--port", str(port), "--dest", str(dest)],
        env=dict(env, TERRAMESH_COLLECTION_ID=collection_id),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_up(f"http://127.0.0.1:{port}/raster/healthz", server)
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="items of the large catalog")
    ap.add_argument("--requests", type=int, default=100, help="tiles per layer and zoom")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mosaic-places", type=int, default=40, help="random samples whose mosaic tiles are timed")
    ap.add_argument("--work", default="/tmp", help="folder for the run's files (~5 kB per row)")
    ap.add_argument("--keep", action="store_true", help="keep the files and the database (stopped)")
    args = ap.parse_args()
    print(conditions(command_line(), [f"rows: {args.rows:,}; one client in this process (c=1), on the same 2 cores"]))

    work = Path(temp_dir("terramesh-bench-map-", args.work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAMESH_")}
    env.update(TERRAMESH_STATE_DIR=str(work / "state"), TERRAMESH_DB_PORT=str(free_port()))
    cwd = str(work)
    source, dest = work / "source", work / "dest"
    server = None
    log = open(work / "serve.log", "wb")
    try:
        run(env, cli(), "db", "start", cwd=cwd)
        print(f"\n## 1. the large catalog: {args.rows:,} items")
        run(env, cli(), "synth", str(source), "--metadata-only", "--rows", str(args.rows), cwd=cwd)
        run(env, cli(), "catalog", str(source), "--dest", str(dest), "--split", "all", cwd=cwd)
        seconds, proc = run(env, cli(), "load", str(dest), cwd=cwd)
        print(f"    loaded in {seconds:,.0f} s (with the density recount)")
        t0 = time.perf_counter()
        loader = run(env, cli(), "db", "dsn", "--role", "loader", cwd=cwd)[1].stdout.strip()
        import psycopg

        from terramesh_stac.catalog import density

        with psycopg.connect(loader, autocommit=True) as conn:
            density.refresh(conn, CID)
            cells = conn.execute("SELECT count(*) FROM terramesh.density WHERE collection = %s", (CID,)).fetchone()[0]
        print(f"    density recount alone: {time.perf_counter() - t0:,.1f} s, {cells:,} rows in terramesh.density")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = serve(env, cwd, dest, CID, port, log)
        vector_tiles(base, locations(source, args.requests, args.seed))

        print("\n## 2. real pixels: the densest place and where random samples are")
        demo_source, demo_dest = work / "demo-source", work / "demo-dest"
        run(env, cli(), "synth", str(demo_source), cwd=cwd)
        convert = ["convert", str(demo_source), "--dest", str(demo_dest), "--collection", "terramesh-demo"]
        run(env, cli(), *convert, cwd=cwd)
        tms = morecantile.tms.get("WebMercatorQuad")
        x, y, n = densest_tile(loader, 10)
        b = tms.bounds(morecantile.Tile(x, y, 10))
        densest = (b.left, b.bottom, b.right, b.top)
        typical = locations(source, args.mosaic_places, args.seed + 1)  # where users look: where samples are
        boxes = [densest] + [tuple(tms.bounds(tms.tile(lon, lat, 11))) for lon, lat in typical]
        count, centre_id, centre_cog, with_overviews = pixel_collection(base, demo_dest, work / "pixels", boxes)
        run(env, cli(), "load", str(work / "pixels"), cwd=cwd)
        print(f"    {count:,} items given an S2L2A COG (collection {PIXELS_CID}): those of the densest zoom-10 tile,"
              f" 10/{x}/{y} ({n:,} samples counted at their centre), and of the zoom-11 tiles of"
              f" {len(typical)} random samples")  # fmt: skip
        seed_mosaic(env, cwd, loader)
        rng = random.Random(args.seed)
        places = {
            f"tiles of {len(typical)} random samples": typical,
            "random places in the densest zoom-10 tile": [
                (rng.uniform(densest[0], densest[2]), rng.uniform(densest[1], densest[3])) for _ in range(args.requests)
            ],
        }
        raster_tiles(base, loader, places, centre_id, {0: centre_cog, 3: with_overviews}, args.requests, args.seed)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        log.close()
        subprocess.run([cli(), "db", "stop"], env=env, cwd=cwd, capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
