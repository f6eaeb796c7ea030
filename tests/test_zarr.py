"""`convert --format zarr` (issue 5, items 1 and 3; issue 14, item 4): a shard's samples
stacked per modality in Zarr v3 stores, and per item a view of its own sample; every sample
opens from its item with plain xarray (the view) and from the stack, equal to the source,
with its x/y and CRS, from a local folder, over HTTP and from the moto S3 server; Zarr-backed
item tiles.
"""

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pystac
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from PIL import Image

from terramesh_stac.converters import zarrstack, zarrview
from terramesh_stac.converters.pipeline import AssetWriter, ConvertOptions, ShardStacks, convert_sample, convert_shard
from terramesh_stac.converters.run import write_collection
from terramesh_stac.converters.shards import iter_samples
from terramesh_stac.converters.source import open_source
from terramesh_stac.open import open_sample
from terramesh_stac.validation import validate
from tests.conftest import (
    assert_bitwise_equal,
    delete_collection,
    read_items,
    read_original,
    rewrite_member,
    serve_directory,
    serve_with_cli,
)

SPLIT = "val"
BLOCK = 3  # samples per shard object in these tests: 4-sample shards make one full, one partial block
ALL = {"S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC"}


def open_as_user(asset: dict, **kwargs) -> xr.Dataset:
    """The item's Zarr asset as it says: plain xarray with its xarray:open_kwargs."""
    return xr.open_dataset(asset["href"], **{**asset["xarray:open_kwargs"], **kwargs}).load()


def open_stack_as_user(asset: dict, **kwargs) -> xr.Dataset:
    """The stacked store's recipe: open with its xarray:open_kwargs, select the sample."""
    stack = xr.open_dataset(asset["href"], **{**asset["xarray:open_kwargs"], **kwargs})
    return zarrstack.unstack(stack.sel(**asset["terramesh:sample_selection"]))


def assert_equal_to_source(got: xr.Dataset, want: xr.Dataset, item: dict, asset: dict) -> None:
    xr.testing.assert_identical(got, want)  # values (NaNs too), coordinates, attributes
    assert_bitwise_equal(got, want)  # float16 stays float16; NaN payloads too
    np.testing.assert_array_equal(got["x"].values, want["x"].values)  # pixel centres
    np.testing.assert_array_equal(got["y"].values, want["y"].values)
    assert got.rio.crs == want.rio.crs and got.rio.crs.to_string() == item["properties"]["proj:code"]
    assert list(got.rio.transform())[:6] == item["properties"]["proj:transform"]
    assert list(got.rio.transform())[:6] == asset.get("proj:transform", item["properties"]["proj:transform"])


def shards_of(root: Path) -> list[str]:
    return sorted(p.name for p in (root / SPLIT / "DEM").iterdir())


