"""Zarr layouts for `convert --format zarr` (issue 5): objects and bytes per 1,000 samples, and
the time to open one sample and read its bands, for the layouts the design weighs.

    .venv/bin/python benchmarks/zarr_layouts.py [--shards 2] [--samples-per-shard 16]

A TerraMesh-format tree is generated (terramesh_stac.converters.synth, seed 0) in a temp dir; every sample
is decoded (terramesh_stac.converters.shards.iter_samples) and written, all modalities, as:

(A) one Zarr v3 group per sample and modality (xarray to_zarr, consolidated metadata, one
    chunk per array): opens on its own with its own CRS and coordinates;
(B) one Zarr v3 group per sample, modalities as subgroups (consolidated at the root);
(D) one Zarr v3 group per sample, every modality a variable on the shared grid (they are
    co-registered: one x, y, spatial_ref; per modality its bands, band and time coordinates;
    the per-modality scalars dropped), consolidated;
(C) per shard and modality, the samples stacked along a `sample` dimension (zarr sharding
    codec: one object per array holds the shard's chunks), per-sample x/y/time/crs as
    arrays: needs a selector (sample index) and per-sample georeferencing from those arrays.

Objects and bytes are counted on disk (one file = one object on S3); times are the median
of 5 opens of random samples, local disk, warm page cache.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numcodecs  # noqa: F401  (registers the codecs xarray/zarr use)
import numpy as np
import xarray as xr
import zarr
from _common import command_line, conditions, generate_source, loadavg, temp_dir

from terramesh_stac.converters.sample import Sample
from terramesh_stac.converters.shards import iter_samples
from terramesh_stac.converters.source import open_source

ZSTD = zarr.codecs.ZstdCodec(level=5)


def zarr_ready(ds: xr.Dataset) -> xr.Dataset:
    """The decoded sample without encodings inherited from the zip (zarr v2 codecs)."""
    ds = ds.copy()
    for name in ds.variables:
        ds[name].encoding = {}
    return ds


def write_group(ds: xr.Dataset, path: str, group: str | None = None) -> None:
    encoding = {"bands": {"compressors": (ZSTD,)}}
    ds.to_zarr(
        path, group=group, zarr_format=3, consolidated=group is None, mode="a" if group else "w", encoding=encoding
    )


def merged(sample: Sample) -> xr.Dataset:
    """Layout D: all modalities of a sample as variables of one Dataset on the shared grid."""
    first = next(iter(sample.modalities.values()))
    out = xr.Dataset(coords={"x": first["x"], "y": first["y"], "spatial_ref": first["spatial_ref"]})
    for m, ds in sample.modalities.items():
        out[m] = (
            ds["bands"]
            .rename({"band": f"band_{m}", "time": f"time_{m}"})
            .drop_vars([c for c in ("sample",) if c in ds["bands"].coords])
        )
        if "cloud_mask" in ds and "cloud_mask" not in out:
            out["cloud_mask"] = (
                ds["cloud_mask"]
                .rename({"time": f"time_{m}"})
                .drop_vars([c for c in ("sample",) if c in ds["cloud_mask"].coords])
            )
    return zarr_ready(out)


def write_stacked(samples: list[Sample], modality: str, path: str) -> None:
    """Layout C for one shard and modality."""
    dss = [s.modalities[modality] for s in samples if modality in s.modalities]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    bands = np.stack([d["bands"].values[0] for d in dss])
    n = bands.shape[0]
    root.create_array("bands", data=bands, chunks=(1, *bands.shape[1:]), shards=bands.shape, compressors=(ZSTD,))
    for name in ("x", "y"):
        root.create_array(name, data=np.stack([d[name].values for d in dss]), compressors=(ZSTD,))
    root.create_array(
        "time", data=np.array([d["time"].values[0] for d in dss]).astype("datetime64[ns]").astype("int64")
    )
    root.create_array("crs", data=np.array([int(np.asarray(d["crs"].values).reshape(-1)[0]) for d in dss]))
    root.create_array("key", data=np.array([s.key for s in samples if modality in s.modalities], dtype="U40"))
    if "cloud_mask" in dss[0]:
        mask = np.stack([d["cloud_mask"].values[0] for d in dss])
        root.create_array("cloud_mask", data=mask, chunks=(1, *mask.shape[1:]), shards=mask.shape, compressors=(ZSTD,))
    root.attrs["samples"] = n
    zarr.consolidate_metadata(path)


def count(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def median_ms(fn, keys, repeat=5) -> float:
    times = []
    for key in random.Random(0).sample(keys, min(repeat, len(keys))):
        t = time.perf_counter()
        fn(key)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--samples-per-shard", type=int, default=16)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(temp_dir("terramesh-bench-zarr-"))
    try:
        src = str(work / "source")
        generate_source(src, args.shards, args.samples_per_shard)
        source = open_source(src)
        by_shard = {
            shard: [s for s in iter_samples(source, "val", shard) if isinstance(s, Sample)]
            for shard in source.list_shards("val")
        }
        samples = [s for ss in by_shard.values() for s in ss]
        n = len(samples)
        tar_bytes = sum(p.stat().st_size for p in Path(src, "val").rglob("*.tar"))
        print(
            conditions(
                command_line(),
                [
                    f"zarr {zarr.__version__}, xarray {xr.__version__}",
                    f"data: GENERATED (terramesh_stac.converters.synth, seed 0): {len(by_shard)} shards x {args.samples_per_shard} "
                    f"samples = {n} samples, {tar_bytes / 1e6:.1f} MB of tars",
                    f"written to the local disk ({work}); Zstd level 5 on bands and coordinates",
                ],
            )
        )

        a, b, c = work / "A", work / "B", work / "C"
        t = time.perf_counter()
        for s in samples:
            for m, ds in s.modalities.items():
                write_group(zarr_ready(ds), str(a / s.key / f"{m}.zarr"))
        wa = time.perf_counter() - t
        t = time.perf_counter()
        for s in samples:
            path = str(b / f"{s.key}.zarr")
            zarr.open_group(path, mode="w", zarr_format=3)
            for m, ds in s.modalities.items():
                write_group(zarr_ready(ds), path, group=m)
            zarr.consolidate_metadata(path)
        wb = time.perf_counter() - t
        d = work / "D"
        t = time.perf_counter()
        for s in samples:
            merged(s).to_zarr(
                d / f"{s.key}.zarr",
                zarr_format=3,
                consolidated=True,
                mode="w",
                encoding={m: {"compressors": (ZSTD,)} for m in s.modalities},
            )
        wd = time.perf_counter() - t
        t = time.perf_counter()
        for shard, ss in by_shard.items():
            for m in {m for s in ss for m in s.modalities}:
                write_stacked(ss, m, str(c / shard.removesuffix(".tar") / f"{m}.zarr"))
        wc = time.perf_counter() - t

        keys = [s.key for s in samples]
        shard_of = {s.key: (s.shard.removesuffix(".tar"), i) for ss in by_shard.values() for i, s in enumerate(ss)}
        open_a = median_ms(lambda k: xr.open_zarr(a / k / "S2L2A.zarr", consolidated=True)["bands"].values, keys)
        open_b = median_ms(
            lambda k: xr.open_zarr(b / f"{k}.zarr", group="S2L2A", consolidated=False)["bands"].values, keys
        )

        def read_c(k):
            shard, i = shard_of[k]
            g = zarr.open_group(c / shard / "S2L2A.zarr", mode="r")
            return g["bands"][i], g["x"][i], g["y"][i], g["crs"][i]

        open_c = median_ms(read_c, keys)
        open_d = median_ms(lambda k: xr.open_zarr(d / f"{k}.zarr", consolidated=True)["S2L2A"].values, keys)
        print()
        print(
            "| layout | objects per 1,000 samples | MB per 1,000 samples | vs source tars | write s per sample | open + read S2L2A bands, ms |"
        )
        print("|---|---|---|---|---|---|")
        for label, path, secs, ms in (
            ("(A) group per sample and modality", a, wa, open_a),
            ("(B) group per sample, modalities as subgroups", b, wb, open_b),
            ("(D) group per sample, modalities as variables on the shared grid", d, wd, open_d),
            ("(C) stacked per shard and modality, sharded", c, wc, open_c),
        ):
            objects, size = count(path)
            print(
                f"| {label} | {objects * 1000 / n:,.0f} | {size * 1000 / n / 1e6:,.0f} | "
                f"{size / tar_bytes:.2f}x | {secs / n:.3f} | {ms:.1f} |"
            )
        print("| (for comparison) COG assets: 9 files per sample | 9,000 | see conversion.py | ~1.09x | - | - |")
        print()
        print(
            f"# per shard in (C): {args.samples_per_shard} samples; objects in (C) do not grow with samples "
            "per shard (one shard object per array), so real 1,000-sample shards have ~60x fewer per sample"
        )
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
