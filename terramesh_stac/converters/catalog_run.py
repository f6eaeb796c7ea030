"""The `catalog` command: every sample of `{split}_metadata.parquet` as a STAC item, no pixel read.

    report = build_catalog("path/or/url/of/TerraMesh", CatalogOptions(dest="out"), split="all")

One task per row group of the parquet (`catalog_task`, a plain function a worker can run
anywhere): it reads its row group from the source, makes the items (catalog_items.py) and
writes them, one NDJSON file per shard and row group, under `catalog/items/` of the
destination; what comes back is small (counts, extent, summary, bad rows). Tasks run on a
local process pool (one process per core) or, given a scheduler, on Dask. The client then
writes `catalog/manifests/<split>.json` (catalog_manifest.py) and the collection (its
extent and summaries also cover the converted shards), and with `--load` publishes the
items into pgstac (loader.publish_catalog: shards `convert` finished are left out).

A row without a usable crs, bounds or time is reported with its key and reason; the other
rows are written (the run is partial, exit status 3).
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os
import time
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from .catalog_items import COLUMNS, CatalogContext, cloud_cover_scale, items_of_table
from .catalog_manifest import write_catalog_manifest
from .layout import catalog_items_path, index_path
from .source import open_source
from .storage import DestinationError, Store
from .summary import Extent, Summary

SUMMARY_PROBLEMS = 20  # bad rows listed in the printed summary; the manifest has them all


@dataclass(frozen=True)
class CatalogOptions:
    dest: str
    collection_id: str = "terramesh"
    revision: str | None = None  # None: what the source URL says (a Hub URL's resolve/<rev>/)
    s3_endpoint_url: str | None = None

    def store(self) -> Store:
        return Store(self.dest, endpoint_url=self.s3_endpoint_url)


@dataclass
class TaskResult:
    """What one row group gave: counts, files written, what they cover, bad rows."""

    split: str
    row_group: int
    rows: int = 0
    files: list[dict] = field(default_factory=list)  # {path, shard, count, bytes}
    extent: Extent = field(default_factory=Extent)
    summary: Summary = field(default_factory=Summary)
    errors: list[dict] = field(default_factory=list)

    @property
    def items(self) -> int:
        return sum(f["count"] for f in self.files)


def _byte_ranges(store: Store, split: str, shard: str) -> dict:
    """{(key, modality): (first byte, last byte)} from the shard's byte index, if `convert`
    wrote one; {} otherwise."""
    try:
        data = store.get(index_path(split, shard))
    except FileNotFoundError:
        return {}
    t = pq.read_table(io.BytesIO(data), columns=["key", "modality", "offset", "size", "problem"]).to_pydict()
    return {
        (k, m): (o, o + s - 1)
        for k, m, o, s, p in zip(t["key"], t["modality"], t["offset"], t["size"], t["problem"])
        if p is None and o is not None and s
    }


def catalog_task(source_url: str, split: str, row_group: int, options: CatalogOptions, scale: float) -> TaskResult:
    """Items of one row group of `{split}_metadata.parquet`, written to the destination."""
    source = open_source(source_url, endpoint_url=options.s3_endpoint_url, revision=options.revision)
    store = options.store()
    with source.fs.open(source.metadata_url(split), "rb") as f:
        parquet = pq.ParquetFile(f)
        columns = [c for c in COLUMNS if c in parquet.schema_arrow.names]
        table = parquet.read_row_group(row_group, columns=columns)
    ctx = CatalogContext(
        split=split,
        collection_id=options.collection_id,
        revision=source.revision,
        tar_url=source.shard_url,
        cloud_cover_scale=scale,
    )
    result = TaskResult(split=split, row_group=row_group, rows=table.num_rows)
    for part in items_of_table(table, ctx, byte_ranges=lambda shard: _byte_ranges(store, split, shard)):
        result.errors += part.errors
        if not part.lines:
            continue
        data = part.ndjson()
        path = catalog_items_path(split, part.shard, row_group)
        store.put(path, data)
        result.files.append({"path": path, "shard": part.shard, "count": len(part.lines), "bytes": len(data)})
        result.extent = result.extent.union(part.extent)
        result.summary = result.summary.union(part.summary)
    return result


@dataclass
class CatalogReport:
    rows: int = 0
    items: int = 0
    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    workers: int = 0
    errors: list[dict] = field(default_factory=list)  # bad rows, and splits without a parquet
    collection_href: str = ""
    manifests: list[str] = field(default_factory=list)
    published: dict = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        per_item = self.bytes / self.items if self.items else 0
        lines = [
            f"{self.items:,} items from {self.rows:,} metadata rows in {self.files:,} files "
            f"({self.bytes / 1e6:,.1f} MB, {per_item:,.0f} bytes/item) in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s on {self.workers} workers); collection: {self.collection_href}"
        ]
        if self.published:
            p = self.published
            lines.append(
                f"loaded {p['items']:,} items into pgstac ({p['in_db']:,} there), "
                f"{p.get('skipped_files', 0)} files of converted shards left out"
            )
        if self.errors:
            lines.append(f"{len(self.errors)} problems:")
            lines += [f"  {e.get('key')} ({e.get('shard')}): {e['reason']}" for e in self.errors[:SUMMARY_PROBLEMS]]
            if len(self.errors) > SUMMARY_PROBLEMS:
                lines.append(f"  ... {len(self.errors) - SUMMARY_PROBLEMS} more in the catalog manifests")
        for e in self.published.get("errors", []):
            lines.append(f"load error: {e}")
        return "\n".join(lines)


def _progress(enabled: bool):
    """A rich progress bar of metadata rows, on stderr, only on a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("metadata rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled or not console.is_terminal,
    )
    return bar


