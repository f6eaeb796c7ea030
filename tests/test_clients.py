"""The STAC clients users load TerraMesh with, each in its current release, against the LIVE
API (`terramesh-stac serve`'s /stac): a search is loaded and the pixels equal the COG's.

One module-scoped run: the generated source (fixture `synth_root`, served over HTTP as the
Hub would serve it, so items keep their `<MODALITY>_source` assets) is converted and loaded
(`convert --load`) and served once. What each client reads of an item is in the README's
"Clients" section.
"""

import io
import os
import shutil
import subprocess
import sys
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
import rasterio
from shapely.geometry import box, shape

from tests.conftest import read_items, serve_with_cli

COLLECTION = "terramesh-clients"
RED = 4  # S2L2A band 4 is B04, common name `red`


@pytest.fixture(scope="module")
def catalog(synth_root, http_server, pgstac_db, tmp_path_factory):
    """(STAC API URL, destination, {id: item as converted}) of the converted, loaded and
    served source: 2 samples per shard of 3 shards."""
    dest = tmp_path_factory.mktemp("clients") / "out"
    cli = [sys.executable, "-m", "terramesh_stac.cli"]
    args = ["convert", f"{http_server}/", "--dest", dest, "--collection", COLLECTION, "--limit", 2]
    args += ["--workers", 1, "--load", "--dsn", pgstac_db.loader, "--quiet"]
    proc = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with serve_with_cli(pgstac_db, dest, TERRAMESH_COLLECTION_ID=COLLECTION) as base:
        yield f"{base}/stac", dest, read_items(dest)


@pytest.fixture(scope="module")
def target(catalog):
    """A search that finds exactly one item, its parameters and that item: a small box
    around the centre of the first sample that does not cross the antimeridian, its year,
    and a cloud cover bound just above its own."""
    _, _, items = catalog
    item = next(i for i in sorted(items.values(), key=lambda i: i["id"]) if i["bbox"][0] < i["bbox"][2])
    lon, lat = item["properties"]["terramesh:center"]
    year = item["properties"]["datetime"][:4]
    params = {
        "collections": COLLECTION,
        "bbox": f"{lon - 0.001},{lat - 0.001},{lon + 0.001},{lat + 0.001}",
        "datetime": f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z",
        "filter": f"eo:cloud_cover <= {item['properties']['eo:cloud_cover'] + 0.001}",
    }
    return params, item


def cog(dest, item_id: str, asset: str, band: int | None = None) -> np.ndarray:
    """The pixels of a converted COG, read with rasterio: what every client must return."""
    with rasterio.open(dest / "assets" / item_id / f"{asset}.tif") as src:
        return src.read(band) if band else src.read()


def search_url(api: str, params: dict) -> str:
    return f"{api}/search?{urlencode(params)}"


def pystac_search(api: str, params: dict):
    import pystac_client

    return pystac_client.Client.open(api).search(
        collections=[params["collections"]],
        bbox=[float(v) for v in params["bbox"].split(",")],
        datetime=params["datetime"],
        filter=params["filter"],
        filter_lang="cql2-text",
    )


# --- pystac-client ----------------------------------------------------------------------


def test_pystac_client_search_by_bbox_datetime_and_filter(catalog):
    api, _, items = catalog
    bbox, start, end, cloud = [-180, -90, 180, 90], "2020-01-01T00:00:00Z", "2022-12-31T23:59:59Z", 30
    want = {
        i["id"]
        for i in items.values()
        if start <= i["properties"]["datetime"] <= end and i["properties"]["eo:cloud_cover"] < cloud
    }
    assert 0 < len(want) < len(items), "the filter must select some items, not all"
    import pystac_client

    search = pystac_client.Client.open(api).search(
        collections=[COLLECTION], bbox=bbox, datetime=f"{start}/{end}", filter=f"eo:cloud_cover < {cloud}"
    )
    got = list(search.items())
    assert {i.id for i in got} == want
    assert all(i.properties["eo:cloud_cover"] < cloud for i in got)


def test_pystac_client_finds_the_target_alone(catalog, target):
    api, _, _ = catalog
    params, item = target
    found = list(pystac_search(api, params).items())
    assert [i.id for i in found] == [item["id"]]
    assert shape(found[0].geometry).intersects(box(*map(float, params["bbox"].split(","))))


# --- GDAL STACIT --------------------------------------------------------------------------


def test_stacit_in_rasterio_gdal_310_reads_the_cog_pixels(catalog, target):
    api, dest, _ = catalog
    params, item = target
    assert rasterio.__gdal_version__.startswith("3.10"), rasterio.__gdal_version__
    with rasterio.open(f'STACIT:"{search_url(api, params)}":asset=S2L2A') as src:
        assert src.crs.to_epsg() == item["properties"]["proj:epsg"]
        assert src.count == 12
        assert np.array_equal(src.read(), cog(dest, item["id"], "S2L2A"))


def test_stacit_offers_raster_assets_only(catalog):
    """A search over all items: STACIT lists one subdataset per asset (and CRS); the tar
    source assets are none of them (their item_assets entry nulls the item's projection)."""
    api, _, _ = catalog
    with rasterio.open(f'STACIT:"{search_url(api, {"collections": COLLECTION})}"') as src:
        names = " ".join(src.subdatasets)
    assert "asset=S2L2A" in names and "asset=DEM" in names
    assert "_source" not in names, names
    assert_source_assets_have_no_projection(api)


