"""The tile service (/raster) under hostile and careless input, on the live server:

- every error a client can cause is a 4xx with a short JSON message, without server paths,
  SQL or PL/pgSQL context (one row per case);
- output sizes are capped (terramesh_stac.catalog.tile_limits): oversize requests answer
  400 quickly with the limit in the message, requests at the cap succeed;
- mosaic limits: pgstac search limits capped, mosaic tiles only from a minimum zoom (the
  render preset's `minmax_zoom`, else the setting), a read deadline (503 when nothing was read).
"""

from __future__ import annotations

import copy
import io
import json
import time

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image

from tests.conftest import API_COLLECTION_ID, API_SAMPLES, delete_collection, start_service

WMQ = morecantile.tms.get("WebMercatorQuad")
ITEM_ID = "majortom_val_0000001"
ITEM = f"/raster/collections/{API_COLLECTION_ID}/items/{ITEM_ID}"
MOSAIC = f"/raster/collections/{API_COLLECTION_ID}"
_, LON, LAT, _, _ = next(s for s in API_SAMPLES if s[0] == ITEM_ID)
CENTRE = (LON + 0.0165, LAT - 0.012)  # inside the 2.64 km patch (top-left corner at LON, LAT)
INSIDE_BBOX = f"{LON + 0.002},{LAT - 0.022},{LON + 0.03},{LAT - 0.002}"


def _tile(z: int) -> str:
    t = WMQ.tile(*CENTRE, z)
    return f"{t.z}/{t.x}/{t.y}"


def _feature(geometry) -> str:
    return json.dumps({"type": "Feature", "properties": {}, "geometry": geometry})


BIG_POLYGON = {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 60], [0, 60], [0, 0]]]}
SMALL_POLYGON = {
    "type": "Polygon",
    "coordinates": [
        [[LON + 0.002, LAT - 0.002], [LON + 0.03, LAT - 0.002], [LON + 0.03, LAT - 0.02], [LON + 0.002, LAT - 0.002]]
    ],
}


