"""From search to training data (terramesh_stac.ml): `terramesh-stac subset create/show` run as a
user runs them against the test cluster, and the subset streamed through PyTorch DataLoaders
(2 workers x 2 simulated ranks) compared, array by array, with what the dataset card's loader
reads for the same keys (tests/official_loader.py in its zarr-2.18 venv)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import torch
import xarray as xr
from PIL import Image
from torch.utils.data import DataLoader

from terramesh_stac.converters import zarrstack
from terramesh_stac.converters.zarrzip import CorruptSampleError
from terramesh_stac.exits import EXIT_PARTIAL, EXIT_USAGE
from terramesh_stac.ml import SubsetDataset
from terramesh_stac.ml import subset as subsets
from tests.conftest import cluster_env, read_original, serve_with_cli
from tests.official_loader import array_digest, run_official
from tests.test_end_to_end import convert_and_load, run_cli

COLLECTION = "terramesh-ml"
FILTER = "\"terramesh:source\" = 'majortom' AND eo:cloud_cover < 60"


@pytest.fixture(scope="module")
def converted(synth_root, tmp_path_factory, pgstac_db):
    dest = tmp_path_factory.mktemp("ml") / "out"
    return dest, convert_and_load(synth_root, dest, COLLECTION, pgstac_db.loader)


@pytest.fixture(scope="module")
def loaded(converted):
    return converted[1]


@pytest.fixture(scope="module")
def subsets_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("subsets")


def _subset(pgstac_db, subsets_dir, *args, check=True):
    env = {
        **cluster_env(pgstac_db),
        "TERRAMESH_SUBSETS_DIR": str(subsets_dir),
        "TERRAMESH_COLLECTION_ID": COLLECTION,
    }
    return run_cli("subset", *args, env=env, check=check)


def _export(pgstac_db, subsets_dir, name: str, fmt: str, out, check=True):
    return _subset(pgstac_db, subsets_dir, "export", name, "--format", fmt, "--out", out, check=check)


@pytest.fixture(scope="module")
def majortom(loaded, pgstac_db, subsets_dir):
    proc = _subset(pgstac_db, subsets_dir, "create", "majortom-clear", "--filter", FILTER)
    return proc, subsets.read(subsets_dir / "majortom-clear.parquet")


def _wanted(items) -> list[str]:
    return sorted(
        i["id"]
        for i in items.values()
        if i["properties"]["terramesh:source"] == "majortom" and i["properties"]["eo:cloud_cover"] < 60
    )


def test_a_cql2_filter_makes_a_manifest_of_exactly_its_samples(loaded, majortom, subsets_dir, pgstac_db):
    proc, subset = majortom
    wanted = _wanted(loaded)
    assert 0 < len(wanted) < len(loaded)  # a real selection
    assert subset.rows.column("id").to_pylist() == wanted
    # every modality a Major TOM sample has (S1RTC, not S1GRD), each a byte range of its shard
    assert subset.modalities == ["S2L1C", "S2L2A", "S2RGB", "S1RTC", "DEM", "NDVI", "LULC"]
    for row in subset.rows.to_pylist():
        item = loaded[row["id"]]
        for m in subset.modalities:
            source = item["assets"][f"{m}_source"]
            assert row[f"{m}_href"] == source["href"] and row[f"{m}_offset"] == source["archive:start"]
            assert row[f"{m}_offset"] + row[f"{m}_size"] - 1 == source["archive:end"]
    meta = subset.meta
    assert meta["search"]["filter-lang"] == "cql2-json" and meta["search"]["collections"] == [COLLECTION]
    assert meta["catalog_revisions"][COLLECTION] >= 1
    assert meta["counts"]["source"] == {"majortom": len(wanted)}
    assert f"{len(wanted)} samples" in proc.stdout

    shown = _subset(pgstac_db, subsets_dir, "show", "majortom-clear")
    assert "per split: val" in shown.stdout
    with Image.open(subsets_dir / "majortom-clear.png") as picture:
        assert picture.size == subsets.THUMBNAIL_SIZE
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    drawn = int(((pixels[..., 0] > 190) & (pixels[..., 1] < 130)).sum())  # the sample cells
    assert 1 <= drawn <= len(wanted)


def on_two_ranks(dataset, monkeypatch):
    """Every sample of an epoch as 2 simulated ranks of DataLoader(num_workers=2) see it."""
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        yield from DataLoader(dataset, num_workers=2, batch_size=None)


def assert_is_the_loaders(sample: dict, official: dict, modalities: list[str], centre_to: float = 0) -> None:
    """Arrays, times, centre (to `centre_to` degree) and cloud mask as the official loader
    reads them for the key."""
    for m in modalities:
        rec = official[(m, sample["__key__"])]
        assert isinstance(sample[m], torch.Tensor)
        assert array_digest(sample[m].numpy()) == rec["bands"], (m, sample["__key__"])
        if rec["time"] is None:
            assert f"time_{m}" not in sample  # DEM: the loader leaves it out too
        else:
            assert int(sample[f"time_{m}"].reshape(-1)[0]) == rec["time"]
    first = official[(modalities[0], sample["__key__"])]
    assert abs(float(sample["center_lon"]) - first["center_lon"]) <= centre_to
    assert abs(float(sample["center_lat"]) - first["center_lat"]) <= centre_to
    assert array_digest(sample["cloud_mask"].numpy()[0]) == first["cloud_mask"]


def test_the_stream_is_the_official_loader_once_per_epoch_across_ranks_and_workers(majortom, synth_root, monkeypatch):
    _, subset = majortom
    official = {(r["modality"], r["key"]): r for r in run_official(synth_root)}
    dataset = SubsetDataset(subset, return_metadata=True, shuffle=True, seed=3, read_threads=2, prefetch=3)
    orders = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        keys = []
        for sample in on_two_ranks(dataset, monkeypatch):
            keys.append(sample["__key__"])
            if epoch == 0:
                assert_is_the_loaders(sample, official, subset.modalities)
        assert sorted(keys) == subset.rows.column("id").to_pylist()  # each sample exactly once
        orders.append(keys)
    assert orders[0] != orders[1]  # the epoch reshuffles


def test_the_cog_path_streams_the_loader_arrays_from_the_items_cogs(
    majortom, synth_root, tmp_path, monkeypatch, caplog
):
    """`read_from="cog"`: every modality's pixels and the cloud mask from the items' COGs are
    the loader's bit for bit (float16 included), the times the loader's, the centre the
    item's (1e-6 degree); once per epoch across ranks and workers. A truncated COG skips its
    sample only, logged with key and modality."""
    _, subset = majortom
    official = {(r["modality"], r["key"]): r for r in run_official(synth_root)}
    assert all(h.endswith("/cloud_mask.tif") for h in subset.rows.column("cloud_mask_cog").to_pylist())
    dataset = SubsetDataset(subset, return_metadata=True, shuffle=True, read_from="cog", block_size=4)
    keys = []
    for sample in on_two_ranks(dataset, monkeypatch):
        keys.append(sample["__key__"])
        assert_is_the_loaders(sample, official, subset.modalities, centre_to=1e-6)
        assert sample["S1RTC"].dtype == torch.float16 and sample["DEM"].dtype == torch.int16
    assert sorted(keys) == subset.rows.column("id").to_pylist()
    # two samples' S1RTC COGs cut short (in a copy of the manifest: the catalog stays whole):
    # one whose item still gives the full size (a short read), one without a size (undecodable)
    rows = subset.rows.to_pylist()
    for j, size in ((1, "kept"), (2, None)):
        broken = tmp_path / f"S1RTC-{j}.tif"
        broken.write_bytes(Path(rows[j]["S1RTC_cog"]).read_bytes()[:5000])
        rows[j]["S1RTC_cog"] = str(broken)
        rows[j]["S1RTC_cog_size"] = rows[j]["S1RTC_cog_size"] if size else None
    damaged = subsets.Subset(subset.name, pa.Table.from_pylist(rows, schema=subset.rows.schema), subset.meta)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with caplog.at_level("WARNING", logger="terramesh_stac.ml.dataset"):
        left = [s["__key__"] for s in SubsetDataset(damaged, ["DEM", "S1RTC"], read_from="cog")]
    assert left == [r["id"] for r in rows if r not in rows[1:3]]
    for j, reason in ((1, "5000 bytes, the item says"), (2, "undecodable COG")):
        assert any(rows[j]["id"] in r.message and "S1RTC" in r.message and reason in r.message for r in caplog.records)


@pytest.mark.parametrize("shuffle", [False, True])
def test_each_rank_reads_its_own_shards_and_every_sample_once(monkeypatch, shuffle):
    """The epoch's blocks are dealt in consecutive parts: a rank reads about 1/world of the
    shards (and opens only their Zarr stores), every sample once across the ranks, and the
    parts differ by less than a block. The order only needs a manifest's ids and tars."""
    per_shard = [37, 40, 40, 12, 40, 40, 33, 40, 40, 25, 40, 40]  # the subset's samples per shard
    tars = [f"s3://b/val/S2L2A/shard_{k:04d}.tar" for k, n in enumerate(per_shard) for _ in range(n)]
    rows = pa.table(
        {
            "id": [f"key{i:05d}" for i in range(len(tars))],
            "S2L2A_href": tars,
            "S2L2A_offset": list(range(len(tars))),
            "S2L2A_size": [1] * len(tars),
        }
    )
    dataset = SubsetDataset(subsets.Subset("dealt", rows, {"modalities": ["S2L2A"]}), shuffle=shuffle, block_size=8)
    world, seen = 4, []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        orders = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            orders.append(dataset.order())
        assert sorted(np.concatenate(orders).tolist()) == list(range(len(tars)))  # each sample once
        sizes = [len(o) for o in orders]
        assert max(sizes) - min(sizes) < 8 * 2  # a cut is within a block of its share
        for order in orders:
            assert len({tars[i] for i in order}) <= len(per_shard) // world + 2
        seen.append([o.tolist() for o in orders])
    assert (seen[0] != seen[1]) == shuffle  # a new order every epoch, only when shuffled


