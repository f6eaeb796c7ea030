"""`terramesh-stac catalog`: items from the metadata parquet alone, on the generated sample
(conftest `synth_root`), checked against what `convert` makes, in pgstac (`pgstac_db`)."""

import json
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from affine import Affine
from psycopg.types.json import Jsonb

from terramesh_stac.catalog.loader import load, read_items
from terramesh_stac.cli import EXIT_OK, EXIT_PARTIAL, main
from terramesh_stac.converters.footprint import Grid, footprint, footprints
from terramesh_stac.converters.items import stac_extensions_for
from terramesh_stac.converters.storage import Store
from terramesh_stac.validation import problems
from tests.conftest import delete_collection
from tests.conftest import read_items as read_converted

REVISION = "test-rev"


def catalog_items(dest) -> dict:
    """{id: item} of every file `catalog` wrote (each id once)."""
    store = Store(str(dest))
    items = {}
    for path in store.glob("catalog/items/**/*.ndjson"):
        for item in read_items(store, path):
            assert item["id"] not in items, item["id"]
            items[item["id"]] = item
    return items


def assert_coords_close(a, b, tol=1e-7):
    """Nested coordinate lists (a MultiPolygon's parts may differ in length) equal within tol."""
    if isinstance(a, list) and a and isinstance(a[0], list) and isinstance(a[0][0], list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_coords_close(x, y, tol)
        return
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=tol)


def test_footprints_of_many_grids_equal_one_by_one():
    """The vectorised path gives the per-grid footprint, also across the antimeridian."""
    grids = [
        Grid(32632, Affine(10, 0, 690560.0, 0, -10, 5336070.0), (264, 264)),
        Grid(32660, Affine(10, 0, 703000.0, 0, -10, 5800000.0), (264, 264)),  # 180 E runs through it
        Grid(32760, Affine(10, 0, 816000.0, 0, -10, 8008000.0), (264, 264)),  # and this one
    ]
    for g in grids:
        (many,) = footprints(g.epsg, np.array([g.bounds]))
        assert many == footprint(g)
    crossing = footprint(grids[1])
    assert crossing[0]["type"] == "MultiPolygon" and crossing[1][0] > crossing[1][2]


def test_catalog_items_validate_and_equal_the_converted_ones(synth_root, tmp_path):
    dest = tmp_path / "out"
    rc = main(["convert", str(synth_root), "--dest", str(dest), "--revision", REVISION, "--workers", "1", "--quiet"])
    assert rc == EXIT_OK
    converted = read_converted(dest, full=False)
    # into the same destination: the byte index `convert` wrote gives the byte ranges
    assert main(["catalog", str(synth_root), "--dest", str(dest), "--revision", REVISION, "--quiet"]) == EXIT_OK
    items = catalog_items(dest)
    assert set(items) == set(converted) and len(items) == 12

    for key, item in items.items():
        assert problems(item) == [], key
        want = converted[key]
        assert item["geometry"]["type"] == want["geometry"]["type"]
        assert_coords_close(item["geometry"]["coordinates"], want["geometry"]["coordinates"])
        assert_coords_close(item["bbox"], want["bbox"])
        props, want_props = dict(item["properties"]), dict(want["properties"])
        for field in ("proj:transform", "proj:bbox"):
            assert_coords_close(props.pop(field), want_props.pop(field))
        assert props == want_props, key
        assert item["collection"] == want["collection"]
        assert item["links"] == [link for link in want["links"] if link["rel"] == "collection"]
        sources = {k: a for k, a in want["assets"].items() if k.endswith("_source")}
        assert item["assets"] == sources, key  # tar href, member and its byte range
        assert all("archive:start" in a for a in item["assets"].values())
        assert item["stac_extensions"] == stac_extensions_for(item)
        assert set(item["stac_extensions"]) <= set(want["stac_extensions"])
    # lean: besides the 7 tar hrefs (their length is the source's: long pytest paths here), a
    # metadata-only item with byte ranges holds ~2.2 kB (an antimeridian MultiPolygon a bit more)
    lines = [line for p in Path(dest, "catalog/items").rglob("*.ndjson") for line in p.read_bytes().splitlines()]
    hrefs = [sum(len(a["href"]) for a in items[json.loads(line)["id"]]["assets"].values()) for line in lines]
    assert max(len(line) - h for line, h in zip(lines, hrefs)) < 2500


