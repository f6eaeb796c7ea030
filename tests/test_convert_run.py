"""The Dask conversion run: parallel = single worker, kill and resume, revisions, publishing.

Real Dask LocalClusters (worker processes), real files, the moto S3 server and the embedded
pgstac; the CLI runs as a user runs it when a test is about what a user sees.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
import rasterio

from terramesh_stac.converters.layout import manifest_path, revision_path
from terramesh_stac.converters.pipeline import ConvertOptions
from terramesh_stac.converters.run import WORKER_ENV, convert, start_client
from terramesh_stac.converters.synth import generate
from terramesh_stac.converters.zarrzip import decode_zarr_zip
from tests.conftest import read_items, rewrite_member

SHARDS, PER_SHARD = 4, 3


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """4 shards x 3 generated samples (Major TOM and SSL4EO-S12 shards)."""
    root = tmp_path_factory.mktemp("run-source")
    generate(root, split="val", shards=SHARDS, samples_per_shard=PER_SHARD, seed=7)
    return root


@pytest.fixture(scope="module")
def client(s3_server):
    """A 2-worker LocalCluster for the module (started after the S3 credentials are set,
    so the worker processes inherit them)."""
    c = start_client(workers=2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def tree(root: Path, skip=("reports",)) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root, minus run reports (timings)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel.split("/", 1)[0] not in skip:
            out[rel] = p.read_bytes()
    return out


def normalised(files: dict[str, bytes], root: Path) -> dict[str, bytes]:
    """Item, collection and manifest JSON name the destination folder: make it neutral.
    A manifest's hash of its items file (whose hrefs name the folder) is checked here and
    left out of the comparison."""
    out = {}
    for rel, data in files.items():
        if rel.startswith("manifests/"):
            manifest = json.loads(data)
            items_file = (root / manifest["items"]["path"]).read_bytes()
            assert manifest["items"].pop("sha256") == hashlib.sha256(items_file).hexdigest(), rel
            data = json.dumps(manifest, sort_keys=True).encode()
        out[rel] = data.replace(str(root).encode(), b"<DEST>")
    return out


def _environment_at_start() -> dict[str, str]:
    """The worker process's environment as it was exec'd: what glibc's allocator read."""
    pairs = Path("/proc/self/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_workers_start_with_the_allocator_settings(client):
    # glibc reads MALLOC_* once at process start: set later (os.environ, Dask's
    # nanny.environ) they change nothing, and Dask's own MALLOC_TRIM_THRESHOLD_=65536 made a
    # worker convert at ~0.5-0.7x a plain process's speed (benchmarks/conversion.py (g))
    for env in client.run(_environment_at_start).values():
        assert {k: env.get(k) for k in WORKER_ENV} == WORKER_ENV


def test_parallel_run_equals_single_worker_run(source, client, tmp_path):
    one = start_client(workers=1)
    try:
        single = convert(str(source), ConvertOptions(dest=str(tmp_path / "one")), client=one)
    finally:
        cluster = one.cluster
        one.close()
        cluster.close()
    parallel = convert(str(source), ConvertOptions(dest=str(tmp_path / "two")), client=client)

    assert single.workers == 1 and parallel.workers == 2
    assert single.items == parallel.items == SHARDS * PER_SHARD and not parallel.errors
    a = normalised(tree(tmp_path / "one"), tmp_path / "one")
    b = normalised(tree(tmp_path / "two"), tmp_path / "two")
    assert sorted(a) == sorted(b)
    # the COG encoder, items, index and manifests are deterministic: same bytes everywhere
    different = [k for k in a if a[k] != b[k]]
    assert different == []
    assert len([k for k in a if k.endswith(".tif")]) >= SHARDS * PER_SHARD * 7
    # and the pixels equal the source (one sample, all modalities)
    key, shard_items = next(iter(read_items(tmp_path / "two").items()))
    shard = shard_items["properties"]["terramesh:shard"]
    for modality in ("S2L2A", "S1RTC", "S1GRD", "DEM"):
        tar_path = source / "val" / modality / shard
        if not tar_path.exists():
            continue
        with tarfile.open(tar_path) as tar:
            ds = decode_zarr_zip(tar.extractfile(f"{key}.zarr.zip").read())
        with rasterio.open(tmp_path / "two" / "assets" / key / f"{modality}.tif") as r:
            np.testing.assert_array_equal(r.read(), ds["bands"].values[0].astype(r.dtypes[0]))


def test_run_to_s3_and_second_run_skips_everything(source, client, s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="run")
    options = ConvertOptions(dest="s3://run/out", s3_endpoint_url=s3_server)
    first = convert(str(source), options, client=client)
    assert first.items == SHARDS * PER_SHARD and not first.errors
    assert not any(s.skipped for s in first.shards)
    store = options.store()
    manifests = store.glob("manifests/val/*.json")
    assert len(manifests) == SHARDS
    before = {p: store.fs.info(store.path(p))["LastModified"] for p in store.glob("assets/*/*")}

    second = convert(str(source), options, client=client)
    assert all(s.skipped for s in second.shards) and second.items == first.items
    after = {p: store.fs.info(store.path(p))["LastModified"] for p in store.glob("assets/*/*")}
    assert after == before  # nothing rewritten


def _run_cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "terramesh_stac.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **kw,
    )


