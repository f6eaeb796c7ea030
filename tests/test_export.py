"""`terramesh-stac export geoparquet` (catalog/export.py) on real services: items loaded into
pgstac by our loader (lean items, hydrated from the collection's item_assets), exported as a
user runs the command, read back with stac-geoparquet and compared with what the live STAC
API serves; search_parquet against the API's search; the export to S3 (moto server)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import box, mapping, shape

from tests.conftest import delete_collection, start_service

CID = "terramesh-exporttest"
BUCKET = "terramesh-exporttest"

# (id, lon, lat, datetime, cloud): three years; a cluster around (30, 0) for the bbox
# searches (the second footprint only touches the search box with a corner), others far away
SAMPLES = [
    ("majortom_val_1000001", 30.00, 0.00, "2021-03-01T08:00:00Z", 5.0),
    ("majortom_val_1000002", 30.20, 0.10, "2021-05-01T08:00:00Z", 15.0),
    ("majortom_val_1000003", 30.40, -0.20, "2021-07-01T08:00:00Z", 40.0),
    ("ssl4eos12_val_1000004", 30.10, 0.30, "2021-09-01T08:00:00Z", 1.0),
    ("ssl4eos12_val_1000005", 30.30, 0.20, "2022-02-01T08:00:00Z", 2.0),
    ("majortom_val_1000006", -60.00, -10.00, "2021-04-01T08:00:00Z", 3.0),
    ("majortom_val_1000007", 140.00, 35.00, "2019-12-31T23:30:00Z", 0.0),
    ("ssl4eos12_val_1000008", 5.00, 52.00, "2022-12-31T23:59:59Z", 10.0),
]


def _item(key: str, lon: float, lat: float, when: str, cloud: float) -> dict:
    """A lean item as the converter writes it: assets hold hrefs, item_assets the rest;
    Major TOM samples have S1RTC, SSL4EO-S12 ones S1GRD and a `sar:` property."""
    footprint = shapely.affinity.rotate(box(lon, lat, lon + 0.024, lat + 0.024), 3)  # a UTM square, tilted
    source = key.split("_", 1)[0]
    s1 = "S1RTC" if source == "majortom" else "S1GRD"
    properties = {
        "datetime": when,
        "eo:cloud_cover": cloud,
        "terramesh:source": source,
        "terramesh:split": "val",
        "proj:code": "EPSG:32636",
    }
    if s1 == "S1GRD":
        properties["sar:product_type"] = "GRD"
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        ],
        "id": key,
        "collection": CID,
        "geometry": mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": properties,
        "links": [],
        "assets": {m: {"href": f"s3://terramesh-data/assets/{key}/{m}.tif"} for m in ("S2L2A", s1, "DEM")},
    }


@pytest.fixture(scope="module")
def export_catalog(pgstac_db, tmp_path_factory):
    """The collection (create_collection: the real item_assets) and SAMPLES, loaded with
    terramesh_stac.catalog.loader.load as the loader role; removed at the end."""
    from terramesh_stac.catalog.loader import load
    from terramesh_stac.converters.collection import create_collection

    dest = tmp_path_factory.mktemp("export-dest")
    collection = create_collection(collection_id=CID).to_dict(include_self_link=False, transform_hrefs=False)
    (dest / "collection.json").write_text(json.dumps(collection))
    (dest / "items" / "val").mkdir(parents=True)
    items = [_item(*s) for s in SAMPLES]
    (dest / "items" / "val" / "000000.ndjson").write_text("".join(json.dumps(i) + "\n" for i in items))
    load(str(dest), pgstac_db.loader)
    try:
        yield items
    finally:
        delete_collection(pgstac_db.admin, CID)


@pytest.fixture(scope="module")
def api(pgstac_db, export_catalog, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("export-api")
    with start_service({"TERRAMESH_API_DSN": pgstac_db.api, "TERRAMESH_DB_POOL_MAX_SIZE": "2"}, cwd) as base:
        yield base


def _export(pgstac_db, out: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`terramesh-stac export geoparquet` as a user runs it (a subprocess, this worktree's package)."""
    return subprocess.run(
        [sys.executable, "-m", "terramesh_stac.cli", "export", "geoparquet", "--dsn", pgstac_db.loader]
        + ["--collection", CID, "--out", out, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def _read_back(files) -> dict:
    """{id: item} of export files, with stac-geoparquet's reader."""
    from stac_geoparquet.arrow import stac_table_to_items

    items = {}
    for f in files:
        for item in stac_table_to_items(pq.read_table(f)):
            assert item["id"] not in items
            items[item["id"]] = item
    return items


def _instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _without_nulls(value):
    """A columnar file holds a column for every field any item has: stac-geoparquet reads a
    field an item lacks back as null. Absent and null mean the same here."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _assert_same_item(got: dict, served: dict) -> None:
    """An exported item is the served one, less the API's links (host-specific)."""
    got, served = _without_nulls(got), _without_nulls(served)
    assert shape(got["geometry"]).equals_exact(shape(served["geometry"]), 1e-9)
    assert got["bbox"] == pytest.approx(served["bbox"])
    gp, sp = dict(got["properties"]), dict(served["properties"])
    assert _instant(gp.pop("datetime")) == _instant(sp.pop("datetime"))
    assert gp == sp
    assert got["assets"] == served["assets"]  # hydrated: bands, titles, roles ... from item_assets
    assert sorted(got["stac_extensions"]) == sorted(served["stac_extensions"])
    for key in ("type", "stac_version", "collection"):
        assert got[key] == served[key]


def _served(api: str) -> dict:
    r = httpx.get(f"{api}/stac/collections/{CID}/items", params={"limit": 100}, timeout=30)
    r.raise_for_status()
    return {f["id"]: f for f in r.json()["features"]}


def test_export_round_trips_to_what_the_api_serves(pgstac_db, export_catalog, api, tmp_path):
    out = tmp_path / "export"
    done = _export(pgstac_db, str(out), "--row-group-size", "2", "--workers", "2")  # years in 2 processes
    assert done.returncode == 0, done.stderr
    assert f"exported {len(SAMPLES)} items" in done.stdout

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == ["year=2019/part-0.parquet", "year=2021/part-0.parquet", "year=2022/part-0.parquet"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    # rows of a year in geohash order of their centroids, two per row group
    year2021 = pq.ParquetFile(out / "year=2021/part-0.parquet")
    assert year2021.metadata.num_row_groups == 3
    assert year2021.read(columns=["id"]).column("id").to_pylist() == [
        "majortom_val_1000006",  # (-60, -10): geohash "6..."
        "majortom_val_1000003",  # (30.4, -0.2): "k..." (south of the equator)
        "majortom_val_1000001",  # (30.0, 0.0) .. (30.1, 0.3): "s..."
        "majortom_val_1000002",
        "ssl4eos12_val_1000004",
    ]
    assert b"stac-geoparquet" in year2021.schema_arrow.metadata  # the collection, in the file metadata

    got = _read_back(out / f for f in files)
    served = _served(api)
    assert set(got) == set(served) == {s[0] for s in SAMPLES}
    for iid, item in got.items():
        _assert_same_item(item, served[iid])
    # hydration really happened: the lean stored assets got their item_assets fields back
    assert got["majortom_val_1000001"]["assets"]["S2L2A"]["bands"][0]["name"]
    assert got["ssl4eos12_val_1000004"]["assets"]["S1GRD"]["sar:instrument_mode"] == "IW"

    # the collection links the export, also as the API serves it
    collection = httpx.get(f"{api}/stac/collections/{CID}", timeout=30).json()
    mirror = collection["assets"]["geoparquet"]
    assert mirror["href"] == str(out)
    assert mirror["type"] == "application/vnd.apache.parquet"
    assert mirror["roles"] == ["collection-mirror"]
    from terramesh_stac.validation import problems

    assert problems(collection) == []  # still a valid collection, offline schemas

    # exporting again (one process) replaces the files (no stale year left behind, same content)
    (out / "year=2000").mkdir()
    (out / "year=2000/part-0.parquet").write_bytes((out / files[0]).read_bytes())
    assert _export(pgstac_db, str(out), "--quiet", "--row-group-size", "2", "--workers", "1").returncode == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == files
    assert _read_back(out / f for f in files) == got
    assert pq.ParquetFile(out / "year=2021/part-0.parquet").schema_arrow == year2021.schema_arrow


SEARCHES = [
    # (bbox, datetime, max cloud, limit)
    ([29.99, -0.01, 30.2, 0.31], "2021-01-01T00:00:00Z/2021-12-31T23:59:59Z", 20, 10),
    ([29.99, -0.01, 30.2, 0.31], "2021-01-01T00:00:00Z/2021-12-31T23:59:59Z", 20, 1),
    ([29.5, -0.5, 30.5, 0.5], "2021-01-01T00:00:00Z/2022-12-31T23:59:59Z", 50, 10),
    ([29.5, -0.5, 30.5, 0.5], "2021-06-01T00:00:00Z/..", None, 2),
    ([-180, -90, 180, 90], "../2022-12-31T23:59:59Z", 5, 10),
    ([-180, -90, 180, 90], None, None, 3),
    (None, "2022-12-31T23:59:59Z", None, 10),
    ([0, 0, 1, 1], None, None, 10),  # nothing there
    # inside the bbox of the first item's tilted footprint, outside the footprint: pgstac
    # intersects geometries, so must the parquet search
    ([29.9990, -0.0010, 29.9996, -0.0004], None, None, 10),
]


@pytest.mark.parametrize("bbox, when, cloud, limit", SEARCHES)
def test_search_parquet_answers_as_the_api(pgstac_db, export_catalog, api, tmp_path_factory, bbox, when, cloud, limit):
    from terramesh_stac.catalog.export import search_parquet

    out = tmp_path_factory.getbasetemp() / "export-search"
    if not out.exists():
        assert _export(pgstac_db, str(out), "--row-group-size", "2", "--quiet").returncode == 0
    body = {"collections": [CID], "limit": limit}
    if bbox is not None:
        body["bbox"] = bbox
    if when is not None:
        body["datetime"] = when
    if cloud is not None:
        body["filter-lang"] = "cql2-json"
        body["filter"] = {"op": "<", "args": [{"property": "eo:cloud_cover"}, cloud]}
    r = httpx.post(f"{api}/stac/search", json=body, timeout=30)
    r.raise_for_status()
    want = [f["id"] for f in r.json()["features"]]

    ids = search_parquet(str(out), bbox=bbox, datetime_range=when, max_cloud=cloud, limit=limit, ids_only=True)
    assert ids == want
    items = search_parquet(str(out), bbox=bbox, datetime_range=when, max_cloud=cloud, limit=limit)
    assert [i["id"] for i in items] == want
    served = {f["id"]: f for f in r.json()["features"]}
    for item in items:
        _assert_same_item(item, served[item["id"]])


def test_a_bbox_query_reads_few_row_groups(pgstac_db, export_catalog, tmp_path):
    """The layout's point: DuckDB skips the row groups whose `bbox` statistics are outside."""
    import duckdb

    out = tmp_path / "export"
    assert _export(pgstac_db, str(out), "--row-group-size", "2", "--quiet").returncode == 0
    con = duckdb.connect()
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"PRAGMA profiling_output = '{tmp_path / 'profile.json'}'")
    ids = con.sql(
        f"SELECT id FROM read_parquet('{out}/*/*.parquet', hive_partitioning = true) "
        "WHERE year = 2021 AND bbox.xmin <= 30.03 AND bbox.xmax >= 29.99 AND bbox.ymin <= 0.03 AND bbox.ymax >= -0.01"
    ).fetchall()
    assert ids == [("majortom_val_1000001",)]
    profile = json.loads((tmp_path / "profile.json").read_text())["query"]
    # year=2021 holds 3 row groups (the other files are pruned by the partition); one is read
    assert (profile["total_row_groups_scanned"], profile["total_row_groups_to_scan"]) == (1, 3)


def test_export_to_s3(pgstac_db, export_catalog, s3_server, tmp_path):
    import boto3

    from terramesh_stac.catalog.export import search_parquet

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    local = tmp_path / "local"
    assert _export(pgstac_db, str(local), "--quiet").returncode == 0
    done = _export(pgstac_db, f"s3://{BUCKET}/mirror", env={"TERRAMESH_S3_ENDPOINT_URL": s3_server})
    assert done.returncode == 0, done.stderr

    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    keys = sorted(fs.glob(f"{BUCKET}/mirror/*/*.parquet"))
    assert keys == [f"{BUCKET}/mirror/year={y}/part-0.parquet" for y in (2019, 2021, 2022)]
    from stac_geoparquet.arrow import stac_table_to_items

    got = {i["id"]: i for k in keys for i in stac_table_to_items(pq.read_table(k, filesystem=fs))}
    want = _read_back(sorted(local.rglob("*.parquet")))
    assert got.keys() == want.keys()
    for iid in got:
        _assert_same_item(got[iid], want[iid])
    # and searched there (through pyarrow: no DuckDB extension download)
    bbox, when = [29.5, -0.5, 30.5, 0.5], "2021-01-01T00:00:00Z/2022-12-31T23:59:59Z"
    assert search_parquet(
        f"s3://{BUCKET}/mirror", bbox=bbox, datetime_range=when, max_cloud=50, limit=10, ids_only=True,
        endpoint_url=s3_server,
    ) == search_parquet(str(local), bbox=bbox, datetime_range=when, max_cloud=50, limit=10, ids_only=True)  # fmt: skip


def test_export_bad_input(pgstac_db, export_catalog, tmp_path):
    done = _export(pgstac_db, str(tmp_path / "x"), "--collection", "no-such-collection")
    assert done.returncode == 1
    assert "collection 'no-such-collection' is not in pgstac" in done.stderr
    assert "Traceback" not in done.stderr
    done = _export(pgstac_db, "ftp://host/x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = _export(pgstac_db, str(tmp_path / "y"), "--row-group-size", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    done = subprocess.run(
        [sys.executable, "-m", "terramesh_stac.cli", "export", "geoparquet", "--dsn", unreachable]
        + ["--collection", CID, "--out", str(tmp_path / "z"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: database:"), done.stderr


def test_datetime_bounds_reject_garbage():
    from terramesh_stac.catalog.export import search_parquet

    with pytest.raises(ValueError, match="datetime must be"):
        search_parquet(str(Path("/nonexistent")), datetime_range="last year")
    with pytest.raises(ValueError, match="bbox must be"):
        search_parquet(str(Path("/nonexistent")), bbox=[1, 2, 3])
