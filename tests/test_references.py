"""`convert --format ref` (issue 5, item 2): kerchunk references into the original shards.

The generated tree (3 shards, all 8 modalities) is converted with `cog,ref` from a local
HTTP server that supports ranges, from a local folder and from the moto S3 server; every
modality's reference asset must open with xarray as the item says and equal what xarray
reads from the original `.zarr.zip` (values, NaNs, dtypes, coordinates, CRS attributes),
over range requests only.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pystac
import pytest
import xarray as xr

from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard
from terramesh_stac.converters.run import write_collection
from terramesh_stac.converters.synth import generate
from terramesh_stac.validation import validate
from tests.conftest import assert_bitwise_equal, read_items, read_original, serve_directory

SPLIT = "val"


def items_of(dest: Path) -> list[dict]:
    return list(read_items(dest).values())


def open_reference(asset: dict, **storage_options) -> xr.Dataset:
    """How a user opens the asset: its href with its xarray:open_kwargs."""
    kwargs = json.loads(json.dumps(asset["xarray:open_kwargs"]))
    kwargs["storage_options"].update(storage_options)
    return xr.open_dataset(asset["href"], **kwargs).load()


def convert_all(source_url: str, dest: Path, shards: list[str], **options) -> list:
    opts = ConvertOptions(dest=str(dest), formats=("cog", "ref"), **options)
    reports = [convert_shard(source_url, SPLIT, shard, opts) for shard in shards]
    write_collection(opts, opts.store())
    return reports


@pytest.fixture(scope="module")
def over_http(synth_root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("refs-http")
    shards = sorted(p.name for p in (synth_root / SPLIT / "DEM").iterdir())
    url, stop = serve_directory(synth_root)  # the converter streams whole shards
    try:
        reports = convert_all(url + "/", dest, shards)
    finally:
        stop()
    requests: list = []  # the readers' server: same folder, same port, range requests only
    port = int(url.rsplit(":", 1)[1])
    url, stop = serve_directory(synth_root, requests, ranges_only=True, port=port)
    try:
        yield {"url": url, "dest": dest, "requests": requests, "reports": reports}
    finally:
        stop()


def test_every_modality_opens_from_its_item_over_range_requests_equal_to_the_source(over_http, synth_root, tmp_path):
    requests, checked, modalities = over_http["requests"], 0, set()
    shard = sorted(p.name for p in (synth_root / SPLIT / "DEM").iterdir())[0]
    with pytest.raises(urllib.error.HTTPError, match="403"):  # the server really refuses shards
        urllib.request.urlopen(f"{over_http['url']}/{SPLIT}/DEM/{shard}")
    assert all(not r.errors and not r.notes for r in over_http["reports"])
    for item in items_of(over_http["dest"]):
        shard = item["properties"]["terramesh:shard"]
        for key, asset in item["assets"].items():
            if not key.endswith("_ref"):
                continue
            modality = key.removesuffix("_ref")
            before = len(requests)
            got = open_reference(asset)
            new = requests[before:]
            # the server refuses whole-shard GETs (ranges_only): every read was a range read
            assert all(method == "GET" and rng for method, _, rng in new), new
            want = read_original(synth_root, modality, shard, item["id"], tmp_path)
            xr.testing.assert_identical(got, want)
            assert_bitwise_equal(got, want)
            modalities.add(modality)
            checked += 1
    assert modalities == {"S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC"}
    assert checked == sum(1 for i in items_of(over_http["dest"]) for k in i["assets"] if k.endswith("_ref"))


def test_items_link_the_original_bytes_and_validate(over_http, synth_root):
    for item in items_of(over_http["dest"]):
        validate(item)
        shard = item["properties"]["terramesh:shard"]
        for key, asset in item["assets"].items():
            if not key.endswith("_ref"):
                continue
            modality = key.removesuffix("_ref")
            # the original bytes: the modality's source asset (archive extension), by byte range
            source = item["assets"][f"{modality}_source"]
            assert source["href"] == f"{over_http['url']}/{SPLIT}/{modality}/{shard}"
            assert source["archive:href"] == f"{item['id']}.zarr.zip"
            data = (synth_root / SPLIT / modality / shard).read_bytes()
            with tarfile.open(synth_root / SPLIT / modality / shard) as tar:
                assert (
                    data[source["archive:start"] : source["archive:end"] + 1]
                    == tar.extractfile(f"{item['id']}.zarr.zip").read()
                )
            assert asset["type"] == "application/json" and "references" in asset["roles"]
            assert key.removesuffix("_ref") in item["assets"]  # the COG is there too (cog,ref)
    collection = json.loads((over_http["dest"] / "collection.json").read_text())
    validate(collection)
    assert "S2L2A_ref" in collection["item_assets"]


def test_xpystac_opens_the_reference_asset(over_http, synth_root, tmp_path):
    """xpystac (xarray.open_dataset on a pystac Asset) reads the reference over HTTP, as a
    STAC API serves it."""
    url, stop = serve_directory(over_http["dest"])
    try:
        item = pystac.Item.from_dict(items_of(over_http["dest"])[0])
        asset = item.assets["S2L2A_ref"]
        asset.href = url + "/" + Path(asset.href).relative_to(over_http["dest"]).as_posix()
        got = xr.open_dataset(asset).load()
    finally:
        stop()
    want = read_original(synth_root, "S2L2A", item.properties["terramesh:shard"], item.id, tmp_path)
    xr.testing.assert_identical(got, want)


def test_references_into_a_local_folder(synth_root, tmp_path):
    shards = sorted(p.name for p in (synth_root / SPLIT / "DEM").iterdir())
    convert_all(str(synth_root), tmp_path / "dest", [shards[0], shards[-1]])  # S1RTC and S1GRD
    seen = set()
    for item in items_of(tmp_path / "dest"):
        shard = item["properties"]["terramesh:shard"]
        for key, asset in item["assets"].items():
            if key.endswith("_ref"):
                assert asset["xarray:open_kwargs"]["storage_options"]["remote_protocol"] == "file"
                modality = key.removesuffix("_ref")
                got, want = open_reference(asset), read_original(synth_root, modality, shard, item["id"], tmp_path)
                xr.testing.assert_identical(got, want)
                assert_bitwise_equal(got, want)
                seen.add(modality)
    assert seen == {"S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC"}


def test_references_into_the_s3_server(synth_root, s3_server, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="refs")
    shards = sorted(p.name for p in (synth_root / SPLIT / "DEM").iterdir())
    shards = [shards[0], shards[-1]]  # a Major TOM shard (S1RTC) and an SSL4EO-S12 one (S1GRD)
    for shard in shards:
        for path in (synth_root / SPLIT).glob(f"*/{shard}"):
            s3.upload_file(str(path), "refs", f"src/{path.relative_to(synth_root).as_posix()}")
    s3.upload_file(str(synth_root / f"{SPLIT}_metadata.parquet"), "refs", f"src/{SPLIT}_metadata.parquet")
    reports = convert_all("s3://refs/src", tmp_path / "dest", shards, s3_endpoint_url=s3_server)
    assert [r.items for r in reports] == [4, 4] and not any(r.errors for r in reports)
    seen = set()
    for item in items_of(tmp_path / "dest"):
        shard = item["properties"]["terramesh:shard"]
        for key, asset in item["assets"].items():
            if not key.endswith("_ref"):
                continue
            modality = key.removesuffix("_ref")
            assert item["assets"][f"{modality}_source"]["href"].startswith(f"s3://refs/src/val/{modality}/")
            got = open_reference(asset, remote_options={"client_kwargs": {"endpoint_url": s3_server}})
            want = read_original(synth_root, modality, shard, item["id"], tmp_path)
            xr.testing.assert_identical(got, want)
            assert_bitwise_equal(got, want)
            seen.add(modality)
    assert seen == {"S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC"}


def test_deflated_members_fall_back_to_cogs_with_a_note(tmp_path):
    src = tmp_path / "src"
    generate(src, split=SPLIT, shards=1, samples_per_shard=2, seed=4, deflate=True)
    shard = next((src / SPLIT / "DEM").iterdir()).name
    opts = ConvertOptions(dest=str(tmp_path / "dest"), formats=("ref",))
    report = convert_shard(str(src), SPLIT, shard, opts)
    assert report.items == 2 and not report.errors
    items = items_of(tmp_path / "dest")
    noted = {(n["key"], n["modality"]) for n in report.notes}
    for item in items:
        for modality in ("S2L2A", "DEM"):
            assert modality in item["assets"] and f"{modality}_ref" not in item["assets"]
            assert (item["id"], modality) in noted
    assert all("deflated" in n["reason"] and "COG written instead" in n["reason"] for n in report.notes)


@pytest.mark.subprocess
def test_cli_format_option(synth_root, tmp_path):
    cli = [sys.executable, "-m", "terramesh_stac.cli", "convert", str(synth_root), "--dest", str(tmp_path / "d")]
    bad = subprocess.run([*cli, "--format", "cog,zarrr"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown format" in bad.stderr and "zarrr" in bad.stderr
    env = {k: v for k, v in os.environ.items() if k != "TERRAMESH_SCHEDULER"}
    ok = subprocess.run(
        [*cli, "--format", "ref", "--workers", "1", "--max-shards", "1", "--limit", "1", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    item = items_of(tmp_path / "d")[0]
    assert any(k.endswith("_ref") for k in item["assets"])
    assert not any(k in item["assets"] for k in ("S2L2A", "DEM"))  # no COG copies with ref alone
    shutil.rmtree(tmp_path / "d")


@pytest.mark.subprocess
def test_formats_chosen_per_modality(synth_root, tmp_path):
    """COG for most modalities, references for the S1 ones: items hold exactly that, and the
    collection's item_assets and summaries say so."""
    env = {k: v for k, v in os.environ.items() if k != "TERRAMESH_SCHEDULER"}
    dest = tmp_path / "d"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "terramesh_stac.cli",
            "convert",
            str(synth_root),
            "--dest",
            str(dest),
            "--format",
            "cog",
            "--format-for",
            "S1GRD=ref",
            "--format-for",
            "S1RTC=ref",
            "--workers",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    items = items_of(dest)
    s1_seen = set()
    for item in items:
        for modality in ("S2L1C", "S2L2A", "S2RGB", "DEM", "NDVI", "LULC", "S1GRD", "S1RTC"):
            if item["properties"]["terramesh:source"] == "majortom" and modality == "S1GRD":
                continue
            if item["properties"]["terramesh:source"] == "ssl4eos12" and modality == "S1RTC":
                continue
            if modality.startswith("S1"):
                assert f"{modality}_ref" in item["assets"] and modality not in item["assets"], (item["id"], modality)
                s1_seen.add(modality)
            else:
                assert modality in item["assets"] and f"{modality}_ref" not in item["assets"], (item["id"], modality)
        validate(item)
    assert s1_seen == {"S1GRD", "S1RTC"}
    collection = json.loads((dest / "collection.json").read_text())
    validate(collection)
    refs = {k for i in items_of(dest) for k in i["assets"] if k.endswith("_ref")}
    assert refs == {"S1GRD_ref", "S1RTC_ref"}
    assert collection["summaries"]["terramesh:formats"] == ["cog", "ref"]
    # the choice is part of each shard's settings: another choice converts the shards again
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "terramesh_stac.cli",
            "convert",
            str(synth_root),
            "--dest",
            str(dest),
            "--format",
            "cog",
            "--workers",
            "1",
            "--quiet",
            "--report",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert not any(s["skipped"] for s in report["shard_reports"])
    assert all("S1GRD_ref" not in i["assets"] and "S1RTC_ref" not in i["assets"] for i in items_of(dest))