def _count_db(dsn, collection):
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, count(*) FROM pgstac.items WHERE collection = %s GROUP BY id", (collection,)
        ).fetchall()
    return dict(rows)


@pytest.mark.subprocess
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_and_resume_converges_to_the_uninterrupted_state(source, tmp_path, pgstac_db, seed):
    """kill -9 of the whole run (client and workers) at seeded random moments, then a run to
    the end: the destination and pgstac equal what one uninterrupted run gives."""
    collection = f"kill-{seed}"
    reference = tmp_path / "reference"
    ref = convert(str(source), ConvertOptions(dest=str(reference), collection_id=collection), workers=2)
    assert not ref.errors

    dest = tmp_path / "killed"
    args = [
        "convert",
        source,
        "--dest",
        dest,
        "--collection",
        collection,
        "--workers",
        2,
        "--quiet",
        "--load",
        "--dsn",
        pgstac_db.loader,
    ]
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        proc = _run_cli(args)
        delay = rng.uniform(2.0, 14.0)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    proc = _run_cli(args)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    assert kills >= 1, "no run was killed: the delays are too long for this machine"

    got = normalised(tree(dest, skip=("reports", "published")), dest)
    want = normalised(tree(reference), reference)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    assert (
        not list(dest.rglob(".tmp-*")) and not (dest / ".staging").exists() or not any((dest / ".staging").rglob("*"))
    )
    # pgstac: every item exactly once
    assert _count_db(pgstac_db.admin, collection) == {i: 1 for i in read_items(reference)}


def test_killed_worker_is_replaced_and_the_result_is_the_same(source, tmp_path):
    """kill -9 of one worker process in the middle of the run: the scheduler runs its shard
    again elsewhere; the result equals an undisturbed run."""
    import threading

    reference = tmp_path / "reference"
    ref = convert(str(source), ConvertOptions(dest=str(reference)), workers=1)
    work_seconds = sum(s.seconds for s in ref.shards)  # on 2 workers: about half of it
    client = start_client(workers=2)
    try:
        pids = list(client.run(os.getpid).values())
        victim = random.Random(3).choice(pids)
        killed_at = []
        killer = threading.Timer(
            0.25 * work_seconds, lambda: (os.kill(victim, signal.SIGKILL), killed_at.append(time.monotonic()))
        )
        killer.start()
        report = convert(str(source), ConvertOptions(dest=str(tmp_path / "out")), client=client)
        finished_at = time.monotonic()
        killer.join()
        assert killed_at and killed_at[0] < finished_at, "the worker was not killed during the run"
        assert victim not in client.run(os.getpid).values()
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert report.items == SHARDS * PER_SHARD and not report.errors
    got = normalised(tree(tmp_path / "out"), tmp_path / "out")
    want = normalised(tree(reference), reference)
    assert sorted(got) == sorted(want) and [k for k in want if got[k] != want[k]] == []


