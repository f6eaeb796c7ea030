"""Conversion throughput per core: decode limit, per-modality encode, full convert, COG size.

    .venv/bin/python benchmarks/conversion.py [--shards 4] [--samples-per-shard 16]
    .venv/bin/python benchmarks/conversion.py --source /data/TerraMesh --split val

Without --source a TerraMesh-format tree is generated (terramesh_stac.converters.synth, both sources:
Major TOM and SSL4EO-S12 shards) into a temp dir that is removed at the end. (a)-(e) run
in this one process on one core (GDAL_NUM_THREADS=1, BLAS/OpenMP threads 1):

(a) decode only: terramesh_stac.converters.shards.iter_samples over every shard (tar read + zarr.zip
    decode of every modality into memory) -> samples/s. This is the ceiling of (c).
(b) encode per modality: encode_cog per modality, encode_cloud_mask and encode_thumbnail on
    the decoded samples of a second pass (decode not timed) -> ms/sample, samples/s.
(c) full conversion: terramesh_stac.converters.run.convert to a temp dest (no progress bar), the same
    call as `terramesh-stac convert` -> samples/s, and its ratio to (a).
(d) size: sum of COG bytes per modality vs sum of the .zarr.zip tar member sizes of that
    modality (tarfile member headers), and vs the raw in-memory pixel bytes (source dtype:
    float16 for S1/NDVI, which the COG stores as float32).
(e) where a decode goes: decode_zarr_zip per modality on the first shard, against the zip
    reading and the numcodecs decode of every chunk it contains (the work any reader must do).
(f) ours against the floor, interleaved over --rounds: CPU ms per sample (time.process_time)
    of benchmarks/conversion_floor.py (tar -> zip entries -> numcodecs -> rio-cogeo COGs at
    our profile + the cloud mask, nothing else) and of our conversion of the same shards
    (pipeline.convert_shard: everything `convert` writes), and the ratio floor / ours (= our
    samples/s over the floor's on one core; target >= 0.8). Each runs in a plain process of
    its own (this script again, with the environment it started with, kept for the whole run
    and warmed with one shard; no Dask in it: the cluster's scheduler runs in this one),
    which converts one shard at a time on request.
(g) a Dask worker against a plain process: the wall seconds of the same shards converted as
    tasks (convert_shard) on a warmed 1-worker LocalCluster (start_client: the production
    worker) against (f)'s plain process; target >= 0.9. The floor, ours and the worker take
    turns shard by shard, the order turning, so that the machine's noise falls on all three.
    Each round ends with a whole run.convert of the shards on the worker (it adds the run's
    own work: collection, staging, report, scheduling), against the same plain process.
"""

from __future__ import annotations

import os

for _v in (
    "GDAL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLOSC_NTHREADS",
):
    os.environ.setdefault(_v, "1")

PLAIN_ENV = dict(os.environ)  # for (f)'s plain processes: before Dask adds its workers' variables

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conversion_floor  # noqa: E402
from _common import command_line, conditions, generate_source, loadavg, temp_dir  # noqa: E402

from terramesh_stac.converters.cog import encode_cloud_mask, encode_cog  # noqa: E402
from terramesh_stac.converters.modalities import MODALITIES  # noqa: E402
from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard  # noqa: E402
from terramesh_stac.converters.run import convert, start_client  # noqa: E402
from terramesh_stac.converters.sample import Sample  # noqa: E402
from terramesh_stac.converters.shards import MEMBER_SUFFIX, iter_samples  # noqa: E402
from terramesh_stac.converters.source import open_source  # noqa: E402
from terramesh_stac.converters.thumbnail import encode_thumbnail  # noqa: E402

MASK_SOURCES = ("S2L2A", "S2L1C", "S2RGB", "LULC")  # as terramesh_stac.converters.pipeline.encode_sample


def decode_pass(source, split: str, shards: list[str]) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for shard in shards:
        for r in iter_samples(source, split, shard):
            if isinstance(r, Sample):
                n += 1
    return n, time.perf_counter() - t0


