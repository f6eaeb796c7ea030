"""STAC items and collection: geometry, antimeridian, times, cloud cover, offline validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import Transformer
from shapely.geometry import Point, Polygon, shape
from test_cog import make_ds

from terramesh_stac.catalog.links import render_query
from terramesh_stac.converters.cog import encode_cloud_mask, encode_cog
from terramesh_stac.converters.collection import create_collection
from terramesh_stac.converters.footprint import grid_of, outline
from terramesh_stac.converters.item_assets import full_asset
from terramesh_stac.converters.items import cdse_item_url, cloud_cover_from_mask, create_item
from terramesh_stac.converters.modalities import CLOUD_MASK_CLASSES, LULC_CLASSES, modalities_for_source
from terramesh_stac.converters.sample import Sample, WrittenAsset
from terramesh_stac.converters.summary import Summary
from terramesh_stac.converters.thumbnail import encode_thumbnail
from terramesh_stac.validation import validate

S2_ID = "S2A_MSIL2A_20210601T095031_N0300_R079_T33SWC_20210601T121410.SAFE"
S1_ID = "S1A_IW_GRDH_1SDV_20210603T050031_20210603T050056_038182_048183_3B1C"


def make_sample(
    source="majortom",
    *,
    size=64,
    epsg=32633,
    x0=500_005.0,
    y0=4_200_005.0,
    metadata=None,
    key=None,
    s2_time="2021-06-01T09:50:31",
    s1_time="2021-06-03T05:00:31",
) -> Sample:
    mods = {}
    for m in modalities_for_source(source):
        t = s1_time if m.startswith("S1") else s2_time
        fid = S2_ID if m == "S2L2A" else S1_ID if m.startswith("S1") else None
        mods[m] = make_ds(m, size=size, epsg=epsg, x0=x0, y0=y0, time=t, file_id=fid, seed=len(mods))
    key = key or f"{source}_val_0000001"
    return Sample(key=key, split="val", shard=f"{source}_shard_000001.tar", modalities=mods, metadata=metadata)


def write_assets(sample: Sample, root, *, s3=False) -> dict[str, WrittenAsset]:
    encoded = [encode_cog(ds, m) for m, ds in sample.modalities.items()]
    encoded.append(encode_cloud_mask(sample.modalities["S2L2A"]))
    encoded.append(encode_thumbnail(sample.modalities["S2RGB"]))
    out = {}
    for e in encoded:
        if s3:
            href = f"s3://terramesh/{sample.key}/{e.filename}"
            alt = f"https://s3.example.org/terramesh/{sample.key}/{e.filename}"
        else:
            p = root / sample.key / e.filename
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(e.data)
            href, alt = str(p), None
        out[e.key] = WrittenAsset(
            key=e.key,
            href=href,
            media_type=e.media_type,
            roles=e.roles,
            size=len(e.data),
            checksum="1220" + hashlib.sha256(e.data).hexdigest(),
            fields=e.fields,
            alternate_href=alt,
        )
    return out


@pytest.fixture(scope="module")
def item_and_sample(tmp_path_factory):
    sample = make_sample(metadata={"cloud_cover": 12.5})
    assets = write_assets(sample, tmp_path_factory.mktemp("assets"))
    return create_item(sample, assets, collection_id="terramesh", revision="abc123"), sample


def test_item_validates_offline_and_round_trips(item_and_sample):
    item, _ = item_and_sample
    d = item.to_dict()
    checked = validate(d)
    assert d["stac_version"] == "1.1.0"
    for ext in ("projection/v1.2.0", "eo/v2.0.0", "file/v2.1.0"):
        assert any(ext in u for u in checked), ext
    # lean: what item_assets says is not repeated (sar:, classification: live in the collection)
    assert not any("sar/" in u or "classification/" in u for u in d["stac_extensions"])
    # pystac's default migration turns projection v1.2 into v2.0 (proj:epsg dropped): not ours to keep
    again = pystac.Item.from_dict(json.loads(json.dumps(d)), migrate=False)
    assert again.to_dict() == d


def test_item_content(item_and_sample):
    item, sample = item_and_sample
    d = item.to_dict()
    p = d["properties"]
    assert d["id"] == "majortom_val_0000001"
    assert d["collection"] == "terramesh"
    assert p["datetime"] == "2021-06-01T09:50:31Z"
    assert p["terramesh:s1_datetime"] == "2021-06-03T05:00:31Z"
    assert "start_datetime" not in p and "end_datetime" not in p  # pgstac would sort/filter by them
    assert p["eo:cloud_cover"] == 12.5  # metadata wins over the mask
    assert p["terramesh:source"] == "majortom" and p["terramesh:split"] == "val"
    assert p["terramesh:shard"] == "majortom_shard_000001.tar" and p["terramesh:revision"] == "abc123"
    assert p["terramesh:sample_id"] == "0194630_1"
    assert "terramesh:s2_product_id" not in p and "terramesh:s1_product_id" not in p  # said by the links
    assert p["proj:epsg"] == 32633 and p["proj:code"] == "EPSG:32633" and p["proj:shape"] == [64, 64]
    derived = sorted(link["href"] for link in d["links"] if link["rel"] == "derived_from")
    assert derived == sorted(
        [
            f"https://stac.dataspace.copernicus.eu/v1/collections/sentinel-2-l2a/items/{S2_ID[:-5]}",
            f"https://stac.dataspace.copernicus.eu/v1/collections/sentinel-1-grd/items/{S1_ID}",
        ]
    )
    lean = d["assets"]
    assert set(lean) == {*sample.modalities, "cloud_mask", "thumbnail"}
    # an item's asset holds what differs per sample only: S2 nodata (it changed in 2022), size
    # (and proj:shape: this 64 px test grid differs from the collection's 264 px, so the asset says it)
    assert lean["S2L2A"].keys() == {"href", "nodata", "file:size", "proj:shape"} and lean["S2L2A"]["nodata"] == 0
    assert all(v.keys() <= {"href", "file:size", "nodata", "proj:shape"} for v in lean.values()), lean
    # with the collection's item_assets put back (what the STAC API serves) the asset is whole
    a = {k: full_asset(k, v) for k, v in lean.items()}
    assert a["S2L2A"]["bands"][3]["eo:common_name"] == "red"
    assert a["S2L2A"]["nodata"] == 0 and a["S2L2A"]["data_type"] == "int16"
    assert a["S1RTC"]["sar:product_type"] == "RTC" and a["S1RTC"]["sar:instrument_mode"] == "IW"
    assert a["S1RTC"]["nodata"] == "nan" and a["S1RTC"]["terramesh:source_data_type"] == "float16"
    assert [c["value"] for c in a["LULC"]["classification:classes"]] == sorted(LULC_CLASSES)
    assert [c["value"] for c in a["cloud_mask"]["classification:classes"]] == sorted(CLOUD_MASK_CLASSES)
    assert a["S2L2A"]["proj:shape"] == [64, 64]  # the asset's own: it differs from item_assets' 264
    assert a["thumbnail"]["roles"] == ["thumbnail"] and a["thumbnail"]["type"] == "image/jpeg"
    for key, v in a.items():  # hrefs are exactly the written files (no host baked in)
        path = Path(v["href"])
        assert path.is_absolute() and path.parent.name == d["id"], (key, v["href"])
        assert path.stat().st_size == v["file:size"], key


def test_s3_assets_get_alternate_https(tmp_path):
    sample = make_sample(size=16)
    item = create_item(sample, write_assets(sample, tmp_path, s3=True), collection_id="terramesh", revision=None)
    d = item.to_dict()
    validate(d)
    a = d["assets"]["S2L2A"]
    assert a["href"] == "s3://terramesh/majortom_val_0000001/S2L2A.tif"
    assert a["alternate"]["https"]["href"].startswith("https://s3.example.org/")
    assert any("alternate-assets" in e for e in d["stac_extensions"])
    assert "terramesh:revision" not in d["properties"]


@pytest.mark.parametrize("epsg,lat", [(32633, 37.9), (32633, 70.5), (32733, -45.0), (32632, 80.0)])
def test_geometry_matches_the_utm_footprint(epsg, lat):
    # put the patch at `lat` on the zone's central meridian, then 100 km east
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    cm = 15.0 if epsg in (32633, 32733) else 9.0
    x, y = to_utm.transform(cm, lat)
    sample = make_sample(size=264, epsg=epsg, x0=round(x) + 100_005.0, y0=round(y) + 5.0)
    ds = sample.modalities["S2L2A"]
    grid = grid_of(ds)
    item = create_item(sample, {}, collection_id="terramesh", revision=None)
    geom = shape(item.geometry)
    assert geom.is_valid and geom.geom_type == "Polygon"
    assert geom.contains(Point(float(ds.center_lon), float(ds.center_lat)))

    # the 4 pixel-edge corners, transformed with pyproj, are vertices within 1e-6 degrees
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
    xs, ys = ds.x.values, ds.y.values
    corners = [(xs[0] - 5, ys[0] + 5), (xs[-1] + 5, ys[0] + 5), (xs[-1] + 5, ys[-1] - 5), (xs[0] - 5, ys[-1] - 5)]
    verts = np.array(geom.exterior.coords)
    for cx, cy in corners:
        lon, lat_ = to_ll.transform(cx, cy)
        assert np.min(np.hypot(verts[:, 0] - lon, verts[:, 1] - lat_)) < 1e-6
    lons, lats = zip(*[to_ll.transform(cx, cy) for cx, cy in corners])
    assert item.bbox == pytest.approx([min(lons), min(lats), max(lons), max(lats)], abs=1e-6)

    # the densified outline is within 1e-6 degrees of a 100-points-per-edge reference
    ref = Polygon(zip(*outline(grid, densify=101)))
    assert geom.hausdorff_distance(ref) < 1e-6
    validate(item.to_dict())


def test_straight_edges_keep_only_their_corners():
    from terramesh_stac.converters.footprint import DENSIFY, footprints

    to_utm = Transformer.from_crs(4326, 32633, always_xy=True)
    vertices = {}
    for lat in (0.5, 45.0, 80.0):
        x, y = to_utm.transform(15.0, lat)  # on the central meridian: the edges bend least
        x, y = round(x) + 100_000, round(y)
        (geometry, bbox), (dense, _) = (
            footprints(32633, np.array([[x, y, x + 2640, y + 2640]]), d)[0] for d in (DENSIFY, 101)
        )
        ring = geometry["coordinates"][0]
        vertices[lat] = len(ring)
        assert shape(geometry).hausdorff_distance(shape(dense)) < 1e-6
        lons, lats = zip(*ring)
        assert bbox == [min(lons), min(lats), max(lons), max(lats)]  # the bbox of what is written
    assert vertices[0.5] == 5  # a rectangle near the equator: 4 corners, closed
    assert vertices[0.5] < vertices[80.0] <= 4 * (DENSIFY - 1) + 1  # points only where an edge bends


def test_antimeridian_patch_becomes_a_multipolygon():
    # zone 60 south (Fiji): find the easting of 180 degrees at 17 S and straddle it
    epsg = 32760
    x180, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(180.0, -17.0)
    sample = make_sample(size=264, epsg=epsg, x0=round(x180) - 1_000 + 5.0, y0=round(y) + 5.0)
    item = create_item(sample, {}, collection_id="terramesh", revision=None)
    geom = shape(item.geometry)
    assert item.geometry["type"] == "MultiPolygon" and len(geom.geoms) == 2
    assert all(p.is_valid for p in geom.geoms) and geom.is_valid
    lons = np.concatenate([np.array(p.exterior.coords)[:, 0] for p in geom.geoms])
    assert lons.min() >= -180 and lons.max() <= 180
    west, south, east, north = item.bbox
    assert west > east and 179.9 < west < 180 and -180 < east < -179.9
    # both parts touch the antimeridian and together cover the footprint's area
    east_part, west_part = sorted(geom.geoms, key=lambda p: -p.bounds[0])
    assert east_part.bounds[2] == 180.0 and west_part.bounds[0] == -180.0
    unwrapped = Polygon([(x + 360 if x < 0 else x, y) for x, y in zip(*outline(grid_of(sample.modalities["S2L2A"])))])
    # coords rounded to 1e-7 deg: ~1e-6 of this 64 px test patch's area
    assert east_part.area + west_part.area == pytest.approx(unwrapped.area, rel=1e-5)
    validate(item.to_dict())


def test_cloud_cover_rule():
    mask = np.full((10, 10), 0, np.uint8)
    mask[:5] = 6  # 50 no-data pixels
    mask[5, :5] = 3  # thin cloud
    mask[6, :5] = 4  # thick cloud
    mask[7, :5] = 5  # shadow: not cloud
    assert cloud_cover_from_mask(mask) == 20.0  # 10 of 50 valid
    assert cloud_cover_from_mask(np.full((4, 4), 6, np.uint8)) is None

    s = make_sample(size=16, metadata=None)
    expected = cloud_cover_from_mask(s.modalities["S2L2A"]["cloud_mask"].values[0])
    item = create_item(s, {}, collection_id="terramesh", revision=None)
    assert item.properties["eo:cloud_cover"] == expected
    s.metadata = {"cloud_cover": 0.0}  # metadata wins, even when 0
    assert create_item(s, {}, collection_id="t", revision=None).properties["eo:cloud_cover"] == 0.0
    s.metadata = {"cloud_cover": float("nan")}  # missing in the parquet -> mask
    assert create_item(s, {}, collection_id="t", revision=None).properties["eo:cloud_cover"] == expected
    for m in ("S2L1C", "S2L2A", "S2RGB", "LULC"):
        s.modalities[m] = s.modalities[m].drop_vars("cloud_mask")
    s.metadata = None
    assert "eo:cloud_cover" not in create_item(s, {}, collection_id="t", revision=None).properties


def test_ssl4eos12_sample_and_non_esa_ids():
    s = make_sample("ssl4eos12", size=16, key="ssl4eos12_val_0080385")
    s.modalities["S2L2A"]["file_id"] = (("time",), np.array(["20200401T101559_20200401T101843_T32UPU"]))
    item = create_item(s, {}, collection_id="terramesh", revision=None)
    assert "S1GRD" in s.modalities and "S1RTC" not in s.modalities
    assert item.properties["terramesh:s2_product_id"] == "20200401T101559_20200401T101843_T32UPU"  # no link: said here
    assert all("sentinel-2" not in link.href for link in item.links if link.rel == "derived_from")
    assert cdse_item_url("S2B_MSIL1C_20200115T100309_N0208_R122_T33TUF_20200115T102339").endswith(
        "/sentinel-2-l1c/items/S2B_MSIL1C_20200115T100309_N0208_R122_T33TUF_20200115T102339"
    )


def test_gdal_stacit_reads_our_items(item_and_sample, tmp_path):
    """GDAL 3.10.3's STACIT driver opens an ItemCollection of our items (proj:code only)."""
    item, sample = item_and_sample
    fc = {"type": "FeatureCollection", "features": [item.to_dict()]}
    p = tmp_path / "items.json"
    p.write_text(json.dumps(fc))
    with rasterio.open(f'STACIT:"{p}":asset=S2L2A') as src:
        assert src.crs.to_epsg() == 32633
        assert src.count == 12 and src.width == 64
        assert src.transform.c == float(sample.modalities["S2L2A"].x[0]) - 5
        np.testing.assert_array_equal(src.read(1), sample.modalities["S2L2A"]["bands"].values[0, 0])


