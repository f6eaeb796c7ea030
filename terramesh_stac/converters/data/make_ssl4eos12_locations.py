"""Rebuild ssl4eos12_locations.parquet from the SSL4EO-S12 v1.1 val metadata (run once, by hand).

    python terramesh_stac/converters/data/make_ssl4eos12_locations.py ../shared/data/ssl4eos12_val_metadata.parquet

Keeps 50 locations x 4 seasons = 200 rows spread over UTM zones and both hemispheres, with
the locations whose pixel grid lies in another UTM zone than a season's S2 tile. Adds the
grid each location's patches sit on (`grid_crs`, `grid_x0` west edge, `grid_y0` north edge,
metres): the footprint polygon is an axis-aligned 2640 m square in exactly one zone.
Rows come in a deliberate order (one season of every location first, off-zone and southern
cases at the top) so that a generator taking the first rows gets varied locations.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

OUT = Path(__file__).with_name("ssl4eos12_locations.parquet")
N_LOCATIONS, N_OFF_ZONE = 50, 6


def grid_of(geom, candidates):
    """(epsg, x0, y0) of the zone in which the footprint is an axis-aligned square."""
    for epsg in candidates:
        t = Transformer.from_crs(4326, int(epsg), always_xy=True)
        x, y = t.transform(*shapely.get_coordinates(geom)[:4].T)
        if abs(x.max() - x.min() - 2640) < 1 and abs(y.max() - y.min() - 2640) < 1 and np.ptp(np.sort(x)[:2]) < 1:
            return int(epsg), round(x.min() / 10) * 10.0, round(y.max() / 10) * 10.0
    raise ValueError("footprint is not a grid square in any candidate zone")


def main(src):
    df = pd.read_parquet(src).reset_index(drop=True)
    geoms = shapely.from_wkb(df["geometry"].values)
    df["center_lat"] = shapely.get_y(shapely.centroid(geoms))
    by_loc = df.groupby("sample_id")
    off_zone = sorted(sid for sid, g in by_loc if g.tile_crs.nunique() > 1)[:N_OFF_ZONE]
    # one location per zone/hemisphere, round robin over zones, until N_LOCATIONS
    first = by_loc.first()
    first = first[~first.index.isin(off_zone)]
    first["hemi"] = np.where(first.center_lat < 0, "S", "N")
    picked, rank = list(off_zone), 0
    groups = {k: list(g.index) for k, g in first.groupby(["tile_crs", "hemi"])}
    while len(picked) < N_LOCATIONS:
        for k in sorted(groups, key=lambda k: (k[1] != "S", k[0])):
            if rank < len(groups[k]) and len(picked) < N_LOCATIONS:
                picked.append(groups[k][rank])
        rank += 1
    rows = []
    for sid in picked:
        g = df[df.sample_id == sid]
        cands = list(g.tile_crs.value_counts().index)
        epsg, x0, y0 = grid_of(shapely.from_wkb(g.geometry.iloc[0]), cands)
        for _, r in g.iterrows():
            rows.append({**r.to_dict(), "grid_crs": epsg, "grid_x0": x0, "grid_y0": y0})
    out = pd.DataFrame(rows)
    out["off_zone"] = out.grid_crs != out.tile_crs
    # lead row per location: its off-zone season if any, else a rotating season
    loc_rank = {sid: i for i, sid in enumerate(picked)}
    out["loc_rank"] = out.sample_id.map(loc_rank)
    lead_season = {
        sid: (int(g[g.off_zone].time_id.iloc[0]) if g.off_zone.any() else loc_rank[sid] % 4)
        for sid, g in out.groupby("sample_id")
    }
    out["lead"] = [lead_season[s] == t for s, t in zip(out.sample_id, out.time_id)]
    # order: one off-zone lead, then southern and northern leads alternating, then the rest
    out["order_group"] = np.select([out.lead & out.off_zone & (out.loc_rank == 0), out.lead], [0, 1], 2)
    out = out.sort_values(["order_group", "loc_rank"]).reset_index(drop=True)
    leads = out[out.order_group == 1]
    s, n = leads[leads.center_lat < 0], leads[leads.center_lat >= 0]
    mixed = [x for pair in zip(s.index, n.index) for x in pair]
    mixed += [i for i in leads.index if i not in mixed]
    order = list(out[out.order_group == 0].index) + mixed + list(out[out.order_group == 2].index)
    out = out.loc[order].reset_index(drop=True)
    out = out.rename(columns={"center_lat": "_lat"})
    keep = ["sample_id", "time_id", "time", "tile_id", "tile_crs", "grid_crs", "grid_x0", "grid_y0", "geometry", "file"]
    out[keep].to_parquet(OUT, index=False)
    print(
        f"wrote {len(out)} rows, {out.sample_id.nunique()} locations, "
        f"{out.grid_crs.nunique()} grid zones, {(out._lat < 0).sum()} southern rows, "
        f"{int((out.grid_crs != out.tile_crs).sum())} off-zone rows -> {OUT}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