def test_without_metadata_the_sample_is_its_key_and_arrays(majortom):
    _, subset = majortom
    sample = next(iter(SubsetDataset(subset, modalities=["S2L2A", "DEM"])))
    assert set(sample) == {"__key__", "S2L2A", "DEM"}
    assert sample["S2L2A"].shape == (1, 12, 264, 264) and sample["DEM"].shape == (1, 1, 264, 264)


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "bad name!", "--filter", FILTER], "subset name"),
        (["create", "x", "--filter", "eo:cloud_cover <<< 3"], "is not CQL2 text"),
        (["create", "x", "--modalities", "S2L2A,S9"], "unknown modality 'S9'"),
        (["create", "x", "--bbox", "10,50,5,40"], "--bbox"),
        (["create", "majortom-clear", "--filter", FILTER], "exists"),
        (["show", "nothing-here"], "no subset at"),
    ],
)
def test_bad_subset_input_is_refused_with_a_message(majortom, pgstac_db, subsets_dir, args, message):
    proc = _subset(pgstac_db, subsets_dir, *args, check=False)
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_the_exported_subset_reads_through_the_official_loader_unchanged(
    majortom, synth_root, pgstac_db, subsets_dir, tmp_path
):
    _, subset = majortom
    out = tmp_path / "export"
    proc = _export(pgstac_db, subsets_dir, "majortom-clear", "webdataset", out)
    assert f"exported {len(subset)} samples" in proc.stdout
    source = {(r["modality"], r["key"]): r for r in run_official(synth_root)}
    exported = run_official(out)  # the loader's own calls, on every tar of the exported tree
    ids = subset.rows.column("id").to_pylist()
    assert sorted((r["modality"], r["key"]) for r in exported) == sorted((m, k) for m in subset.modalities for k in ids)
    for rec in exported:
        assert rec == source[(rec["modality"], rec["key"])]  # same arrays, times, names, shard
    for row in subset.rows.to_pylist():  # members copied byte for byte
        for m in ("S2L2A", "DEM"):
            with tarfile.open(out / "val" / m / row["shard"]) as tf:
                copied = tf.extractfile(f"{row['id']}.zarr.zip").read()
            with open(row[f"{m}_href"], "rb") as f:
                f.seek(row[f"{m}_offset"])
                assert copied == f.read(row[f"{m}_size"])
    metadata = pq.read_table(out / "val_metadata.parquet")
    assert sorted(metadata.column("zarr").to_pylist()) == [f"{k}.zarr.zip" for k in ids]
    again = _subset(pgstac_db, subsets_dir, "export", "majortom-clear", "--out", out, check=False)
    assert again.returncode == EXIT_USAGE and "not empty" in again.stderr


