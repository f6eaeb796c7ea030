"""End to end, as a user drives it: `terramesh-stac convert`, `load`, `serve` on generated
TerraMesh shards, then the STAC API, tiles and assets over HTTP, on real services."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import shapely
from shapely.geometry import box, shape

from terramesh_stac.converters.shards import iter_samples
from terramesh_stac.converters.source import open_source
from terramesh_stac.validation import validate
from tests.conftest import read_items, serve_with_cli

CLI = [sys.executable, "-m", "terramesh_stac.cli"]
COLLECTION = "terramesh-e2e"


def run_cli(*args, env=None, check=True):
    proc = subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def convert_and_load(source, dest, collection: str, loader_dsn: str) -> dict:
    """`convert` then `load` (which recounts the map's density) as a user runs them; returns
    the converted items."""
    from tests.conftest import read_items

    run_cli("convert", source, "--dest", dest, "--collection", collection)
    run_cli("load", dest, "--dsn", loader_dsn)
    return read_items(dest)


def source_samples(root) -> dict:
    """Every sample of the generated tree, decoded by our reader: key -> Sample."""
    source = open_source(str(root))
    out = {}
    for shard in source.list_shards("val"):
        for s in iter_samples(source, "val", shard, metadata=source.read_metadata("val")):
            assert not hasattr(s, "reason"), s
            out[s.key] = s
    return out


@pytest.fixture(scope="module")
def converted(synth_root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("e2e") / "out"
    proc = run_cli("convert", synth_root, "--dest", dest, "--collection", COLLECTION)
    return dest, proc


@pytest.fixture(scope="module")
def samples(synth_root):
    return source_samples(synth_root)


def test_convert_writes_one_item_per_sample(converted, samples):
    dest, proc = converted
    items = read_items(dest)
    assert sorted(items) == sorted(samples)
    assert f"{len(samples)} items in" in proc.stdout and f"({len(samples)} samples," in proc.stdout
    for key, item in items.items():
        assert item["collection"] == COLLECTION
        assert item["properties"]["terramesh:source"] == key.split("_")[0]
        assert item["properties"]["terramesh:split"] == "val"
        modalities = set(samples[key].modalities)
        assert modalities <= set(item["assets"])
        assert {"cloud_mask", "thumbnail"} <= set(item["assets"])


def test_every_item_and_the_collection_validate(converted):
    dest, _ = converted
    for item in read_items(dest).values():
        validate(item)
    collection = json.loads((dest / "collection.json").read_text())
    validate(collection)
    assert collection["id"] == COLLECTION


def test_cog_pixels_and_grid_equal_the_source(converted, samples):
    dest, _ = converted
    for key, item in read_items(dest).items():
        for modality, ds in samples[key].modalities.items():
            src = ds["bands"].values[0]
            with rasterio.open(item["assets"][modality]["href"]) as cog:
                got = cog.read()
                x, y = ds["x"].values, ds["y"].values
                assert cog.crs.to_epsg() == int(ds["crs"].values.reshape(-1)[0])
                assert cog.transform.c == pytest.approx(x[0] - (x[1] - x[0]) / 2, abs=1e-6)
                assert cog.transform.f == pytest.approx(y[0] + (y[0] - y[1]) / 2, abs=1e-6)
                assert cog.transform.a == pytest.approx(x[1] - x[0])
                assert cog.transform.e == pytest.approx(y[1] - y[0])
            if src.dtype.kind == "f":
                assert np.array_equal(np.isnan(got), np.isnan(src)), (key, modality)
                assert np.array_equal(got[~np.isnan(got)], src[~np.isnan(src)].astype(got.dtype))
            else:
                assert np.array_equal(got, src), (key, modality)


def true_outline(ds, per_edge=200) -> shapely.LinearRing:
    """The sample's pixel-edge outline, densely reprojected to WGS84 (longitudes 0..360)."""
    from pyproj import Transformer

    x, y = ds["x"].values, ds["y"].values
    dx, dy = x[1] - x[0], y[1] - y[0]
    w, e, n, s = x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2
    t = np.linspace(0, 1, per_edge, endpoint=False)
    xs = np.concatenate([w + (e - w) * t, np.full_like(t, e), e - (e - w) * t, np.full_like(t, w)])
    ys = np.concatenate([np.full_like(t, n), n - (n - s) * t, np.full_like(t, s), s + (n - s) * t])
    epsg = int(ds["crs"].values.reshape(-1)[0])
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
    return shapely.LinearRing(np.column_stack([np.mod(lon, 360), lat]))


def test_item_footprint_matches_the_sample_grid(converted, samples):
    dest, _ = converted
    for key, item in read_items(dest).items():
        ds = samples[key].modalities["S2L2A"]
        geom = shape(item["geometry"])
        assert geom.is_valid
        # antimeridian-split parts joined again on a 0..360 longitude axis
        joined = shapely.unary_union(
            [
                shapely.transform(p, lambda c: np.column_stack([np.mod(c[:, 0], 360), c[:, 1]]))
                for p in getattr(geom, "geoms", [geom])
            ]
        )
        meta = samples[key].metadata
        assert joined.buffer(1e-9).contains(shapely.Point(meta["center_lon"] % 360, meta["center_lat"]))
        assert shapely.hausdorff_distance(joined.exterior, true_outline(ds)) < 1e-6, key


def test_antimeridian_sample_is_split(converted):
    dest, _ = converted
    crossing = [i for i in read_items(dest).values() if i["bbox"][0] > i["bbox"][2]]
    assert crossing, "the generator writes one sample across 180 degrees"
    for item in crossing:
        assert item["geometry"]["type"] == "MultiPolygon"


@pytest.mark.subprocess
def test_convert_to_s3_and_from_https_and_s3(synth_root, http_server, s3_server, samples):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="e2e")
    # the source itself on S3 too
    for path in Path(synth_root).rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "e2e", f"source/{path.relative_to(synth_root).as_posix()}")
    env = {"TERRAMESH_S3_ENDPOINT_URL": s3_server, "AWS_ENDPOINT_URL": s3_server}
    run_cli("convert", f"{http_server}/", "--dest", "s3://e2e/from-https", "--limit", 3, env=env)
    run_cli("convert", "s3://e2e/source", "--dest", "s3://e2e/from-s3", env=env)

    body = s3.get_object(Bucket="e2e", Key="from-s3/collection.json")["Body"].read()
    validate(json.loads(body))
    items = {}
    for obj in s3.list_objects_v2(Bucket="e2e", Prefix="from-s3/items/")["Contents"]:
        for line in s3.get_object(Bucket="e2e", Key=obj["Key"])["Body"].read().decode().splitlines():
            item = json.loads(line)
            items[item["id"]] = item
    assert sorted(items) == sorted(samples)
    https_items = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e", Prefix="from-https/items/")["Contents"]]
    assert https_items

    key = sorted(items)[0]
    asset = items[key]["assets"]["S2L2A"]
    assert asset["href"] == f"s3://e2e/from-s3/assets/{key}/S2L2A.tif"
    assert asset["alternate"]["https"]["href"] == f"{s3_server}/e2e/from-s3/assets/{key}/S2L2A.tif"
    # GDAL reads the asset from the S3-compatible server: same pixels as the source
    host = s3_server.removeprefix("http://")
    gdal_env = dict(
        AWS_S3_ENDPOINT=host, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"
    )
    with rasterio.Env(**gdal_env), rasterio.open(asset["href"]) as cog:
        assert np.array_equal(cog.read(), samples[key].modalities["S2L2A"]["bands"].values[0])
    # and over plain HTTP through the alternate, once the object is public (as published ones
    # are). httpx, not GDAL: the moto server runs in this process, and GDAL's /vsicurl/ reads
    # back into the same process hang (tried).
    s3.put_object_acl(Bucket="e2e", Key=f"from-s3/assets/{key}/S2L2A.tif", ACL="public-read")
    r = httpx.get(asset["alternate"]["https"]["href"], timeout=30)
    assert r.status_code == 200
    assert r.content == s3.get_object(Bucket="e2e", Key=f"from-s3/assets/{key}/S2L2A.tif")["Body"].read()


