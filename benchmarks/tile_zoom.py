"""Tile time vs zoom for the converted COGs, in plain rio-tiler (no server, no database).

    .venv/bin/python benchmarks/tile_zoom.py [--zooms 13,12,11,10,9] [--repeat 3]

Generates one TerraMesh-format Major TOM sample (terramesh_stac.converters.synth) plus one SSL4EO-S12 sample,
converts them (terramesh_stac.converters.run.convert) in a temp dir, and times
rio_tiler.io.Reader.tile() of each asset for the WebMercatorQuad tile that contains the
sample's centre at each zoom (best of --repeat, one thread). Shows how a tile's cost depends
on the zoom for assets with and without a nodata value (the COGs have no overviews).
The baseline is the same call at the highest zoom, in the same process.
"""

from __future__ import annotations

import os

os.environ.setdefault("GDAL_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, generate_source, loadavg, temp_dir  # noqa: E402

# asset -> band indexes read (as the render presets do)
ASSETS = {
    "S2L2A": (4, 3, 2),
    "S2RGB": (1, 2, 3),
    "S1RTC": (1, 2),
    "S1GRD": (1, 2),
    "DEM": (1,),
    "NDVI": (1,),
    "LULC": (1,),
    "cloud_mask": (1,),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zooms", default="13,12,11,10,9")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    zooms = [int(z) for z in args.zooms.split(",")]

    import morecantile
    import rasterio
    from rio_tiler.io import Reader

    from terramesh_stac.converters.pipeline import ConvertOptions
    from terramesh_stac.converters.run import convert

    work = temp_dir("terramesh-bench-tiles-")
    try:
        generate_source(f"{work}/src", 2, 1)  # shard 1 Major TOM, shard 2 SSL4EO-S12
        convert(f"{work}/src", ConvertOptions(dest=f"{work}/out"), split="val")
        print(
            conditions(
                command_line(),
                [
                    "data: GENERATED (terramesh_stac.converters.synth, seed 0), 2 samples (Major TOM + SSL4EO-S12), "
                    "converted with terramesh_stac.converters.run.convert: 264 px COGs, no overviews",
                    f"rio_tiler Reader.tile, WebMercatorQuad, 256 px, best of {args.repeat}, one thread",
                ],
            )
        )
        tms = morecantile.tms.get("WebMercatorQuad")
        print()
        print("| asset | nodata | " + " | ".join(f"z{z} ms" for z in zooms) + f" | z{zooms[-1]} / z{zooms[0]} |")
        print("|---|---|" + "---|" * (len(zooms) + 1))
        for asset, idx in ASSETS.items():
            path = next(iter(sorted(Path(work, "out", "assets").glob(f"*/{asset}.tif"))), None)
            if path is None:
                continue
            with rasterio.open(path) as ds:
                nodata = ds.nodata
            times = []
            with Reader(str(path)) as r:
                b = r.get_geographic_bounds("epsg:4326")
                lon, lat = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                for z in zooms:
                    t = tms.tile(lon, lat, z)
                    best = float("inf")
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        r.tile(t.x, t.y, t.z, indexes=idx)
                        best = min(best, time.perf_counter() - t0)
                    times.append(best * 1000)
            print(
                f"| {asset} | {nodata} | "
                + " | ".join(f"{x:.1f}" for x in times)
                + f" | {times[-1] / times[0]:.0f}x |",
                flush=True,
            )
        print()
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
