"""The generator writes what the format notes describe, and the official loader reads it."""

import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import Transformer

from terramesh_stac.converters import synth
from terramesh_stac.converters.metadata import COLUMNS
from terramesh_stac.converters.modalities import CLOUD_MASK_MODALITIES, MODALITIES, MODALITY_INFO, modalities_for_source
from terramesh_stac.converters.shards import iter_samples
from terramesh_stac.converters.source import open_source
from terramesh_stac.converters.zarrzip import sample_scalar, sample_time

sys.path.insert(0, str(Path(__file__).parent))
from official_loader import array_digest, run_official  # noqa: E402

KEY = re.compile(r"^(majortom|ssl4eos12)_val_\d{7}$")


@pytest.fixture(scope="module")
def samples(synth_root):
    src = open_source(synth_root)
    md = src.read_metadata("val")
    out = [s for sh in src.list_shards("val") for s in iter_samples(src, "val", sh, metadata=md)]
    assert all(hasattr(s, "modalities") for s in out), [s for s in out if not hasattr(s, "modalities")]
    return out


def test_tree_layout(synth_root):
    folders = sorted(p.name for p in (synth_root / "val").iterdir())
    assert folders == sorted(MODALITIES)
    assert sorted(p.name for p in (synth_root / "val" / "S2L2A").iterdir()) == [
        "majortom_shard_000001.tar",
        "majortom_shard_000002.tar",
        "ssl4eos12_shard_000003.tar",
    ]
    # one S1 version per source: S1RTC only majortom, S1GRD only ssl4eos12
    assert all(p.name.startswith("majortom") for p in (synth_root / "val" / "S1RTC").iterdir())
    assert [p.name for p in (synth_root / "val" / "S1GRD").iterdir()] == ["ssl4eos12_shard_000003.tar"]
    keys = []
    for shard in sorted((synth_root / "val" / "S2L2A").iterdir()):
        source = shard.name.split("_")[0]
        per_mod = {}
        for m in modalities_for_source(source):
            with tarfile.open(synth_root / "val" / m / shard.name) as tf:
                members = tf.getmembers()
                assert all(t.isfile() and "/" not in t.name for t in members)
                per_mod[m] = [t.name for t in members]
        assert len({tuple(v) for v in per_mod.values()}) == 1  # same keys, same order
        names = next(iter(per_mod.values()))
        assert all(n.endswith(".zarr.zip") for n in names)
        keys += [n.split(".", 1)[0] for n in names]
    assert all(KEY.match(k) for k in keys)
    assert [int(k[-7:]) for k in keys] == list(range(1, 13))  # numbered across the split


def test_metadata_parquet(synth_root):
    table = pq.read_table(synth_root / "val_metadata.parquet")
    assert tuple(table.column_names) == COLUMNS
    df = table.to_pandas()
    assert len(df) == 12
    assert str(table.schema.field("S2_time").type) == "timestamp[ns]"
    assert df["geometry"].map(type).eq(bytes).all()  # WKB
    assert df["tar"].str.match(r"^(majortom|ssl4eos12)_shard_\d{6}\.tar$").all()
    assert df["zarr"].str.endswith(".zarr.zip").all()
    assert (df["cloud_cover"].between(0, 100)).all()
    assert df["S1_time"].notna().all() and df["S2_time"].notna().all()


@pytest.mark.subprocess
def test_official_loader_reads_every_sample(synth_root, samples):
    """zarr 2.18.0 + numcodecs 0.15.1 through fsspec's zip filesystem (the dataset card's
    loader) reads every member; its arrays equal ours; its time rule (raw > 1e6) holds."""
    records = run_official(synth_root)
    assert len(records) == sum(len(s.modalities) for s in samples) == 12 * 7
    assert {r["zarr_version"] for r in records} == {"2.18.0"}
    ours = {(s.key, m): ds for s in samples for m, ds in s.modalities.items()}
    for r in records:
        ds = ours[(r["key"], r["modality"])]
        assert r["bands"] == array_digest(ds["bands"].values), r
        if "cloud_mask" in ds:
            assert r["cloud_mask"] == array_digest(ds["cloud_mask"].values)
        else:
            assert "cloud_mask" not in r
        assert r["center_lat"] == sample_scalar(ds, "center_lat")
        assert r["center_lon"] == sample_scalar(ds, "center_lon")
        assert r["crs"] == sample_scalar(ds, "crs")
        assert r["file_id"] == list(ds["file_id"].values)
        t = sample_time(ds)
        if r["modality"] == "DEM":
            assert r["time"] is None and t is None
        else:
            assert r["time"] == int(t.astype("datetime64[ns]").astype("int64"))


