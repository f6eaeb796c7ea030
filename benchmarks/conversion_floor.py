"""The floor of a conversion: the least work that turns TerraMesh shards into our COGs (issue 15).

    .venv/bin/python benchmarks/conversion_floor.py ROOT [--split val]

For every sample of every shard of ROOT: the tar read in one stream per modality, the zip
entries read, every chunk of every array Blosc-decoded by numcodecs, and one COG per modality
(float16 as float32) plus the cloud mask written by rio-cogeo at our profile
(converters/cog.py: one 272 px tile, ZSTD level 1, predictor 2 or 3, pixel interleaved, no
overview). No STAC, no
checksums, no files written, no xarray: what any converter must spend. Prints the samples and
the CPU seconds (time.process_time) in one process on one core; benchmarks/conversion.py
runs it next to ours on the same samples.
"""

from __future__ import annotations

import os

for _v in ("GDAL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLOSC_NTHREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numcodecs  # noqa: E402
import numpy as np  # noqa: E402
from affine import Affine  # noqa: E402
from rasterio.io import MemoryFile  # noqa: E402
from rio_cogeo.cogeo import cog_translate  # noqa: E402

MASK_SOURCES = ("S2L2A", "S2L1C", "S2RGB", "LULC")


def decode(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, every array) of a `.zarr.zip`: zip entries, numcodecs, nothing else."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    meta = json.loads(entries[".zmetadata"])["metadata"]
    arrays = {}
    for key, zarray in meta.items():
        if not key.endswith("/.zarray"):
            continue
        name = key.removesuffix("/.zarray")
        chunk = entries[f"{name}/" + (".".join("0" * len(zarray["shape"])) or "0")]
        if zarray.get("compressor"):
            chunk = numcodecs.get_codec(zarray["compressor"]).decode(chunk)
        arrays[name] = np.frombuffer(chunk, dtype=zarray["dtype"]).reshape(zarray["shape"])
    return meta, arrays


def write_cog(data: np.ndarray, crs: str, transform: Affine, nodata) -> bytes:
    count, h, w = data.shape
    src_profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name)
    with MemoryFile() as src_mem:
        with src_mem.open(**src_profile, crs=crs, transform=transform, nodata=nodata) as src:
            src.write(data)
        with src_mem.open() as src, MemoryFile() as dst_mem:
            cog_translate(
                src,
                dst_mem.name,
                {
                    "driver": "GTiff",
                    "interleave": "pixel",
                    "tiled": True,
                    "blockxsize": 272,
                    "blockysize": 272,
                    "compress": "ZSTD",
                    "zstd_level": 1,
                    "predictor": 3 if data.dtype.kind == "f" else 2,
                },
                in_memory=True,
                quiet=True,
                overview_level=0,
                add_mask=False,
                use_cog_driver=False,
            )
            return bytes(dst_mem.read())


def convert_sample(members: dict[str, bytes]) -> int:
    """Every modality's COG and the cloud mask of one sample; the bytes written."""
    written, mask = 0, None
    for modality, data in members.items():
        meta, arrays = decode(data)
        geo = meta["spatial_ref/.zattrs"]
        transform = Affine.from_gdal(*map(float, geo["GeoTransform"].split()))
        bands = arrays["bands"][0]
        written += len(
            write_cog(bands.astype(np.float32) if bands.dtype == np.float16 else bands, geo["crs_wkt"], transform, None)
        )
        if mask is None and modality in MASK_SOURCES and "cloud_mask" in arrays:
            mask = (arrays["cloud_mask"][0][None], geo["crs_wkt"], transform)
    if mask is not None:
        written += len(write_cog(mask[0], mask[1], mask[2], 6))
    return written


def shard_members(root: Path, split: str, shard: str) -> dict[str, dict[str, bytes]]:
    """key -> {modality: .zarr.zip bytes} of one shard, each modality's tar read in one stream."""
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(root.glob(f"{split}/*/{shard}")):
        with tarfile.open(tar, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(".zarr.zip"):
                    out.setdefault(member.name.removesuffix(".zarr.zip"), {})[tar.parent.name] = tf.extractfile(
                        member
                    ).read()
    return out


def run(root: Path, split: str = "val", shards: list[str] | None = None) -> tuple[int, float]:
    """(samples, CPU seconds) of the floor over `shards` (default: every shard of `root`)."""
    shards = shards or sorted({p.name for p in root.glob(f"{split}/*/*.tar")})
    samples, cpu = 0, time.process_time()
    for shard in shards:
        for members in shard_members(root, split, shard).values():
            convert_sample(members)
            samples += 1
    return samples, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    n, cpu = run(Path(args.root), args.split)
    print(json.dumps({"samples": n, "cpu_seconds": cpu, "cpu_ms_per_sample": 1000 * cpu / max(n, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
