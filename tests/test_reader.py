"""The TerraMesh reader: zarr.zip decoding, shard streaming, metadata, sources (dir, https, s3).

Every test reads real files written by terramesh_stac.converters.synth; damaged variants are made by
rewriting copies of its tars.
"""

import io
import shutil
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr

from terramesh_stac.converters import synth
from terramesh_stac.converters.metadata import read_metadata, write_metadata
from terramesh_stac.converters.sample import Sample, SampleError
from terramesh_stac.converters.shards import iter_samples
from terramesh_stac.converters.source import (
    HubLocation,
    hub_tree_url,
    next_page_url,
    open_source,
    parse_hub_tree,
    parse_hub_url,
)
from terramesh_stac.converters.zarrzip import (
    LOADER_ARRAYS,
    NO_TIME_THRESHOLD,
    CorruptSampleError,
    decode_zarr_zip,
    decode_zarr_zip_with_zarr,
    encode_zarr_zip,
    read_arrays,
    sample_scalar,
    sample_time,
)

SHARD = "majortom_shard_000001.tar"


def read_all(source, split="val", shards=None, **kw):
    shards = shards or source.list_shards(split)
    out = []
    for sh in shards:
        out += list(iter_samples(source, split, sh, **kw))
    return out


def samples_of(results):
    return [r for r in results if isinstance(r, Sample)]


def errors_of(results):
    return [r for r in results if isinstance(r, SampleError)]


def expected_datasets(split="val", shards=3, samples_per_shard=4, seed=0, **kw):
    """What synth wrote, regenerated: {key: {modality: Dataset}}."""
    specs = synth.plan(split, shards, samples_per_shard, seed)
    return {s.key: synth.sample_datasets(s, seed, i, **kw) for i, s in enumerate(specs)}


def assert_same(ds, expected):
    for name in ("bands", "cloud_mask"):
        assert (name in ds) == (name in expected), name
        if name in ds:
            np.testing.assert_array_equal(ds[name].values, expected[name].values)  # NaN == NaN here
            assert ds[name].dtype == expected[name].dtype
    for name in ("x", "y", "band", "file_id"):
        np.testing.assert_array_equal(ds[name].values, expected[name].values)
    for name in ("center_lat", "center_lon", "crs", "sample"):
        assert sample_scalar(ds, name) == sample_scalar(expected, name)
    np.testing.assert_array_equal(ds["time"].values, expected["time"].values)


def rewrite_tar(path, edit):
    """Rewrite a tar in place: `edit(list of (name, bytes)) -> list of (name, bytes)`."""
    with tarfile.open(path) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(path, "w") as tf:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def tree(synth_root, tmp_path):
    """A private copy of the generated tree, free to damage."""
    dst = tmp_path / "tree"
    shutil.copytree(synth_root, dst)
    return dst


# --- reading what the generator wrote ------------------------------------------------------


def test_reads_every_sample_as_written(synth_root):
    source = open_source(synth_root)
    assert source.list_shards("val") == [
        "majortom_shard_000001.tar",
        "majortom_shard_000002.tar",
        "ssl4eos12_shard_000003.tar",
    ]
    results = read_all(source, metadata=source.read_metadata("val"))
    assert errors_of(results) == []
    expected = expected_datasets()
    got = samples_of(results)
    assert [s.key for s in got] == list(expected)
    for s in got:
        assert sorted(s.modalities) == sorted(expected[s.key])
        assert s.split == "val" and s.shard.endswith(".tar") and s.metadata["key"] == s.key
        for m, ds in s.modalities.items():
            assert_same(ds, expected[s.key][m])


def test_repeated_decoding_is_stable(synth_root):
    """The format notes saw 1 failure in ~30 opens with another read path: open many times."""
    with tarfile.open(synth_root / "val" / "S2L2A" / SHARD) as tf:
        members = [tf.extractfile(m).read() for m in tf.getmembers()]
    first = [decode_zarr_zip(b)["bands"].values for b in members]
    for n in range(32):
        ds = decode_zarr_zip(members[n % len(members)])
        np.testing.assert_array_equal(ds["bands"].values, first[n % len(members)])


def test_modalities_subset(synth_root):
    source = open_source(synth_root)
    got = samples_of(read_all(source, modalities=("S2RGB", "S1GRD", "S1RTC")))
    assert len(got) == 12
    for s in got:
        assert sorted(s.modalities) == sorted({"S2RGB", "S1RTC" if s.source == "majortom" else "S1GRD"})


