"""A subset materialised in the dataset's own format, for the tools that read TerraMesh's files.

    terramesh-stac subset export NAME --format webdataset --out DIR

writes, under DIR, the TerraMesh tree of the subset's samples only:

    DIR/{split}/{MODALITY}/{shard}.tar     the source shard's name; its members are the subset's
                                           `<key>.zarr.zip`, copied byte for byte from the source
                                           by range reads, in the same order in every modality
    DIR/{split}_metadata.parquet           the source's rows of these samples (or, when the
                                           source has no metadata parquet, the manifest's)

so the dataset card's loader (`terramesh.py`) and the training scripts built on it read it
unchanged. A tar is written to a temporary name and renamed when whole.

    terramesh-stac subset export NAME --format zarr --out DIR

writes DIR/{MODALITY}.zarr: the subset's samples of each modality stacked along `item` (the
layout of the converter's per-shard stores, converters/zarrstack.py), for array users:

    ds = xr.open_dataset("DIR/S2L2A.zarr", engine="zarr")   # ds.bands: (item, time, band, y, x)
    sample = zarrstack.unstack(ds.sel(item=key))             # one sample, georeferenced

A sample that cannot be read or that does not fit its modality's stack is reported (key,
modality, reason) and left out of that store; the rest is written.
"""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from terramesh_stac.converters import zarrstack
from terramesh_stac.converters.zarrzip import CorruptSampleError, decode_zarr_zip
from terramesh_stac.ml.subset import Subset, read_member, url_options

MEMBER_SUFFIX = ".zarr.zip"


@dataclass
class ExportReport:
    out: Path
    samples: int = 0
    tars: int = 0
    bytes: int = 0
    metadata: dict[str, str] = field(default_factory=dict)  # split -> where its rows came from
    stores: list[str] = field(default_factory=list)  # --format zarr: the stores written
    errors: list[dict] = field(default_factory=list)  # key, modality, reason of what was left out

    def summary(self) -> str:
        if self.stores:
            lines = [f"exported {self.samples:,} samples into {len(self.stores)} Zarr stores under {self.out}"]
        else:
            where = "; ".join(f"{split}_metadata.parquet from {src}" for split, src in sorted(self.metadata.items()))
            lines = [
                f"exported {self.samples:,} samples into {self.tars:,} tars ({self.bytes / 1e6:,.1f} MB) under"
                f" {self.out} ({where})"
            ]
        lines += [f"  left out: {e['key']} {e['modality']}: {e['reason']}" for e in self.errors]
        return "\n".join(lines)


def _source_root(href: str) -> str:
    """`<root>/<split>/<MODALITY>/<shard>.tar` -> `<root>`."""
    return href.rsplit("/", 3)[0]


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def _metadata_rows(subset_rows: pa.Table, split: str, storage_options: dict) -> tuple[pa.Table, str]:
    """The source's metadata rows of these samples, else the manifest's own columns."""
    href = subset_rows.column(f"{_first_modality(subset_rows)}_href")[0].as_py()
    source = f"{_source_root(href)}/{split}_metadata.parquet"
    fs, path = fsspec.core.url_to_fs(source, **url_options(source, storage_options))
    members = pa.array([f"{key}{MEMBER_SUFFIX}" for key in subset_rows.column("id").to_pylist()])
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        if "zarr" in table.column_names:
            return table.filter(pc.is_in(table.column("zarr"), value_set=members)), source
    own = pa.table(
        {
            "tar": subset_rows.column("shard"),
            "zarr": members,
            "split": subset_rows.column("split"),
            "center_lon": subset_rows.column("center_lon"),
            "center_lat": subset_rows.column("center_lat"),
            "cloud_cover": subset_rows.column("cloud_cover"),
        }
    )
    return own, "the subset manifest (the source has no metadata parquet)"


def _first_modality(rows: pa.Table) -> str:
    return next(name[: -len("_href")] for name in rows.column_names if name.endswith("_href"))


def export_webdataset(subset: Subset, out: Path, storage_options: dict | None = None, progress=None) -> ExportReport:
    """Write the subset as TerraMesh-format shards under `out` (a local folder)."""
    storage_options = storage_options or {}
    out = Path(out)
    report = ExportReport(out)
    rows = subset.rows.to_pylist()
    by_shard: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:  # the manifest's order (by id): the same in every modality of a shard
        by_shard[(row["split"], row["shard"])].append(row)
    for (split, shard), samples in sorted(by_shard.items()):
        for modality in subset.modalities:
            folder = out / split / modality
            folder.mkdir(parents=True, exist_ok=True)
            members = []
            for row in samples:
                data = read_member(
                    row[f"{modality}_href"], row[f"{modality}_offset"], row[f"{modality}_size"], storage_options
                )
                members.append((f"{row['id']}{MEMBER_SUFFIX}", data))
                report.bytes += len(data)
            _write_tar(folder / shard, members)
            report.tars += 1
            if progress:
                progress(1)
        report.samples += len(samples)
    for split in sorted({row["split"] for row in rows}):
        split_rows = subset.rows.filter(pc.equal(subset.rows.column("split"), split))
        table, source = _metadata_rows(split_rows, split, storage_options)
        pq.write_table(table, out / f"{split}_metadata.parquet")
        report.metadata[split] = source
    return report


def export_zarr(subset: Subset, out: Path, storage_options: dict | None = None, progress=None) -> ExportReport:
    """Write each modality of the subset as one stacked Zarr store under `out` (a local folder)."""
    storage_options = storage_options or {}
    out = Path(out)
    report = ExportReport(out)
    rows = subset.rows.to_pylist()
    written: set[str] = set()

    def put(relpath: str, data: bytes) -> None:
        path = out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    for modality in subset.modalities:
        stack = zarrstack.ShardStackWriter(put, f"{modality}.zarr")
        for row in rows:
            try:
                data = read_member(
                    row[f"{modality}_href"], row[f"{modality}_offset"], row[f"{modality}_size"], storage_options
                )
                stack.add(row["id"], decode_zarr_zip(data))
                written.add(row["id"])
            except (OSError, CorruptSampleError, zarrstack.StackMismatch) as e:
                reason = e.reason if isinstance(e, CorruptSampleError) else f"{type(e).__name__}: {e}"
                report.errors.append({"key": row["id"], "modality": modality, "reason": reason})
            if stack.block_full:
                stack.flush()
            if progress:
                progress(1)
        stack.close()
        if stack.created:  # a modality none of whose samples could be read has no store
            report.stores.append(f"{modality}.zarr")
    report.samples = len(written)
    return report