def test_collection_validates_and_renders_map_to_titiler(item_and_sample):
    item, _ = item_and_sample
    summary = Summary()
    summary.add_item(item)
    d = create_collection(summary=summary).to_dict()
    validate(d)
    assert d["license"] == "CC-BY-SA-4.0"
    assert d["sci:doi"] == "10.48550/arXiv.2504.11172"
    # item_assets: every asset an item may have, fixed (pgstac's base_item derives from it)
    assert set(item.assets) < set(d["item_assets"])
    assert {"S2L2A", "S1GRD", "S1RTC_zarr", "DEM_ref", "LULC_source", "cloud_mask", "thumbnail"} <= set(
        d["item_assets"]
    )
    assert d["item_assets"] == create_collection().to_dict()["item_assets"]
    # summaries say what was converted: a Major TOM sample has S1RTC, no S1GRD
    assert d["summaries"]["sar:product_type"] == ["RTC"] and d["summaries"]["sar:instrument_mode"] == ["IW"]
    r = d["renders"]
    assert r["true-color"]["assets"] == ["S2L2A|bidx=4,3,2"]
    # what the tile service sends titiler for a preset (catalog.links.render_query)
    q = dict(render_query(r["lulc"]))
    assert json.loads(q["colormap"])["1"] == [0x41, 0x9B, 0xDF, 255]
    assert [v for k, v in render_query(r["ndvi"]) if k == "rescale"] == ["-1,1"]
    assert ("assets", "S2L2A|bidx=4,3,2") in render_query(r["true-color"])


def test_collection_of_nothing_invents_nothing():
    """Nothing converted yet: no summaries (the extent of a conversion's collection:
    tests/test_collection_summaries.py); item_assets is the fixed description."""
    d = create_collection(index_href="index/").to_dict()  # renders need an asset
    validate(d)
    assert "summaries" not in d and d["item_assets"]["S2L2A"]["bands"][3]["name"] == "B04"


def test_rio_tiler_reads_every_render_preset(item_and_sample):
    """titiler's reader (rio-tiler 9 STACReader + titiler-core 2.3 asset parsing) renders each preset."""
    from rio_tiler.io import STACReader
    from titiler.core.dependencies import _parse_asset

    from terramesh_stac.converters.collection import RENDERS

    item, _ = item_and_sample
    with STACReader(None, item=item.to_dict()) as r:
        assert r.crs.to_epsg() == 32633
        for name, render in RENDERS.items():
            if name == "sar-grd":  # a majortom sample has S1RTC only
                continue
            kw = {"expression": render["expression"]} if "expression" in render else {}
            img = r.preview(assets=_parse_asset(render["assets"]), max_size=32, **kw)
            assert img.count == len(render.get("rescale", [None])), name