def test_modalities_match_modalities_py(samples):
    for s in samples:
        assert sorted(s.modalities) == sorted(modalities_for_source(s.source))
        masks = []
        for m, ds in s.modalities.items():
            info = MODALITY_INFO[m]
            assert ds["bands"].dims == ("time", "band", "y", "x")
            assert ds["bands"].shape == (1, len(info.bands), 264, 264)
            assert str(ds["bands"].dtype) == info.dtype, m
            assert list(ds["band"].values) == info.band_names
            assert np.allclose(np.diff(ds["x"].values), 10) and np.allclose(np.diff(ds["y"].values), -10)
            assert int(ds["spatial_ref"]) == 0
            assert ds["file_id"].shape == (1,)
            if m in CLOUD_MASK_MODALITIES:
                assert ds["cloud_mask"].dtype == np.uint8 and ds["cloud_mask"].shape == (1, 264, 264)
                masks.append(ds["cloud_mask"].values)
            else:
                assert "cloud_mask" not in ds
            assert (sample_time(ds) is None) == (m == "DEM")
        assert all((mk == masks[0]).all() for mk in masks)
        assert set(np.unique(masks[0])) <= set(range(7))
        # the same centre and CRS in all modalities
        assert len({(sample_scalar(d, "center_lat"), sample_scalar(d, "crs")) for d in s.modalities.values()}) == 1


def test_value_ranges_and_nodata(samples):
    saw = {"post": False, "pre": False, "negative": False, "s2_nodata": set(), "nan": set()}
    for s in samples:
        l2a = s.modalities["S2L2A"]
        post = pd.Timestamp(sample_time(l2a)).tz_localize("UTC") >= pd.Timestamp("2022-01-25", tz="UTC")
        saw["post" if post else "pre"] = True
        nodata = -1000 if post else 0
        cm = l2a["cloud_mask"].values[0]
        for m in ("S2L2A", "S2L1C"):
            b = s.modalities[m]["bands"].values[0]
            if (cm == 6).any():
                assert (b[:, cm == 6] == nodata).all()
                saw["s2_nodata"].add(nodata)
            valid = b[:, cm != 6]
            assert valid.min() > -1000
            saw["negative"] |= bool(valid.min() < 0)
            if not post:
                assert valid.min() >= 1
        rgb = s.modalities["S2RGB"]["bands"].values
        assert rgb.min() >= 0 and rgb.max() <= 255
        lulc = s.modalities["LULC"]["bands"].values
        assert lulc.min() >= 0 and lulc.max() <= 9
        for m in ("NDVI", "S1GRD", "S1RTC"):
            if m in s.modalities and np.isnan(s.modalities[m]["bands"].values).any():
                saw["nan"].add(m)
        ndvi = s.modalities["NDVI"]["bands"].values
        assert np.nanmin(ndvi) >= -1 and np.nanmax(ndvi) <= 1
        dem = s.modalities["DEM"]
        assert np.isnat(dem["time"].values[0])
    assert saw["post"] and saw["pre"] and saw["negative"]
    assert saw["s2_nodata"] == {0, -1000}
    assert {"NDVI", "S1GRD", "S1RTC"} <= saw["nan"]


