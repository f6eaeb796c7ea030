"""The baseline of benchmarks/ml.py, run inside the old-zarr venv (tests/official_loader.py): the
dataset card's loader streaming whole shards, with its own calls.

    <official venv python> benchmarks/official_stream.py ROOT --modalities S2L2A,DEM --workers 4
    <official venv python> benchmarks/official_stream.py ROOT --modalities S2L2A --find KEY
    ... --urls urls.json     the tars over HTTP (e.g. presigned URLs of an S3-compatible server)

As the loader is used, under torch's DataLoader(num_workers=--workers, batch_size=None):
each worker takes every n-th shard (WebDataset's split by worker), reads the modality tars
of a shard side by side (their members come in the same order), decodes every member as
`zarr_metadata_decoding` does (fsspec zip + zarr.open_consolidated, bands, centre, cloud
mask, time) and hands the sample to the training process. Prints one JSON line: samples,
seconds, samples/s.
With --find KEY: the seconds until the shards, scanned in order, reach KEY's member (read,
not decoded: what selecting one sample from shards costs).

Standard library, zarr 2, fsspec and torch only (the venv of tests/official_loader.py
with torch: `official_venv(("torch==2.13.0",))`).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
import urllib.request
from pathlib import Path


def _decode(value: bytes) -> dict:
    import fsspec
    import numpy as np
    import zarr

    mapper = fsspec.filesystem("zip", fo=io.BytesIO(value), block_size=None).get_mapper("")
    data = zarr.open_consolidated(mapper, mode="r")
    out = {"bands": data["bands"][...], "center_lon": data["center_lon"][...], "center_lat": data["center_lat"][...]}
    if "cloud_mask" in data:
        out["cloud_mask"] = data["cloud_mask"][...][np.newaxis, ...]
    if data["time"][...] > 1e6:
        out["time"] = data["time"][...]
    return out


URLS: dict[str, str] = {}  # "<MODALITY>/<shard>" -> URL, with --urls (shards over HTTP)


def _members(path: Path):
    """The tar's members in order, streamed (from its URL when --urls names one)."""
    url = URLS.get(f"{path.parent.name}/{path.name}")
    with urllib.request.urlopen(url) if url else open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for member in tf:
            if member.name.endswith(".zarr.zip"):
                yield member.name, tf.extractfile(member).read()


def _shard_stream(root: str, split: str, modalities: list[str], shards: list[str]):
    """The loader's samples: {__key__, <MODALITY>: bands, center_lon, ...} per sample."""
    import torch.utils.data

    class Shards(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            mine = shards[info.id :: info.num_workers] if info else shards
            for shard in mine:
                for members in zip(*(_members(Path(root) / split / m / shard) for m in modalities)):
                    names = {name for name, _ in members}
                    if len(names) != 1:
                        raise RuntimeError(f"{shard}: modality tars disagree: {names}")
                    sample = {"__key__": members[0][0].split(".", 1)[0]}
                    for m, (_, value) in zip(modalities, members):
                        decoded = _decode(value)
                        sample[m] = decoded.pop("bands")
                        sample.update({k if k != "time" else f"time_{m}": v for k, v in decoded.items()})
                    yield sample

    return Shards()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--split", default="val")
    ap.add_argument("--modalities", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--find")
    ap.add_argument("--urls", help="JSON file: {'<MODALITY>/<shard>': URL} (e.g. presigned S3 URLs)")
    args = ap.parse_args()
    if args.urls:
        URLS.update(json.loads(Path(args.urls).read_text()))
    modalities = args.modalities.split(",")
    shards = sorted(p.name for p in (Path(args.root) / args.split / modalities[0]).glob("*.tar"))
    t = time.perf_counter()
    if args.find:
        for shard in shards:
            for name, _ in _members(Path(args.root) / args.split / modalities[0] / shard):
                if name == f"{args.find}.zarr.zip":
                    print(json.dumps({"found": args.find, "seconds": time.perf_counter() - t}))
                    return 0
        print(json.dumps({"found": None, "seconds": time.perf_counter() - t}))
        return 1
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _shard_stream(args.root, args.split, modalities, shards), num_workers=args.workers, batch_size=None
    )
    samples = sum(1 for _ in loader)
    seconds = time.perf_counter() - t
    print(json.dumps({"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