@pytest.fixture(scope="module")
def zarr_dest(synth_root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("zarr") / "out"
    opts = ConvertOptions(dest=str(dest), formats=("cog", "zarr"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zarrstack, "SAMPLES_PER_BLOCK", BLOCK)
        reports = [convert_shard(str(synth_root), SPLIT, s, opts) for s in shards_of(synth_root)]
        write_collection(opts, opts.store())
    return dest, opts, reports


def test_every_modality_opens_from_its_item_equal_to_the_source(zarr_dest, synth_root, tmp_path):
    dest, _, reports = zarr_dest
    assert all(not r.errors and not r.notes for r in reports)
    seen = set()
    for item in read_items(dest).values():
        shard = item["properties"]["terramesh:shard"]
        for key, asset in item["assets"].items():
            if not key.endswith("_zarr"):
                continue
            modality = key.removesuffix("_zarr")
            assert modality in item["assets"]  # cog,zarr: both
            cog = item["assets"][modality]
            for field in ("nodata", "proj:transform", "proj:shape", "proj:code"):  # same sample, same facts
                assert asset.get(field) == cog.get(field), (key, field)
            assert [b["name"] for b in asset["bands"]] == [b["name"] for b in cog["bands"]]
            assert asset["data_type"] == cog.get("terramesh:source_data_type", cog["data_type"])
            want = read_original(synth_root, modality, shard, item["id"], tmp_path)
            # the item's Zarr asset alone, with plain xarray: one sample, georeferenced
            view = open_as_user(asset)
            assert "item" not in view.dims and view["bands"].dims == want["bands"].dims
            assert_equal_to_source(view, want, item, asset)
            # the stacked store, selected and unstacked
            assert_equal_to_source(open_stack_as_user(item["assets"][f"{key}_stack"]), want, item, asset)
            seen.add(modality)
    assert seen == ALL


def test_stores_hold_a_shard_per_block_and_consolidated_metadata(zarr_dest):
    dest, _, _ = zarr_dest
    items = read_items(dest).values()
    stores = {a["href"] for i in items for k, a in i["assets"].items() if k.endswith("_zarr_stack")}
    for href in stores:
        root = json.loads((Path(href) / "zarr.json").read_text())
        members = root["consolidated_metadata"]["metadata"]
        n = members["item"]["shape"][0]
        assert members["bands"]["shape"][0] == n
        # one object per block of samples for the pixels (sharding), not one per sample or band
        pixel_objects = [p for p in (Path(href) / "bands").rglob("*") if p.is_file() and p.name != "zarr.json"]
        assert len(pixel_objects) == math.ceil(n / BLOCK)
        stacked = xr.open_dataset(href, engine="zarr", consolidated=True, chunks={})
        ids = [str(v) for v in stacked["item"].values]
        assert sorted(ids) == sorted(i["id"] for i in items if any(a["href"] == href for a in i["assets"].values()))


def test_items_and_collection_validate_and_describe_the_zarr_assets(zarr_dest):
    dest, _, _ = zarr_dest
    for item in read_items(dest).values():
        validate(item)
        for key, asset in item["assets"].items():
            if key.endswith("_zarr_stack"):
                assert asset["type"] == "application/vnd.zarr" and asset["zarr:zarr_format"] == 3
                assert asset["terramesh:sample_selection"] == {"item": item["id"]}
                assert "file:size" not in asset  # a store, not a file
            elif key.endswith("_zarr"):  # the per-item view: kerchunk references, as xpystac reads them
                assert asset["type"] == "application/json" and "references" in asset["roles"]
                assert asset["xarray:open_kwargs"]["engine"] == "kerchunk"
                assert f"{key}_stack" in item["assets"]
    collection = json.loads((dest / "collection.json").read_text())
    validate(collection)
    assert {f"{m}_zarr" for m in ALL} | {f"{m}_zarr_stack" for m in ALL} <= set(collection["item_assets"])
    assert collection["summaries"]["terramesh:formats"] == ["cog", "zarr"]


def test_xpystac_and_http_open_the_zarr_asset_metadata_in_one_request(zarr_dest, synth_root, tmp_path):
    dest, _, _ = zarr_dest
    requests: list = []
    url, stop = serve_directory(dest, requests)
    try:
        item = pystac.Item.from_dict(sorted(read_items(dest).values(), key=lambda i: i["id"])[-1])
        asset = item.assets.get("S1GRD_zarr_stack") or item.assets["S1RTC_zarr_stack"]
        asset.href = url + "/" + Path(asset.href).relative_to(dest).as_posix()
        stack = xr.open_dataset(asset)  # xpystac: media type + zarr:* + xarray:open_kwargs
        # metadata: the root zarr.json only (consolidated); the rest are coordinate values
        paths = [path for _, path, _ in requests]
        assert [p for p in paths if p.rsplit("/", 1)[-1] in METADATA] == [urlpath(asset.href) + "/zarr.json"]
        assert not any("/bands/" in p for p in paths)  # pixels only when read
        got = zarrstack.unstack(stack.sel(item=item.id))
    finally:
        stop()
    modality = asset.href.rsplit("/", 1)[-1].removesuffix(".zarr")
    want = read_original(synth_root, modality, item.properties["terramesh:shard"], item.id, tmp_path)
    assert_equal_to_source(got, want, item.to_dict(), asset.to_dict())
    assert got["bands"].dtype == np.float16


METADATA = {"zarr.json", ".zmetadata", ".zgroup", ".zarray", ".zattrs"}


def urlpath(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_a_forced_rerun_rewrites_no_object(zarr_dest, synth_root):
    dest, opts, _ = zarr_dest
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zarrstack, "SAMPLES_PER_BLOCK", BLOCK)
        report = convert_shard(str(synth_root), SPLIT, shards_of(synth_root)[0], opts, force=True)
    assert report.assets["written"] == 0 and report.assets["unchanged"] > 0, report.assets


def test_a_new_revision_keeps_the_previous_store_whole(synth_root, tmp_path):
    """One DEM of a shard changes: its store is rewritten, and the previous store is kept
    whole under revisions/ (every object, not only the changed one), still readable."""
    src = tmp_path / "src"
    shutil.copytree(synth_root, src)
    shard = shards_of(src)[0]
    opts = ConvertOptions(dest=str(tmp_path / "dest"), formats=("zarr",))
    first = convert_shard(str(src), SPLIT, shard, opts)
    items = read_items(tmp_path / "dest")
    key = sorted(items)[0]
    before = open_sample(items[key], "DEM")

    def plus_one(ds):
        ds["bands"] = ds["bands"] + 1
        return ds

    rewrite_member(src / SPLIT / "DEM" / shard, key, plus_one)
    second = convert_shard(str(src), SPLIT, shard, opts)
    assert second.content_id != first.content_id and not second.errors
    after = open_sample(read_items(tmp_path / "dest")[key], "DEM")
    np.testing.assert_array_equal(after["bands"].values, before["bands"].values + 1)
    store = Path(items[key]["assets"]["DEM_zarr_stack"]["href"])
    kept = tmp_path / "dest" / "revisions" / first.content_id / store.relative_to(tmp_path / "dest")
    assert sorted(p.relative_to(kept) for p in kept.rglob("*") if p.is_file()) == sorted(
        p.relative_to(store) for p in store.rglob("*") if p.is_file()
    )
    xr.testing.assert_identical(zarrstack.open_sample(str(kept), key), before)
    # the views whose bytes moved in the store are kept too, pointing at the kept store
    revision = tmp_path / "dest" / "revisions" / first.content_id
    kept_views = sorted(revision.glob("assets/*/DEM.zarr-view.json"))
    assert revision / "assets" / key / "DEM.zarr-view.json" in kept_views
    for view in kept_views:
        refs = json.loads(view.read_text())["refs"]
        assert all(r[0].startswith(str(kept) + "/") for r in refs.values() if isinstance(r, list))
        xr.testing.assert_identical(
            xr.open_dataset(str(view), **zarrview.OPEN_KWARGS).load(),
            zarrstack.open_sample(str(kept), view.parent.name),
        )
    assert second.assets["superseded"] == sum(1 for p in kept.rglob("*") if p.is_file()) + len(kept_views)
    # the other modalities' stores did not change: nothing of theirs kept
    assert [p.name for p in kept.parent.iterdir()] == ["DEM.zarr"]


def test_zarr_on_the_s3_server(synth_root, s3_server, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="zarr")
    opts = ConvertOptions(dest="s3://zarr/out", formats=("zarr",), s3_endpoint_url=s3_server)
    shards = shards_of(synth_root)
    shards = [shards[0], shards[-1]]  # a Major TOM shard (S1RTC) and an SSL4EO-S12 one (S1GRD)
    for shard in shards:
        report = convert_shard(str(synth_root), SPLIT, shard, opts)
        assert report.items == 4 and not report.errors
    write_collection(opts, opts.store())
    s3 = {"client_kwargs": {"endpoint_url": s3_server}}
    endpoint = {"storage_options": s3}
    # two dicts: kerchunk adds asynchronous=True to remote_options, in place
    view_endpoint = {
        "storage_options": {"target_options": dict(s3), "remote_options": dict(s3), "skip_instance_cache": True}
    }
    seen = set()
    for item in read_items("s3://zarr/out", endpoint_url=s3_server).values():
        assert not any(k in item["assets"] for k in ALL)  # zarr alone: no COG copies
        shard = item["properties"]["terramesh:shard"]
        for key, asset in item["assets"].items():
            if not key.endswith("_zarr"):
                continue
            modality = key.removesuffix("_zarr")
            stack = item["assets"][f"{key}_stack"]
            assert stack["href"].startswith("s3://zarr/out/assets/zarr/val/")
            assert stack["alternate"]["https"]["href"].startswith(s3_server)
            assert asset["href"].startswith("s3://zarr/out/assets/")
            want = read_original(synth_root, modality, shard, item["id"], tmp_path)
            assert_equal_to_source(open_as_user(asset, **view_endpoint), want, item, asset)
            assert_equal_to_source(open_stack_as_user(stack, **endpoint), want, item, asset)
            seen.add(modality)
        assert_equal_to_source(
            open_sample(item, "DEM", **view_endpoint),
            read_original(synth_root, "DEM", shard, item["id"], tmp_path),
            item,
            item["assets"]["DEM_zarr"],
        )
    assert seen == ALL


def test_a_sample_that_does_not_fit_the_stack_gets_a_cog_and_a_note(synth_root, tmp_path):
    source = open_source(str(synth_root))
    shard = shards_of(synth_root)[0]
    samples = list(iter_samples(source, SPLIT, shard))[:2]
    odd = samples[1]
    odd.modalities["S2L2A"] = odd.modalities["S2L2A"].isel(band=slice(0, 10))  # 10 of 12 bands
    opts = ConvertOptions(dest=str(tmp_path / "dest"), formats=("zarr",))
    writer = AssetWriter(opts.store(), None)
    stacks, notes = ShardStacks(writer, SPLIT, shard), []
    first, second = (convert_sample(s, writer, stacks, opts, None, notes) for s in samples)
    stacks.close()
    assert "S2L2A_zarr" in first.assets and "S2L2A" not in first.assets
    assert "S2L2A" in second.assets and "S2L2A_zarr" not in second.assets
    assert "DEM_zarr" in second.assets  # the other modalities still stacked
    assert [(n["key"], n["modality"]) for n in notes] == [(odd.key, "S2L2A")]
    assert "band" in notes[0]["reason"] and "COG written instead" in notes[0]["reason"]
    stacked = xr.open_dataset(first.assets["S2L2A_zarr_stack"].href, engine="zarr", chunks={})
    assert [str(v) for v in stacked["item"].values] == [first.id]


# --- Zarr-backed tiles, through the CLI as a user runs it -----------------------------------

COLLECTION = "terramesh-zarr"
CLI = [sys.executable, "-m", "terramesh_stac.cli"]


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "TERRAMESH_SCHEDULER"}
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def zarr_served(synth_root, pgstac_db, tmp_path_factory):
    """convert (COG + Zarr, DEM as Zarr only), load, serve."""
    dest = tmp_path_factory.mktemp("zarr-served") / "out"
    run_cli(
        "convert",
        synth_root,
        "--dest",
        dest,
        "--collection",
        COLLECTION,
        "--workers",
        "1",
        "--format",
        "cog,zarr",
        "--format-for",
        "DEM=zarr",
        "--quiet",
    )
    run_cli("load", dest, "--dsn", pgstac_db.loader)
    try:
        with serve_with_cli(pgstac_db, dest, TERRAMESH_COLLECTION_ID=COLLECTION) as base:
            yield base, dest
    finally:
        delete_collection(pgstac_db.admin, COLLECTION)


def tile_png(base: str, item: dict, tile, **params) -> np.ndarray:
    r = httpx.get(
        f"{base}/raster/collections/{COLLECTION}/items/{item['id']}/tiles/WebMercatorQuad/"
        f"{tile.z}/{tile.x}/{tile.y}.png",
        params=params,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


def centre_tile(item: dict, zoom: int = 14):
    west, south, east, north = item["bbox"]
    return morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, zoom)


def test_zarr_tiles_equal_the_cog_tiles_at_the_item(zarr_served):
    base, dest = zarr_served
    items = read_items(dest)
    item = next(i for k, i in sorted(items.items()) if k.startswith("majortom") and i["bbox"][0] < i["bbox"][2])
    tile = centre_tile(item)
    for cog, zarr_asset, extra in (
        ("S2L2A|bidx=4,3,2", "S2L2A_zarr|bidx=4,3,2", {"rescale": ["0,3000"] * 3}),
        ("S1RTC", "S1RTC_zarr", {"expression": "b1", "rescale": "-25,0"}),
    ):
        from_cog = tile_png(base, item, tile, assets=cog, **extra)
        from_zarr = tile_png(base, item, tile, assets=zarr_asset, **extra)
        covered = from_zarr[..., 3] > 0
        assert covered.mean() > 0.5 and from_zarr[..., :3][covered].std() > 0
        assert np.array_equal(from_zarr, from_cog), zarr_asset
    # zoomed out (a tile pixel ~40 m over the 10 m grid) GDAL's warper and rioxarray's pick
    # different nearest pixels, but the footprint is the same: the whole patch, in place
    out = centre_tile(item, 12)
    cog_mask = tile_png(base, item, out, assets="S2L2A|bidx=4,3,2", rescale=["0,3000"] * 3)[..., 3] > 0
    zarr_mask = tile_png(base, item, out, assets="S2L2A_zarr|bidx=4,3,2", rescale=["0,3000"] * 3)[..., 3] > 0
    assert 0 < cog_mask.mean() < 0.5  # the patch, not the whole tile
    assert (cog_mask & zarr_mask).sum() / (cog_mask | zarr_mask).sum() > 0.97


def test_a_render_preset_reads_a_zarr_only_modality(zarr_served):
    base, dest = zarr_served
    item = next(i for k, i in sorted(read_items(dest).items()) if i["bbox"][0] < i["bbox"][2])
    assert "DEM" not in item["assets"] and "DEM_zarr" in item["assets"]
    tile = centre_tile(item)
    img = tile_png(base, item, tile, render="dem")
    assert (img[..., 3] > 0).mean() > 0.5 and img[..., :3][img[..., 3] > 0].std() > 0
    # the collection mosaic reads the Zarr asset too: same pixels where only this item lies
    r = httpx.get(
        f"{base}/raster/collections/{COLLECTION}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
        params={"render": "dem"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA")), img)
    # a tile next to the patch (2.6 km wide) has no DEM pixels: the pixels are placed, not smeared
    far = morecantile.Tile(tile.x + 3, tile.y, tile.z)
    r = httpx.get(
        f"{base}/raster/collections/{COLLECTION}/items/{item['id']}/tiles/WebMercatorQuad/{far.z}/{far.x}/{far.y}.png",
        params={"render": "dem"},
        timeout=60,
    )
    assert r.status_code == 404, r.text
    # the item served by the STAC API opens with xarray over HTTP (the API serves the store)
    served = httpx.get(f"{base}/stac/collections/{COLLECTION}/items/{item['id']}", timeout=60).json()
    assert served["assets"]["DEM_zarr_stack"]["href"].startswith(base + "/assets/zarr/")
    view = served["assets"]["DEM_zarr"]
    assert view["href"].startswith(base + "/assets/") and view["href"].endswith("/DEM.zarr-view.json")
    # the view served points at the store through the service, not at the server's disk
    pixel_refs = [r for r in httpx.get(view["href"], timeout=60).json()["refs"].values() if isinstance(r, list)]
    assert pixel_refs and all(r[0].startswith(base + "/assets/zarr/") for r in pixel_refs)
    local = open_sample(item, "DEM")
    xr.testing.assert_identical(open_sample(served, "DEM"), local)
    # xpystac, as a user of the API opens the asset
    got = xr.open_dataset(pystac.Item.from_dict(served).assets["DEM_zarr"]).load()
    xr.testing.assert_identical(got, local)
    assert got.rio.crs.to_string() == served["properties"]["proj:code"]


@pytest.mark.parametrize(
    "variant",
    [{"deflate": True}, {"scalar_shape": (1,)}, {"cloud_mask": False}],
    ids=["deflated-zip", "metadata-of-shape-1", "no-cloud-mask"],
)
def test_views_of_every_sample_kind_equal_the_source(variant, tmp_path):
    """The sample kinds the reader tolerates: the view still opens equal to the source."""
    from terramesh_stac.converters.synth import generate

    src = tmp_path / "src"
    generate(src, split=SPLIT, shards=1, samples_per_shard=2, seed=7, **variant)
    opts = ConvertOptions(dest=str(tmp_path / "dest"), formats=("zarr",))
    report = convert_shard(str(src), SPLIT, shards_of(src)[0], opts)
    assert report.items == 2 and not report.errors and not report.notes
    opened = 0
    for item in read_items(tmp_path / "dest").values():
        for key, asset in item["assets"].items():
            if key.endswith("_zarr"):
                want = read_original(
                    src, key.removesuffix("_zarr"), item["properties"]["terramesh:shard"], item["id"], tmp_path
                )
                assert_equal_to_source(open_as_user(asset), want, item, asset)
                opened += 1
    assert opened >= 2 * len(ALL) - 2  # every modality of both samples (S1GRD or S1RTC)