def test_a_sample_that_cannot_be_decoded_is_logged_and_skipped(majortom, caplog):
    _, subset = majortom
    broken_id = subset.rows.column("id")[1].as_py()
    sizes = subset.rows.column("S2L2A_size").to_pylist()
    sizes[1] //= 2  # half of its zip: a truncated sample
    rows = subset.rows.set_column(subset.rows.column_names.index("S2L2A_size"), "S2L2A_size", pa.array(sizes))
    broken = subsets.Subset(subset.name, rows, subset.meta)
    with caplog.at_level("WARNING", logger="terramesh_stac.ml.dataset"):
        keys = [s["__key__"] for s in SubsetDataset(broken, ["S2L2A", "DEM"])]
    assert keys == [k for k in subset.rows.column("id").to_pylist() if k != broken_id]  # the rest goes on
    assert any(broken_id in r.message and "S2L2A" in r.message and "zip" in r.message for r in caplog.records)
    with pytest.raises(CorruptSampleError, match=broken_id):  # on_error="raise" stops there
        list(SubsetDataset(broken, ["S2L2A"], on_error="raise"))


def test_through_the_stac_api_a_local_source_has_no_byte_ranges_to_give(converted, pgstac_db, subsets_dir):
    with serve_with_cli(pgstac_db, converted[0], TERRAMESH_COLLECTION_ID=COLLECTION) as base:
        proc = _subset(
            pgstac_db, subsets_dir, "create", "local-api", "--filter", FILTER, "--api", f"{base}/stac", check=False
        )
        bad = _subset(
            pgstac_db, subsets_dir, "create", "bad-api", "--filter", "nope = 1", "--api", f"{base}/stac", check=False
        )
    # the API leaves out the <MOD>_source assets of shards on the server's disk (links.py)
    assert proc.returncode == EXIT_USAGE and "no byte ranges" in proc.stderr, proc.stderr
    assert bad.returncode == EXIT_USAGE and "refused the search" in bad.stderr and "Traceback" not in bad.stderr


