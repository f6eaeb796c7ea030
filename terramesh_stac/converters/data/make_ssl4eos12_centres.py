"""Rebuild ssl4eos12_centres.npz from the SSL4EO-S12 v1.1 val metadata (run once, by hand).

    python terramesh_stac/converters/data/make_ssl4eos12_centres.py ../shared/data/ssl4eos12_val_metadata.parquet

The centre (lon, lat, rounded to 0.01 degree) of each of the 2,176 val locations, in
location-id order: real SSL4EO-S12 places (sampled around the world's big cities), around
which synth_metadata.py scatters its generated SSL4EO-S12-like locations.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

OUT = Path(__file__).with_name("ssl4eos12_centres.npz")


def main(src):
    df = pd.read_parquet(src, columns=["sample_id", "geometry"]).drop_duplicates("sample_id").sort_values("sample_id")
    c = shapely.centroid(shapely.from_wkb(df["geometry"].values))
    lonlat = np.round(np.column_stack([shapely.get_x(c), shapely.get_y(c)]) * 100).astype(np.int16)
    np.savez_compressed(OUT, lonlat_centideg=lonlat)
    print(f"wrote {len(lonlat)} centres, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