def assert_source_assets_have_no_projection(api: str) -> None:
    served = httpx.get(f"{api}/collections/{COLLECTION}/items", timeout=30).json()["features"][0]["assets"]
    sources = [a for k, a in served.items() if k.endswith("_source")]
    assert sources and all(a["proj:epsg"] is None and a["proj:code"] is None for a in sources), sources


def test_stacit_in_the_distributions_gdal_reads_the_cog_pixels(catalog, target, tmp_path):
    """Debian's gdal-bin (GDAL 3.6 on Debian 12, infra/install.sh installs it): reads only
    proj:epsg, which items carry next to proj:code (projection v1.2.0)."""
    api, dest, _ = catalog
    params, item = target
    gdal_translate = shutil.which("gdal_translate")
    assert gdal_translate, "gdal_translate missing: run infra/install.sh (Debian package gdal-bin)"
    version = subprocess.run(["gdalinfo", "--version"], capture_output=True, text=True).stdout
    assert not version.startswith(f"GDAL {rasterio.__gdal_version__}"), f"not the distribution's GDAL: {version}"
    out = tmp_path / "stacit.tif"
    proc = subprocess.run(
        [gdal_translate, "-q", f'STACIT:"{search_url(api, params)}":asset=S2L2A', str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GDAL_HTTP_TIMEOUT": "30"},
    )
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == item["properties"]["proj:epsg"]
        assert np.array_equal(src.read(), cog(dest, item["id"], "S2L2A"))


# --- stackstac ----------------------------------------------------------------------------


@pytest.mark.parametrize("asset", ["DEM", "LULC"])
def test_stackstac_stacks_single_band_assets(catalog, target, asset):
    """stackstac 0.5.1 reads proj:epsg (pystac-client's `.items()` would migrate it away:
    items_as_dicts keeps the served JSON) and one band per asset."""
    import stackstac

    api, dest, _ = catalog
    params, item = target
    dicts = list(pystac_search(api, params).items_as_dicts())
    stack = stackstac.stack(dicts, assets=[asset], dtype="float64", rescale=False).compute()
    assert stack.shape == (1, 1, 264, 264)
    assert int(stack.epsg) == item["properties"]["proj:epsg"]
    assert np.array_equal(stack.values[0, 0], cog(dest, item["id"], asset, 1).astype("float64"))


def test_stackstac_refuses_multi_band_assets(catalog, target):
    """What the README says: stackstac wants one band per asset, S2L2A has 12."""
    import stackstac

    api, _, _ = catalog
    params, _ = target
    dicts = list(pystac_search(api, params).items_as_dicts())
    with pytest.raises(RuntimeError, match="exactly 1 band"):
        stackstac.stack(dicts, assets=["S2L2A"]).compute()


# --- odc-stac -----------------------------------------------------------------------------


@pytest.mark.parametrize("band", ["red", "B04"])
def test_odc_stac_loads_by_common_name_and_band_name(catalog, target, band):
    import odc.stac

    from terramesh_stac.open import odc_stac_config

    api, dest, _ = catalog
    params, item = target
    items = list(pystac_search(api, params).items())
    ds = odc.stac.load(items, bands=[band], stac_cfg=odc_stac_config(COLLECTION))
    assert ds[band].shape == (1, 264, 264)
    assert ds.odc.geobox.crs.epsg == item["properties"]["proj:epsg"]
    assert np.array_equal(ds[band].values[0], cog(dest, item["id"], "S2L2A", RED))


def test_odc_stac_loads_an_asset_and_an_asset_band_without_config(catalog, target):
    import odc.stac

    api, dest, _ = catalog
    params, item = target
    ds = odc.stac.load(list(pystac_search(api, params).items()), bands=["DEM", "S2L1C.4"])
    assert np.array_equal(ds["DEM"].values[0], cog(dest, item["id"], "DEM", 1))
    assert np.array_equal(ds["S2L1C.4"].values[0], cog(dest, item["id"], "S2L1C", RED))


# --- titiler (the service's /raster endpoints) --------------------------------------------


def test_titiler_preview_and_part_of_a_searched_item(catalog, target):
    api, dest, _ = catalog
    params, item = target
    (found,) = pystac_search(api, params).items_as_dicts()
    preview = next(link["href"] for link in found["links"] if link["rel"] == "preview")
    r = httpx.get(preview, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"

    # the item's own grid, in its own CRS: titiler returns the COG's pixels unchanged
    p = found["properties"]
    crs = p["proj:code"]
    bounds = ",".join(str(v) for v in p["proj:bbox"])
    base = api.removesuffix("/stac")
    r = httpx.get(
        f"{base}/raster/collections/{COLLECTION}/items/{found['id']}/bbox/{bounds}/264x264.npy",
        params={"assets": f"S2L2A|bidx={RED}", "coord_crs": crs, "dst_crs": crs},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    part = np.load(io.BytesIO(r.content))
    assert part.shape == (2, 264, 264)  # the band and the mask
    assert np.array_equal(part[0], cog(dest, item["id"], "S2L2A", RED))
    # by band name: titiler takes a band's eo:common_name (its name only where it has none)
    r = httpx.get(r.url.copy_set_param("assets", "S2L2A|bands=red"), timeout=60)
    assert r.status_code == 200, r.text
    assert np.array_equal(np.load(io.BytesIO(r.content))[0], cog(dest, item["id"], "S2L2A", RED))