@pytest.fixture(scope="module")
def search_id(live_server) -> str:
    r = httpx.post(f"{live_server}/raster/searches/register", json={"collections": [API_COLLECTION_ID]}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _request(live_server, search_id, method, path, body=None, timeout=60):
    url = live_server + path.replace("{search}", search_id)
    headers = {"content-type": "application/json"} if body is not None else {}
    return httpx.request(method, url, content=body, headers=headers, timeout=timeout)


def assert_client_error(r: httpx.Response, status: int, dest, contains: str | None = None) -> str:
    """`status`, a short JSON body with a message, nothing of the server's internals."""
    assert r.status_code == status, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    message = body["detail"] if isinstance(body["detail"], str) else json.dumps(body["detail"])
    assert message and len(r.text) < 3000, r.text
    for leak in ("/tmp", str(dest), "/work/", "site-packages", "SELECT", "CONTEXT", "PL/pgSQL", "Traceback"):
        assert leak not in r.text, f"{leak!r} in {r.text}"
    if contains:
        assert contains in message, message
    return message


# (id, method, path, body, status, part of the message). `{search}`: a registered search.
CLIENT_ERRORS = [
    ("zoom -1", "GET", f"{ITEM}/tiles/WebMercatorQuad/-1/0/0.png?assets=DEM", None, 404, "zoom -1"),
    ("zoom beyond the TMS", "GET", f"{ITEM}/tiles/WebMercatorQuad/25/0/0.png?assets=DEM", None, 404, "zoom 25"),
    ("x beyond the zoom", "GET", f"{ITEM}/tiles/WebMercatorQuad/3/8/1.png?assets=DEM", None, 404, "x < 8"),
    ("y negative", "GET", f"{ITEM}/tiles/WebMercatorQuad/3/1/-1.png?assets=DEM", None, 404, "3/1/-1"),
    ("tile outside the item", "GET", f"{ITEM}/tiles/WebMercatorQuad/3/1/1.png?assets=DEM", None, 404, "outside"),
    ("unknown TMS", "GET", f"{ITEM}/tiles/NoSuchTMS/3/1/1.png?assets=DEM", None, 422, "tileMatrixSetId"),
    ("band out of range", "GET", f"{ITEM}/preview.png?assets=S2L2A|bidx=99", None, 400, "band index 99"),
    ("invalid expression", "GET", f"{ITEM}/preview.png?assets=DEM&expression=b1**", None, 400, "expression"),
    ("disallowed function", "GET", f"{ITEM}/preview.png?assets=DEM&expression=__import__('os')", None, 400, None),
    ("colormap non-list values", "GET", f'{ITEM}/preview.png?assets=DEM&colormap={{"1":"abc"}}', None, 400, "color"),
    ("colormap bad JSON", "GET", f"{ITEM}/preview.png?assets=DEM&colormap={{bad", None, 400, "colormap"),
    ("rescale garbage", "GET", f"{ITEM}/preview.png?assets=DEM&rescale=a,b", None, 422, "rescale"),
    ("point outside the item", "GET", f"{ITEM}/point/0,0?assets=DEM", None, 404, "outside"),
    ("point lat 200", "GET", f"{ITEM}/point/{LON},200?assets=DEM", None, 400, "lat"),
    ("point lon 200", "GET", f"{ITEM}/point/200,{LAT}?assets=DEM", None, 400, "lon"),
    ("point lat nan", "GET", f"{ITEM}/point/{LON},nan?assets=DEM", None, 400, "finite"),
    ("mosaic point lat 200", "GET", "/raster/searches/{search}/point/9.01,200?assets=DEM", None, 400, "lat"),
    (
        "register bad CQL2 op",
        "POST",
        "/raster/searches/register",
        json.dumps(
            {"collections": [API_COLLECTION_ID], "filter": {"op": "nope", "args": [{"property": "eo:cloud_cover"}, 1]}}
        ),
        400,
        "Operator nope",
    ),
    (
        "query and filter together",
        "GET",
        f"{MOSAIC}/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM"
        '&query={"eo:cloud_cover":{"lt":50}}&filter=eo:cloud_cover<50',
        None,
        400,
        "either query or filter",
    ),
    (
        "filter of the wrong type",
        "GET",
        f"{MOSAIC}/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM&filter=eo:cloud_cover<'abc'",
        None,
        400,
        "abc",
    ),
    (
        "filter syntax",
        "GET",
        f"{MOSAIC}/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM&filter=nope(",
        None,
        422,
        "filter",
    ),
    ("asset_statistics empty assets", "GET", f"{ITEM}/asset_statistics?assets=", None, 400, "empty asset name"),
    ("statistics empty assets", "GET", f"{ITEM}/statistics?assets=", None, 400, "empty asset name"),
    ("feature null geometry", "POST", f"{ITEM}/feature.png?assets=DEM", _feature(None), 400, "geometry"),
    ("statistics null geometry", "POST", f"{ITEM}/statistics?assets=DEM", _feature(None), 400, "geometry"),
    ("feature not a feature", "POST", f"{ITEM}/feature.png?assets=DEM", "[1, 2]", 422, None),
    ("unknown asset", "GET", f"{ITEM}/preview.png?assets=NOPE", None, 404, "NOPE"),
    ("unknown asset in info", "GET", f"{ITEM}/info?assets=NOPE", None, 404, "NOPE"),
    (
        "unknown item",
        "GET",
        f"/raster/collections/{API_COLLECTION_ID}/items/nope/preview.png?assets=DEM",
        None,
        404,
        "nope",
    ),
    ("unknown collection", "GET", "/raster/collections/nope/items/nope/preview.png?assets=DEM", None, 404, "nope"),
    (
        "unknown collection mosaic",
        "GET",
        f"/raster/collections/nope/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM",
        None,
        404,
        "nope",
    ),
    (
        "unknown search",
        "GET",
        f"/raster/searches/nope/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM",
        None,
        404,
        "nope",
    ),
    (
        "unknown search below minzoom",
        "GET",
        "/raster/searches/nope/tiles/WebMercatorQuad/3/1/1.png?assets=DEM",
        None,
        404,
        "nope",
    ),
    ("bad dst_crs", "GET", f"{ITEM}/preview.png?assets=DEM&dst_crs=EPSG:99999", None, 422, "dst_crs"),
    ("bad coord_crs", "GET", f"{ITEM}/bbox/{INSIDE_BBOX}.png?assets=DEM&coord_crs=nope", None, 422, "coord_crs"),
    ("bbox without area", "GET", f"{ITEM}/bbox/9,44.9,9,45.png?assets=DEM", None, 400, "no area"),
    ("bbox not finite", "GET", f"{ITEM}/bbox/9,44.9,inf,45.png?assets=DEM", None, 400, "finite"),
    (
        "histogram_range reversed",
        "GET",
        f"{ITEM}/statistics?assets=DEM&histogram_range=5,1",
        None,
        400,
        "histogram_range",
    ),
    ("percentile above 100", "GET", f"{ITEM}/statistics?assets=DEM&p=200", None, 400, "p=200"),
    # found by the fuzzer in CI: numpy's ValueError on infinite ranges / unordered bin edges,
    # morecantile's OverflowError far beyond the deepest zoom
    (
        "histogram_range infinite",
        "GET",
        f"{ITEM}/asset_statistics?assets=NDVI&histogram_range=-4e739,1",
        None,
        400,
        "finite",
    ),
    (
        "histogram_bins edges unordered",
        "GET",
        f"{ITEM}/statistics?assets=DEM&histogram_bins=5,4,8",
        None,
        400,
        "increasing",
    ),
    ("colormap a number", "GET", f"{ITEM}/preview.png?assets=DEM&colormap=NaN", None, 400, "colormap"),
    ("search list sortby %", "GET", "/raster/searches/?sortby=%25", None, 400, "placeholders"),
    ("tileset maxzoom 7153", "GET", f"{ITEM}/tiles/WebMercatorQuad?maxzoom=7153&f=json", None, 400, "maxzoom=7153"),
    (
        "tilejson minzoom -1",
        "GET",
        f"{ITEM}/WebMercatorQuad/tilejson.json?render=true_color&minzoom=-1",
        None,
        400,
        "minzoom=-1",
    ),
    (
        "histogram_bins huge",
        "GET",
        f"{ITEM}/statistics?assets=DEM&histogram_bins=1000000000",
        None,
        400,
        "at most 1024",
    ),
    (
        "buffer huge",
        "GET",
        f"{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png?assets=DEM&buffer=100000",
        None,
        400,
        "buffer",
    ),
    (
        "padding huge",
        "GET",
        f"{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png?assets=DEM&padding=100000",
        None,
        400,
        "padding",
    ),
    ("unknown render preset", "GET", f"{ITEM}/preview.png?render=nope", None, 404, "nope"),
    # found by tests/test_fuzz_tiles.py
    ("nodata nan on integers", "GET", f"{ITEM}/preview.png?assets=DEM&nodata=nan", None, 400, "int16"),
    (
        "nodata inf on a mosaic",
        "GET",
        "/raster/searches/{search}/tiles/WebMercatorQuad/" + _tile(14) + ".png?assets=S2RGB&nodata=inf",
        None,
        400,
        "nodata=inf",
    ),
    (
        "algorithm_params null",
        "GET",
        f"{ITEM}/preview.png?assets=DEM&algorithm=hillshade&algorithm_params=null",
        None,
        400,
        "algorithm_params",
    ),
    (
        "colormap legend negative width",
        "GET",
        "/raster/colorMaps/viridis?width=-1&height=10&f=png",
        None,
        400,
        "at least 4",
    ),
    (
        "colormap legend huge",
        "GET",
        "/raster/colorMaps/viridis?width=10&height=1400442&f=png",
        None,
        400,
        "at most 2048",
    ),
    (
        "feature line without area",
        "POST",
        f"{ITEM}/feature.png?assets=DEM",
        _feature({"type": "LineString", "coordinates": [[0.0, 0.098], [0.0, 0.0]]}),
        400,
        "no area",
    ),
    (  # found by tests/test_fuzz_tiles.py: a ZeroDivisionError (500) before
        "feature collection of one point",
        "POST",
        f"{ITEM}/feature/256x256.png?assets=DEM",
        _feature({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0.0, 0.0]}]}),
        400,
        "no area",
    ),
    (
        "feature coordinates out of range",
        "POST",
        f"{ITEM}/feature.png?assets=DEM",
        _feature({"type": "LineString", "coordinates": [[-7e61, 1], [2, 3]]}),
        400,
        "longitudes",
    ),
    (
        "bbox beyond the world",
        "GET",
        f"{ITEM}/bbox/8.99,1581694491970831.0,-6.6e+16,45.01.png?assets=DEM",
        None,
        400,
        "latitudes",
    ),
    (
        "register with an invalid bbox",
        "POST",
        "/raster/searches/register",
        json.dumps({"bbox": [0, 0, 1e16, 4], "intersects": {"type": "Point", "coordinates": [0, 0]}}),
        422,
        "bbox",
    ),
    ("mosaic tile with garbage z", "GET", f"{MOSAIC}/tiles/WebMercatorQuad/-254/256/abc/assets", None, 422, None),
]