def test_metadata_normalised(synth_root):
    rows = read_metadata(synth_root / "val_metadata.parquet")
    assert len(rows) == 12
    r = rows["majortom_val_0000001"]
    assert r["tar"] == SHARD and r["split"] == "val" and isinstance(r["crs"], int)
    assert len(r["bounds"]) == 4 and all(isinstance(v, float) for v in r["bounds"])
    assert isinstance(r["geometry"], shapely.Polygon)
    assert r["S2_time"].tzinfo is not None and str(r["S2_time"].tz) == "UTC"
    assert 0 <= r["cloud_cover"] <= 100
    only = read_metadata(synth_root / "val_metadata.parquet", shard="ssl4eos12_shard_000003.tar")
    assert sorted(only) == [k for k in rows if k.startswith("ssl4eos12")]


def test_metadata_variants_normalise_the_same(synth_root, tmp_path):
    rows = read_metadata(synth_root / "val_metadata.parquet")
    base = [{**r, "zarr": f"{k}.zarr.zip"} for k, r in rows.items()]
    write_metadata(base, tmp_path / "v.parquet", geometry_as="wkt", bounds_as="string", cloud_cover_as="fraction")
    assert pq.read_table(tmp_path / "v.parquet").schema.field("geometry").type == "string"
    again = read_metadata(tmp_path / "v.parquet")
    for k, r in rows.items():
        a = again[k]
        assert a["bounds"] == r["bounds"]
        assert a["geometry"].equals_exact(r["geometry"], 1e-9)
        assert a["cloud_cover"] == pytest.approx(r["cloud_cover"])
        assert a["S2_time"] == r["S2_time"] and a["crs"] == r["crs"]


# --- tolerance: sample encodings --------------------------------------------------------------


def _small_variant(tmp_path, **kw):
    root = tmp_path / "variant"
    synth.generate(root, shards=1, samples_per_shard=2, seed=5, **kw)
    return root, expected_datasets(
        shards=1, samples_per_shard=2, seed=5, **{k: v for k, v in kw.items() if k in ("scalar_shape", "cloud_mask")}
    )


@pytest.mark.parametrize(
    "variant",
    [{"deflate": True}, {"scalar_shape": (1,)}, {"cloud_mask": False}],
    ids=["deflated-zip", "metadata-shape-1", "no-cloud-mask"],
)
def test_encoding_variants(tmp_path, variant):
    root, expected = _small_variant(tmp_path, **variant)
    results = read_all(open_source(root))
    assert errors_of(results) == []
    got = samples_of(results)
    assert [s.key for s in got] == list(expected)
    for s in got:
        for m, ds in s.modalities.items():
            assert_same(ds, expected[s.key][m])
            if variant.get("scalar_shape") == (1,):
                assert ds["crs"].shape == (1,) and isinstance(sample_scalar(ds, "crs"), int)
    if variant.get("deflate"):
        with tarfile.open(root / "val" / "DEM" / SHARD) as tf:
            data = tf.extractfile(tf.getmembers()[0]).read()
        assert {i.compress_type for i in zipfile.ZipFile(io.BytesIO(data)).infolist()} == {zipfile.ZIP_DEFLATED}


def _members_of(root):
    for tar_path in sorted(root.glob("*/*/*.tar")):
        with tarfile.open(tar_path) as tf:
            for member in tf.getmembers():
                yield tar_path.parent.name, member.name, tf.extractfile(member).read()


