"""Tiles at /raster (titiler-pgstac) on the live server: collection render presets applied
to item tiles, TileJSON, previews and registered-search mosaics; tile errors are 4xx."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image

from tests.conftest import API_COLLECTION_ID, API_RENDERS, API_SAMPLES

WMQ = morecantile.tms.get("WebMercatorQuad")
SAMPLE = {s[0]: s for s in API_SAMPLES}

# preset -> an item that has the preset's asset (S1RTC: majortom, S1GRD: ssl4eos12)
PRESET_ITEM = {
    "true_color": "majortom_val_0000001",
    "rgb": "majortom_train_0000003",
    "s1rtc_vv": "majortom_val_0000002",
    "s1grd_vv": "ssl4eos12_val_0000004",
    "dem": "ssl4eos12_train_0000005",
    "ndvi": "majortom_val_0000001",
    "lulc": "ssl4eos12_train_0000006",
}


def _centre(item_id: str) -> tuple[float, float]:
    _, lon, lat, _, _ = SAMPLE[item_id]
    return lon + 0.0165, lat - 0.012  # inside the 2.64 km patch (top-left corner at lon, lat)


def _png(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


def _item_base(live_server, item_id):
    return f"{live_server}/raster/collections/{API_COLLECTION_ID}/items/{item_id}"


def test_every_preset_has_an_item_under_test():
    assert set(PRESET_ITEM) == set(API_RENDERS)


@pytest.mark.parametrize("preset", sorted(PRESET_ITEM))
def test_item_tile_for_each_preset_has_pixels_at_the_item(live_server, preset):
    item_id = PRESET_ITEM[preset]
    tile = WMQ.tile(*_centre(item_id), 14)
    r = httpx.get(
        f"{_item_base(live_server, item_id)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
        params={"render": preset},
        timeout=60,
    )
    img = _png(r)
    alpha = img[..., 3] > 0
    assert alpha.mean() > 0.5, f"{preset}: only {alpha.mean():.0%} of the tile has data"
    rgb = img[..., :3][alpha]
    assert rgb.std() > 0 or preset == "lulc", f"{preset}: flat tile"


def test_preset_params_are_those_of_the_collection_and_explicit_params_win(live_server):
    base = _item_base(live_server, "majortom_val_0000001")
    tile = WMQ.tile(*_centre("majortom_val_0000001"), 14)
    url = f"{base}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    by_preset = _png(httpx.get(url, params={"render": "true_color"}, timeout=60))
    explicit = _png(httpx.get(url, params={"assets": "S2L2A|bidx=4,3,2", "rescale": ["0,3000"] * 3}, timeout=60))
    assert np.array_equal(by_preset, explicit)
    darker = _png(httpx.get(url, params={"render": "true_color", "rescale": "0,10000"}, timeout=60))
    assert darker[..., :3].mean() < by_preset[..., :3].mean()


def test_tilejson_for_a_preset(live_server):
    item_id = "ssl4eos12_train_0000005"
    r = httpx.get(
        f"{_item_base(live_server, item_id)}/WebMercatorQuad/tilejson.json", params={"render": "dem"}, timeout=60
    )
    assert r.status_code == 200, r.text
    tj = r.json()
    _, lon, lat, _, _ = SAMPLE[item_id]
    w, s, e, n = tj["bounds"]
    assert w <= lon + 0.01 <= e and s <= lat - 0.01 <= n
    template = tj["tiles"][0]
    assert template.startswith(f"{live_server}/raster/collections/{API_COLLECTION_ID}/items/{item_id}/tiles/")
    q = parse_qs(urlsplit(template).query)
    assert q["assets"] == ["DEM"] and q["colormap_name"] == ["terrain"] and "render" not in q
    tile = WMQ.tile(*_centre(item_id), 13)
    url = template.replace("{z}", str(tile.z)).replace("{x}", str(tile.x)).replace("{y}", str(tile.y))
    assert (_png(httpx.get(url, timeout=60))[..., 3] > 0).any()


def test_renders_endpoint_lists_the_collection_presets(live_server):
    r = httpx.get(f"{_item_base(live_server, 'majortom_val_0000001')}/renders", timeout=60)
    assert r.status_code == 200, r.text
    renders = r.json()["renders"]
    assert set(renders) == set(API_RENDERS)
    assert renders["true_color"]["params"]["assets"] == ["S2L2A|bidx=4,3,2"]  # folded asset_bidx


def test_preview_png_for_a_preset(live_server):
    r = httpx.get(
        f"{_item_base(live_server, 'majortom_val_0000001')}/preview.png",
        params={"render": "ndvi", "max_size": 128},
        timeout=60,
    )
    img = _png(r)
    assert max(img.shape[:2]) == 128 and (img[..., 3] > 0).mean() > 0.9


def test_mosaic_tile_over_several_items(live_server):
    reg = httpx.post(
        f"{live_server}/raster/searches/register",
        json={"collections": [API_COLLECTION_ID], "bbox": [8.9, 44.9, 9.2, 45.1]},
        timeout=60,
    )
    assert reg.status_code == 200, reg.text
    search_id = reg.json()["id"]
    # A z12 tile over the seam between items 1 and 2 (lon 9.033).
    seam_lon, lat = 9.033, 44.99
    tile = WMQ.tile(seam_lon, lat, 12)
    r = httpx.get(
        f"{live_server}/raster/searches/{search_id}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
        params={"render": "true_color"},
        timeout=60,
    )
    img = _png(r)
    b = WMQ.bounds(tile)
    col = int((seam_lon - b.left) / (b.right - b.left) * img.shape[1])
    row = int((b.top - lat) / (b.top - b.bottom) * img.shape[0])
    left, right = img[row, max(col - 20, 0), 3], img[row, min(col + 20, img.shape[1] - 1), 3]
    assert left > 0 and right > 0, "the mosaic should draw both neighbouring items"
    # and the search's TileJSON points back into /raster
    tj = httpx.get(
        f"{live_server}/raster/searches/{search_id}/WebMercatorQuad/tilejson.json",
        params={"render": "true_color"},
        timeout=60,
    ).json()
    assert tj["tiles"][0].startswith(f"{live_server}/raster/searches/{search_id}/tiles/")
    # the whole-collection mosaic draws the same tile
    r = httpx.get(
        f"{live_server}/raster/collections/{API_COLLECTION_ID}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
        params={"render": "true_color"},
        timeout=60,
    )
    assert np.array_equal(_png(r)[..., 3] > 0, img[..., 3] > 0)


OTHER_COLLECTION_ID = "terramesh-apitest-other"
OTHER_RENDERS = {
    "elevation": {"title": "Elevation (other)", "assets": ["DEM"], "rescale": [[0, 2000]], "colormap_name": "viridis"}
}


@pytest.fixture(scope="module")
def other_collection(pgstac_db, api_catalog):
    """A second collection with its own presets (not the service's default collection):
    one item, re-using the assets of ssl4eos12_train_0000005. Removed afterwards."""
    import copy

    from pypgstac.load import Loader, Methods

    from terramesh_stac.catalog import database
    from tests.conftest import delete_collection

    _, collection, items = api_catalog
    other = {**copy.deepcopy(collection), "id": OTHER_COLLECTION_ID, "renders": OTHER_RENDERS}
    item = copy.deepcopy(next(i for i in items if i["id"] == "ssl4eos12_train_0000005"))
    item.update(id="other_0000005", collection=OTHER_COLLECTION_ID)
    with database.pgstac_db(pgstac_db.loader) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([other]), insert_mode=Methods.upsert)
        loader.load_items(iter([item]), insert_mode=Methods.upsert)
    try:
        yield item
    finally:
        delete_collection(pgstac_db.admin, OTHER_COLLECTION_ID)


def _register(live_server, search: dict) -> str:
    r = httpx.post(f"{live_server}/raster/searches/register", json=search, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_search_render_presets_come_from_the_searchs_collections(live_server, other_collection):
    search_id = _register(live_server, {"collections": [OTHER_COLLECTION_ID]})
    tile = WMQ.tile(*_centre("ssl4eos12_train_0000005"), 13)
    url = f"{live_server}/raster/searches/{search_id}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    img = _png(httpx.get(url, params={"render": "elevation"}, timeout=60))  # only in the other collection
    assert (img[..., 3] > 0).mean() > 0.3
    r = httpx.get(url, params={"render": "dem"}, timeout=60)  # only in the default collection
    assert r.status_code == 404 and OTHER_COLLECTION_ID in r.json()["detail"], r.text
    assert "elevation" in r.json()["detail"]  # lists what the search's collections offer
    # a search over both: the first collection that has the preset gives it
    both = _register(live_server, {"collections": [API_COLLECTION_ID, OTHER_COLLECTION_ID]})
    for preset in ("elevation", "dem"):
        r = httpx.get(
            f"{live_server}/raster/searches/{both}/WebMercatorQuad/tilejson.json", params={"render": preset}, timeout=60
        )
        assert r.status_code == 200, r.text
        q = parse_qs(urlsplit(r.json()["tiles"][0]).query)
        assert q["colormap_name"] == [{"elevation": "viridis", "dem": "terrain"}[preset]]


def test_search_without_collections_has_no_presets(live_server):
    search_id = _register(live_server, {"bbox": [8.9, 44.9, 9.2, 45.1]})
    r = httpx.get(
        f"{live_server}/raster/searches/{search_id}/WebMercatorQuad/tilejson.json",
        params={"render": "true_color"},
        timeout=60,
    )
    assert r.status_code == 400 and "has no collections" in r.json()["detail"], r.text
    r = httpx.get(
        f"{live_server}/raster/searches/{search_id}/WebMercatorQuad/tilejson.json", params={"assets": "DEM"}, timeout=60
    )
    assert r.status_code == 200, r.text


BASE = f"/raster/collections/{API_COLLECTION_ID}/items/majortom_val_0000001"
BAD_TILE_REQUESTS = [
    (f"{BASE}/tiles/WebMercatorQuad/40/1/1.png?render=rgb", 404),  # zoom beyond the TMS
    (f"{BASE}/tiles/WebMercatorQuad/3/100/100.png?render=rgb", 404),  # x/y beyond the zoom
    (f"{BASE}/tiles/WebMercatorQuad/3/1/1.png?render=rgb", 404),  # outside the item
    (f"{BASE}/tiles/NoSuchTMS/3/1/1.png?render=rgb", 422),
    (f"{BASE}/preview.png?render=nope", 404),  # unknown render preset
    (f"{BASE}/preview.png?render=rgb&render=dem", 400),
    (f"{BASE}/preview.png?render=s1grd_vv", 404),  # preset's asset missing on this item
    (f"{BASE}/preview.png?assets=NOPE", 404),  # unknown asset
    (f"{BASE}/preview.png", 422),  # no asset selected
    (f"{BASE}/preview.png?assets=S2L2A|bidx=20", 400),  # band out of range
    (f"{BASE}/preview.png?assets=DEM&rescale=abc", 422),
    (f"{BASE}/preview.png?assets=DEM&colormap_name=nope", 422),
    (f"/raster/collections/{API_COLLECTION_ID}/items/nope/preview.png?assets=DEM", 404),
    ("/raster/collections/nope/items/nope/preview.png?render=dem", 404),
    ("/raster/searches/nope/tiles/WebMercatorQuad/3/1/1.png?assets=DEM", 404),
    ("/raster/searches/nope/tiles/WebMercatorQuad/3/1/1.png?render=dem", 404),  # unknown search
]


@pytest.mark.parametrize("path, expected", BAD_TILE_REQUESTS, ids=[p for p, _ in BAD_TILE_REQUESTS])
def test_bad_tile_requests_are_4xx_with_a_message(live_server, path, expected):
    r = httpx.get(live_server + path, timeout=60)
    assert r.status_code == expected, r.text
    assert "detail" in r.json()


def test_band_index_out_of_range_is_400_and_other_index_errors_500(live_server):
    r = httpx.get(f"{live_server}{BASE}/preview.png", params={"assets": "S2L2A|bidx=20"}, timeout=60)
    assert r.status_code == 400 and r.json()["detail"].startswith("band index 20 out of range"), r.text
    from terramesh_stac.catalog.tiles import index_error_response

    assert index_error_response(None, IndexError("band index 0 out of range (not in (1, 2))")).status_code == 400
    assert index_error_response(None, IndexError("list index out of range")).status_code == 500