@pytest.mark.parametrize(
    "method, path, body, status, contains", [c[1:] for c in CLIENT_ERRORS], ids=[c[0] for c in CLIENT_ERRORS]
)
def test_client_errors_are_4xx_with_a_short_message(
    live_server, api_catalog, search_id, method, path, body, status, contains
):
    r = _request(live_server, search_id, method, path, body)
    assert_client_error(r, status, api_catalog[0], contains)


# Oversize requests: 400 before any read, the limit in the message. Each of these grew the
# service by gigabytes (or OOM-killed it) before the limits.
OVERSIZE = [
    (
        "tilesize 100000",
        "GET",
        f"{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png?render=true_color&tilesize=100000",
        None,
        "at most 1024",
    ),
    (
        "tilesize 1025",
        "GET",
        f"{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png?render=true_color&tilesize=1025",
        None,
        "at most 1024",
    ),
    ("preview 100000x100000", "GET", f"{ITEM}/preview/100000x100000.png?render=true_color", None, "at most 2048"),
    ("preview max_size", "GET", f"{ITEM}/preview.png?render=true_color&max_size=100000", None, "at most 2048"),
    ("preview width", "GET", f"{ITEM}/preview.png?render=true_color&width=2049", None, "at most 2048"),
    # titiler's rescaling fails on 1-2 px images (found by the fuzzer on a mosaic bbox)
    ("preview max_size 2", "GET", f"{ITEM}/preview.png?render=true_color&max_size=2", None, "at least 4"),
    ("bbox 1x1", "GET", f"{ITEM}/bbox/{INSIDE_BBOX}/1x1.png?render=true_color", None, "at least 4"),
    ("bbox 50000x50000", "GET", f"{ITEM}/bbox/{INSIDE_BBOX}/50000x50000.png?render=true_color", None, "at most 2048"),
    (
        "bbox thin with width only",
        "GET",
        f"{ITEM}/bbox/{LON},{LAT - 0.02},{LON + 0.0001},{LAT}.png?assets=DEM&width=2048",
        None,
        "at most 2048 on a side",
    ),
    ("feature 5000x5000", "POST", f"{ITEM}/feature/5000x5000.png?assets=DEM", _feature(SMALL_POLYGON), "at most 2048"),
    ("statistics max_size", "GET", f"{ITEM}/statistics?assets=DEM&max_size=5000", None, "at most 2048"),
    (
        "statistics feature width",
        "POST",
        f"{ITEM}/statistics?assets=DEM&width=5000&height=10",
        _feature(SMALL_POLYGON),
        "at most 2048",
    ),
    (
        "many bands at the maximum size",
        "GET",
        f"{ITEM}/preview/2048x2048.png?assets=S2L2A&assets=S2L2A",
        None,
        "values",
    ),
    (
        "mosaic bbox 50000x50000",
        "GET",
        "/raster/searches/{search}/bbox/8.9,44.9,9.2,45.1/50000x50000.png?assets=DEM",
        None,
        "at most 2048",
    ),
    (
        "mosaic tilesize",
        "GET",
        "/raster/searches/{search}/tiles/WebMercatorQuad/" + _tile(12) + ".png?assets=DEM&tilesize=5000",
        None,
        "at most 1024",
    ),
    (
        "mosaic 12 bands at 2048",
        "GET",
        "/raster/searches/{search}/bbox/8.9,44.9,9.2,45.1/2048x2048.tif?assets=S2L2A",
        None,
        "values",
    ),
]