@pytest.mark.parametrize(
    "variant",
    [None, {"deflate": True}, {"scalar_shape": (1,)}, {"cloud_mask": False}],
    ids=["generated", "deflated-zip", "metadata-shape-1", "no-cloud-mask"],
)
def test_direct_decode_equals_the_xarray_reading(synth_root, tmp_path, variant):
    """decode_zarr_zip (numcodecs straight from the metadata, then xarray's CF decoding) and
    read_arrays (the raw arrays) against decode_zarr_zip_with_zarr (zarr 3 + xarray's
    open_zarr), on every modality and sample kind: the same Dataset (variables, coordinates,
    attributes, dtypes), pixel bytes bit for bit (float16 NaN payloads included), and the
    raw time (DEM's 0)."""
    from tests.official_loader import array_digest

    root = synth_root if variant is None else _small_variant(tmp_path, **variant)[0]
    seen = set()
    for modality, name, data in _members_of(root):
        fast, ds, direct = read_arrays(data, LOADER_ARRAYS), decode_zarr_zip_with_zarr(data), decode_zarr_zip(data)
        xr.testing.assert_identical(direct, ds)
        assert {v: direct[v].dtype for v in direct.variables} == {v: ds[v].dtype for v in ds.variables}
        assert set(direct.coords) == set(ds.coords) and direct.attrs == ds.attrs
        for array in ("bands", "cloud_mask", "x", "y"):
            if array in ds:
                assert array_digest(direct[array].values) == array_digest(ds[array].values), (modality, name)
        for array in ("bands", "cloud_mask"):
            assert (array in fast) == (array in ds), (modality, name, array)
            if array in ds:
                assert fast[array].dtype == ds[array].dtype and fast[array].shape == ds[array].shape
                assert array_digest(fast[array]) == array_digest(ds[array].values), (modality, name, array)
        for scalar in ("center_lon", "center_lat"):
            assert fast[scalar].shape == ds[scalar].shape and fast[scalar].item() == sample_scalar(ds, scalar)
        t, raw = sample_time(ds), int(fast["time"].reshape(-1)[0])
        assert raw <= NO_TIME_THRESHOLD if t is None else raw == t.astype("int64")
        seen.add(modality)
    with_members = {p.parent.name for p in root.glob("*/*/*.tar") if tarfile.open(p).getmembers()}
    assert seen == with_members
    if variant is None:
        assert seen == {"S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC"}