@pytest.mark.subprocess
def test_bad_input_is_reported_and_the_rest_converted(synth_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_root, src)
    # corrupt one member of one modality: rewrite the tar with garbage in its first zip
    tar_path = sorted((src / "val" / "DEM").glob("majortom_*.tar"))[0]
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad_key = members[0][0].name.split(".")[0]
    members[0] = (members[0][0], b"PK\x03\x04 not really a zip" + bytes(100))
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))
    dest = tmp_path / "out"
    proc = run_cli("convert", src, "--dest", dest, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "PARTIAL" in proc.stdout and bad_key in proc.stdout and "DEM" in proc.stdout
    items = read_items(dest)
    assert len(items) == len(source_samples(synth_root))  # nothing lost
    assert "DEM" not in items[bad_key]["assets"]
    reports = [json.loads(p.read_text()) for p in (dest / "reports" / "val").glob("*.json")]
    errors = [e for r in reports for e in r["errors"]]
    assert [(e["key"], e["modality"]) for e in errors] == [(bad_key, "DEM")]


# --- load and serve the converted output -----------------------------------------------


@pytest.fixture(scope="module")
def loaded(converted, pgstac_db):
    dest, _ = converted
    first = run_cli("load", dest, "--dsn", pgstac_db.loader)
    second = run_cli("load", dest, "--dsn", pgstac_db.loader)
    return dest, first, second


def count_rows(dsn) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s", (COLLECTION,)).fetchone()[0]


def test_load_twice_gives_the_same_rows(loaded, pgstac_db):
    dest, first, second = loaded
    n = len(read_items(dest))
    assert count_rows(pgstac_db.admin) == n
    assert f"({n} in pgstac)" in first.stdout and f"({n} in pgstac)" in second.stdout


@pytest.fixture(scope="module")
def served(loaded, pgstac_db):
    dest, _, _ = loaded
    with serve_with_cli(pgstac_db, dest) as base:
        yield base


def search_ids(base, **params) -> list[str]:
    from pystac_client import Client

    client = Client.open(f"{base}/stac")
    return sorted(i.id for i in client.search(collections=[COLLECTION], **params).items())


def test_searches_return_exactly_the_expected_ids(served, converted, samples):
    dest, _ = converted
    items = read_items(dest)
    # by source (CQL2 text)
    assert search_ids(served, filter="\"terramesh:source\" = 'ssl4eos12'") == sorted(
        k for k in samples if k.startswith("ssl4eos12_")
    )
    # by cloud cover (CQL2 JSON), expected from the metadata parquet
    assert search_ids(
        served, filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]}, filter_lang="cql2-json"
    ) == sorted(k for k, s in samples.items() if s.metadata["cloud_cover"] < 10)
    # by bbox around one sample's centre, expected from the metadata footprints
    key = sorted(samples)[0]
    lon, lat = samples[key].metadata["center_lon"], samples[key].metadata["center_lat"]
    bbox = [lon - 0.001, lat - 0.001, lon + 0.001, lat + 0.001]
    assert search_ids(served, bbox=bbox) == sorted(
        k for k, s in samples.items() if s.metadata["geometry"].intersects(box(*bbox))
    )
    # by datetime, expected from the items' properties.datetime (no start/end_datetime: items.py)
    times = sorted(datetime.fromisoformat(i["properties"]["datetime"]) for i in items.values())
    lo, hi = times[2], times[-3]
    expected = sorted(k for k, i in items.items() if lo <= datetime.fromisoformat(i["properties"]["datetime"]) <= hi)
    assert search_ids(served, datetime=[lo, hi]) == expected
    # pagination walks every item exactly once
    assert search_ids(served, limit=5) == sorted(items)


