"""The TerraMesh-scale metadata generator: real columns and types, real proportions, geometry
that agrees with bounds and crs, points on land, realistic times and cloud cover."""

import re

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import Transformer

from terramesh_stac import cli
from terramesh_stac.converters import synth
from terramesh_stac.converters import synth_metadata as sm
from terramesh_stac.converters.metadata import COLUMNS, read_metadata, write_metadata

ROWS = 20_000


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthmeta")
    assert sm.generate_metadata(d, ROWS, seed=3) == {s: sum(sm.split_counts(ROWS)[s].values()) for s in sm.SPLITS}
    return d


@pytest.fixture(scope="module")
def train(out):
    return pq.read_table(out / "train_metadata.parquet").to_pandas()


def test_columns_and_types_are_write_metadatas(out, tmp_path):
    row = {
        "tar": "t.tar",
        "zarr": "k.zarr.zip",
        "sample_id": "s",
        "split": "val",
        "center_lon": 1.0,
        "center_lat": 2.0,
        "crs": 32631,
        "bounds": [0, 0, 1, 1],
        "geometry": shapely.box(0, 0, 1, 1),
        "S2_time": pd.Timestamp("2020-01-01", tz="UTC"),
        "S1_time": None,
        "cloud_cover": 1.0,
    }
    write_metadata([row], tmp_path / "ref.parquet")
    ref = pq.read_schema(tmp_path / "ref.parquet")
    for split in sm.SPLITS:
        schema = pq.read_schema(out / f"{split}_metadata.parquet")
        assert schema.names == list(COLUMNS)
        assert [f.type for f in schema] == [f.type for f in ref]
        assert b'"encoding": "WKB"' in schema.metadata[b"geo"]


def test_split_and_source_proportions():
    full = sm.split_counts(sm.FULL_ROWS)
    assert full == {
        "train": {"majortom": 8_113_664, "ssl4eos12": 975_872},
        "val": {"majortom": 80_384, "ssl4eos12": 8_704},
    }
    c = sm.split_counts(ROWS)
    assert sum(c["train"].values()) + sum(c["val"].values()) == ROWS
    assert sum(c["val"].values()) / ROWS == pytest.approx(89_088 / 9_178_624, abs=1e-4)
    assert c["train"]["ssl4eos12"] % 4 == 0 and c["val"]["ssl4eos12"] % 4 == 0
    assert c["train"]["ssl4eos12"] / sum(c["train"].values()) == pytest.approx(975_872 / 9_089_536, abs=1e-3)