def encode_pass(source, split: str, shards: list[str]):
    """Per asset key: list of encode seconds, COG bytes; raw pixel bytes per modality."""
    seconds: dict[str, list[float]] = defaultdict(list)
    cog_bytes: dict[str, int] = defaultdict(int)
    raw_bytes: dict[str, int] = defaultdict(int)
    for shard in shards:
        for s in iter_samples(source, split, shard):
            if not isinstance(s, Sample):
                continue
            for m, ds in s.modalities.items():
                raw_bytes[m] += ds["bands"].nbytes
                t = time.perf_counter()
                a = encode_cog(ds, m)
                seconds[m].append(time.perf_counter() - t)
                cog_bytes[m] += len(a.data)
            mask_src = next(
                (s.modalities[m] for m in MASK_SOURCES if m in s.modalities and "cloud_mask" in s.modalities[m]), None
            )
            if mask_src is not None:
                t = time.perf_counter()
                a = encode_cloud_mask(mask_src)
                seconds["cloud_mask"].append(time.perf_counter() - t)
                cog_bytes["cloud_mask"] += len(a.data)
            if "S2RGB" in s.modalities:
                t = time.perf_counter()
                a = encode_thumbnail(s.modalities["S2RGB"])
                seconds["thumbnail"].append(time.perf_counter() - t)
                cog_bytes["thumbnail"] += len(a.data)
    return seconds, cog_bytes, raw_bytes


def member_sizes(source, split: str, shards: list[str]) -> dict[str, tuple[int, int]]:
    """modality -> (number of .zarr.zip members, sum of their sizes), from tar headers."""
    out: dict[str, tuple[int, int]] = {}
    for m in MODALITIES:
        n = size = 0
        for shard in shards:
            try:
                with source.open_shard(split, m, shard) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
                    for member in tf:
                        if member.isfile() and member.name.endswith(MEMBER_SUFFIX):
                            n += 1
                            size += member.size
            except FileNotFoundError:  # the other S1 version is absent for a source
                continue
        if n:
            out[m] = (n, size)
    return out


def decode_breakdown(source, split: str, shard: str) -> dict[str, tuple[int, float, float, float]]:
    """modality -> (members, ms decode_zarr_zip, ms zip entries, ms numcodecs decode of every
    chunk of every array): how much of a decode is codec work and how much zarr/xarray."""
    import json

    import numcodecs

    from terramesh_stac.converters.zarrzip import _zip_entries, decode_zarr_zip

    out = {}
    for m in MODALITIES:
        try:
            with source.open_shard(split, m, shard) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
                datas = [tf.extractfile(x).read() for x in tf if x.isfile()]
        except FileNotFoundError:
            continue
        if not datas:
            continue
        decode_zarr_zip(datas[0])  # warm
        t = time.perf_counter()
        for d in datas:
            decode_zarr_zip(d)
        full = (time.perf_counter() - t) / len(datas)
        t = time.perf_counter()
        entries = [_zip_entries(d) for d in datas]
        zips = (time.perf_counter() - t) / len(datas)
        meta = json.loads(entries[0][".zmetadata"])["metadata"]
        arrays = {k.rsplit("/", 1)[0]: v for k, v in meta.items() if k.endswith(".zarray")}
        codecs = {a: numcodecs.get_codec(z["compressor"]) if z.get("compressor") else None for a, z in arrays.items()}
        t = time.perf_counter()
        for e in entries:
            for name, data in e.items():
                a, _, leaf = name.rpartition("/")
                if a in codecs and not leaf.startswith(".") and codecs[a] is not None:
                    codecs[a].decode(data)
        codec = (time.perf_counter() - t) / len(datas)
        out[m] = (len(datas), 1000 * full, 1000 * zips, 1000 * codec, len(arrays))
    return out


def plain_process(source_url: str, split: str, shards: list[str], dest: str) -> tuple[int, float, float]:
    """(samples, CPU seconds, wall seconds) of converting `shards` in this process."""
    options = ConvertOptions(dest=dest, collection_id="terramesh-bench")
    n, cpu, wall = 0, time.process_time(), time.perf_counter()
    for shard in shards:
        n += convert_shard(source_url, split, shard, options).items
    return n, time.process_time() - cpu, time.perf_counter() - wall