@pytest.mark.subprocess
def test_new_revision_updates_exactly_its_shard_and_keeps_superseded_assets(source, client, tmp_path, pgstac_db):
    from terramesh_stac.catalog.loader import Publisher

    src = tmp_path / "src"
    shutil.copytree(source, src)
    dest = tmp_path / "out"
    options = ConvertOptions(dest=str(dest), collection_id="revisions")
    store = options.store()

    def run():
        with Publisher(pgstac_db.loader, store) as publisher:
            return convert(str(src), options, client=client, publisher=publisher)

    first = run()
    assert not first.errors
    items = read_items(dest)
    shards = sorted({i["properties"]["terramesh:shard"] for i in items.values()})
    changed_shard, other_shard = shards[0], shards[1]
    keys = sorted(k for k, i in items.items() if i["properties"]["terramesh:shard"] == changed_shard)
    moved_key = keys[0]
    old_manifest = json.loads((dest / manifest_path("val", changed_shard)).read_text())
    other_manifest = (dest / manifest_path("val", other_shard)).read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (dest / "assets").rglob("*.tif")}
    old_dem = (dest / "assets" / moved_key / "DEM.tif").read_bytes()
    # pgstac keys (and partitions) an item by its datetime (items have no start_datetime)

    def partition_time(item):
        return item["properties"]["datetime"][:19]

    old_datetime = partition_time(items[moved_key])

    # the new revision: every DEM of the shard +1 m; one sample's acquisitions 40 days later
    def plus_one(ds):
        ds["bands"] = ds["bands"] + 1
        return ds

    def later(ds):
        return ds.assign_coords(time=ds["time"] + pd.Timedelta(days=40))

    for key in keys:
        rewrite_member(src / "val" / "DEM" / changed_shard, key, plus_one)
    for tar_path in sorted((src / "val").glob(f"*/{changed_shard}")):
        if tar_path.parent.name != "DEM":  # DEM has no acquisition time
            rewrite_member(tar_path, moved_key, later)

    second = run()
    assert not second.errors
    by_shard = {s.shard: s for s in second.shards}
    assert by_shard[other_shard].skipped and not by_shard[changed_shard].skipped
    assert (dest / manifest_path("val", other_shard)).read_bytes() == other_manifest

    new_manifest = json.loads((dest / manifest_path("val", changed_shard)).read_text())
    new_items = read_items(dest)
    for key in keys:  # the new revision is recorded on every item of the shard
        assert new_items[key]["properties"]["terramesh:revision"] == new_manifest["revision"]
        assert new_manifest["revision"] != old_manifest["revision"]
    # exactly the changed assets were rewritten: the DEMs, and the re-dated sample's S2 assets
    rewritten = {p.relative_to(dest / "assets").as_posix() for p, t in mtimes.items() if p.stat().st_mtime_ns != t}
    expected = {f"{k}/DEM.tif" for k in keys}
    assert expected <= rewritten
    assert all(r.split("/")[0] == moved_key or r.endswith("DEM.tif") for r in rewritten), rewritten
    # the superseded DEM stays readable at its revision path, byte for byte
    kept = dest / revision_path(old_manifest["content_id"], f"assets/{moved_key}/DEM.tif")
    assert kept.read_bytes() == old_dem
    assert (dest / "assets" / moved_key / "DEM.tif").read_bytes() != old_dem
    assert revision_path(old_manifest["content_id"], f"assets/{moved_key}/DEM.tif") in new_manifest["superseded"]

    # pgstac: the moved item is there once, at its new datetime
    assert partition_time(new_items[moved_key]) != old_datetime
    with psycopg.connect(pgstac_db.admin) as conn:
        rows = conn.execute(
            "SELECT datetime, content->'properties'->>'terramesh:revision' FROM pgstac.items "
            "WHERE collection = 'revisions' AND id = %s",
            (moved_key,),
        ).fetchall()
    assert len(rows) == 1
    assert rows[0][0].isoformat()[:19] == partition_time(new_items[moved_key])
    assert rows[0][1] == new_manifest["revision"]
    assert _count_db(pgstac_db.admin, "revisions") == {i: 1 for i in new_items}

    # prune deletes the superseded copies and nothing current
    proc = subprocess.run([sys.executable, "-m", "terramesh_stac.cli", "prune", dest], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not kept.exists()
    assert json.loads((dest / manifest_path("val", changed_shard)).read_text())["superseded"] == {}
    assert len(list((dest / "assets").rglob("*.tif"))) == len(mtimes)


def test_transient_http_errors_are_retried(source, client, tmp_path):
    """A server answering 503 to the first request of a tar: the shard is retried and complete."""
    from tests.conftest import serve_flaky_directory

    url, stop, failed = serve_flaky_directory(source, fail_first=("val/DEM/",))
    try:
        report = convert(url + "/", ConvertOptions(dest=str(tmp_path / "out")), client=client, max_shards=2)
    finally:
        stop()
    assert failed, "the server never failed a request"
    assert report.items == 2 * PER_SHARD and not report.errors
    assert any(s.retries for s in report.shards)
    assert all("503" in r or "Service Unavailable" in r for s in report.shards for r in s.retries)


def test_a_sample_dropped_by_a_new_revision_is_unpublished_and_its_assets_retired(source, client, tmp_path, pgstac_db):
    from terramesh_stac.catalog.loader import Publisher

    src = tmp_path / "src"
    shutil.copytree(source, src)
    dest = tmp_path / "out"
    options = ConvertOptions(dest=str(dest), collection_id="dropped")

    def run():
        with Publisher(pgstac_db.loader, options.store()) as publisher:
            return convert(str(src), options, client=client, publisher=publisher)

    first = run()
    items = read_items(dest)
    shard = sorted({i["properties"]["terramesh:shard"] for i in items.values()})[-1]
    dropped = sorted(k for k, i in items.items() if i["properties"]["terramesh:shard"] == shard)[1]
    old = json.loads((dest / manifest_path("val", shard)).read_text())
    old_assets = sorted(p.name for p in (dest / "assets" / dropped).iterdir())
    for tar_path in sorted((src / "val").glob(f"*/{shard}")):
        rewrite_member(tar_path, dropped, None)
    # and from the metadata: a row of a sample no tar holds is reported (a sample lost)
    metadata = src / "val_metadata.parquet"
    rows = pd.read_parquet(metadata)
    rows[rows["zarr"] != f"{dropped}.zarr.zip"].to_parquet(metadata, index=False)

    second = run()
    assert not first.errors and not second.errors
    assert second.items == first.items - 1
    new = json.loads((dest / manifest_path("val", shard)).read_text())
    assert new["items"]["removed"] == [dropped]
    assert dropped not in read_items(dest)
    assert _count_db(pgstac_db.admin, "dropped") == {i: 1 for i in read_items(dest)}
    # its assets are gone from their final names, kept at the old revision's path
    assert not (dest / "assets" / dropped).exists() or not any((dest / "assets" / dropped).iterdir())
    for name in old_assets:
        assert (dest / revision_path(old["content_id"], f"assets/{dropped}/{name}")).is_file(), name