@pytest.mark.parametrize("method, path, body, contains", [c[1:] for c in OVERSIZE], ids=[c[0] for c in OVERSIZE])
def test_oversize_requests_answer_400_quickly(live_server, api_catalog, search_id, method, path, body, contains):
    started = time.monotonic()
    r = _request(live_server, search_id, method, path, body)
    assert time.monotonic() - started < 5, "refused only after reading"
    assert_client_error(r, 400, api_catalog[0], contains)


def _image(r: httpx.Response) -> np.ndarray:
    """The image as (rows, cols, bands): RGBA for a PNG, every band of a GeoTIFF."""
    assert r.status_code == 200, r.text[:500]
    if r.headers["content-type"].startswith("image/tiff"):
        from rasterio.io import MemoryFile

        with MemoryFile(r.content) as f, f.open() as src:
            return np.moveaxis(src.read(), 0, -1)
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


# Requests at the caps succeed, with the size asked.
AT_THE_CAP = [
    (
        "tilesize 1024",
        "GET",
        f"{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png?render=true_color&tilesize=1024",
        None,
        (1024, 1024),
    ),
    ("preview 2048x2048", "GET", f"{ITEM}/preview/2048x2048.png?render=true_color", None, (2048, 2048)),
    ("bbox 2048x2048", "GET", f"{ITEM}/bbox/{INSIDE_BBOX}/2048x2048.png?render=true_color", None, (2048, 2048)),
    ("feature 2048x2048", "POST", f"{ITEM}/feature/2048x2048.png?assets=DEM", _feature(SMALL_POLYGON), (2048, 2048)),
    ("12 bands at 1024x1024", "GET", f"{ITEM}/preview/1024x1024.tif?assets=S2L2A", None, (1024, 1024)),
    (
        "mosaic bbox 2048x2048",
        "GET",
        "/raster/searches/{search}/bbox/8.9,44.9,9.2,45.1/2048x2048.png?render=true_color",
        None,
        (2048, 2048),
    ),
    (
        "mosaic tilesize 1024",
        "GET",
        "/raster/searches/{search}/tiles/WebMercatorQuad/" + _tile(12) + ".png?render=true_color&tilesize=1024",
        None,
        (1024, 1024),
    ),
]