def test_keys_numbered_and_shards_consistent(out, train):
    counts = sm.split_counts(ROWS)["train"]
    assert len(train) == sum(counts.values())
    assert train["zarr"].is_unique
    source = train["zarr"].str.split("_").str[0]
    assert (source == train["tar"].str.split("_").str[0]).all()
    assert (train["split"] == "train").all()
    numbers = train["zarr"].str.extract(r"^\w+_train_(\d{7})\.zarr\.zip$")[0].astype(int)
    assert (numbers.values == np.arange(1, len(train) + 1)).all()  # majortom first, then ssl4eos12
    assert (
        list(source.iloc[[0, counts["majortom"] - 1, counts["majortom"], -1]]) == ["majortom"] * 2 + ["ssl4eos12"] * 2
    )
    shard_no = train["tar"].str.extract(r"_shard_(\d{6})\.tar$")[0].astype(int)
    pos = np.where(source == "majortom", numbers - 1, numbers - 1 - counts["majortom"])
    first_ssl = -(-counts["majortom"] // sm.SAMPLES_PER_SHARD) + 1
    assert (shard_no == np.where(source == "majortom", 1, first_ssl) + pos // sm.SAMPLES_PER_SHARD).all()


def test_row_groups_hold_whole_shards(out):
    f = pq.ParquetFile(out / "train_metadata.parquet")
    seen = set()
    for i in range(f.metadata.num_row_groups):
        tars = set(f.read_row_group(i, columns=["tar"]).column("tar").to_pylist())
        assert not tars & seen, f"a shard split over row groups: {tars & seen}"
        seen |= tars


def test_bounds_are_2640_m_squares_on_the_10_m_grid(train):
    b = np.stack(train["bounds"].values)
    assert (b[:, 2] - b[:, 0] == 2640).all() and (b[:, 3] - b[:, 1] == 2640).all()
    assert (b % 10 == 0).all()
    assert train["crs"].between(32601, 32660).sum() + train["crs"].between(32701, 32760).sum() == len(train)


def test_geometry_is_the_bounds_in_wgs84_and_holds_the_centre(train):
    geoms = shapely.from_wkb(train["geometry"].values)
    assert shapely.is_valid(geoms).all()
    b = np.stack(train["bounds"].values)
    for epsg in train["crs"].unique():
        idx = np.flatnonzero(train["crs"].values == epsg)
        polys = idx[shapely.get_type_id(geoms[idx]) == 3]
        coords = shapely.get_coordinates(geoms[polys]).reshape(len(polys), 5, 2)
        x, y = Transformer.from_crs(4326, int(epsg), always_xy=True).transform(coords[..., 0], coords[..., 1])
        np.testing.assert_allclose(x.min(axis=1), b[polys, 0], atol=0.01)
        np.testing.assert_allclose(y.min(axis=1), b[polys, 1], atol=0.01)
        np.testing.assert_allclose(x.max(axis=1), b[polys, 2], atol=0.01)
        np.testing.assert_allclose(y.max(axis=1), b[polys, 3], atol=0.01)
        cx, cy = Transformer.from_crs(int(epsg), 4326, always_xy=True).transform(
            (b[idx, 0] + b[idx, 2]) / 2, (b[idx, 1] + b[idx, 3]) / 2
        )
        np.testing.assert_allclose(train["center_lon"].values[idx], cx, atol=1e-9)
        np.testing.assert_allclose(train["center_lat"].values[idx], cy, atol=1e-9)
    centres = shapely.points(train["center_lon"], train["center_lat"])
    assert shapely.contains(geoms, centres).all()
    # the same footprint as the small generator's (corners only)
    for i in np.random.default_rng(0).choice(len(train), 50, replace=False):
        ref = synth.footprint_wgs84(int(train["crs"].iloc[i]), b[i, 0], b[i, 3], per_edge=1)
        assert shapely.equals_exact(shapely.normalize(geoms[i]), shapely.normalize(ref), tolerance=1e-9)


def test_antimeridian_footprint_is_split_like_synths():
    loc = synth._antimeridian_patch()
    epsg, x0, y0 = np.array([loc.epsg]), np.array([loc.x0]), np.array([loc.y0])
    batch = {"crs": epsg, "x0": x0, "y0": y0, **sm._grid_geometry(epsg, x0, y0)}
    (wkb,) = sm._footprints(batch).to_pylist()
    got = shapely.from_wkb(wkb)
    assert got.geom_type == "MultiPolygon"
    assert shapely.equals_exact(got, synth.footprint_wgs84(loc.epsg, loc.x0, loc.y0, per_edge=1), tolerance=1e-9)


def test_majortom_rows_sit_on_their_major_tom_cell(train):
    mt = train[train["zarr"].str.startswith("majortom")]
    assert mt["sample_id"].str.fullmatch(r"\d+[UD]_\d+[RL]_[0-3]_[0-3]").all()
    assert mt["sample_id"].is_unique
    assert mt["sample_id"].str.rsplit("_", n=2).str[0].value_counts().max() <= 16
    for _, r in mt.sample(200, random_state=1).iterrows():
        row, col, a, b = r["sample_id"].split("_")
        lat = (int(row[:-1]) * (1 if row[-1] == "U" else -1) + 0.5) * synth.ROW_STEP
        sw_lat = lat - synth.ROW_STEP / 2
        step = 360.0 / synth.majortom_columns(sw_lat)
        lon = (int(col[:-1]) * (1 if col[-1] == "R" else -1) + 0.5) * step
        sid, epsg, x0, y0 = synth.majortom_patch_grid(lat, lon, int(a), int(b))
        assert (sid, epsg, x0, y0) == (r["sample_id"], r["crs"], r["bounds"][0], r["bounds"][3])


def test_ssl4eos12_rows_are_4_seasons_of_a_location(train):
    ssl = train[train["zarr"].str.startswith("ssl4eos12")]
    assert ssl["sample_id"].str.fullmatch(r"\d{7}_[0-3]").all()
    loc = ssl["sample_id"].str[:7]
    assert (loc.value_counts() == 4).all()
    per_loc = ssl.assign(loc=loc, x0=ssl["bounds"].str[0]).groupby("loc")
    assert (per_loc["x0"].nunique() == 1).all() and (per_loc["crs"].nunique() == 1).all()
    gaps = per_loc["S2_time"].apply(lambda t: t.diff().dt.days.dropna().tolist()).explode().astype(float)
    assert gaps.between(40, 140).all() and 85 < gaps.mean() < 97
    assert (ssl["cloud_cover"] < 10).all()


def test_points_on_land_in_sentinel2_coverage(train):
    assert sm.on_land(train["center_lon"].values, train["center_lat"].values).all()
    assert train["center_lat"].between(-56, 84).all()
    # the mask itself: cities are land, open oceans are not
    assert sm.on_land(np.array([11.58, 36.82, -47.88, 139.69]), np.array([48.14, -1.29, -15.79, 35.68])).all()
    assert not sm.on_land(np.array([-150.0, -40.0, 80.0]), np.array([0.0, 30.0, -30.0])).any()
    # spread over the continents, not clumped
    assert (train["center_lon"] < -30).mean() > 0.15 and (train["center_lat"] < 0).mean() > 0.1


def test_times_and_cloud_cover(train):
    s2, s1 = train["S2_time"], train["S1_time"]
    assert s2.notna().all() and s1.notna().all()
    assert (s2 >= pd.Timestamp("2017-01-01")).all() and (s2 < pd.Timestamp("2025-01-01")).all()
    assert set(s2.dt.year) == set(range(2017, 2025))
    assert ((s1 - s2).abs() < pd.Timedelta(days=4.5)).all()
    solar = (s2.dt.hour + s2.dt.minute / 60 + train["center_lon"] / 15) % 24
    assert solar.between(9, 12.5).all()
    cc = train["cloud_cover"]
    assert cc.notna().all() and cc.between(0, 100).all()
    assert cc.median() < 15 and (cc < 10).mean() > 0.6 and cc.max() > 30


def test_deterministic_per_seed_and_per_split(out, tmp_path):
    sm.generate_metadata(tmp_path / "a", ROWS, seed=3, splits=("val",))
    sm.generate_metadata(tmp_path / "b", ROWS, seed=4, splits=("val",))
    same = pq.read_table(tmp_path / "a" / "val_metadata.parquet")
    assert same.equals(pq.read_table(out / "val_metadata.parquet"))  # as when written with train
    other = pq.read_table(tmp_path / "b" / "val_metadata.parquet")
    assert other.num_rows == same.num_rows and not other.equals(same)
    assert not (tmp_path / "a" / "train_metadata.parquet").exists()


def test_read_metadata_of_one_shard(out, train):
    shard = "ssl4eos12_shard_000003.tar"
    rows = read_metadata(out / "train_metadata.parquet", shard=shard)
    expected = train[train["tar"] == shard]
    assert len(rows) == len(expected) > 0
    r = rows[expected["zarr"].iloc[0].removesuffix(".zarr.zip")]
    assert r["tar"] == shard and r["split"] == "train" and isinstance(r["crs"], int)
    assert len(r["bounds"]) == 4 and r["geometry"].geom_type == "Polygon"
    assert r["S2_time"].tzname() == "UTC" and 0 <= r["cloud_cover"] < 10
    # val's shards: majortom then ssl4eos12, each a whole shard read
    val = pq.read_table(out / "val_metadata.parquet", columns=["tar"]).column("tar")
    assert pc.unique(val).to_pylist() == ["majortom_shard_000001.tar", "ssl4eos12_shard_000002.tar"]


def test_cli_writes_one_split_and_refuses_bad_input(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path), "--metadata-only", "--rows", "50000", "--split", "val"]) == 0
    assert "wrote 485 rows" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["val_metadata.parquet"]
    assert cli.main(["synth", str(tmp_path / "x"), "--rows", "10"]) == 2
    assert cli.main(["synth", str(tmp_path / "x"), "--metadata-only", "--shards", "3"]) == 2
    assert "--rows needs --metadata-only" in capsys.readouterr().err
    for bad in ("0", "ten", str(sm.MAX_ROWS + 1)):
        with pytest.raises(SystemExit) as e:
            cli.main(["synth", str(tmp_path / "x"), "--metadata-only", "--rows", bad])
        assert e.value.code == 2
        assert re.search(r"--rows: rows must be", capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_utm_zone_as_synths_also_at_180_west():
    lon = np.array([-180 - 3e-14, -180.0, -179.9, -0.1, 0.0, 5.99, 6.0, 179.99, 180.0])
    lat = np.array([10.0, -10.0, 0.0, -0.1, 60.0, 1.0, -1.0, 70.0, -70.0])
    assert list(sm.utm_epsg(lat, lon)) == [synth.utm_epsg(a, o) for a, o in zip(lat, lon)]
    assert list(sm.utm_epsg(lat, lon)[:3]) == [32601, 32701, 32601]


def test_an_interrupted_write_leaves_no_file(tmp_path):
    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sm.generate_metadata(tmp_path, 50_000, splits=("val",), samples_per_shard=100, progress=stop)
    assert list(tmp_path.iterdir()) == []
