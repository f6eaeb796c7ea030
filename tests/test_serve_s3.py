"""Serving items whose assets live on S3 (moto's standalone server, real HTTP): the STAC API
keeps their `s3://` hrefs and `alternate.https` links, and the tile service reads the COGs
through GDAL's /vsis3/ with the endpoint from `TERRAMESH_S3_ENDPOINT_URL`."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image

from tests.conftest import _api_pixels, _api_write_cog, delete_collection, start_service

S3_COLLECTION_ID = "terramesh-s3test"
ITEM_ID = "majortom_val_0900001"
BUCKET = "terramesh-s3test"
PREFIX = "out"
LON, LAT = 20.0, 60.0  # far from the other test collections' items
RENDERS = {"dem": {"title": "Elevation", "assets": ["DEM"], "rescale": [[0, 2000]], "colormap_name": "terrain"}}
WMQ = morecantile.tms.get("WebMercatorQuad")


def _item_and_cog(workdir: Path):
    """One item with a DEM COG (written locally, to be uploaded), like the converter's."""
    from pyproj import Transformer
    from rasterio.transform import from_origin
    from shapely.geometry import box, mapping
    from shapely.ops import transform as shp_transform

    crs = "EPSG:32634"
    x0, y0 = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(LON, LAT)
    x0, y0 = round(x0 / 10) * 10, round(y0 / 10) * 10
    to_wgs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    footprint = shp_transform(lambda x, y: to_wgs.transform(x, y), box(x0, y0 - 2640, x0 + 2640, y0))
    cog = workdir / "DEM.tif"
    _api_write_cog(cog, _api_pixels("DEM", 1, "int16", 0), crs, from_origin(x0, y0, 10, 10))
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": ITEM_ID,
        "collection": S3_COLLECTION_ID,
        "stac_extensions": ["https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json"],
        "geometry": mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {"datetime": "2024-08-01T10:00:00Z", "proj:code": crs},
        "links": [],
        "assets": {},
    }
    return item, cog


@pytest.fixture(scope="module")
def s3_catalog(s3_server, pgstac_db):
    """A collection whose item's COG is on the moto server (uploaded with the converter's
    Store), loaded into pgstac as the loader role. Yields (item as loaded, COG bytes)."""
    import boto3
    from pypgstac.load import Loader, Methods

    from terramesh_stac.catalog import database
    from terramesh_stac.converters.storage import Store

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    store = Store(f"s3://{BUCKET}/{PREFIX}", endpoint_url=s3_server)
    workdir = Path(tempfile.mkdtemp(prefix="terramesh-s3-", dir="/tmp"))
    item, cog = _item_and_cog(workdir)
    data = cog.read_bytes()
    relpath = f"assets/{ITEM_ID}/DEM.tif"
    item["assets"]["DEM"] = {
        "href": store.put(relpath, data),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "title": "DEM",
        "alternate": {"https": {"href": store.https_href(relpath)}},
    }
    # a bucket published for anonymous https readers (what the alternate is for)
    boto3.client("s3", endpoint_url=s3_server).put_object_acl(
        Bucket=BUCKET, Key=f"{PREFIX}/{relpath}", ACL="public-read"
    )
    collection = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": S3_COLLECTION_ID,
        "description": "assets on S3",
        "license": "CC-BY-SA-4.0",
        "links": [],
        "renders": RENDERS,
        "stac_extensions": ["https://stac-extensions.github.io/render/v2.0.0/schema.json"],
        "extent": {
            "spatial": {"bbox": [item["bbox"]]},
            "temporal": {"interval": [["2024-08-01T00:00:00Z", "2024-08-31T00:00:00Z"]]},
        },
    }
    with database.pgstac_db(pgstac_db.loader) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([collection]), insert_mode=Methods.upsert)
        loader.load_items(iter([item]), insert_mode=Methods.upsert)
    try:
        yield item, data, workdir
    finally:
        delete_collection(pgstac_db.admin, S3_COLLECTION_ID)


