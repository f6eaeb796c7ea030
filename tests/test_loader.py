"""terramesh_stac.catalog.loader on the real embedded pgstac cluster (fixture pgstac_db).

Each test loads its own collection id: the session database is shared with other tests.
"""

import datetime as dt
import itertools
import json
from pathlib import Path

import psycopg
import pystac
import pytest
from psycopg.types.json import Jsonb

from terramesh_stac.catalog import loader

_ids = itertools.count()


def _collection_id(name: str) -> str:
    return f"terramesh-test-{name}-{next(_ids)}"


def _item(cid: str, n: int, when: dt.datetime, split: str = "val") -> dict:
    lon, lat = 10 + n * 0.01, 45.0
    item = pystac.Item(
        id=f"majortom_{split}_{n:07d}",
        geometry={
            "type": "Polygon",
            "coordinates": [[[lon, lat], [lon + 0.02, lat], [lon + 0.02, lat + 0.02], [lon, lat + 0.02], [lon, lat]]],
        },
        bbox=[lon, lat, lon + 0.02, lat + 0.02],
        datetime=when,
        properties={
            "terramesh:source": "majortom",
            "terramesh:split": split,
            "terramesh:shard": f"{split}-000",
            "terramesh:sample_id": f"majortom_{split}_{n:07d}",
            "terramesh:revision": "test",
            "eo:cloud_cover": float(n),
        },
        collection=cid,
    )
    item.add_asset("S2L2A", pystac.Asset(href=f"/data/{n}/S2L2A.tif", media_type=pystac.MediaType.COG, roles=["data"]))
    return item.to_dict(include_self_link=False)


