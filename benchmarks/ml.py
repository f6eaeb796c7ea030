"""Samples/s of the subset stream next to the official loader streaming whole shards (issue 14).

    .venv/bin/python benchmarks/ml.py [--shards 8] [--samples-per-shard 32]
        [--modalities S2L2A,S2L1C,DEM] [--rounds 2] [--work /tmp]

1. `synth` a TerraMesh tree, then as a user runs them: `convert --format cog,zarr` (the items'
   byte ranges into the shards, COGs, and the Zarr stores and views), `load`, `subset create all`
   (every sample) and `subset create last` (the ssl4eos12 samples: the last shards), in a
   throwaway embedded cluster.
2. local files, 1 and 4 workers: ours (SubsetDataset with return_metadata, reading the byte
   ranges of the shards, then the stacked Zarr stores, then the COGs) next to the official loader
   (benchmarks/official_stream.py in the zarr-2.18 venv: the loader's decode calls over whole
   shards), all through DataLoader(num_workers=w, batch_size=None), interleaved, --rounds
   times; samples/s and ours / official.
3. (after 4) time to the first sample of subset `last`: ours (manifest read, dataset built, first
   sample out of a DataLoader with 1 worker) vs scanning the shards in order for it.

4. the same streams with the shards on the S3-compatible server (moto's, in this process):
   ours by range reads (s3fs), the official loader reading whole tars over presigned URLs;
   the Zarr and COG paths from a `convert --format cog,zarr` of the S3 source to the same bucket.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import command_line, conditions, free_port, generate_source, pgstac_cluster, temp_dir  # noqa: E402

from tests.official_loader import official_venv  # noqa: E402

CID = "terramesh-ml-bench"
CLI = [sys.executable, "-m", "terramesh_stac.cli"]
OFFICIAL_EXTRA = ("torch==2.13.0",)  # the loader under a DataLoader, as training scripts run it


def cli(env: dict, *args) -> str:
    proc = subprocess.run([*CLI, *map(str, args)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed ({proc.returncode}): {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def official(root: Path, modalities: list[str], *extra: str) -> dict:
    cmd = [str(official_venv(OFFICIAL_EXTRA)), str(REPO / "benchmarks" / "official_stream.py"), str(root)]
    out = subprocess.run(
        [*cmd, "--modalities", ",".join(modalities), *extra],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(
    manifest: Path, modalities: list[str], workers: int, storage_options: dict | None = None, read_from: str = "source"
) -> dict:
    """Samples/s of our stream in a fresh process (as a training script would run it)."""
    code = f"""
import json, time
from torch.utils.data import DataLoader
from terramesh_stac.ml import SubsetDataset
t = time.perf_counter()
ds = SubsetDataset({str(manifest)!r}, {modalities!r}, return_metadata=True, storage_options={storage_options!r},
                   read_from={read_from!r})
