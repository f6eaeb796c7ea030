"""The map's vector tiles at /vector (catalog/vector_tiles.py, catalog/density.py) on the live
server: density counts per cell with the map's filters, footprints of a registered search,
caching headers, and 4xx answers to bad tile requests."""

from __future__ import annotations

import math
import time

import httpx
import mapbox_vector_tile
import morecantile
import pytest
from shapely.geometry import box, shape

from terramesh_stac.catalog import density
from terramesh_stac.catalog.tile_cache import REVISION_TTL
from tests.conftest import API_COLLECTION_ID, cluster_env

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


def _tile(base: str, path: str, **params) -> httpx.Response:
    r = httpx.get(f"{base}/vector/{path}", params={"collection": API_COLLECTION_ID, **params}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    return r


def _features(data: bytes, layer: str) -> list[dict]:
    return mapbox_vector_tile.decode(data).get(layer, {}).get("features", [])


def _centre(item: dict) -> tuple[float, float]:
    w, s, e, n = item["bbox"]
    return (w + e) / 2, (s + n) / 2


def _world_total(base: str, **filters) -> int:
    """Samples counted by the density tiles of zoom 1 (all four) with `filters`."""
    return sum(
        f["properties"]["n"]
        for x in (0, 1)
        for y in (0, 1)
        for f in _features(_tile(base, f"density/1/{x}/{y}.pbf", **filters).content, "density")
    )


def _year(item) -> int:
    return int(item["properties"]["datetime"][:4])


@pytest.mark.parametrize(
    "filters, keep",
    [
        ({}, lambda i: True),
        ({"source": "ssl4eos12"}, lambda i: i["properties"]["terramesh:source"] == "ssl4eos12"),
        ({"split": "train"}, lambda i: i["properties"]["terramesh:split"] == "train"),
        ({"source": "majortom,ssl4eos12", "split": "val"}, lambda i: i["properties"]["terramesh:split"] == "val"),
        ({"year_min": 2021, "year_max": 2021}, lambda i: _year(i) == 2021),
        ({"year_min": 2022}, lambda i: _year(i) >= 2022),
        ({"max_cloud": 10}, lambda i: i["properties"]["eo:cloud_cover"] <= 10),
        ({"max_cloud": 20}, lambda i: i["properties"]["eo:cloud_cover"] <= 20),
        ({"max_cloud": 50, "year_max": 2021}, lambda i: i["properties"]["eo:cloud_cover"] <= 50 and _year(i) <= 2021),
    ],
)
def test_density_counts_every_sample_the_filters_keep(live_server, api_catalog, filters, keep):
    _, _, items = api_catalog
    expected = sum(1 for i in items if keep(i))
    assert _world_total(live_server, **filters) == expected


def test_density_cells_sit_where_the_samples_are(live_server, api_catalog):
    _, _, items = api_catalog
    z = density.MAX_LEVEL
    cells_zoom = z + density.CELLS_ZOOM_OFFSET
    expected: dict[tuple[int, int], int] = {}
    for item in items:
        t = WEB_MERCATOR.tile(*_centre(item), cells_zoom)
        expected[(t.x, t.y)] = expected.get((t.x, t.y), 0) + 1
    got: dict[tuple[int, int], tuple[int, float]] = {}
    tiles = {(x >> density.CELLS_ZOOM_OFFSET, y >> density.CELLS_ZOOM_OFFSET) for x, y in expected}
    for tx, ty in tiles:
        for f in _features(_tile(live_server, f"density/{z}/{tx}/{ty}.pbf").content, "density"):
            # the cell's square, in tile coordinates (0-4096, y up in the decoded geometry)
            xs = [p[0] for p in f["geometry"]["coordinates"][0]]
            ys = [p[1] for p in f["geometry"]["coordinates"][0]]
            size = 4096 // 2**density.CELLS_ZOOM_OFFSET
            assert max(xs) - min(xs) == size and max(ys) - min(ys) == size
            cx = (tx << density.CELLS_ZOOM_OFFSET) + min(xs) // size
            cy = (ty << density.CELLS_ZOOM_OFFSET) + (4096 - max(ys)) // size
            got[(cx, cy)] = (f["properties"]["n"], f["properties"]["per_1000_km2"])
    assert {k: v[0] for k, v in got.items()} == expected
    for (cx, cy), (n, per_1000_km2) in got.items():
        bounds = WEB_MERCATOR.bounds(morecantile.Tile(cx, cy, cells_zoom))
        lat = (bounds.bottom + bounds.top) / 2
        side_km = density.EARTH_CIRCUMFERENCE_KM / 2**cells_zoom * math.cos(math.radians(lat))
        assert per_1000_km2 == pytest.approx(n * 1000 / side_km**2, rel=2e-3)


def _register(base: str, body: dict) -> str:
    r = httpx.post(f"{base}/raster/searches/register", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _footprint_ids(base: str, item: dict, z: int, **params) -> set[str]:
    t = WEB_MERCATOR.tile(*_centre(item), z)
    r = _tile(base, f"footprints/{z}/{t.x}/{t.y}.pbf", **params)
    return {f["properties"]["id"] for f in _features(r.content, "footprints")}


def _in_tile(items: list[dict], item: dict, z: int) -> set[str]:
    t = WEB_MERCATOR.tile(*_centre(item), z)
    b = WEB_MERCATOR.bounds(t)
    tile_box = box(b.left, b.bottom, b.right, b.top)
    return {i["id"] for i in items if shape(i["geometry"]).intersects(tile_box)}


@pytest.mark.parametrize("z", [6, 9, 12])
def test_footprints_of_a_tile_are_the_items_it_covers(live_server, api_catalog, z):
    _, _, items = api_catalog
    for item in items:
        assert _footprint_ids(live_server, item, z) == _in_tile(items, item, z)


def test_footprints_follow_the_registered_search(live_server, api_catalog):
    _, _, items = api_catalog
    search = _register(
        live_server,
        {
            "collections": [API_COLLECTION_ID],
            "filter-lang": "cql2-json",
            "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 10]},
        },
    )
    clear = {i["id"] for i in items if i["properties"]["eo:cloud_cover"] <= 10}
    seen = set()
    for item in items:
        ids = _footprint_ids(live_server, item, 6, search=search)
        assert ids == _in_tile(items, item, 6) & clear
        seen |= ids
    assert seen == clear and clear != {i["id"] for i in items}
    # one feature carries what the map colours and lists by
    t = WEB_MERCATOR.tile(*_centre(items[0]), 10)
    (f,) = [
        f
        for f in _features(_tile(live_server, f"footprints/10/{t.x}/{t.y}.pbf").content, "footprints")
        if f["properties"]["id"] == items[0]["id"]
    ]
    assert f["properties"]["cloud"] == items[0]["properties"]["eo:cloud_cover"]
    assert f["properties"]["date"] == items[0]["properties"]["datetime"][:10]
    assert f["properties"]["source"] == items[0]["properties"]["terramesh:source"]


def test_tiles_of_the_current_revision_are_immutable(live_server, api_catalog):
    r = httpx.get(f"{live_server}/vector/revision", params={"collection": API_COLLECTION_ID}, timeout=30)
    revision = r.json()["revision"]
    assert revision >= 1
    current = _tile(live_server, "density/0/0/0.pbf", v=revision)
    assert "immutable" in current.headers["cache-control"]
    assert current.headers["x-catalog-revision"] == str(revision)
    for params in ({"v": revision - 1}, {}):
        assert _tile(live_server, "density/0/0/0.pbf", **params).headers["cache-control"] == "public, max-age=60"
    item = api_catalog[2][0]
    t = WEB_MERCATOR.tile(*_centre(item), 8)
    assert "immutable" in _tile(live_server, f"footprints/8/{t.x}/{t.y}.pbf", v=revision).headers["cache-control"]
    search = _register(live_server, {"collections": [API_COLLECTION_ID]})
    searched = _tile(live_server, f"footprints/8/{t.x}/{t.y}.pbf", v=revision, search=search)
    assert searched.headers["cache-control"] == "public, max-age=60"  # search-dependent


def test_raster_tiles_of_the_current_revision_are_immutable(live_server, api_catalog):
    revision = httpx.get(f"{live_server}/vector/revision", params={"collection": API_COLLECTION_ID}).json()["revision"]
    item = api_catalog[2][0]
    t = WEB_MERCATOR.tile(*_centre(item), 13)
    tile = f"/tiles/WebMercatorQuad/13/{t.x}/{t.y}.png"
    url = f"{live_server}/raster/collections/{API_COLLECTION_ID}/items/{item['id']}{tile}"
    for v, expected in ((revision, "public, max-age=31536000, immutable"), (revision + 7, "public, max-age=60")):
        r = httpx.get(url, params={"assets": "S2L2A|bidx=4,3,2", "v": v}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == expected
    search = _register(live_server, {"collections": [API_COLLECTION_ID]})
    mosaic = f"{live_server}/raster/searches/{search}{tile}"
    r = httpx.get(mosaic, params={"assets": "S2L2A|bidx=4,3,2", "v": revision}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "public, max-age=60"  # a mosaic depends on its search
    missing = httpx.get(url.replace(item["id"], "nope"), params={"assets": "S2L2A", "v": revision}, timeout=60)
    assert missing.status_code == 404 and "immutable" not in missing.headers.get("cache-control", "")


@pytest.mark.parametrize(
    "path, params, status, words",
    [
        ("density/6/0/0.pbf", {}, 404, "zooms 0-5"),
        ("density/2/4/0.pbf", {}, 404, "outside"),
        ("density/2/0/-1.pbf", {}, 404, "outside"),
        ("footprints/5/0/0.pbf", {}, 404, "zooms 6-14"),
        ("footprints/15/0/0.pbf", {}, 404, "zooms 6-14"),
        ("footprints/8/0/0.pbf", {"search": "ab" * 16}, 404, "not registered"),
        ("footprints/8/0/0.pbf", {"search": "x'; drop table"}, 422, "search"),
        ("density/0/0/0.pbf", {"collection": "nope"}, 404, "not found"),
        ("density/0/0/0.pbf", {"max_cloud": "lots"}, 422, "max_cloud"),
        ("density/0/0/0.pbf", {"max_cloud": 101}, 422, "max_cloud"),
        ("density/0/0/0.pbf", {"year_min": 99999}, 422, "year_min"),
        ("density/0/0/0.pbf", {"source": ",".join(["a"] * 20)}, 400, "at most 16"),
        ("density/a/0/0.pbf", {}, 422, "z"),
        ("density/99999999999999999999/0/0.pbf", {}, 404, "zooms 0-5"),
        ("footprints/8/99999999999999999999/0.pbf", {}, 404, "outside"),
    ],
)
def test_bad_tile_requests_get_a_short_4xx(live_server, path, params, status, words):
    r = httpx.get(f"{live_server}/vector/{path}", params={"collection": API_COLLECTION_ID, **params}, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.text and len(r.text) < 1000
    assert "SELECT" not in r.text and "/tmp" not in r.text


def test_db_density_recounts_a_collection_loaded_by_another_tool(live_server, api_catalog, pgstac_db):
    """`terramesh-stac db density` (items loaded with plain pypgstac, as api_catalog does):
    a new revision, the same counts."""
    import os
    import subprocess
    import sys

    before = httpx.get(f"{live_server}/vector/revision", params={"collection": API_COLLECTION_ID}).json()["revision"]
    env = {
        **os.environ,
        **cluster_env(pgstac_db),
    }
    cmd = [sys.executable, "-m", "terramesh_stac.cli", "db", "density", "--collection", API_COLLECTION_ID]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"revision {before + 1}" in proc.stdout
    time.sleep(REVISION_TTL + 0.2)  # the service caches a revision this long
    after = httpx.get(f"{live_server}/vector/revision", params={"collection": API_COLLECTION_ID}).json()["revision"]
    assert after == before + 1
    assert _world_total(live_server) == len(api_catalog[2])
