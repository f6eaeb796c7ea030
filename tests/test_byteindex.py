"""The byte-range index (issue 4, item 2): every member of every shard tar, where it sits,
and where its zip entries sit, so one range request fetches a sample's original bytes.

A generated source is converted shard by shard (terramesh_stac.converters.pipeline.convert_shard, what a
Dask worker runs) from a local HTTP server that supports ranges; the index written at the
destination is checked against tarfile's own random access, zipfile's entries, and a
fetch of each sample's bytes over HTTP that must decode to the same arrays.
"""

import io
import json
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from terramesh_stac.converters.byteindex import RangeRequestError, fetch_entry, fetch_member, read_index
from terramesh_stac.converters.layout import index_path
from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard
from terramesh_stac.converters.run import write_collection
from terramesh_stac.converters.synth import _tar_member as write_member
from terramesh_stac.converters.synth import generate
from terramesh_stac.converters.zarrzip import decode_zarr_zip
from terramesh_stac.validation import validate
from tests.conftest import serve_directory, serve_flaky_directory

SPLIT = "val"


def damage(src: Path, shard: str) -> tuple[str, str]:
    """Makes the S2L2A tar of `shard` hold a garbage .zarr.zip and a stray README (appended
    as real tar members). Returns (key of the garbage member, name of the stray member)."""
    path = src / SPLIT / "S2L2A" / shard
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            write_member(tar, name, data)
        write_member(tar, "broken_0000099.zarr.zip", b"this is not a zip" * 10)
        write_member(tar, "README.txt", b"not a sample\n")
    return "broken_0000099", "README.txt"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("byteindex")
    src, dest = base / "src", base / "dest"
    generate(src, split=SPLIT, shards=2, samples_per_shard=3, seed=7)
    shards = sorted(p.name for p in (src / SPLIT / "S2L2A").iterdir())
    broken = damage(src, shards[0])
    requests: list = []
    url, stop = serve_directory(src, requests)
    try:
        options = ConvertOptions(dest=str(dest), collection_id="terramesh-test")
        reports = [convert_shard(url + "/", SPLIT, shard, options) for shard in shards]
        write_collection(options, options.store())
        yield {
            "src": src,
            "dest": dest,
            "url": url,
            "shards": shards,
            "reports": reports,
            "broken": broken,
            "requests": requests,
            "rows": {s: read_index(str(dest / index_path(SPLIT, s))) for s in shards},
        }
    finally:
        stop()


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:  # random access: offsets from the archive's own headers
        return [m for m in tar.getmembers() if m.isfile()]


def test_every_member_of_every_tar_is_indexed_at_its_offset(converted):
    src, url = converted["src"], converted["url"]
    for shard, rows in converted["rows"].items():
        by_place = {(r["modality"], r["member"]): r for r in rows}
        tars = sorted((src / SPLIT).glob(f"*/{shard}"))
        assert len(tars) >= 6  # every modality this source has
        expected = set()
        for tar_path in tars:
            modality = tar_path.parent.name
            data = tar_path.read_bytes()
            with tarfile.open(tar_path) as tar:
                for m in tar.getmembers():
                    if not m.isfile():
                        continue
                    expected.add((modality, m.name))
                    row = by_place[(modality, m.name)]
                    assert (row["offset"], row["size"]) == (m.offset_data, m.size), (shard, m.name)
                    assert data[row["offset"] : row["offset"] + row["size"]] == tar.extractfile(m).read()
                    assert row["tar_url"] == f"{url}/{SPLIT}/{modality}/{shard}"
                    assert (row["split"], row["shard"]) == (SPLIT, shard)
        assert set(by_place) == expected, shard


def test_zip_entries_sit_where_the_index_says(converted):
    src = converted["src"]
    checked = 0
    for rows in converted["rows"].values():
        for row in rows:
            if row["problem"]:
                continue
            tar_bytes = (src / SPLIT / row["modality"] / row["shard"]).read_bytes()
            member = tar_bytes[row["offset"] : row["offset"] + row["size"]]
            with zipfile.ZipFile(io.BytesIO(member)) as zf:
                names = zf.namelist()
                assert [e["name"] for e in row["entries"]] == names
                for e in row["entries"]:
                    raw = tar_bytes[e["offset"] : e["offset"] + e["size"]]
                    assert e["compression"] == "stored"
                    assert raw == zf.read(e["name"]), (row["member"], e["name"])
                    assert zlib.crc32(raw) == e["crc32"]
                    checked += 1
    assert checked > 100