def write_output(root: Path, cid: str, shards: dict[str, list[dict]]):
    """What a conversion writes: collection.json and items/<split>/<shard>.ndjson."""
    collection = pystac.Collection(
        id=cid,
        description="TerraMesh test collection",
        extent=pystac.Extent(
            pystac.SpatialExtent([[-180, -90, 180, 90]]),
            pystac.TemporalExtent([[dt.datetime(2020, 1, 1, tzinfo=dt.UTC), None]]),
        ),
        license="CC-BY-4.0",
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.json").write_text(json.dumps(collection.to_dict(include_self_link=False)))
    for relpath, items in shards.items():
        path = root / "items" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return root


def _sample_output(root: Path, cid: str) -> Path:
    jan = dt.datetime(2021, 1, 15, tzinfo=dt.UTC)
    feb = dt.datetime(2021, 2, 15, tzinfo=dt.UTC)
    return write_output(
        root,
        cid,
        {
            "val/val-000.ndjson": [_item(cid, n, jan) for n in range(3)],
            "train/train-000.ndjson": [_item(cid, n, feb, "train") for n in range(2)],
        },
    )


def _rows(dsn: str, cid: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, datetime, content FROM pgstac.items WHERE collection = %s ORDER BY id", (cid,)
        ).fetchall()


def test_load_as_loader_role(pgstac_db, tmp_path):
    cid = _collection_id("load")
    result = loader.load(str(_sample_output(tmp_path, cid)), pgstac_db.loader)
    assert result.ok, result.summary()
    assert (result.written, result.in_db, len(result.files)) == (5, 5, 2)
    assert result.total_seconds > 0 and result.items_seconds > 0
    # The API role sees them through pgstac's search.
    with psycopg.connect(pgstac_db.api) as conn:
        found = conn.execute("SELECT pgstac.search(%s)", (Jsonb({"collections": [cid], "limit": 10}),)).fetchone()[0]
    assert found["numberReturned"] == 5
    assert {f["properties"]["terramesh:split"] for f in found["features"]} == {"val", "train"}


def test_load_twice_gives_same_rows(pgstac_db, tmp_path):
    cid = _collection_id("twice")
    dest = _sample_output(tmp_path, cid)
    loader.load(str(dest), pgstac_db.loader)
    first = _rows(pgstac_db.admin, cid)
    second_result = loader.load(str(dest), pgstac_db.loader)
    assert second_result.ok and second_result.in_db == 5
    assert _rows(pgstac_db.admin, cid) == first
    # Upsert updates content in place.
    items = [json.loads(line) for line in (dest / "items/val/val-000.ndjson").read_text().splitlines()]
    items[0]["properties"]["eo:cloud_cover"] = 99.0
    (dest / "items/val/val-000.ndjson").write_text("".join(json.dumps(i) + "\n" for i in items))
    loader.load(str(dest), pgstac_db.loader)
    rows = _rows(pgstac_db.admin, cid)
    assert len(rows) == 5
    assert [r[2]["properties"]["eo:cloud_cover"] for r in rows if r[0] == items[0]["id"]] == [99.0]


def test_count_mismatch_detected(pgstac_db, tmp_path):
    cid = _collection_id("mismatch")
    dest = str(_sample_output(tmp_path, cid))
    with pytest.raises(loader.LoadError) as err:
        loader.load(dest, pgstac_db.loader, expected_count=6)
    assert not err.value.result.ok and "expected 6 items, pgstac holds 5" in str(err.value)
    result = loader.load(dest, pgstac_db.loader, expected_count=6, raise_on_error=False)
    assert not result.ok and result.in_db == 5


def test_duplicate_ids_detected(pgstac_db, tmp_path):
    cid = _collection_id("dupes")
    when = dt.datetime(2021, 3, 1, tzinfo=dt.UTC)
    dest = write_output(tmp_path, cid, {"val/val-000.ndjson": [_item(cid, 1, when), _item(cid, 1, when)]})
    result = loader.load(str(dest), pgstac_db.loader, raise_on_error=False)
    assert not result.ok and "duplicate" in result.errors[0]
    assert _rows(pgstac_db.admin, cid) == []  # the file is refused whole


def test_partitioning_set_before_items(pgstac_db, tmp_path):
    cid = _collection_id("partition")
    loader.load(str(_sample_output(tmp_path, cid)), pgstac_db.loader)
    with psycopg.connect(pgstac_db.admin) as conn:
        trunc = conn.execute("SELECT partition_trunc FROM pgstac.collections WHERE id = %s", (cid,)).fetchone()[0]
        partitions = conn.execute(
            "SELECT partition FROM pgstac.partitions_view WHERE collection = %s", (cid,)
        ).fetchall()
    assert trunc == "month"
    assert len(partitions) == 2  # January and February 2021: one sub-partition per month


def test_queryables_listed_and_filterable(pgstac_db, tmp_path):
    cid = _collection_id("queryables")
    loader.load(str(_sample_output(tmp_path, cid)), pgstac_db.loader)
    with psycopg.connect(pgstac_db.api) as conn:
        props = conn.execute("SELECT pgstac.get_queryables(%s::text)", (cid,)).fetchone()[0]["properties"]
        assert {
            "terramesh:source",
            "terramesh:split",
            "terramesh:shard",
            "terramesh:sample_id",
            "terramesh:revision",
            "eo:cloud_cover",
        } <= set(props)
        found = conn.execute(
            "SELECT pgstac.search(%s)",
            (
                Jsonb(
                    {
                        "collections": [cid],
                        "filter-lang": "cql2-json",
                        "filter": {
                            "op": "and",
                            "args": [
                                {"op": "=", "args": [{"property": "terramesh:split"}, "val"]},
                                {"op": ">=", "args": [{"property": "eo:cloud_cover"}, 1]},
                            ],
                        },
                    }
                ),
            ),
        ).fetchone()[0]
    assert sorted(f["id"] for f in found["features"]) == ["majortom_val_0000001", "majortom_val_0000002"]


def test_api_role_cannot_load(pgstac_db, tmp_path):
    cid = _collection_id("api")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        loader.load(str(_sample_output(tmp_path, cid)), pgstac_db.api)


def test_no_items_is_an_error(pgstac_db, tmp_path):
    cid = _collection_id("empty")
    dest = write_output(tmp_path, cid, {})
    with pytest.raises(loader.LoadError, match="no item files"):
        loader.load(str(dest), pgstac_db.loader)


def test_load_from_s3(pgstac_db, s3_server, tmp_path):
    import boto3

    cid = _collection_id("s3")
    local = _sample_output(tmp_path, cid)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="loader-test")
    for path in local.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "loader-test", f"out/{path.relative_to(local).as_posix()}")
    result = loader.load("s3://loader-test/out", pgstac_db.loader, endpoint_url=s3_server)
    assert result.ok, result.summary()
    assert (result.written, result.in_db, len(result.files)) == (5, 5, 2)


