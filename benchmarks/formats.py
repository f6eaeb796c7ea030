"""Asset formats compared (issue 5): what each costs to store, and to read one sample from.

    .venv/bin/python benchmarks/formats.py [--shards 2] [--samples-per-shard 40] [--reads 9]

A TerraMesh-format tree is generated (terramesh_stac.converters.synth, seed 0) and converted with
`--format cog,zarr,ref` twice: local folder -> local folder, and moto S3 server -> the same
server (moto_server in its own process on 127.0.0.1). Then, per format:

(a) objects and bytes per 1,000 samples (the modality assets only: COG files, the stacked
    Zarr stores, reference JSON files; the references copy nothing, the shards stay where
    they are); for Zarr also the estimate for real 1,000-sample shards (objects per store
    grow with blocks of SAMPLES_PER_BLOCK samples, not with samples);
(b) time to open one sample's S2L2A and read one band, and to read all its bands (median of
    --reads random samples): COG with rasterio (GDAL /vsis3/ on S3); Zarr with xarray
    (open the store, `sel(item=id)`; all bands = the whole georeferenced sample through
    zarrstack.open_sample); references with xarray's kerchunk engine (range reads of the
    original tar);
(c) what users do today to get one sample from a shard: stream the tar from its start until
    the member (tarfile), vs one range request from the byte index (terramesh_stac.converters.byteindex),
    both decoded with terramesh_stac.converters.zarrzip; as a ratio;
(d) what each format costs the converter: one shard converted in a fresh process per format
    (local -> local), wall time and peak RSS (the Zarr writer buffers a block of samples).
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

from terramesh_stac.converters import zarrstack
from terramesh_stac.converters.byteindex import fetch_member, read_index
from terramesh_stac.converters.layout import index_path
from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard
from terramesh_stac.converters.source import open_source
from terramesh_stac.converters.zarrzip import decode_zarr_zip

MODALITY = "S2L2A"


def start_moto() -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    return [
        json.loads(line)
        for path in store.glob("items/*/*.ndjson")
        for line in store.get(path).decode().splitlines()
        if line.strip()
    ]


def asset_stats(items: list[dict], store, suffix: str) -> tuple[int, int]:
    """(objects, bytes) of the modality assets of `items` whose key ends with `suffix`."""
    n = size = 0
    for item in items:
        for key, asset in item["assets"].items():
            if (
                key in ("cloud_mask", "thumbnail")
                or not key.endswith(suffix)
                or "file:size" not in asset
                or (suffix == "" and key.endswith("_ref"))
            ):
                continue
            n += 1
            size += asset["file:size"]
    return n, size


def zarr_stats(store, n_samples: int, samples_per_shard: int) -> tuple[int, int, float]:
    """(objects, bytes) of the stacked Zarr stores, and the objects per 1,000 samples that
    1,000-sample shards would make: pixel shard objects grow with blocks of samples, the
    rest (metadata, small per-item arrays sharded whole) stays per store."""
    files = [
        (p.relative_to(store.root).as_posix(), p.stat().st_size)
        for p in (Path(store.root) / "assets" / "zarr").rglob("*")
        if p.is_file()
    ]  # local dest
    stores = {p.split(".zarr/", 1)[0] for p, _ in files}
    pixels = sum(
        1
        for p, _ in files
        if p.split(".zarr/", 1)[1].split("/")[0] in zarrstack.PIXEL_ARRAYS and not p.endswith("zarr.json")
    )
    blocks = -(-samples_per_shard // zarrstack.SAMPLES_PER_BLOCK)
    real_blocks = -(-1000 // zarrstack.SAMPLES_PER_BLOCK)
    per_store = (len(files) - pixels) / len(stores) + pixels / len(stores) / blocks * real_blocks
    stores_per_sample = len(stores) / n_samples  # modalities per sample / samples per shard
    return len(files), sum(size for _, size in files), per_store * stores_per_sample * samples_per_shard


def zarr_read(asset: dict, item_id: str, storage: dict, all_bands: bool) -> None:
    kwargs = {"storage_options": storage} if storage else {}
    if all_bands:
        zarrstack.open_sample(asset["href"], item_id, **kwargs)
    else:
        _ = zarrstack.open_stack(asset["href"], **kwargs)["bands"].sel(item=item_id)[0, 0].values


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


def convert_in_fresh_process(source: str, shard: str, dest: str, formats: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of converting one shard with `formats` in a new process."""
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a child forked
    # from this (large) process would report this process's size
    code = (
        "import re, sys, time; from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard; "
        "t = time.perf_counter(); convert_shard(sys.argv[1], 'val', sys.argv[2], "
        "ConvertOptions(dest=sys.argv[3], formats=tuple(sys.argv[4].split(',')))); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print(time.perf_counter() - t, int(hwm) / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, source, shard, dest, formats],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    seconds, rss = out.split()[-2:]
    return float(seconds), float(rss)


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
    ap.add_argument(
        "--samples-per-shard", type=int, default=40, help="40: two Zarr blocks per shard, one full, one partial"
    )
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
        print(
            conditions(
                command_line(),
                [
                    f"data: GENERATED (terramesh_stac.converters.synth, seed 0): {len(shards)} shards x {args.samples_per_shard} "
                    f"samples, {tar_bytes / 1e6:.1f} MB of tars ({tar_bytes / 1e6 / len(shards):.1f} MB per shard "
                    "per all modalities; real shards are ~1,000 samples, ~1.85 GB)",
                    f"local: temp dir on the local disk; S3: moto_server (own process) at {endpoint}, same machine",
                    f"reads: {MODALITY}, median over a disjoint set of random samples per measurement "
                    f"(at most {args.reads}, at most a sixth of the samples), warm page cache",
                ],
            )
        )
        results = {}
        for where, source_url, dest, options in (
            ("local", str(src), str(work / "dest"), {}),
            ("S3", "s3://bench/source", "s3://bench/dest", {"s3_endpoint_url": endpoint}),
        ):
            opts = ConvertOptions(dest=dest, formats=("cog", "zarr", "ref"), **options)
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
        for label, suffix in (
            ("COG (copies)", ""),
            ("Zarr (copies, stacked per shard)", None),
            ("references (no copy)", "_ref"),
        ):
            if suffix is None:
                objects, size, estimate = zarr_stats(store, n, args.samples_per_shard)
                label += f"; 1,000-sample shards (estimate): {estimate:,.0f} objects"
            else:
                objects, size = asset_stats(items, store, suffix)
            print(f"| {label} | {objects * 1000 / n:,.0f} | {size * 1000 / n / 1e6:,.1f} | {size / tar_bytes:.3f}x |")

        rng = random.Random(0)
        print()
        print(f"## (b) one sample's {MODALITY}: open + read (ms, median)")
        print()
        print("| where | format | open + one band | open + all bands | vs COG (one band / all bands) |")
        print("|---|---|---|---|---|")
        gdal_env = dict(
            AWS_S3_ENDPOINT=endpoint.removeprefix("http://"),
            AWS_HTTPS="NO",
            AWS_VIRTUAL_HOSTING="FALSE",
            GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
        )
        for where, (store, _source_url) in reversed(results.items()):
            # disjoint samples per measurement: nothing read twice (GDAL and fsspec cache)
            picks = rng.sample(items_of(store), min(6 * args.reads, n))
            k = len(picks) // 6
            remote = {"client_kwargs": {"endpoint_url": endpoint}} if where == "S3" else {}
            with rasterio.Env(**(gdal_env if where == "S3" else {})):
                cog = [
                    median_ms(lambda h: cog_read(h, every), [(i["assets"][MODALITY]["href"],) for i in part])
                    for every, part in ((False, picks[:k]), (True, picks[k : 2 * k]))
                ]
            zarr = [
                median_ms(
                    lambda i: zarr_read(i["assets"][f"{MODALITY}_zarr"], i["id"], remote, every), [(i,) for i in part]
                )
                for every, part in ((False, picks[2 * k : 3 * k]), (True, picks[3 * k : 4 * k]))
            ]
            refs = [
                median_ms(lambda a: ref_read(a, remote, every), [(i["assets"][f"{MODALITY}_ref"],) for i in part])
                for every, part in ((False, picks[4 * k : 5 * k]), (True, picks[5 * k : 6 * k]))
            ]
            for label, (one, every) in (("COG", cog), ("Zarr", zarr), ("references", refs)):
                print(f"| {where} | {label} | {one:.1f} | {every:.1f} | {one / cog[0]:.2f}x / {every / cog[1]:.2f}x |")

        print()
        print("## (c) one original sample out of its shard: scan the tar vs one range request (ms, median)")
        print()
        print(
            "| where | scan from the start (today) | byte-range read (index) | scan / range | scan rate | "
            f"scan of a 1,000-sample {MODALITY} shard, half way (estimate; vs range) |"
        )
        print("|---|---|---|---|---|---|")
        for where, (store, _source_url) in results.items():
            storage = {"client_kwargs": {"endpoint_url": endpoint}} if where == "S3" else {}
            rows = [
                r
                for shard in shards
                for r in read_index(store.href(index_path("val", shard)), **storage)
                if r["modality"] == MODALITY and not r["problem"]
            ]
            picks = rng.sample(rows, min(2 * args.reads, len(rows)))
            k = len(picks) // 2
            fs = fsspec.core.url_to_fs(picks[0]["tar_url"], **storage)[0]
            scan = median_ms(lambda r: scan_read(fs, r["tar_url"], r["member"]), [(r,) for r in picks[:k]])
            ranged = median_ms(lambda r: range_read(r, storage), [(r,) for r in picks[k:]])
            scanned = statistics.median(r["offset"] + r["size"] for r in picks[:k])
            rate = scanned / (scan / 1000)
            tar_size = statistics.mean(fs.size(r["tar_url"]) for r in picks)
            real = tar_size * 1000 / args.samples_per_shard / 2 / rate * 1000
            print(
                f"| {where} | {scan:.1f} | {ranged:.1f} | {scan / ranged:.1f}x | {rate / 1e6:.0f} MB/s | "
                f"{real:,.0f} ms ({real / ranged:,.0f}x) |"
            )
        print()
        print(
            "# the scan reads the shard up to the member (half of it on average); the estimate scales the "
            f"measured scan rate to a shard of 1,000 samples ({1000 / args.samples_per_shard:.0f}x these); "
            "the range read does not depend on the shard size"
        )
        print()
        print(f"## (d) converting one {args.samples_per_shard}-sample shard in a fresh process (local -> local)")
        print()
        print("| formats | seconds | samples/s | peak RSS MB |")
        print("|---|---|---|---|")
        for formats in ("cog", "zarr", "ref", "cog,zarr,ref"):
            seconds, rss = convert_in_fresh_process(str(src), shards[0], str(work / f"d-{formats}"), formats)
            print(f"| {formats} | {seconds:.1f} | {args.samples_per_shard / seconds:.1f} | {rss:.0f} |")
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")
    finally:
        moto.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