def _result(future, task: tuple[str, int, int]) -> TaskResult:
    """A task's result; a row group that failed as a whole (unreadable, a write error) is
    reported as one problem and the run goes on."""
    split, row_group, rows = task
    try:
        return future.result()
    except DestinationError:  # every other row group would fail the same way: stop
        raise
    except Exception as e:  # noqa: BLE001 - reported, the other row groups go on
        reason = f"row group {row_group} of {split}_metadata.parquet failed: {type(e).__name__}: {e}"
        return TaskResult(split, row_group, rows=rows, errors=[{"key": None, "shard": None, "reason": reason}])


def _run_tasks(tasks, source_url, options, scales, scheduler, workers, on_done) -> int:
    """Run catalog_task for each (split, row group, rows): on Dask given a scheduler, else on
    a local process pool; on_done(result) in the client as each finishes. Returns workers."""
    if scheduler:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            n = len(client.scheduler_info()["workers"])
            futures = {
                client.submit(catalog_task, source_url, t[0], t[1], options, scales[t[0]], pure=False): t for t in tasks
            }
            for future in as_completed(futures):
                on_done(_result(future, futures[future]))
                future.release()
        return n
    n = workers or len(os.sched_getaffinity(0))
    # spawn: no fork of a client that may hold threads (pyarrow, rich) or a database connection
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(catalog_task, source_url, t[0], t[1], options, scales[t[0]]): t for t in tasks}
        try:
            for future in concurrent.futures.as_completed(futures):
                on_done(_result(future, futures[future]))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return n


def build_catalog(
    source_url: str,
    options: CatalogOptions,
    *,
    split: str = "val",
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    publisher=None,
) -> CatalogReport:
    """Items of `split` ("all": train and val) from the metadata parquet; see the module doc."""
    from .pipeline import ConvertOptions
    from .run import write_collection

    t0 = time.perf_counter()
    source = open_source(source_url, endpoint_url=options.s3_endpoint_url, revision=options.revision)
    report = CatalogReport()
    tasks, scales = [], {}
    for s in ["train", "val"] if split == "all" else [split]:
        try:
            with source.fs.open(source.metadata_url(s), "rb") as f:
                parquet = pq.ParquetFile(f)
                scales[s] = cloud_cover_scale(parquet)
                tasks += [(s, rg, parquet.metadata.row_group(rg).num_rows) for rg in range(parquet.num_row_groups)]
        except FileNotFoundError:
            report.errors.append({"key": None, "shard": None, "reason": f"no {source.metadata_url(s)}"})
    if not scales:
        raise FileNotFoundError(f"no metadata parquet of split {split!r} under {source.root}")
    store = options.store()
    store.check_writable()

    results: dict[str, list[TaskResult]] = {s: [] for s in scales}
    with _progress(progress) as bar:
        task = bar.add_task("rows", total=sum(n for *_, n in tasks), rate="")

        def done(result: TaskResult) -> None:
            results[result.split].append(result)
            bar.advance(task, result.rows)
            elapsed = bar.tasks[task].elapsed or 0
            bar.update(task, rate=f"{bar.tasks[task].completed / elapsed:,.0f} rows/s" if elapsed else "")

        report.workers = _run_tasks(tasks, source_url, options, scales, scheduler, workers, done)

    for s, parts in results.items():
        parts.sort(key=lambda r: r.row_group)
        extent, summary, errors, files = Extent(), Summary(), [], []
        for r in parts:
            extent, summary = extent.union(r.extent), summary.union(r.summary)
            errors += r.errors
            files += r.files
        manifest = {
            "split": s,
            "collection": options.collection_id,
            "source": source.root,
            "revision": source.revision,
            "rows": sum(r.rows for r in parts),
            "items": sum(r.items for r in parts),
            "files": [{"path": f["path"], "shard": f["shard"], "count": f["count"]} for f in files],
            "extent": {"bbox": extent.bbox, "start": extent.start, "end": extent.end},
            "summary": summary.to_dict(),
            "errors": errors,
        }
        report.manifests.append(write_catalog_manifest(store, manifest))
        report.rows += manifest["rows"]
        report.items += manifest["items"]
        report.files += len(files)
        report.bytes += sum(f["bytes"] for f in files)
        report.errors += errors

    convert_options = ConvertOptions(
        dest=options.dest, collection_id=options.collection_id, s3_endpoint_url=options.s3_endpoint_url
    )
    report.collection_href, collection = write_collection(convert_options, store)
    report.seconds = time.perf_counter() - t0
    if publisher is not None:
        from terramesh_stac.catalog.loader import publish_catalog

        publisher.publish_collection(collection)
        report.published = publish_catalog(publisher)
    return report