class PlainProcess:
    """A fresh process (this script, --child-server, the environment it started with) that
    converts one shard at a time on request, the floor's way or ours: (samples, CPU s, wall s)."""

    def __init__(self, kind: str, source_url: str, split: str, dest: str):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child-server", kind, "--source", source_url, "--split", split]
            + ["--child-dest", dest],
            env=PLAIN_ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def shard(self, shard: str) -> tuple[int, float, float]:
        self.proc.stdin.write(shard + "\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def child_server(kind: str, source_url: str, split: str, dest: str) -> None:
    for i, line in enumerate(sys.stdin):
        shard = line.strip()
        if kind == "floor":
            t = time.perf_counter()
            n, cpu = conversion_floor.run(Path(source_url), split, [shard])
            result = (n, cpu, time.perf_counter() - t)
        else:
            result = plain_process(source_url, split, [shard], os.path.join(dest, str(i)))  # a new dest: no skip
            shutil.rmtree(os.path.join(dest, str(i)))
        print(json.dumps(result), flush=True)


def shard_on_a_worker(source_url: str, split: str, shard: str, dest: str) -> tuple[int, float, float]:
    """(samples, CPU s, wall s) of one shard converted in the worker's task thread."""
    return plain_process(source_url, split, [shard], dest)


def on_a_worker(client, source_url: str, split: str, shards: list[str], dest: str) -> tuple[int, float]:
    """(samples, wall seconds) of run.convert of `shards` on `client`'s worker."""
    options = ConvertOptions(dest=dest, collection_id="terramesh-bench")
    t = time.perf_counter()
    report = convert(source_url, options, split=split, max_shards=len(shards), client=client)
    return report.items, time.perf_counter() - t


def floor_and_worker(source_url: str, split: str, shards: list[str], work: str, rounds: int) -> None:
    """(f) and (g), interleaved shard by shard, the order turning."""
    print()
    print("## (f) ours vs the floor, CPU ms per sample; (g) a Dask worker vs a plain process, wall s")
    print()
    print(
        "| round | floor CPU ms/sample | ours CPU ms/sample | floor / ours | plain process s | "
        "1 worker, shard tasks s | plain / worker | run.convert on the worker s | plain / run.convert |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    client = start_client(workers=1)
    floor = PlainProcess("floor", source_url, split, work)
    ours = PlainProcess("ours", source_url, split, os.path.join(work, "plain"))
    try:
        # warm-up: imports, GDAL, the page cache
        client.submit(shard_on_a_worker, source_url, split, shards[0], os.path.join(work, "warm"), pure=False).result()
        floor.shard(shards[0])
        ours.shard(shards[0])
        floors, workers, runs = [], [], []
        for r in range(1, rounds + 1):
            totals = defaultdict(lambda: [0, 0.0, 0.0])  # name -> samples, CPU s, wall s
            for i, shard in enumerate(shards):
                measure = {
                    "floor": lambda: floor.shard(shard),
                    "ours": lambda: ours.shard(shard),
                    "worker": lambda: client.submit(
                        shard_on_a_worker, source_url, split, shard, os.path.join(work, f"w{r}"), pure=False
                    ).result(),
                }
                names = list(measure)
                for name in names[(r + i) % 3 :] + names[: (r + i) % 3]:  # the order turns every shard
                    totals[name] = [a + b for a, b in zip(totals[name], measure[name]())]
            n_run, wall_run = on_a_worker(client, source_url, split, shards, os.path.join(work, f"run{r}"))
            (n_floor, cpu_floor, _), (n, cpu, wall), (n_worker, _, wall_worker) = (
                totals["floor"],
                totals["ours"],
                totals["worker"],
            )
            assert n_floor == n == n_worker == n_run, (n_floor, n, n_worker, n_run)
            floor_ms, ours_ms = 1000 * cpu_floor / n_floor, 1000 * cpu / n
            floors.append(floor_ms / ours_ms)
            workers.append(wall / wall_worker)
            runs.append(wall / wall_run)
            print(
                f"| {r} | {floor_ms:.0f} | {ours_ms:.0f} | {floors[-1]:.2f} | {wall:.1f} | {wall_worker:.1f} | "
                f"{workers[-1]:.2f} | {wall_run:.1f} | {runs[-1]:.2f} |",
                flush=True,
            )
    finally:
        floor.close()
        ours.close()
        client.close()
    print()
    for label, values, target in (
        ("ours / floor (samples/s on one core)", floors, 0.8),
        ("a worker / a plain process (samples/s, shard tasks)", workers, 0.9),
        ("run.convert on the worker / a plain process (a whole run of these shards)", runs, None),
    ):
        goal = f" (target >= {target})" if target else ""
        print(f"{label}: {min(values):.2f}-{max(values):.2f}, median {statistics.median(values):.2f}{goal}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--source",
        help="a TerraMesh root (folder, https://…/resolve/<rev>/, s3://…); default: generate one in a temp dir",
    )
    ap.add_argument("--split", default="val", choices=["train", "val"])
    ap.add_argument("--shards", type=int, default=4, help="generated shards (without --source)")
    ap.add_argument("--samples-per-shard", type=int, default=16, help="generated samples per shard")
    ap.add_argument("--max-shards", type=int, help="use only the first N shards of the source")
    ap.add_argument(
        "--profile", action="store_true", help="also cProfile the full conversion and print the top functions"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (f) and (g)")
    ap.add_argument("--child-server", choices=["floor", "ours"], help=argparse.SUPPRESS)  # (f)'s plain process
    ap.add_argument("--child-dest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.child_server:
        return child_server(args.child_server, args.source, args.split, args.child_dest)

    work = temp_dir("terramesh-bench-conv-")
    try:
        if args.source:
            source_url, data_note = args.source, f"data: TerraMesh source {args.source}, split {args.split}"
        else:
            source_url = os.path.join(work, "source")
            t = time.perf_counter()
            keys = generate_source(source_url, args.shards, args.samples_per_shard)
            data_note = (
                f"data: GENERATED (terramesh_stac.converters.synth, seed 0): {args.shards} shards x "
                f"{args.samples_per_shard} samples = {len(keys)} samples, split val, "
                f"Major TOM + SSL4EO-S12 shards (generated in {time.perf_counter() - t:.0f} s, not timed)"
            )
        source = open_source(source_url)
        shards = source.list_shards(args.split)[: args.max_shards]
        sizes = member_sizes(source, args.split, shards)
        total_src = sum(s for _, s in sizes.values())
        print(
            conditions(
                command_line(),
                [
                    data_note,
                    f"shards: {len(shards)}; source .zarr.zip bytes: {total_src / 1e6:.1f} MB",
                    "one process, one core: GDAL_NUM_THREADS=1, OMP/BLAS/BLOSC threads 1",
                ],
            )
        )

        # (a) decode only, twice (first pass warms imports, page cache, GDAL/zarr init)
        decode_pass(source, args.split, shards[:1])
        n_dec, s_dec = decode_pass(source, args.split, shards)
        dec_rate = n_dec / s_dec

        # (b) per-modality encode (decode not timed)
        seconds, cog_bytes, raw_bytes = encode_pass(source, args.split, shards)

        # (c) full conversion
        dest = os.path.join(work, "dest")
        options = ConvertOptions(dest=dest, collection_id="terramesh-bench")
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        report = convert(source_url, options, split=args.split, progress=False)
        if args.profile:
            prof.disable()
        conv_rate = report.items / report.seconds
        if report.errors:
            print(f"# WARNING: {len(report.errors)} conversion problems, e.g. {report.errors[0]}")

        # (d) sizes of what convert wrote (the same COGs as (b), read from the dest)
        written: dict[str, int] = defaultdict(int)
        for p in Path(dest, "assets").rglob("*"):
            if p.is_file():
                written[p.stem] += p.stat().st_size
        items_bytes = sum(p.stat().st_size for p in Path(dest, "items").rglob("*.ndjson"))

        print()
        print("## (a) decode only vs (c) full conversion (one core)")
        print()
        print("| pass | samples | seconds | samples/s | ms/sample | vs decode |")
        print("|---|---|---|---|---|---|")
        print(
            f"| (a) decode only (iter_samples) | {n_dec} | {s_dec:.2f} | {dec_rate:.2f} | "
            f"{1000 / dec_rate:.0f} | 1.00 |"
        )
        enc_total = sum(sum(v) for v in seconds.values())
        print(
            f"| (b) encode only, all assets (sum of the table below) | {n_dec} | {enc_total:.2f} | "
            f"{n_dec / enc_total:.2f} | {1000 * enc_total / n_dec:.0f} | - |"
        )
        print(
            f"| (c) full convert (pipeline.convert) | {report.items} | {report.seconds:.2f} | "
            f"{conv_rate:.2f} | {1000 / conv_rate:.0f} | {conv_rate / dec_rate:.2f} |"
        )
        other = report.seconds - s_dec - enc_total
        print()
        print(
            f"(c) = decode {100 * s_dec / report.seconds:.0f} % + encode "
            f"{100 * enc_total / report.seconds:.0f} % + rest (stats, items, checksums, "
            f"writes, metadata) {100 * other / report.seconds:.0f} % "
            f"({1000 * other / max(report.items, 1):.0f} ms/sample)"
        )

        print()
        print("## (b) encode per asset (one core) and (d) size")
        print()
        print(
            "| asset | n | ms/sample p50 | ms/sample mean | samples/s | source zarr.zip MB | "
            "raw pixels MB | written MB | written / zarr.zip | written / raw |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        keys = [m for m in MODALITIES if m in seconds] + [k for k in ("cloud_mask", "thumbnail") if k in seconds]
        for k in keys:
            v = sorted(seconds[k])
            mean = sum(v) / len(v)
            p50 = v[len(v) // 2]
            src = sizes.get(k, (0, 0))[1]
            raw = raw_bytes.get(k, 0)
            w = written.get(k, cog_bytes[k])
            ratio = f"{w / src:.2f}" if src else "-"
            raw_ratio = f"{w / raw:.2f}" if raw else "-"
            print(
                f"| {k} | {len(v)} | {1000 * p50:.1f} | {1000 * mean:.1f} | {1 / mean:.0f} | "
                f"{src / 1e6:.2f} | {raw / 1e6:.2f} | {w / 1e6:.2f} | {ratio} | {raw_ratio} |"
            )
        w_all = sum(written.values())
        print(
            f"| all assets | | | | | {total_src / 1e6:.2f} | {sum(raw_bytes.values()) / 1e6:.2f} | "
            f"{w_all / 1e6:.2f} | {w_all / total_src:.2f} | |"
        )
        print()
        print(f"items NDJSON: {items_bytes / 1e6:.2f} MB ({items_bytes / max(report.items, 1) / 1e3:.1f} kB/item)")

        print()
        print(f"## (e) where a decode goes, per modality (shard {shards[0]})")
        print()
        print(
            "| modality | members | arrays | decode_zarr_zip ms | zip entries ms | codec (numcodecs) ms "
            "| rest (zarr 3 + xarray open/load) ms | rest share |"
        )
        print("|---|---|---|---|---|---|---|---|")
        tot = [0.0, 0.0, 0.0]
        for m, (n, full, zips, codec, n_arr) in decode_breakdown(source, args.split, shards[0]).items():
            rest = full - zips - codec
            tot = [tot[0] + full, tot[1] + zips, tot[2] + codec]
            print(
                f"| {m} | {n} | {n_arr} | {full:.1f} | {zips:.1f} | {codec:.1f} | {rest:.1f} | "
                f"{100 * rest / full:.0f} % |"
            )
        print(
            f"| all modalities of a sample | | | {tot[0]:.1f} | {tot[1]:.1f} | {tot[2]:.1f} | "
            f"{tot[0] - tot[1] - tot[2]:.1f} | {100 * (tot[0] - tot[1] - tot[2]) / tot[0]:.0f} % |"
        )
        floor_and_worker(source_url, args.split, shards, work, args.rounds)
        print()
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")

        if args.profile:
            print()
            print("## cProfile of (c), top 25 by cumulative time")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