@pytest.fixture(scope="module")
def s3_live_server(s3_catalog, pgstac_db, s3_server):
    """`terramesh-stac serve` with TERRAMESH_DEST on S3 and the moto endpoint; AWS
    credentials reach it through the environment (set by the s3_server fixture)."""
    _, _, workdir = s3_catalog
    env = {
        "TERRAMESH_API_DSN": pgstac_db.api,
        "TERRAMESH_DEST": f"s3://{BUCKET}/{PREFIX}",
        "TERRAMESH_S3_ENDPOINT_URL": s3_server,
        "TERRAMESH_COLLECTION_ID": S3_COLLECTION_ID,
        "TERRAMESH_DEFAULT_RENDER": "dem",
        "TERRAMESH_DB_POOL_MAX_SIZE": "2",
        "TERRAMESH_ENABLE_TRANSACTIONS": "false",
    }
    with start_service(env, workdir, "s3-server") as base:
        yield base


def _png(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


def test_tile_of_an_s3_item_has_pixels(s3_live_server):
    tile = WMQ.tile(LON + 0.02, LAT - 0.012, 14)
    r = httpx.get(
        f"{s3_live_server}/raster/collections/{S3_COLLECTION_ID}/items/{ITEM_ID}/tiles/WebMercatorQuad/"
        f"{tile.z}/{tile.x}/{tile.y}.png",
        params={"render": "dem"},
        timeout=60,
    )
    img = _png(r)
    alpha = img[..., 3] > 0
    assert alpha.mean() > 0.5, f"only {alpha.mean():.0%} of the tile has data"
    assert img[..., :3][alpha].std() > 0, "flat tile"


def test_api_keeps_s3_hrefs_and_the_https_alternate(s3_live_server, s3_catalog, s3_server):
    loaded, data, _ = s3_catalog
    r = httpx.get(f"{s3_live_server}/stac/collections/{S3_COLLECTION_ID}/items/{ITEM_ID}", timeout=30)
    assert r.status_code == 200, r.text
    item = r.json()
    asset = item["assets"]["DEM"]
    assert asset["href"] == f"s3://{BUCKET}/{PREFIX}/assets/{ITEM_ID}/DEM.tif"
    https = asset["alternate"]["https"]["href"]
    assert https == f"{s3_server}/{BUCKET}/{PREFIX}/assets/{ITEM_ID}/DEM.tif"
    assert httpx.get(https, timeout=30).content == data  # the alternate really serves the COG
    # the item's preview link (tile service) renders the S3 asset too
    preview = next(link for link in item["links"] if link["rel"] == "preview")
    assert (_png(httpx.get(preview["href"], timeout=60))[..., 3] > 0).mean() > 0.5
    # no /assets route when the destination is S3
    assert httpx.get(f"{s3_live_server}/assets/{ITEM_ID}/DEM.tif", timeout=30).status_code == 404


@pytest.mark.parametrize(
    "url, expected",
    [
        (None, {}),
        (
            "http://127.0.0.1:9000",
            {
                "AWS_S3_ENDPOINT": "127.0.0.1:9000",
                "AWS_HTTPS": "NO",
                "AWS_VIRTUAL_HOSTING": "FALSE",
                "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            },
        ),
        (
            "https://s3.example.org/",
            {
                "AWS_S3_ENDPOINT": "s3.example.org",
                "AWS_HTTPS": "YES",
                "AWS_VIRTUAL_HOSTING": "FALSE",
                "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            },
        ),
    ],
)
def test_gdal_s3_config_from_the_endpoint_url(url, expected):
    from terramesh_stac.catalog.tiles import gdal_s3_config

    assert gdal_s3_config(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:9000", "ftp://host", "http://host:9000/bucket"])
def test_gdal_s3_config_rejects_what_gdal_cannot_use(url):
    from terramesh_stac.catalog.tiles import gdal_s3_config

    with pytest.raises(ValueError, match="TERRAMESH_S3_ENDPOINT_URL"):
        gdal_s3_config(url)