n = sum(1 for _ in DataLoader(ds, num_workers={workers}, batch_size=None))
s = time.perf_counter() - t
print(json.dumps({{"samples": n, "seconds": s, "samples_per_s": n / s}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_sample(manifest: Path, modalities: list[str]) -> dict:
    code = f"""
import json, time
t = time.perf_counter()
from torch.utils.data import DataLoader
from terramesh_stac.ml import SubsetDataset
imported = time.perf_counter() - t
t = time.perf_counter()
sample = next(iter(DataLoader(SubsetDataset({str(manifest)!r}, {modalities!r}), num_workers=1, batch_size=None)))
print(json.dumps({{"key": sample["__key__"], "seconds": time.perf_counter() - t, "import_seconds": imported}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


PATHS = ("source", "zarr", "cog")  # SubsetDataset(read_from=...): the shards' byte ranges, Zarr stores, COGs
FORMATS = "cog,zarr"


def compare(manifest: Path, source: Path, modalities, samples: int, rounds: int, options=None, extra=()) -> dict:
    """Ours by each path next to the official loader, 1 and 4 workers, rounds interleaved;
    prints a table, returns {(path, workers): [ratios]}."""
    print("| workers | round | path | ours samples/s | official loader samples/s | ours / official |")
    print("|---|---|---|---|---|---|")
    ratios: dict = {}
    for workers in (1, 4):
        for r in range(1, rounds + 1):
            got = {path: ours(manifest, modalities, workers, options, path) for path in PATHS}
            b = official(source, modalities, "--workers", str(workers), *extra)
            for path, a in got.items():
                assert a["samples"] == b["samples"] == samples, (path, a, b)
                ratio = a["samples_per_s"] / b["samples_per_s"]
                ratios.setdefault((path, workers), []).append(ratio)
                print(
                    f"| {workers} | {r} | {path} | {a['samples_per_s']:.1f} | {b['samples_per_s']:.1f} | {ratio:.2f} |",
                    flush=True,
                )
    print()
    for (path, workers), values in ratios.items():
        print(f"{path}, {workers} worker(s): ours / official {min(values):.2f}-{max(values):.2f} (target >= 0.8)")
    return ratios


def s3_rounds(
    source: Path, dest: Path, subsets_dir: Path, modalities: list[str], samples: int, rounds: int, work: Path
) -> None:
    """The same streams with the shards on the S3-compatible server (moto, in this process):
    ours by s3fs range reads, the official loader over presigned URLs of whole tars."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    from moto.server import ThreadedMotoServer

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        urls = {}
        for path in sorted(source.glob("*/*/*.tar")):
            key = f"source/{path.relative_to(source).as_posix()}"
            s3.upload_file(str(path), "bench", key)
            urls[f"{path.parent.name}/{path.name}"] = s3.generate_presigned_url(
                "get_object", Params={"Bucket": "bench", "Key": key}, ExpiresIn=3600
            )
        (work / "urls.json").write_text(json.dumps(urls))
        # the Zarr and COG assets on the bucket: the S3 source converted there, as a user would
        env = {**os.environ, "TERRAMESH_S3_ENDPOINT_URL": endpoint}
        env = {k: v for k, v in env.items() if k != "TERRAMESH_SCHEDULER"}
        proc = subprocess.run(
            [*CLI, "convert", "s3://bench/source", "--dest", "s3://bench/dest", "--format", FORMATS, "--quiet"],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"convert to S3 failed: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        table = pq.read_table(subsets_dir / "all.parquet")  # the manifest, hrefs moved to the bucket
        moved = {f"{m}_href": (source, "s3://bench/source") for m in modalities}
        moved |= {f"{m}_{kind}": (dest, "s3://bench/dest") for m in modalities for kind in ("zarr_stack", "cog")}
        moved["cloud_mask_cog"] = (dest, "s3://bench/dest")  # the same layout on both (converters/layout.py)
        for name, (old, new) in moved.items():
            hrefs = [h.replace(str(old), new) for h in table.column(name).to_pylist()]
            table = table.set_column(table.column_names.index(name), name, pa.array(hrefs))
        pq.write_table(table, subsets_dir / "all-s3.parquet")
        options = {"client_kwargs": {"endpoint_url": endpoint}}
        print("\n## stream: samples/s, the S3-compatible server (moto, on the same 2 cores; rounds interleaved)\n")
        compare(
            subsets_dir / "all-s3.parquet",
            source,
            modalities,
            samples,
            rounds,
            options,
            ("--urls", str(work / "urls.json")),
        )
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--samples-per-shard", type=int, default=32)
    ap.add_argument("--modalities", default="S2L2A,S2L1C,DEM")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp")
    args = ap.parse_args()
    modalities = args.modalities.split(",")
    samples = args.shards * args.samples_per_shard
    print(
        conditions(
            command_line(),
            [f"{samples} generated samples in {args.shards} shards; modalities {', '.join(modalities)}; local files"],
        )
    )
    work = Path(temp_dir("terramesh-bench-ml-", args.work))
    try:
        source, dest, subsets_dir = work / "source", work / "dest", work / "subsets"
        generate_source(str(source), args.shards, args.samples_per_shard)
        official_venv(OFFICIAL_EXTRA)  # built once, outside the timings
        with pgstac_cluster() as settings:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAMESH_")}
            env.update(
                TERRAMESH_STATE_DIR=str(settings.state_dir),
                TERRAMESH_DB_PORT=str(settings.db_port),
                TERRAMESH_SUBSETS_DIR=str(subsets_dir),
                TERRAMESH_COLLECTION_ID=CID,
            )
            cli(env, "convert", source, "--dest", dest, "--collection", CID, "--format", FORMATS)
            cli(env, "load", dest)
            cli(env, "subset", "create", "all", "--modalities", ",".join(modalities))
            last = "\"terramesh:source\" = 'ssl4eos12'"
            cli(env, "subset", "create", "last", "--modalities", ",".join(modalities), "--filter", last)

        print("\n## stream: samples/s, local files (rounds interleaved)\n")
        compare(subsets_dir / "all.parquet", source, modalities, samples, args.rounds)

        s3_rounds(source, dest, subsets_dir, modalities, samples, args.rounds, work)

        print("\n## time to the first sample of subset 'last' (the ssl4eos12 samples, in the last shards)\n")
        for r in range(1, args.rounds + 1):
            a = first_sample(subsets_dir / "last.parquet", modalities)
            b = official(source, modalities, "--find", a["key"])
            print(
                f"round {r}: ours {a['seconds'] * 1000:,.0f} ms (+ {a['import_seconds'] * 1000:,.0f} ms importing torch"
                f" and terramesh_stac), scanning the shards for {a['key']}: {b['seconds'] * 1000:,.0f} ms (target: ours <= 1 s)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