@pytest.mark.parametrize("method, path, body, shape", [c[1:] for c in AT_THE_CAP], ids=[c[0] for c in AT_THE_CAP])
def test_requests_at_the_cap_succeed(live_server, search_id, method, path, body, shape):
    img = _image(_request(live_server, search_id, method, path, body))
    assert img.shape[:2] == shape
    if "assets=S2L2A" in path:
        assert img.shape[2] == 12 + 1  # and the mask band titiler adds to a GeoTIFF


def test_bbox_and_feature_without_a_size_are_at_most_the_cap(live_server, search_id):
    """titiler reads them at native resolution (a continent at 10 m): here at most 2048 px."""
    r = _request(live_server, search_id, "GET", f"{ITEM}/bbox/0,0,20,60.png?assets=DEM")
    assert max(_image(r).shape[:2]) == 2048
    started = time.monotonic()
    r = _request(live_server, search_id, "POST", f"{ITEM}/feature.png?assets=S2L2A|bidx=4,3,2", _feature(BIG_POLYGON))
    assert max(_image(r).shape[:2]) == 2048
    assert time.monotonic() - started < 10  # was over 2 minutes (native-resolution warp)
    small = _image(_request(live_server, search_id, "GET", f"{ITEM}/bbox/{INSIDE_BBOX}.png?assets=DEM"))
    assert max(small.shape[:2]) < 400  # native resolution (10 m) when that is smaller