def test_every_preset_renders_at_the_sample(served, converted):
    import io

    import morecantile
    from PIL import Image

    dest, _ = converted
    collection = json.loads((dest / "collection.json").read_text())
    items = read_items(dest)
    item = next(i for k, i in sorted(items.items()) if k.startswith("majortom") and i["bbox"][0] < i["bbox"][2])
    lon = (item["bbox"][0] + item["bbox"][2]) / 2
    lat = (item["bbox"][1] + item["bbox"][3]) / 2
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, 14)
    for render_id, render in collection["renders"].items():
        if not all(a.split("|")[0] in item["assets"] for a in render["assets"]):
            continue  # e.g. S1GRD presets on a majortom (S1RTC) sample
        r = httpx.get(
            f"{served}/raster/collections/{COLLECTION}/items/{item['id']}/tiles/"
            f"WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
            params={"render": render_id},
            timeout=60,
        )
        assert r.status_code == 200, (render_id, r.text)
        img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
        assert (img[..., 3] > 0).mean() > 0.05, f"{render_id}: empty tile"


def test_asset_links_open_over_http_with_gdal(served, samples):
    item = httpx.get(f"{served}/stac/collections/{COLLECTION}/items/{sorted(samples)[0]}").json()
    href = item["assets"]["S2L2A"]["href"]
    assert href.startswith(served + "/assets/")
    with rasterio.open(href) as cog:
        assert np.array_equal(cog.read(), samples[item["id"]].modalities["S2L2A"]["bands"].values[0])
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert httpx.get(links["preview"], timeout=60).headers["content-type"] == "image/png"
    assert httpx.get(links["tiles"], timeout=60).json()["tiles"]


def test_collection_links_the_served_byte_index_and_shows_no_server_path(served, converted, synth_root):
    """The collection's byte-index asset is a URL of the service (its parquet files are
    served, with ranges), and no response of the API names the destination's folder or the
    local source's (items' `via` links to local shards are left out)."""
    import io

    import pyarrow.parquet as pq

    dest, _ = converted
    r = httpx.get(f"{served}/stac/collections/{COLLECTION}", timeout=30)
    index = r.json()["assets"]["byte-index"]["href"]
    assert index == f"{served}/index/"
    shard = sorted((dest / "index" / "val").glob("*.parquet"))[0]
    got = httpx.get(f"{index}val/{shard.name}", timeout=30)
    assert got.status_code == 200
    assert pq.read_table(io.BytesIO(got.content)).num_rows == pq.read_table(shard).num_rows
    texts = [r.text, httpx.get(f"{served}/stac/collections/{COLLECTION}/items?limit=50", timeout=30).text]
    texts.append(httpx.post(f"{served}/stac/search", json={"collections": [COLLECTION], "limit": 50}, timeout=30).text)
    assert not [t for t in texts if str(dest) in t or str(synth_root) in t]