def test_corrupt_bytes_raise_clear_errors(synth_root):
    with tarfile.open(synth_root / "val" / "S2RGB" / SHARD) as tf:
        good = tf.extractfile(tf.getmembers()[0]).read()
    for bad, why in [
        (b"not a zip at all", "not a readable zip"),
        (good[: len(good) // 2], "zip"),
        (_zip_without(good, ".zmetadata"), ".zmetadata"),
        (_zip_without(good, "bands/0.0.0.0"), "chunk bands/0.0.0.0 missing"),
        (_zip_without(good, "bands/0.0.0.0", b"\0" * 64), "unreadable"),
    ]:
        for decode in (decode_zarr_zip, decode_zarr_zip_with_zarr):
            with pytest.raises(CorruptSampleError, match=why) as e:
                decode(bad)
            assert isinstance(e.value, ValueError) and e.value.reason
        if "missing" not in why:  # read_arrays reads a missing chunk as zarr 2 does: fill values
            with pytest.raises(CorruptSampleError):
                read_arrays(bad, LOADER_ARRAYS)


def _zip_without(data, name, replacement=None):
    """The zip without entry `name`, or with its bytes replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for i in zin.infolist():
            if i.filename != name:
                zout.writestr(i, zin.read(i))
            elif replacement is not None:
                zout.writestr(i, replacement)
    return out.getvalue()


def test_dem_time_zero_is_no_time(synth_root):
    with tarfile.open(synth_root / "val" / "DEM" / SHARD) as tf:
        data = tf.extractfile(tf.getmembers()[0]).read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert np.frombuffer(_blosc_decode(z.read("time/0")), "<i8")[0] == 0
    assert np.isnat(decode_zarr_zip(data)["time"].values[0])


def _blosc_decode(b):
    import numcodecs

    return numcodecs.Blosc().decode(b)


def test_encode_decode_round_trip_keeps_time(synth_root):
    with tarfile.open(synth_root / "val" / "S1RTC" / SHARD) as tf:
        ds = decode_zarr_zip(tf.extractfile(tf.getmembers()[0]).read())
    again = decode_zarr_zip(encode_zarr_zip(ds))
    assert_same(again, ds)


# --- tolerance: shards ----------------------------------------------------------------------


def test_truncated_tar_reported_rest_goes_on(tree):
    path = tree / "val" / "S2L1C" / SHARD
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut inside the second or third member
    results = list(iter_samples(open_source(tree), "val", SHARD))
    got = samples_of(results)
    assert [s.key for s in got] == [f"majortom_val_{i:07d}" for i in range(1, 5)]
    assert "S2L1C" in got[0].modalities and "S2L1C" not in got[-1].modalities
    assert all(len(s.modalities) >= 6 for s in got)
    # one error per sample that lost S2L1C, with its key, each right before its sample
    lost = [s.key for s in got if "S2L1C" not in s.modalities]
    errs = errors_of(results)
    assert [e.key for e in errs] == lost and {e.modality for e in errs} == {"S2L1C"}
    assert len({e.reason for e in errs}) == 1 and errs[0].reason.startswith("tar unreadable after majortom_val_")
    for e in errs:
        i = results.index(e)
        assert isinstance(results[i + 1], Sample) and results[i + 1].key == e.key


def test_every_tar_cut_at_the_same_sample_names_the_rest_from_the_metadata(tree):
    for path in sorted((tree / "val").glob(f"*/{SHARD}")):
        with tarfile.open(path) as tf:
            second = tf.getmembers()[1]
        path.write_bytes(path.read_bytes()[: second.offset_data + second.size // 2])
    source = open_source(tree)
    results = list(iter_samples(source, "val", SHARD, metadata=source.read_metadata("val", shard=SHARD)))
    got = samples_of(results)
    keys = [f"majortom_val_{i:07d}" for i in range(1, 5)]
    assert [s.key for s in got] == keys  # the last three known from the metadata only
    assert len(got[0].modalities) == 7 and all(not s.modalities for s in got[1:])
    errs = errors_of(results)
    modalities = set(got[0].modalities)
    assert sorted((e.key, e.modality) for e in errs) == sorted((k, m) for k in keys[1:] for m in modalities)
    assert all(e.reason.startswith("tar unreadable after majortom_val_0000001.zarr.zip") for e in errs)


def test_corrupt_and_foreign_members(tree):
    def damage(members):
        (n0, d0), *rest = members
        return [(n0, d0[:100] + b"\0" * (len(d0) - 100)), ("README.json", b"{}"), *rest]

    rewrite_tar(tree / "val" / "NDVI" / SHARD, damage)
    results = list(iter_samples(open_source(tree), "val", SHARD))
    errs = errors_of(results)
    reasons = {(e.key, e.modality, e.reason.split(":")[0]) for e in errs}
    assert reasons == {("majortom_val_0000001", "NDVI", "corrupt member"), ("README", "NDVI", "not a zarr.zip member")}
    got = samples_of(results)
    assert len(got) == 4 and "NDVI" not in got[0].modalities and "NDVI" in got[1].modalities
    # the errors of a key come right before its sample
    i = next(n for n, r in enumerate(results) if isinstance(r, SampleError) and r.reason.startswith("corrupt"))
    assert isinstance(results[i + 1], Sample) and results[i + 1].key == "majortom_val_0000001"


def test_missing_sample_and_keys_out_of_order(tree):
    # LULC: sample 2 missing; S1RTC: samples 3 and 4 swapped
    rewrite_tar(tree / "val" / "LULC" / SHARD, lambda ms: [m for m in ms if "0000002" not in m[0]])
    rewrite_tar(tree / "val" / "S1RTC" / SHARD, lambda ms: [ms[0], ms[1], ms[3], ms[2]])
    results = list(iter_samples(open_source(tree), "val", SHARD))
    errs = {(e.key, e.modality): e.reason for e in errors_of(results)}
    assert set(errs) == {("majortom_val_0000002", "LULC"), ("majortom_val_0000003", "S1RTC")}
    assert "missing" in errs[("majortom_val_0000002", "LULC")]
    assert "order" in errs[("majortom_val_0000003", "S1RTC")]
    got = {s.key: s for s in samples_of(results)}
    assert sorted(got) == [f"majortom_val_{i:07d}" for i in range(1, 5)]
    assert "LULC" not in got["majortom_val_0000002"].modalities
    assert all(len(s.modalities) == 7 for k, s in got.items() if k != "majortom_val_0000002")
    expected = expected_datasets()
    for k in ("majortom_val_0000003", "majortom_val_0000004"):  # matched by key, not position
        assert_same(got[k].modalities["S1RTC"], expected[k]["S1RTC"])


def test_extra_key_in_one_modality(tree):
    def add(members):
        name, data = members[-1]
        return [*members, ("majortom_val_0009999.zarr.zip", data)]

    rewrite_tar(tree / "val" / "DEM" / SHARD, add)
    results = list(iter_samples(open_source(tree), "val", SHARD))
    got = samples_of(results)
    assert got[-1].key == "majortom_val_0009999" and sorted(got[-1].modalities) == ["DEM"]
    missing = [e for e in errors_of(results) if e.key == "majortom_val_0009999"]
    assert {e.modality for e in missing} == {"S2L1C", "S2L2A", "S2RGB", "S1RTC", "NDVI", "LULC"}


def test_missing_modality_tar_reported_per_sample(tree):
    (tree / "val" / "NDVI" / SHARD).unlink()
    results = list(iter_samples(open_source(tree), "val", SHARD))
    errs = errors_of(results)
    assert [(e.key, e.modality) for e in errs] == [(f"majortom_val_{i:07d}", "NDVI") for i in range(1, 5)]
    assert all(e.reason == "modality tar missing for this shard" for e in errs)
    got = samples_of(results)
    assert len(got) == 4 and all(
        sorted(s.modalities) == ["DEM", "LULC", "S1RTC", "S2L1C", "S2L2A", "S2RGB"] for s in got
    )


def test_missing_metadata_row_gives_none(tree):
    path = tree / "val_metadata.parquet"
    df = pd.read_parquet(path)
    df[df["zarr"] != "majortom_val_0000003.zarr.zip"].to_parquet(path, index=False)
    source = open_source(tree)
    md = source.read_metadata("val")
    got = {s.key: s for s in samples_of(iter_samples(source, "val", SHARD, metadata=md))}
    assert got["majortom_val_0000003"].metadata is None
    assert got["majortom_val_0000001"].metadata["key"] == "majortom_val_0000001"
    path.unlink()
    assert open_source(tree).read_metadata("val") is None


# --- sources ----------------------------------------------------------------------------------


def test_hub_urls_and_revision():
    loc = parse_hub_url("https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/resolve/refs%2Fpr%2F7/")
    assert loc == HubLocation("https://huggingface.co", "ibm-esa-geospatial/TerraMesh", "refs/pr/7")
    assert hub_tree_url(loc, "val/S2L2A") == (
        "https://huggingface.co/api/datasets/ibm-esa-geospatial/TerraMesh/tree/refs%2Fpr%2F7/val/S2L2A"
    )
    assert hub_tree_url(loc, "val/S2L2A", cursor="abc=").endswith("/val/S2L2A?cursor=abc%3D")
    assert parse_hub_tree(
        [
            {"type": "file", "path": "val/S2L2A/majortom_shard_000001.tar", "size": 1},
            {"type": "directory", "path": "val/S2L2A/sub"},
            {"type": "file", "path": "val/S2L2A/.gitattributes"},
        ]
    ) == ["majortom_shard_000001.tar"]
    assert (
        next_page_url('<https://huggingface.co/api/x?cursor=Z>; rel="next"') == "https://huggingface.co/api/x?cursor=Z"
    )
    assert next_page_url(None) is None
    src = open_source("https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/resolve/main/")
    assert src.revision == "main" and src.hub.repo == "ibm-esa-geospatial/TerraMesh"
    assert (
        open_source(
            "https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/resolve/main", revision="abc123"
        ).revision
        == "abc123"
    )
    assert src.shard_url("val", "S2L2A", SHARD) == (
        "https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/resolve/main/val/S2L2A/" + SHARD
    )
    assert open_source("/tmp").revision is None
    assert open_source("/tmp", revision="2026-03-06").revision == "2026-03-06"


def _same_as_local(source, synth_root):
    local = samples_of(read_all(open_source(synth_root)))
    results = read_all(source, metadata=source.read_metadata("val"))
    assert errors_of(results) == []
    remote = samples_of(results)
    assert [s.key for s in remote] == [s.key for s in local]
    for a, b in zip(remote, local):
        assert a.metadata is not None and a.metadata["key"] == a.key
        for m in b.modalities:
            assert_same(a.modalities[m], b.modalities[m])


def test_https_source(http_server, synth_root):
    source = open_source(http_server + "/")
    assert source.list_shards("val") == open_source(synth_root).list_shards("val")  # via the parquet
    with source.open_shard("val", "DEM", SHARD) as f:
        assert len(f.read(512)) == 512  # streamed, tar header first
    with pytest.raises(FileNotFoundError):
        source.open_shard("val", "S1GRD", SHARD)
    _same_as_local(source, synth_root)
    with pytest.raises(FileNotFoundError):  # no parquet, not a Hub URL: cannot list
        open_source(http_server + "/val/").list_shards("x")


def test_s3_source(s3_server, synth_root):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("terramesh-reader")
    fs.put(str(synth_root) + "/", "terramesh-reader/TerraMesh/", recursive=True)
    source = open_source("s3://terramesh-reader/TerraMesh", endpoint_url=s3_server, revision="r1")
    assert source.revision == "r1"
    assert source.list_shards("val") == open_source(synth_root).list_shards("val")
    _same_as_local(source, synth_root)