def _search_ids(dsn: str, collection: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path TO pgstac, public")
        body = conn.execute("SELECT pgstac.search(%s)", (Jsonb({"collections": [collection], "limit": 100}),))
        return sorted(f["id"] for f in body.fetchone()[0]["features"])


def _rows(dsn: str, collection: str) -> dict[str, dict]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path TO pgstac, public")
        body = conn.execute("SELECT pgstac.search(%s)", (Jsonb({"collections": [collection], "limit": 100}),))
        features = body.fetchone()[0]["features"]
        counts = conn.execute(
            "SELECT id, count(*) FROM pgstac.items WHERE collection = %s GROUP BY id", (collection,)
        ).fetchall()
    assert all(n == 1 for _, n in counts), counts
    return {f["id"]: f for f in features}


def test_catalog_load_then_convert_upgrades_the_same_items(synth_root, tmp_path, pgstac_db):
    cid = "terramesh-catalog-upgrade"
    dest = tmp_path / "out"
    common = ["--dest", str(dest), "--collection", cid, "--dsn", pgstac_db.loader, "--quiet"]
    try:
        assert main(["catalog", str(synth_root), "--load", *common]) == EXIT_OK
        before = _rows(pgstac_db.admin, cid)
        assert len(before) == 12
        assert all("S2L2A" not in f["assets"] and "S2L2A_source" in f["assets"] for f in before.values())
        ids_before = _search_ids(pgstac_db.api, cid)

        assert main(["convert", str(synth_root), "--load", "--workers", "1", *common]) == EXIT_OK
        after = _rows(pgstac_db.admin, cid)
        assert sorted(after) == sorted(before)
        assert all(f["assets"]["S2L2A"]["href"].endswith("S2L2A.tif") for f in after.values())
        assert _search_ids(pgstac_db.api, cid) == ids_before

        # a later load of the whole destination keeps the converted items (no downgrade)
        result = load(str(dest), pgstac_db.loader)
        assert result.ok and result.written == 12
        assert all("S2L2A" in f["assets"] for f in _rows(pgstac_db.admin, cid).values())
        # the collection covers the catalog's items and the converted ones
        collection = Store(str(dest)).get("collection.json")
        assert b'"terramesh:split"' in collection
    finally:
        delete_collection(pgstac_db.admin, cid)


def test_a_bad_row_is_reported_and_the_rest_written(synth_root, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    table = pq.read_table(synth_root / "val_metadata.parquet")
    crs = table.column("crs").to_pylist()
    crs[1] = None
    s2, s1 = table.column("S2_time").to_pylist(), table.column("S1_time").to_pylist()
    s2[5] = s1[5] = None
    table = table.set_column(table.schema.get_field_index("crs"), "crs", pa.array(crs, table.schema.field("crs").type))
    for name, values in (("S2_time", s2), ("S1_time", s1)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.array(values, table.schema.field(name).type))
    pq.write_table(table, src / "val_metadata.parquet")
    keys = [z.split(".")[0] for z in table.column("zarr").to_pylist()]
    dest = tmp_path / "out"

    assert main(["catalog", str(src), "--dest", str(dest), "--workers", "1", "--quiet"]) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert f"{keys[1]} (" in out and "no crs" in out
    assert f"{keys[5]} (" in out and "no S2_time nor S1_time" in out
    items = catalog_items(dest)
    assert set(items) == set(keys) - {keys[1], keys[5]}


def test_catalog_refuses_a_source_without_metadata(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main(["catalog", str(tmp_path / "src"), "--dest", str(tmp_path / "out"), "--quiet"]) == 1
    assert "no metadata parquet" in capsys.readouterr().err


def test_catalog_on_a_dask_scheduler_writes_the_same_items(synth_root, tmp_path):
    from distributed import LocalCluster

    local = tmp_path / "local"
    assert main(["catalog", str(synth_root), "--dest", str(local), "--workers", "1", "--quiet"]) == EXIT_OK
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dask = tmp_path / "dask"
        rc = main(
            ["catalog", str(synth_root), "--dest", str(dask), "--scheduler", cluster.scheduler_address, "--quiet"]
        )
    assert rc == EXIT_OK
    want = catalog_items(local)
    assert len(want) == 12 and catalog_items(dask) == want


def test_catalog_of_a_url_source_points_at_its_tars(synth_root, http_server, tmp_path):
    """Only the parquet is read (range requests); the source assets name the tars by URL,
    as `convert` of the same URL names them."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["catalog", str(synth_root), "--dest", str(local), "--workers", "1", "--quiet"]) == EXIT_OK
    assert main(["catalog", f"{http_server}/", "--dest", str(remote), "--workers", "1", "--quiet"]) == EXIT_OK
    want, got = catalog_items(local), catalog_items(remote)
    assert sorted(got) == sorted(want)
    root = str(synth_root).rstrip("/")
    for key, item in got.items():
        for name, asset in item["assets"].items():
            modality = name.removesuffix("_source")
            shard = item["properties"]["terramesh:shard"]
            assert asset["href"] == f"{http_server}/val/{modality}/{shard}"
            assert want[key]["assets"][name]["href"] == f"{root}/val/{modality}/{shard}"
        assert {**item, "assets": None} == {**want[key], "assets": None}


def test_load_checks_catalog_files_against_the_catalog_manifest(synth_root, tmp_path, pgstac_db):
    cid = "terramesh-catalog-load"
    dest = tmp_path / "out"
    try:
        assert main(["catalog", str(synth_root), "--dest", str(dest), "--collection", cid, "--quiet"]) == EXIT_OK
        result = load(str(dest), pgstac_db.loader)
        assert result.ok and result.written == result.in_db == 12 and len(result.files) == 3
        assert len(_rows(pgstac_db.admin, cid)) == 12

        manifest_path = dest / "catalog/manifests/val.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["files"][0]["count"] += 1  # the file no longer holds what the manifest says
        manifest_path.write_text(json.dumps(manifest))
        result = load(str(dest), pgstac_db.loader, raise_on_error=False)
        assert not result.ok
        assert any(manifest["files"][0]["path"] in e and "catalog manifest says" in e for e in result.errors)
    finally:
        delete_collection(pgstac_db.admin, cid)
