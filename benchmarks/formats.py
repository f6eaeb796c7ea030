"""Asset formats compared (issue 5): what each costs to store, and to read one sample from.

    .venv/bin/python benchmarks/formats.py [--shards 2] [--samples-per-shard 16] [--reads 9]

A TerraMesh-format tree is generated (converters.synth, seed 0) and converted with
`--format cog,ref` twice: local folder -> local folder, and moto S3 server -> the same
server (moto_server in its own process on 127.0.0.1). Then, per format:

(a) objects and bytes per 1,000 samples (the modality assets only: COG files, reference
    JSON files; the references copy nothing, the shards stay where they are);
(b) time to open one sample's S2L2A and read one band, and to read all its bands (median of
    --reads random samples): COG with rasterio (GDAL /vsis3/ on S3), references with
    xarray's kerchunk engine (range reads of the original tar);
(c) what users do today to get one sample from a shard: stream the tar from its start until
    the member (tarfile), vs one range request from the byte index (converters.byteindex),
    both decoded with converters.zarrzip; as a ratio.

Zarr (`--format zarr`) is not implemented yet: see benchmarks/zarr_layouts.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import fsspec
import rasterio
import xarray as xr
from _common import command_line, conditions, free_port, generate_source, loadavg, temp_dir

from converters.byteindex import fetch_member, read_index
from converters.layout import index_path
from converters.pipeline import ConvertOptions, convert_shard
from converters.source import open_source
from converters.zarrzip import decode_zarr_zip

MODALITY = "S2L2A"


def start_moto() -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            import urllib.request

            urllib.request.urlopen(url, timeout=1)
            return url, proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def median_ms(fn, args_list) -> float:
    times = []
    for args in args_list:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def items_of(store) -> list[dict]:
    return [json.loads(line) for path in store.glob("items/*/*.ndjson")
            for line in store.get(path).decode().splitlines() if line.strip()]


def asset_stats(items: list[dict], store, suffix: str) -> tuple[int, int]:
    """(objects, bytes) of the modality assets of `items` whose key ends with `suffix`."""
    n = size = 0
    for item in items:
        for key, asset in item["assets"].items():
            if key in ("cloud_mask", "thumbnail") or not key.endswith(suffix) or (suffix == "" and key.endswith("_ref")):
                continue
            n += 1
            size += asset["file:size"]
    return n, size


def cog_read(href: str, all_bands: bool) -> None:
    with rasterio.open(href) as r:
        r.read() if all_bands else r.read(1)


def ref_read(asset: dict, remote_options: dict, all_bands: bool) -> None:
    """As xpystac does: read the reference JSON, then open it with the kerchunk engine."""
    with fsspec.open(asset["href"], "rb", **remote_options) as f:
        refs = json.load(f)
    kwargs = json.loads(json.dumps(asset["xarray:open_kwargs"]))
    # a copy: the reference filesystem adds asynchronous=True to the dict it is given
    kwargs["storage_options"]["remote_options"] = dict(remote_options)
    ds = xr.open_dataset(refs, **kwargs)
    (ds["bands"].values if all_bands else ds["bands"][0, 0].values)


def scan_read(fs, tar_url: str, member: str) -> None:
    with fs.open(tar_url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            if m.name == member:
                decode_zarr_zip(tar.extractfile(m).read())
                return
    raise KeyError(member)


def range_read(row: dict, storage_options: dict) -> None:
    decode_zarr_zip(fetch_member(row, **storage_options))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--samples-per-shard", type=int, default=16)
    ap.add_argument("--reads", type=int, default=9, help="samples read per measurement (median)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(temp_dir("terramesh-bench-formats-"))
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    endpoint, moto = start_moto()
    try:
        src = work / "source"
        generate_source(str(src), args.shards, args.samples_per_shard)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        for p in src.rglob("*"):
            if p.is_file():
                s3.upload_file(str(p), "bench", f"source/{p.relative_to(src).as_posix()}")
        shards = open_source(str(src)).list_shards("val")
        tar_bytes = sum(p.stat().st_size for p in src.rglob("*.tar"))
        print(conditions(command_line(), [
            f"data: GENERATED (converters.synth, seed 0): {len(shards)} shards x {args.samples_per_shard} "
            f"samples, {tar_bytes / 1e6:.1f} MB of tars ({tar_bytes / 1e6 / len(shards):.1f} MB per shard "
            "per all modalities; real shards are ~1,000 samples, ~1.85 GB)",
            f"local: temp dir on the local disk; S3: moto_server (own process) at {endpoint}, same machine",
            f"reads: {MODALITY}, median over a disjoint set of random samples per measurement "
            f"(at most {args.reads}, at most a quarter of the samples), warm page cache",
        ]))
        results = {}
        for where, source_url, dest, options in (
            ("local", str(src), str(work / "dest"), {}),
            ("S3", "s3://bench/source", "s3://bench/dest", {"s3_endpoint_url": endpoint}),
        ):
            opts = ConvertOptions(dest=dest, formats=("cog", "ref"), **options)
            for shard in shards:
                convert_shard(source_url, "val", shard, opts)
            results[where] = (opts.store(), source_url)

        store, _ = results["local"]
        items = items_of(store)
        n = len(items)
        print()
        print("## (a) stored per 1,000 samples (modality assets only)")
        print()
        print("| format | objects | MB | vs source tars |")
        print("|---|---|---|---|")
        for label, suffix in (("COG (copies)", ""), ("references (no copy)", "_ref")):
            objects, size = asset_stats(items, store, suffix)
            print(f"| {label} | {objects * 1000 / n:,.0f} | {size * 1000 / n / 1e6:,.1f} | {size / tar_bytes:.3f}x |")

        rng = random.Random(0)
        print()
        print(f"## (b) one sample's {MODALITY}: open + read (ms, median)")
        print()
        print("| where | COG, one band | COG, all bands | references, one band | references, all bands | references / COG (all bands) |")
        print("|---|---|---|---|---|---|")
        gdal_env = dict(AWS_S3_ENDPOINT=endpoint.removeprefix("http://"), AWS_HTTPS="NO",
                        AWS_VIRTUAL_HOSTING="FALSE", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
        for where, (store, source_url) in reversed(results.items()):
            # disjoint samples per measurement: nothing read twice (GDAL and fsspec cache)
            picks = rng.sample(items_of(store), min(4 * args.reads, n))
            cog = [(i["assets"][MODALITY]["href"],) for i in picks]
            refs = [(i["assets"][f"{MODALITY}_ref"],) for i in picks]
            k = len(picks) // 4
            remote = {"client_kwargs": {"endpoint_url": endpoint}} if where == "S3" else {}
            with rasterio.Env(**(gdal_env if where == "S3" else {})):
                cog_one = median_ms(lambda h: cog_read(h, False), cog[:k])
                cog_all = median_ms(lambda h: cog_read(h, True), cog[k:2 * k])
            ref_one = median_ms(lambda a: ref_read(a, remote, False), refs[2 * k:3 * k])
            ref_all = median_ms(lambda a: ref_read(a, remote, True), refs[3 * k:])
            print(f"| {where} | {cog_one:.1f} | {cog_all:.1f} | {ref_one:.1f} | {ref_all:.1f} | {ref_all / cog_all:.2f}x |")

        print()
        print("## (c) one original sample out of its shard: scan the tar vs one range request (ms, median)")
        print()
        print("| where | scan from the start (today) | byte-range read (index) | scan / range | scan rate | "
              f"scan of a 1,000-sample {MODALITY} shard, half way (estimate; vs range) |")
        print("|---|---|---|---|---|---|")
        for where, (store, source_url) in results.items():
            storage = {"client_kwargs": {"endpoint_url": endpoint}} if where == "S3" else {}
            rows = [r for shard in shards for r in read_index(store.href(index_path("val", shard)), **storage)
                    if r["modality"] == MODALITY and not r["problem"]]
            picks = rng.sample(rows, min(2 * args.reads, len(rows)))
            k = len(picks) // 2
            fs = fsspec.core.url_to_fs(picks[0]["tar_url"], **storage)[0]
            scan = median_ms(lambda r: scan_read(fs, r["tar_url"], r["member"]), [(r,) for r in picks[:k]])
            ranged = median_ms(lambda r: range_read(r, storage), [(r,) for r in picks[k:]])
            scanned = statistics.median(r["offset"] + r["size"] for r in picks[:k])
            rate = scanned / (scan / 1000)
            tar_size = statistics.mean(fs.size(r["tar_url"]) for r in picks)
            real = tar_size * 1000 / args.samples_per_shard / 2 / rate * 1000
            print(f"| {where} | {scan:.1f} | {ranged:.1f} | {scan / ranged:.1f}x | {rate / 1e6:.0f} MB/s | "
                  f"{real:,.0f} ms ({real / ranged:,.0f}x) |")
        print()
        print("# the scan reads the shard up to the member (half of it on average); the estimate scales the "
              f"measured scan rate to a shard of 1,000 samples ({1000 / args.samples_per_shard:.0f}x these); "
              "the range read does not depend on the shard size")
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")
    finally:
        moto.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
