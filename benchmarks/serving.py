"""Request latency of `terramesh-stac serve`: STAC searches, item tiles per render preset,
a registered-search mosaic tile, and a plain asset GET as the baseline.

    .venv/bin/python benchmarks/serving.py [--requests 200] [--warmup 10]

Builds the demo catalog exactly as `terramesh-stac demo --no-serve` does (that command, run
with TERRAMESH_STATE_DIR = a fresh temp dir and its own database port: embedded PostgreSQL +
pgstac, a GENERATED TerraMesh-format source of 3 shards x 8 samples, converted and loaded into
collection `terramesh-demo`), then starts `terramesh-stac serve` as a subprocess on a free port
(TERRAMESH_* env vars), and measures with one httpx client, sequentially (one request in
flight): --warmup requests per kind first (not counted), then --requests per kind.
At the end the server and the database are stopped and the temp dir removed.

The same source is also converted with `--format zarr` into a second collection
(`terramesh-demo-zarr`, loaded into the same database, not timed), and each preset's item tile
is measured on it too: the same sample and tile read from the shard's stacked Zarr store
(catalog/zarr_tiles.py) instead of its COG.

No plain titiler-core COG endpoint (/cog/tiles/...) is mounted by catalog/app.py, so the
baseline for tiles is the plain `/assets/<key>/<MODALITY>.tif` GET (Starlette FileResponse),
not a titiler COG tile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, free_port, loadavg, summary_ms, temp_dir  # noqa: E402

CID = "terramesh-demo"  # terramesh_stac.demo.DEMO_COLLECTION
ZARR_CID = "terramesh-demo-zarr"
VENV_BIN = Path(sys.executable).parent
# render preset -> the asset it needs (converters/collection.py RENDERS)
PRESET_ASSET = {
    "true-color": "S2L2A",
    "false-color": "S2L2A",
    "s2rgb": "S2RGB",
    "sar-rtc": "S1RTC",
    "sar-grd": "S1GRD",
    "dem": "DEM",
    "ndvi": "NDVI",
    "lulc": "LULC",
    "cloud-mask": "cloud_mask",
}


def cli() -> str:
    exe = VENV_BIN / "terramesh-stac"
    return str(exe) if exe.exists() else shutil.which("terramesh-stac") or "terramesh-stac"


def covering_tile(bbox: list[float], max_zoom: int = 16, min_zoom: int = 6):
    """The highest-zoom WebMercatorQuad tile that contains the whole bbox."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    for z in range(max_zoom, min_zoom - 1, -1):
        t = tms.tile(cx, cy, z)
        b = tms.bounds(t)
        if b.left <= bbox[0] and b.right >= bbox[2] and b.bottom <= bbox[1] and b.top >= bbox[3]:
            return t
    return tms.tile(cx, cy, min_zoom)