@pytest.mark.parametrize("z", [0, 4, 8, 11])
def test_zoomed_out_item_tiles_are_quick_and_show_the_item(live_server, z):
    """A 12-band patch in a z0-z8 tile took over 20 s and 1.5 GB (rio-tiler warps at the data's
    resolution over the whole tile); read at the tile's resolution it is a few pixels."""
    t = WMQ.tile(*CENTRE, z)
    started = time.monotonic()
    r = httpx.get(
        f"{live_server}{ITEM}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png", params={"render": "true_color"}, timeout=60
    )
    assert time.monotonic() - started < 5
    alpha = _image(r)[..., 3] > 0
    if z >= 8:  # the patch spans a few pixels from z8: where the item is, and only there
        bounds = WMQ.bounds(t)
        col = (CENTRE[0] - bounds.left) / (bounds.right - bounds.left) * 256
        row = (bounds.top - CENTRE[1]) / (bounds.top - bounds.bottom) * 256
        rows, cols = np.nonzero(alpha)
        assert rows.size, "the item is missing from the tile"
        assert abs(rows.mean() - row) < 3 and abs(cols.mean() - col) < 3
        assert rows.size < 0.05 * alpha.size


# Mosaic limits.


def test_mosaic_search_limits_are_capped(live_server, api_catalog, search_id):
    tile = f"/raster/searches/{search_id}/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM"
    for query, limit in (
        ("items_limit=1000000", "at most 100"),
        ("scan_limit=1000000", "at most 10000"),
        ("time_limit=60", "at most 5"),
    ):
        assert_client_error(httpx.get(f"{live_server}{tile}&{query}", timeout=60), 400, api_catalog[0], limit)
    r = httpx.get(f"{live_server}{tile}&items_limit=100&scan_limit=10000&time_limit=5", timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("mosaic", ["search", "collection"])
def test_mosaic_tiles_from_the_default_minzoom(live_server, api_catalog, search_id, mosaic):
    base = f"/raster/searches/{search_id}" if mosaic == "search" else MOSAIC
    url = f"{live_server}{base}/tiles/WebMercatorQuad/{{}}.png"
    message = assert_client_error(
        httpx.get(url.format(_tile(7)), params={"assets": "DEM"}, timeout=60), 400, api_catalog[0]
    )
    assert "mosaic tiles from zoom 8 up" in message
    assert httpx.get(url.format(_tile(8)), params={"assets": "DEM"}, timeout=60).status_code == 200
    # the same scale in another tile matrix set: WGS1984Quad zoom 6 is coarser than WebMercatorQuad 8
    coarse = morecantile.tms.get("WGS1984Quad").tile(*CENTRE, 6)
    r = httpx.get(
        f"{live_server}{base}/tiles/WGS1984Quad/{coarse.z}/{coarse.x}/{coarse.y}.png",
        params={"assets": "DEM"},
        timeout=60,
    )
    assert r.status_code == 400, r.text


ZOOM_COLLECTION_ID = "terramesh-hardening-zoom"
ZOOM_RENDERS = {
    "deep": {"title": "from z11", "assets": ["DEM"], "rescale": [[0, 2000]], "minmax_zoom": [11, 16]},
    "shallow": {"title": "from z6", "assets": ["DEM"], "rescale": [[0, 2000]], "minmax_zoom": [6, 16]},
}


@pytest.fixture(scope="module")
def zoom_collection(pgstac_db, api_catalog):
    """A collection whose presets carry their own `minmax_zoom`, one item (the assets of
    ITEM_ID). Removed afterwards."""
    from pypgstac.load import Loader, Methods

    from terramesh_stac.catalog import database

    _, collection, items = api_catalog
    other = {**copy.deepcopy(collection), "id": ZOOM_COLLECTION_ID, "renders": ZOOM_RENDERS}
    item = copy.deepcopy(next(i for i in items if i["id"] == ITEM_ID))
    item.update(id="zoom_0000001", collection=ZOOM_COLLECTION_ID)
    with database.pgstac_db(pgstac_db.loader) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([other]), insert_mode=Methods.upsert)
        loader.load_items(iter([item]), insert_mode=Methods.upsert)
    try:
        yield ZOOM_COLLECTION_ID
    finally:
        delete_collection(pgstac_db.admin, ZOOM_COLLECTION_ID)


