"""Screenshots of the map page for the README (docs/map-*.png), taken as a user sees it.

    .venv/bin/python benchmarks/map_screenshots.py [--out docs]

Runs `terramesh-stac demo --no-serve` (TERRAMESH_STATE_DIR = a fresh temp dir: embedded
PostgreSQL + pgstac, the generated TerraMesh-format sample converted and loaded), serves it
with `terramesh-stac serve`, and opens the page in Debian's headless Chromium (tests/browser.py,
the browser the tests drive), offline:

    map-world.png       the whole planet: sample density per cell (zooms 0-5)
    map-region.png      zoom 7 around a sample: density faded, footprints by cloud cover
    map-seeded.png      zoom 10.5 on a sample: the true-colour mosaic seeded ahead (`db mosaic`,
                        which the demo runs)
    map-mosaic.png      zoom 13 on a sample: the true-colour mosaic of the current search
    map-sample.png      the same sample clicked: its panel, its DEM drawn with its colour bar
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import free_port, temp_dir  # noqa: E402
from scale import cli, wait_up  # noqa: E402

from tests.browser import chromium, click_at, screenshot, wait_for, wait_for_map  # noqa: E402

CID = "terramesh-demo"  # terramesh_stac.demo.DEMO_COLLECTION


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs"), help="folder of the PNG files")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = temp_dir("terramesh-screenshots-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAMESH_")}
    env.update(TERRAMESH_STATE_DIR=state, TERRAMESH_DB_PORT=str(free_port()))
    server = None
    try:
        demo = subprocess.run([cli(), "demo", "--no-serve"], env=env, cwd=state, capture_output=True, text=True)
        if demo.returncode != 0:
            raise RuntimeError(f"demo failed ({demo.returncode}):\n{demo.stdout}\n{demo.stderr}")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [cli(), "serve", "--port", str(port), "--dest", str(Path(state) / "demo" / "output")],
            env=dict(env, TERRAMESH_COLLECTION_ID=CID),
            cwd=state,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_up(f"{base}/raster/healthz", server)
        items = httpx.get(f"{base}/stac/collections/{CID}/items", params={"limit": 100}, timeout=30).json()["features"]
        # a sample away from the antimeridian, with another one within ~300 km (footprints to show)
        item = next(i for i in items if i["properties"]["terramesh:source"] == "majortom" and abs(i["bbox"][0]) < 170)
        w, s, e, n = item["bbox"]
        lon, lat = (w + e) / 2, (s + n) / 2
        with chromium() as driver:
            driver.get(f"{base}/")
            wait_for_map(driver)
            screenshot(driver).save(out / "map-world.png")
            driver.get(f"{base}/#7/{lat:.4f}/{lon:.4f}")
            driver.refresh()
            wait_for_map(driver)
            screenshot(driver).save(out / "map-region.png")
            driver.get(f"{base}/#10.5/{lat:.5f}/{lon:.5f}")
            driver.refresh()
            wait_for_map(driver)
            wait_for(driver, "return !!window.terrameshMap.getLayer('seeded')", 30, "the seeded mosaic")
            screenshot(driver).save(out / "map-seeded.png")
            driver.get(f"{base}/#13/{lat:.5f}/{lon:.5f}")
            driver.refresh()
            wait_for_map(driver)
            screenshot(driver).save(out / "map-mosaic.png")
            click_at(driver, lon, lat)
            wait_for(driver, "return !document.getElementById('panel').hidden", 30, "the sample panel")
            driver.execute_script("document.querySelector(\"button[data-preset='dem']\").click()")
            wait_for(driver, "return !!window.terrameshMap.getSource('sample')", 30, "the DEM layer")
            wait_for_map(driver)
            screenshot(driver).save(out / "map-sample.png")
        for name in ("map-world", "map-region", "map-seeded", "map-mosaic", "map-sample"):
            print(out / f"{name}.png")
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        subprocess.run([cli(), "db", "stop"], env=env, cwd=state, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