def test_grid_centre_and_footprint_consistent(samples):
    for s in samples:
        ds = s.modalities["S2L2A"]
        epsg = sample_scalar(ds, "crs")
        x, y = ds["x"].values, ds["y"].values
        to_wgs = Transformer.from_crs(epsg, 4326, always_xy=True)
        lon, lat = to_wgs.transform((x[0] + x[-1]) / 2, (y[0] + y[-1]) / 2)
        assert abs(lon - sample_scalar(ds, "center_lon")) < 1e-9
        assert abs(lat - sample_scalar(ds, "center_lat")) < 1e-9
        md = s.metadata
        assert md["crs"] == epsg and md["sample_id"] == sample_scalar(ds, "sample")
        assert md["bounds"] == [x[0] - 5, y[-1] - 5, x[-1] + 5, y[0] + 5]
        assert md["geometry"].is_valid
        # the footprint holds the centre (shifted into [-180, 180])
        assert md["geometry"].buffer(1e-9).contains(shapely.Point(md["center_lon"], md["center_lat"]))


def test_locations_cover_zones_hemispheres_antimeridian(samples):
    mt = [s for s in samples if s.source == "majortom"]
    ssl = [s for s in samples if s.source == "ssl4eos12"]
    assert all(re.match(r"^\d+[UD]_\d+[RL]_[0-3]_[0-3]$", s.metadata["sample_id"]) for s in mt)
    assert all(re.match(r"^\d{7}_[0-3]$", s.metadata["sample_id"]) for s in ssl)
    crs = {s.metadata["crs"] for s in samples}
    assert len(crs) >= 8 and any(c // 100 == 326 for c in crs) and any(c // 100 == 327 for c in crs)
    # antimeridian: a zone-60 grid whose footprint is split in two at 180 degrees
    am = [s for s in mt if s.metadata["geometry"].geom_type == "MultiPolygon"]
    assert len(am) == 1 and am[0].metadata["crs"] == 32660
    minx, _, maxx, _ = am[0].metadata["geometry"].bounds
    assert minx == -180 and maxx == 180
    # an ssl4eos12 patch whose grid zone differs from its S2 tile's zone
    off = [s for s in ssl if f"_T{s.metadata['crs'] % 100:02d}" not in str(s.modalities["S2L2A"]["file_id"].values[0])]
    assert off, "expected a sample on another zone's grid than its tile"


def test_product_ids_look_real(samples):
    s2 = re.compile(r"^S2[AB]_MSIL(2A|1C)_\d{8}T\d{6}_N\d{4}_R\d{3}_T\d{2}[C-X][A-Z]{2}_\d{8}T\d{6}$")
    s1 = re.compile(r"^S1A_IW_GRDH_1SDV_\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_[0-9A-F]{4}$")
    for s in samples:
        for m, ds in s.modalities.items():
            fid = str(ds["file_id"].values[0])
            if m in ("S2L2A", "S2L1C", "S2RGB", "NDVI", "LULC"):
                assert s2.match(fid), fid
                t = pd.Timestamp(sample_time(ds))
                assert f"_{t:%Y%m%dT%H%M%S}_" in fid
            elif m.startswith("S1"):
                assert s1.match(fid), fid
            else:
                assert fid.startswith("Copernicus_DSM_COG_10_")


def test_mgrs_and_majortom_grid():
    # a real SSL4EO-S12 footprint centre in tile T33SWC (zone 33)
    assert synth.mgrs_tile(38.073, 15.640, 32633) == "T33SWC"
    name, sw_lat, sw_lon = synth.majortom_cell(48.14, 11.58)
    assert name == "535U_86R" and sw_lat <= 48.14 < sw_lat + synth.ROW_STEP
    name, sw_lat, sw_lon = synth.majortom_cell(-15.79, -47.88)
    assert name.endswith("L") and name.split("_")[0].endswith("D") and sw_lat <= -15.79 and sw_lon <= -47.88


def test_same_seed_same_bytes(tmp_path):
    a = synth.generate(tmp_path / "a", shards=2, samples_per_shard=1, seed=3)
    b = synth.generate(tmp_path / "b", shards=2, samples_per_shard=1, seed=3)
    assert a == b
    for p in sorted((tmp_path / "a").rglob("*.tar")):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p
