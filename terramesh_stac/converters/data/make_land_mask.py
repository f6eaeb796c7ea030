"""Rebuild land_mask.npz from Natural Earth's 1:110m countries (run once, by hand).

    pip install --target /tmp/tools pyogrio   # its test fixtures ship naturalearth_lowres
    PYTHONPATH=/tmp/tools python terramesh_stac/converters/data/make_land_mask.py \\
        /tmp/tools/pyogrio/tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp

A 0.5 degree grid (720 x 360 cells, row 0 at the north pole, column 0 at 180 W) in which a
cell is land if any country polygon touches it, so coasts and islands of the 1:110m data
count as land (as Major TOM's coastal cells do). Stored bit-packed: a few kB.
"""

import sys
from pathlib import Path

import numpy as np
import shapely
from pyogrio.raw import read

OUT = Path(__file__).with_name("land_mask.npz")
CELL_DEG = 0.5


def main(src):
    _meta, _fids, wkb, _fields = read(src)
    tree = shapely.STRtree(shapely.from_wkb(wkb))
    n_rows, n_cols = int(180 / CELL_DEG), int(360 / CELL_DEG)
    south = 90 - CELL_DEG * (np.arange(n_rows)[:, None] + 1)
    west = -180 + CELL_DEG * np.arange(n_cols)[None, :]
    south, west = np.broadcast_arrays(south, west)
    boxes = shapely.box(west.ravel(), south.ravel(), west.ravel() + CELL_DEG, south.ravel() + CELL_DEG)
    hits = np.unique(tree.query(boxes, predicate="intersects")[0])
    land = np.zeros(n_rows * n_cols, bool)
    land[hits] = True
    land = land.reshape(n_rows, n_cols)
    np.savez_compressed(OUT, packed=np.packbits(land), shape=np.array(land.shape), cell_deg=np.array(CELL_DEG))
    print(f"wrote {land.shape} grid, {land.mean():.1%} land cells, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