def test_a_subset_of_an_s3_source_through_the_stac_api_streams_from_s3(
    s3_server, synth_root, loaded, tmp_path_factory, pgstac_db, subsets_dir
):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("terramesh-ml")
    fs.put(str(synth_root) + "/", "terramesh-ml/TerraMesh/", recursive=True)
    dest, collection = tmp_path_factory.mktemp("ml-s3") / "out", "terramesh-ml-s3"
    s3 = {"TERRAMESH_S3_ENDPOINT_URL": s3_server}
    run_cli(
        "convert", "s3://terramesh-ml/TerraMesh", "--dest", dest, "--collection", collection, "--format", "ref", env=s3
    )
    run_cli("load", dest, "--dsn", pgstac_db.loader)
    with serve_with_cli(pgstac_db, dest, TERRAMESH_COLLECTION_ID=collection, **s3) as base:
        args = ("create", "s3-api", "--collections", collection, "--filter", FILTER, "--api", f"{base}/stac")
        proc = _subset(pgstac_db, subsets_dir, *args)
    subset = subsets.read(subsets_dir / "s3-api.parquet")
    assert subset.rows.column("id").to_pylist() == _wanted(loaded), proc.stdout
    assert subset.meta["api"] == f"{base}/stac" and subset.meta["catalog_revisions"][collection] >= 1
    assert all(
        h.startswith("s3://terramesh-ml/TerraMesh/val/S2L2A/") for h in subset.rows.column("S2L2A_href").to_pylist()
    )
    official = {(r["modality"], r["key"]): r for r in run_official(synth_root)}
    options = {"client_kwargs": {"endpoint_url": s3_server}}
    samples = list(SubsetDataset(subset, ["S2L2A", "DEM"], return_metadata=True, storage_options=options))
    assert [s["__key__"] for s in samples] == _wanted(loaded)
    for sample in samples:  # range reads from the S3-compatible server: the loader's arrays
        for m in ("S2L2A", "DEM"):
            assert array_digest(sample[m]) == official[(m, sample["__key__"])]["bands"]