@pytest.mark.parametrize(
    "preset, refused, allowed", [("deep", 10, 11), ("shallow", 5, 6)], ids=["preset minzoom above the default", "below"]
)
def test_mosaic_minzoom_of_a_render_preset(live_server, api_catalog, zoom_collection, preset, refused, allowed):
    url = f"{live_server}/raster/collections/{zoom_collection}/tiles/WebMercatorQuad/{{}}.png"
    r = httpx.get(url.format(_tile(refused)), params={"render": preset}, timeout=60)
    assert f"mosaic tiles from zoom {allowed} up" in assert_client_error(r, 400, api_catalog[0])
    r = httpx.get(url.format(_tile(allowed)), params={"render": preset}, timeout=60)
    assert r.status_code == 200, r.text
    assert (_image(r)[..., 3] > 0).any()


def test_mosaic_read_deadline_answers_503_when_nothing_was_read(pgstac_db, api_catalog, tmp_path):
    """With a read budget of 1 ms no item is opened: 503 with Retry-After, not an empty 204."""
    dest, _, _ = api_catalog
    env = {
        "TERRAMESH_API_DSN": pgstac_db.api,
        "TERRAMESH_DEST": str(dest),
        "TERRAMESH_COLLECTION_ID": API_COLLECTION_ID,
        "TERRAMESH_DB_POOL_MAX_SIZE": "2",
        "TERRAMESH_MOSAIC_READ_SECONDS": "0.001",
    }
    with start_service(env, tmp_path, "deadline") as base:
        r = httpx.get(
            f"{base}{MOSAIC}/tiles/WebMercatorQuad/{_tile(12)}.png", params={"render": "true_color"}, timeout=60
        )
        assert_client_error(r, 503, dest, "longer than 0.001 s")
        assert r.headers["Retry-After"]
        # item tiles have no such budget
        r = httpx.get(
            f"{base}{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png", params={"render": "true_color"}, timeout=60
        )
        assert r.status_code == 200, r.text


# Positive controls: the checks let ordinary requests through.
CONTROLS = [
    ("item tile", "GET", f"{ITEM}/tiles/WebMercatorQuad/{_tile(14)}.png?render=true_color", None, "image/png"),
    ("item preview", "GET", f"{ITEM}/preview.png?render=dem", None, "image/png"),
    ("item bbox", "GET", f"{ITEM}/bbox/{INSIDE_BBOX}/256x256.png?render=ndvi", None, "image/png"),
    ("item feature", "POST", f"{ITEM}/feature.png?assets=DEM", _feature(SMALL_POLYGON), "image/png"),
    ("item point", "GET", f"{ITEM}/point/{CENTRE[0]},{CENTRE[1]}?assets=DEM", None, "application/json"),
    ("item statistics", "GET", f"{ITEM}/statistics?assets=DEM&histogram_bins=16&p=5&p=95", None, "application/json"),
    ("item info", "GET", f"{ITEM}/info?assets=DEM", None, "application/json"),
    (
        "item info with band options",
        "GET",
        f"{ITEM}/info.geojson?assets=S2L2A|bidx=4,3,2",
        None,
        "application/geo+json",
    ),
    ("colormap legend", "GET", "/raster/colorMaps/viridis?width=256&height=20&f=png", None, "image/png"),
    (
        "search tile",
        "GET",
        "/raster/searches/{search}/tiles/WebMercatorQuad/" + _tile(12) + ".png?render=true_color",
        None,
        "image/png",
    ),
    ("collection tile", "GET", f"{MOSAIC}/tiles/WebMercatorQuad/{_tile(12)}.png?render=true_color", None, "image/png"),
    (
        "collection tile filtered",
        "GET",
        f"{MOSAIC}/tiles/WebMercatorQuad/{_tile(12)}.png?assets=DEM&filter=eo:cloud_cover<50",
        None,
        "image/png",
    ),
    (
        "search point",
        "GET",
        "/raster/searches/{search}/point/" + f"{CENTRE[0]},{CENTRE[1]}?assets=DEM",
        None,
        "application/json",
    ),
    (
        "register",
        "POST",
        "/raster/searches/register",
        json.dumps(
            {"collections": [API_COLLECTION_ID], "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]}}
        ),
        "application/json",
    ),
]


@pytest.mark.parametrize("method, path, body, media_type", [c[1:] for c in CONTROLS], ids=[c[0] for c in CONTROLS])
def test_ordinary_requests_still_succeed(live_server, search_id, method, path, body, media_type):
    r = _request(live_server, search_id, method, path, body)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith(media_type)