# --- the bulk path (terramesh_stac.catalog.bulk.PartitionWriter) ------------------------------

ITEM_ASSETS = {"S2L2A": {"type": pystac.MediaType.COG, "roles": ["data"], "title": "Sentinel-2 L2A"}}


def _lean_output(root: Path, cid: str, items_by_file: dict[str, list[dict]]) -> Path:
    """write_output with a collection that has item_assets and lean items (href only)."""
    write_output(root, cid, items_by_file)
    collection = json.loads((root / "collection.json").read_text())
    collection["item_assets"] = ITEM_ASSETS
    (root / "collection.json").write_text(json.dumps(collection))
    for path in (root / "items").rglob("*.ndjson"):
        items = [json.loads(line) for line in path.read_text().splitlines()]
        for item in items:
            item["assets"] = {k: {"href": a["href"]} for k, a in item["assets"].items()}
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return root


def _versions(dsn: str, cid: str) -> dict[str, tuple]:
    """id -> (row version xmin, datetime, leaf partition) of the collection's rows."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, xmin::text, datetime, tableoid::regclass::text FROM pgstac.items WHERE collection = %s",
            (cid,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_fresh_load_serves_whole_items(pgstac_db, tmp_path):
    from terramesh_stac.converters.item_assets import full_item

    cid = _collection_id("fresh")
    jan, mar = dt.datetime(2021, 1, 15, tzinfo=dt.UTC), dt.datetime(2021, 3, 15, tzinfo=dt.UTC)
    dest = _lean_output(tmp_path, cid, {"val/a.ndjson": [_item(cid, n, jan) for n in range(4)] + [_item(cid, 9, mar)]})
    lean = [json.loads(line) for line in (dest / "items/val/a.ndjson").read_text().splitlines()]
    result = loader.load(str(dest), pgstac_db.loader)
    assert result.ok and (result.written, result.in_db) == (5, 5), result.summary()
    with psycopg.connect(pgstac_db.api) as conn:
        for item in lean:
            served = conn.execute("SELECT pgstac.get_item(%s, %s)", (item["id"], cid)).fetchone()[0]
            whole = full_item(item, ITEM_ASSETS)
            assert served["assets"] == whole["assets"]
            assert served["assets"]["S2L2A"]["title"] == "Sentinel-2 L2A"  # from item_assets
            assert served["properties"] == whole["properties"] and served["geometry"] == whole["geometry"]


def test_reload_rewrites_only_the_changed_item_and_moves_partition(pgstac_db, tmp_path):
    cid = _collection_id("reload")
    jan, jun = dt.datetime(2021, 1, 15, tzinfo=dt.UTC), dt.datetime(2021, 6, 15, tzinfo=dt.UTC)
    dest = _lean_output(tmp_path, cid, {"val/a.ndjson": [_item(cid, n, jan) for n in range(4)]})
    loader.load(str(dest), pgstac_db.loader)
    before = _versions(pgstac_db.admin, cid)
    path = dest / "items/val/a.ndjson"
    items = [json.loads(line) for line in path.read_text().splitlines()]
    items[1]["properties"]["eo:cloud_cover"] = 55.0  # content changed, same partition
    items[2]["properties"]["datetime"] = jun.isoformat().replace("+00:00", "Z")  # moves to June
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    result = loader.load(str(dest), pgstac_db.loader)
    assert result.ok and result.in_db == 4, result.summary()
    after = _versions(pgstac_db.admin, cid)
    assert len(after) == 4  # the moved item is stored once
    changed = {i for i in after if after[i] != before[i]}
    assert changed == {items[1]["id"], items[2]["id"]}  # unchanged rows not rewritten (same xmin)
    assert after[items[2]["id"]][1] == jun and after[items[2]["id"]][2] != before[items[2]["id"]][2]
    with psycopg.connect(pgstac_db.admin) as conn:
        n = conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s AND id = %s", (cid, items[2]["id"]))
        assert n.fetchone()[0] == 1


def test_fresh_load_id_in_two_months_reported(pgstac_db, tmp_path):
    cid = _collection_id("twice")
    jan, feb = dt.datetime(2021, 1, 15, tzinfo=dt.UTC), dt.datetime(2021, 2, 15, tzinfo=dt.UTC)
    dest = _lean_output(tmp_path, cid, {"val/a.ndjson": [_item(cid, 1, jan)], "val/b.ndjson": [_item(cid, 1, feb)]})
    result = loader.load(str(dest), pgstac_db.loader, raise_on_error=False)
    assert not result.ok and any("stored twice" in e for e in result.errors), result.errors


def test_same_id_in_two_files_of_one_month_loaded_once(pgstac_db, tmp_path):
    cid = _collection_id("samemonth")
    jan = dt.datetime(2021, 1, 15, tzinfo=dt.UTC)
    second = _item(cid, 1, jan)
    second["properties"]["eo:cloud_cover"] = 77.0
    dest = _lean_output(tmp_path, cid, {"val/a.ndjson": [_item(cid, 1, jan)], "val/b.ndjson": [second]})
    result = loader.load(str(dest), pgstac_db.loader)
    assert result.ok and result.in_db == 2, result.summary()  # each file's id is in pgstac
    rows = _rows(pgstac_db.admin, cid)
    assert len(rows) == 1 and rows[0][2]["properties"]["eo:cloud_cover"] == 77.0  # the later file wins


def test_indexes_and_stats_present_after_load(pgstac_db, tmp_path):
    cid = _collection_id("indexes")
    loader.load(str(_sample_output(tmp_path, cid)), pgstac_db.loader)
    with psycopg.connect(pgstac_db.admin) as conn:
        parts = conn.execute(
            "SELECT partition, dtrange, constraint_dtrange FROM pgstac.partitions_view WHERE collection = %s",
            (cid,),
        ).fetchall()
        assert len(parts) == 2
        for name, dtrange, constraint in parts:
            indexes = _index_definitions(conn, name)
            assert any("(id)" in i for i in indexes)  # the partition's primary key
            assert any("terramesh:shard" in i for i in indexes), indexes  # a queryable's index
            assert not any("terramesh:split" in i for i in indexes), indexes  # 2 values: none
            assert dtrange is not None and constraint == dtrange  # stats and tight constraints


def _index_definitions(conn, partition: str) -> set[str]:
    rows = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgstac' AND tablename = %s", (partition,))
    return {r[0] for r in rows}


def test_fresh_load_builds_queryable_indexes_after_the_rows(pgstac_db, tmp_path):
    cid = _collection_id("deferred")
    jan, feb = dt.datetime(2021, 1, 15, tzinfo=dt.UTC), dt.datetime(2021, 2, 28, 23, tzinfo=dt.UTC)
    items = [_item(cid, n, jan) for n in range(3)] + [_item(cid, 10 + n, feb) for n in range(3)]
    for item in items[3:]:  # an end_datetime past its partition's month
        item["properties"].update(start_datetime=item["properties"]["datetime"], end_datetime="2021-03-02T00:00:00Z")
    result = loader.load(str(_lean_output(tmp_path, cid, {"val/a.ndjson": items})), pgstac_db.loader)
    assert result.ok and result.in_db == 6, result.summary()
    with psycopg.connect(pgstac_db.admin) as conn:
        conn.execute("SET search_path = pgstac, public")
        assert not conn.execute("SELECT * FROM terramesh.deferred_indexes WHERE collection = %s", (cid,)).fetchall()
        parts = conn.execute(
            "SELECT partition, edtrange, constraint_edtrange FROM pgstac.partitions_view WHERE collection = %s",
            (cid,),
        ).fetchall()
        assert len(parts) == 2
        for name, edtrange, constraint in parts:
            loaded = _index_definitions(conn, name)
            for queryable in ("terramesh:shard", "terramesh:sample_id", "eo:cloud_cover"):
                assert any(queryable in i for i in loaded), (queryable, loaded)
            conn.execute("SELECT pgstac.maintain_partitions(%s)", (name,))
            assert _index_definitions(conn, name) == loaded  # what pgstac itself would build
            assert constraint == edtrange  # the load's wide end_datetime range made tight again


def test_index_deferral_only_on_empty_partitions_of_items(pgstac_db, tmp_path):
    cid = _collection_id("defer-guard")
    loader.load(str(_lean_output(tmp_path, cid, {"val/a.ndjson": [_item(cid, 1, dt.datetime(2021, 1, 15, tzinfo=dt.UTC))]})), pgstac_db.loader)  # fmt: skip
    with psycopg.connect(pgstac_db.loader, autocommit=True) as conn:
        (name,) = conn.execute("SELECT partition FROM pgstac.partitions_view WHERE collection = %s", (cid,)).fetchone()
        before = _index_definitions(conn, name)
        assert conn.execute("SELECT terramesh.defer_queryable_indexes(%s)", (name,)).fetchone()[0] == 0  # has rows
        assert _index_definitions(conn, name) == before
        for other in ("items", "collections", "no_such_table", "_items_1"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a leaf partition"):
                conn.execute("SELECT terramesh.defer_queryable_indexes(%s)", (other,))
    with psycopg.connect(pgstac_db.api) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT terramesh.defer_queryable_indexes(%s)", (name,))


def test_killed_fresh_load_gets_its_indexes_on_the_next_load(pgstac_db, tmp_path):
    import subprocess
    import sys

    cid = _collection_id("killed")
    jan, jun = dt.datetime(2021, 1, 15, tzinfo=dt.UTC), dt.datetime(2021, 6, 15, tzinfo=dt.UTC)
    dest = _lean_output(tmp_path, cid, {"val/a.ndjson": [_item(cid, n, jan) for n in range(3)]})
    # a load that dies after writing its rows, before finish() (os._exit: no cleanup runs)
    killed = (
        "import json, os, sys\n"
        "from terramesh_stac.catalog.loader import Publisher\n"
        "from terramesh_stac.converters.storage import Store\n"
        "store = Store(sys.argv[1])\n"
        "with Publisher(sys.argv[2], store) as publisher:\n"
        "    publisher.publish_collection(json.loads(store.get('collection.json')))\n"
        "    assert publisher.load_file('items/val/a.ndjson').in_db == 3\n"
        "    os._exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", killed, str(dest), pgstac_db.loader], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    with psycopg.connect(pgstac_db.admin) as conn:
        (name,) = conn.execute(
            "SELECT partition FROM terramesh.deferred_indexes WHERE collection = %s", (cid,)
        ).fetchone()
        assert not any("terramesh:shard" in i for i in _index_definitions(conn, name))  # deferred, never built
    again = _lean_output(tmp_path / "again", cid, {"val/b.ndjson": [_item(cid, 20, jun)]})  # another month
    result = loader.load(str(again), pgstac_db.loader)
    assert result.ok, result.summary()
    with psycopg.connect(pgstac_db.admin) as conn:
        assert any("terramesh:shard" in i for i in _index_definitions(conn, name))
        assert not conn.execute("SELECT * FROM terramesh.deferred_indexes WHERE collection = %s", (cid,)).fetchall()