def wait_up(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"terramesh-stac serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/raster/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("terramesh-stac serve did not come up")


def measure(client: httpx.Client, method: str, url: str, body, n: int, warmup: int):
    """(seconds per request, status codes seen, bytes of the last response)."""
    statuses: set[int] = set()
    times = []
    size = 0
    for i in range(warmup + n):
        t = time.perf_counter()
        r = client.request(method, url, json=body) if body is not None else client.request(method, url)
        content = r.content  # read the whole body
        dt = time.perf_counter() - t
        statuses.add(r.status_code)
        size = len(content)
        if i >= warmup:
            times.append(dt)
    return times, statuses, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    ap.add_argument("--warmup", type=int, default=10, help="untimed requests per kind first")
    ap.add_argument("--slow-requests", type=int, default=5, help="timed requests for the zoomed-out tiles (1 warm-up)")
    args = ap.parse_args()

    state = temp_dir("terramesh-bench-serve-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAMESH_")}
    env.update(TERRAMESH_STATE_DIR=state, TERRAMESH_DB_PORT=str(free_port()), GDAL_NUM_THREADS="1")
    server = None
    try:
        t = time.perf_counter()
        demo = subprocess.run([cli(), "demo", "--no-serve"], env=env, cwd=state, capture_output=True, text=True)
        if demo.returncode not in (0, 3):
            raise RuntimeError(f"demo failed ({demo.returncode}):\n{demo.stdout}\n{demo.stderr}")
        demo_seconds = time.perf_counter() - t
        dest = Path(state) / "demo" / "output"
        zarr_convert = subprocess.run(
            [
                cli(),
                "convert",
                str(Path(state) / "demo" / "source"),
                "--dest",
                str(Path(state) / "zarr-output"),
                "--format",
                "zarr",
                "--collection",
                ZARR_CID,
                "--load",
                "--quiet",
            ],
            env=env,
            cwd=state,
            capture_output=True,
            text=True,
        )
        if zarr_convert.returncode != 0:
            raise RuntimeError(f"zarr convert failed:\n{zarr_convert.stdout}\n{zarr_convert.stderr}")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        senv = dict(
            env,
            TERRAMESH_DEST=str(dest),
            TERRAMESH_COLLECTION_ID=CID,
            TERRAMESH_HOST="127.0.0.1",
            TERRAMESH_PORT=str(port),
        )
        log = open(Path(state) / "serve.log", "w")
        server = subprocess.Popen([cli(), "serve"], env=senv, cwd=state, stdout=log, stderr=subprocess.STDOUT)
        wait_up(base, server)

        with httpx.Client(timeout=60) as client:
            items = client.get(f"{base}/stac/search", params={"collections": CID, "limit": 100}).json()["features"]
            n_items = len(items)
            # per asset: the item (not crossing the antimeridian) whose covering tile has the
            # highest zoom, so the tile is about the sample's size (264 px at 10 m)
            with_asset: dict[str, tuple[dict, object]] = {}
            for it in items:
                if it["bbox"][0] > it["bbox"][2]:
                    continue
                tile = covering_tile(it["bbox"])
                for k in it["assets"]:
                    if k not in with_asset or tile.z > with_asset[k][1].z:
                        with_asset[k] = (it, tile)
            # a bbox around the first item's neighbourhood (a few degrees) and a one-year window
            i0 = items[0]
            b = i0["bbox"]
            bbox = ",".join(str(round(v, 4)) for v in (b[0] - 5, b[1] - 5, b[2] + 5, b[3] + 5))
            year = (i0["properties"].get("datetime") or i0["properties"]["start_datetime"])[:4]
            first = client.get(f"{base}/stac/search", params={"collections": CID, "limit": 5}).json()
            next_url = next(link["href"] for link in first["links"] if link["rel"] == "next")
            s = f"{base}/stac/search?"
            kinds = [  # (group, label, method, url, body)
                ("search", "collection, limit 10", "GET", s + urlencode({"collections": CID, "limit": 10}), None),
                ("search", f"bbox {bbox}", "GET", s + urlencode({"collections": CID, "bbox": bbox, "limit": 10}), None),
                (
                    "search",
                    f"datetime {year}",
                    "GET",
                    s
                    + urlencode(
                        {"collections": CID, "datetime": f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z", "limit": 10}
                    ),
                    None,
                ),
                (
                    "search",
                    "CQL2 eo:cloud_cover < 10",
                    "GET",
                    s
                    + urlencode(
                        {"collections": CID, "filter": "eo:cloud_cover < 10", "filter-lang": "cql2-text", "limit": 10}
                    ),
                    None,
                ),
                (
                    "search",
                    "CQL2 terramesh:source = 'ssl4eos12'",
                    "GET",
                    s
                    + urlencode(
                        {
                            "collections": CID,
                            "filter": "\"terramesh:source\" = 'ssl4eos12'",
                            "filter-lang": "cql2-text",
                            "limit": 10,
                        }
                    ),
                    None,
                ),
                (
                    "search",
                    "POST bbox + datetime + CQL2 (README example shape)",
                    "POST",
                    f"{base}/stac/search",
                    {
                        "collections": [CID],
                        "bbox": [float(v) for v in bbox.split(",")],
                        "datetime": f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z",
                        "filter-lang": "cql2-json",
                        "filter": {
                            "op": "and",
                            "args": [
                                {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]},
                                {
                                    "op": "=",
                                    "args": [{"property": "terramesh:source"}, i0["properties"]["terramesh:source"]],
                                },
                            ],
                        },
                        "limit": 10,
                    },
                ),
                ("search", "paging: page 2 (next link of limit 5)", "GET", next_url, None),
                (
                    "search",
                    "item GET /stac/collections/{cid}/items/{iid}",
                    "GET",
                    f"{base}/stac/collections/{CID}/items/{i0['id']}",
                    None,
                ),
            ]
            for preset, asset in PRESET_ASSET.items():
                if asset not in with_asset:
                    print(f"# no item with asset {asset}: preset {preset} skipped")
                    continue
                it, tile = with_asset[asset]
                kinds.append(
                    (
                        "item tile",
                        f"{preset} ({asset}) z{tile.z}",
                        "GET",
                        f"{base}/raster/collections/{CID}/items/{it['id']}/tiles/WebMercatorQuad/"
                        f"{tile.z}/{tile.x}/{tile.y}.png?render={preset}",
                        None,
                    )
                )
                if asset != "cloud_mask":  # the cloud mask is a COG in both collections
                    kinds.append(
                        (
                            "item tile, Zarr",
                            f"{preset} ({asset}_zarr) z{tile.z}",
                            "GET",
                            f"{base}/raster/collections/{ZARR_CID}/items/{it['id']}/tiles/WebMercatorQuad/"
                            f"{tile.z}/{tile.x}/{tile.y}.png?render={preset}",
                            None,
                        )
                    )
            # mosaic: a registered search over the collection, the true-colour item's tile
            reg = client.post(
                f"{base}/raster/searches/register", json={"collections": [CID], "filter-lang": "cql2-json"}
            ).json()
            it, tile = with_asset["S2L2A"]
            kinds.append(
                (
                    "mosaic tile",
                    f"registered search, true-color, z{tile.z}",
                    "GET",
                    f"{base}/raster/searches/{reg['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
                    f"?render=true-color",
                    None,
                )
            )
            # zoomed out: the same item's true-colour and S1 tiles 4 zoom levels lower (the
            # sample covers a few pixels of the tile); slow, so only --slow-requests
            import morecantile

            tms = morecantile.tms.get("WebMercatorQuad")
            slow = []
            for preset in ("true-color", "s2rgb", "sar-rtc"):
                it, tile = with_asset[PRESET_ASSET[preset]]
                lon, lat = (it["bbox"][0] + it["bbox"][2]) / 2, (it["bbox"][1] + it["bbox"][3]) / 2
                low = tms.tile(lon, lat, tile.z - 4)
                slow.append(
                    (
                        "item tile, zoomed out",
                        f"{preset} z{low.z} (sample ~{256 >> 4} px of the tile)",
                        "GET",
                        f"{base}/raster/collections/{CID}/items/{it['id']}/tiles/WebMercatorQuad/"
                        f"{low.z}/{low.x}/{low.y}.png?render={preset}",
                        None,
                    )
                )
            # baselines: plain asset GETs of the same files a tile reads
            for asset in ("S2L2A", "DEM"):
                it = with_asset[asset][0]
                href = f"{base}/assets/{it['id']}/{asset}.tif"
                kinds.append(("baseline", f"GET /assets/<key>/{asset}.tif (whole file)", "GET", href, None))

            print(
                conditions(
                    command_line(),
                    [
                        f"data: GENERATED demo catalog (`terramesh-stac demo --no-serve`, {demo_seconds:.0f} s, not "
                        f"timed): {n_items} items in {CID}, 264 px COG assets; the same samples as Zarr "
                        f"(`convert --format zarr`) in {ZARR_CID}",
                        "server: `terramesh-stac serve` (one uvicorn worker, default pool sizes), client: one httpx "
                        "Client (keep-alive), sequential, on the same 2 cores as the server and PostgreSQL",
                        f"per kind: {args.warmup} warm-up requests (not counted), then {args.requests} timed; "
                        "time = request sent -> whole body read",
                        "no plain titiler-core COG tile endpoint in catalog/app.py: that baseline is skipped",
                    ],
                ),
                flush=True,
            )
            rows = []
            for group, label, method, url, body in kinds:
                times, statuses, size = measure(client, method, url, body, args.requests, args.warmup)
                rows.append((group, label + f" (n={args.requests})", *summary_ms(times), statuses, size))
            for group, label, method, url, body in slow:
                times, statuses, size = measure(client, method, url, body, args.slow_requests, 1)
                rows.append((group, label + f" (n={args.slow_requests})", *summary_ms(times), statuses, size))
            kinds += slow
            ref = next(r[2] for r in rows if r[0] == "baseline" and "S2L2A" in r[1])
            print(f"# load average (1/5/15 min) at the end: {loadavg()}")
            print()
            print("| group | request | p50 ms | p95 ms | mean ms | vs asset GET (p50) | status | bytes |")
            print("|---|---|---|---|---|---|---|---|")
            for group, label, p50, p95, mean, statuses, size in rows:
                st = ",".join(str(x) for x in sorted(statuses))
                print(f"| {group} | {label} | {p50:.1f} | {p95:.1f} | {mean:.1f} | {p50 / ref:.1f}x | {st} | {size} |")
            print()
            print("URLs (one per kind):")
            for _group, _label, method, url, body in kinds:
                print(f"  {method} {url.replace(base, '')}" + (f"  {json.dumps(body)}" if body else ""))
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        subprocess.run([cli(), "db", "stop"], env=env, cwd=state, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