def test_broken_and_stray_members_are_indexed_with_their_problem(converted):
    broken_key, stray = converted["broken"]
    rows = converted["rows"][converted["shards"][0]]
    by_member = {r["member"]: r for r in rows if r["modality"] == "S2L2A"}
    assert by_member[f"{broken_key}.zarr.zip"]["problem"].startswith("not a readable zip")
    assert by_member[f"{broken_key}.zarr.zip"]["entries"] == []
    assert by_member[stray]["problem"] == f"not a zarr.zip member: {stray}"
    assert all(r["problem"] is None for r in converted["rows"][converted["shards"][1]])
    # the conversion reported the same members
    reasons = {(e["key"], e["reason"].split(":")[0]) for e in converted["reports"][0].errors}
    assert (broken_key, "corrupt member") in reasons
    assert ("README", "not a zarr.zip member") in reasons


def test_one_range_request_fetches_a_sample_that_decodes_to_the_same_arrays(converted):
    src, requests = converted["src"], converted["requests"]
    fetched = 0
    for rows in converted["rows"].values():
        for row in rows:
            if row["problem"]:
                continue
            before = len(requests)
            data = fetch_member(row)
            assert len(requests) == before + 1, requests[before:]
            method, path, rng = requests[-1]
            assert (method, rng) == ("GET", f"bytes={row['offset']}-{row['offset'] + row['size'] - 1}")
            with tarfile.open(src / SPLIT / row["modality"] / row["shard"]) as tar:
                original = decode_zarr_zip(tar.extractfile(row["member"]).read())
            got = decode_zarr_zip(data)
            for name in original.variables:
                np.testing.assert_array_equal(got[name].values, original[name].values)
                assert got[name].dtype == original[name].dtype
            fetched += 1
    keys = {r["key"] for rows in converted["rows"].values() for r in rows if not r["problem"]}
    assert len(keys) == 6 and fetched >= 6 * 6


def test_one_chunk_by_its_entry(converted):
    row = next(r for r in converted["rows"][converted["shards"][1]] if r["modality"] == "DEM")
    chunk = next(e["name"] for e in row["entries"] if e["name"].startswith("bands/"))
    with zipfile.ZipFile(io.BytesIO(fetch_member(row))) as zf:
        assert fetch_entry(row, chunk) == zf.read(chunk)
    with pytest.raises(KeyError, match="no entry"):
        fetch_entry(row, "bands/9.9.9")


def test_deflated_entries_are_indexed_as_deflated(tmp_path):
    src = tmp_path / "src"
    generate(src, split=SPLIT, shards=1, samples_per_shard=2, seed=3, deflate=True)
    shard = next((src / SPLIT / "DEM").iterdir()).name
    convert_shard(str(src), SPLIT, shard, ConvertOptions(dest=str(tmp_path / "dest")))
    rows = read_index(str(tmp_path / "dest" / index_path(SPLIT, shard)))
    row = next(r for r in rows if r["modality"] == "DEM")
    tar_bytes = (src / SPLIT / "DEM" / shard).read_bytes()
    member = tar_bytes[row["offset"] : row["offset"] + row["size"]]
    with zipfile.ZipFile(io.BytesIO(member)) as zf:
        for e in row["entries"]:
            assert e["compression"] == "deflated"
            raw = tar_bytes[e["offset"] : e["offset"] + e["size"]]
            assert zlib.decompress(raw, -15) == zf.read(e["name"])
            assert e["uncompressed_size"] == len(zf.read(e["name"]))


def test_a_server_that_ignores_ranges_is_an_error(converted):
    url, stop, _ = serve_flaky_directory(converted["src"])  # plain http.server: no ranges
    try:
        row = dict(next(r for r in converted["rows"][converted["shards"][1]] if not r["problem"]))
        row["tar_url"] = row["tar_url"].replace(converted["url"], url)
        with pytest.raises(RangeRequestError, match="range requests"):
            fetch_member(row)
    finally:
        stop()


def test_the_collection_links_the_index_and_validates(converted):
    dest = converted["dest"]
    collection = json.loads((dest / "collection.json").read_text())
    asset = collection["assets"]["byte-index"]
    assert asset["type"] == "application/vnd.apache.parquet"
    assert "index" in asset["roles"]
    files = sorted(Path(asset["href"]).glob("*/*.parquet"))
    assert [f.name for f in files] == [s.replace(".tar", ".parquet") for s in converted["shards"]]
    validate(collection)


def test_the_index_of_a_copied_tree_points_at_the_copy(converted, tmp_path):
    """tar_url follows the source the shard was read from (here: a local folder)."""
    src = tmp_path / "src"
    shutil.copytree(converted["src"], src)
    shard = converted["shards"][1]
    convert_shard(str(src), SPLIT, shard, ConvertOptions(dest=str(tmp_path / "dest")))
    rows = read_index(str(tmp_path / "dest" / index_path(SPLIT, shard)))
    for row in rows:
        assert Path(row["tar_url"]) == src / SPLIT / row["modality"] / shard
        assert (
            fetch_member(row)
            == (src / SPLIT / row["modality"] / shard).read_bytes()[row["offset"] : row["offset"] + row["size"]]
        )