def test_the_zarr_path_streams_the_loader_arrays_from_the_stacked_stores(
    synth_root, majortom, tmp_path_factory, pgstac_db, subsets_dir, monkeypatch, caplog
):
    """A catalog converted to Zarr: `read_from="zarr"` reads the samples' chunks and per-item
    arrays from the shards' stacked stores, and yields the official loader's arrays, once per
    epoch (blocks of 3 in stores of SAMPLES_PER_BLOCK: blocks that straddle pixel objects)."""
    dest, collection = tmp_path_factory.mktemp("ml-zarr") / "out", "terramesh-ml-zarr"
    run_cli("convert", synth_root, "--dest", dest, "--collection", collection, "--format", "zarr")
    run_cli("load", dest, "--dsn", pgstac_db.loader)
    _subset(pgstac_db, subsets_dir, "create", "zarr-all", "--collections", collection, "--modalities", "S2L2A,DEM")
    subset = subsets.read(subsets_dir / "zarr-all.parquet")
    assert all(h.endswith("/S2L2A.zarr-view.json") for h in subset.rows.column("S2L2A_zarr").to_pylist())
    assert all(h.endswith("/S2L2A.zarr") for h in subset.rows.column("S2L2A_zarr_stack").to_pylist())
    official = {(r["modality"], r["key"]): r for r in run_official(synth_root)}
    dataset = SubsetDataset(subset, return_metadata=True, shuffle=True, read_from="zarr", block_size=3)
    keys = []
    for sample in on_two_ranks(dataset, monkeypatch):
        keys.append(sample["__key__"])
        assert_is_the_loaders(sample, official, ["S2L2A", "DEM"])
    assert sorted(keys) == subset.rows.column("id").to_pylist()
    # a lost pixel object: its samples are logged with key and modality and skipped, the rest go on
    first = subset.rows.slice(0, 1).to_pylist()[0]
    lost = Path(first["DEM_zarr_stack"]) / "bands" / "c" / "0" / "0" / "0" / "0" / "0"
    lost.unlink()
    monkeypatch.setenv("RANK", "0")  # one process again
    monkeypatch.setenv("WORLD_SIZE", "1")
    gone = {r["id"] for r in subset.rows.to_pylist() if r["DEM_zarr_stack"] == first["DEM_zarr_stack"]}
    with caplog.at_level("WARNING", logger="terramesh_stac.ml.dataset"):
        left = [s["__key__"] for s in SubsetDataset(subset, ["S2L2A", "DEM"], read_from="zarr")]
    assert left == [k for k in subset.rows.column("id").to_pylist() if k not in gone]
    assert any(first["id"] in r.message and "DEM" in r.message for r in caplog.records)
    # a catalog without Zarr assets cannot be read from Zarr: said before any read
    with pytest.raises(subsets.SubsetError, match="no Zarr asset"):
        SubsetDataset(majortom[1], read_from="zarr")
    with pytest.raises(subsets.SubsetError, match="no COG asset"):  # and this one has no COGs
        SubsetDataset(subset, read_from="cog")


def test_the_zarr_export_stacks_each_modality_and_gives_back_every_sample(
    majortom, synth_root, pgstac_db, subsets_dir, tmp_path
):
    _, subset = majortom
    out = tmp_path / "zarr-export"
    proc = _export(pgstac_db, subsets_dir, "majortom-clear", "zarr", out)
    assert f"exported {len(subset)} samples into {len(subset.modalities)} Zarr stores" in proc.stdout
    for m in subset.modalities:
        stack = xr.open_dataset(out / f"{m}.zarr", engine="zarr")
        assert [str(i) for i in stack["item"].values] == subset.rows.column("id").to_pylist()
        for row in subset.rows.to_pylist():
            got = zarrstack.open_sample(str(out / f"{m}.zarr"), row["id"])
            want = read_original(synth_root, m, row["shard"], row["id"], tmp_path)
            xr.testing.assert_identical(got, want)
            assert got.rio.crs == want.rio.crs
    # a truncated sample: reported with its key and modality, left out, the rest exported, exit 3
    broken_id = subset.rows.column("id")[0].as_py()
    sizes = subset.rows.column("DEM_size").to_pylist()
    sizes[0] //= 2
    rows = subset.rows.set_column(subset.rows.column_names.index("DEM_size"), "DEM_size", pa.array(sizes))
    subsets.write(subsets.Subset("broken", rows, subset.meta), subsets_dir / "broken.parquet")
    proc = _export(pgstac_db, subsets_dir, "broken", "zarr", tmp_path / "b", check=False)
    assert proc.returncode == EXIT_PARTIAL, proc.stdout + proc.stderr
    assert f"left out: {broken_id} DEM:" in proc.stdout and "Traceback" not in proc.stderr
    dem = xr.open_dataset(tmp_path / "b" / "DEM.zarr", engine="zarr")
    assert [str(i) for i in dem["item"].values] == subset.rows.column("id").to_pylist()[1:]
