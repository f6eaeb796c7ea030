"""Bulk-load what a conversion wrote (collection + NDJSON items) into pgstac, then check it.

Layout read at `dest` (a local folder or s3://bucket/prefix):

    dest/collection.json
    dest/items/**/*.ndjson      one STAC item per line (.ndjson.gz also read)
    dest/catalog/manifests/<split>.json + the items files they list: what `catalog` made
                                from the metadata alone, loaded first and only for shards
                                `convert` has not finished (publish_catalog)

`load` runs as the loader role (a member of pgstac_ingest). Items are made whole with the
collection's item_assets, dehydrated by pypgstac's Loader.format_item and written by
terramesh_stac.catalog.bulk.PartitionWriter: COPY straight into the partitions when the
collection has no items yet, else an upsert of only the rows that changed (an item whose
datetime moved partition leaves its old one), so loading the same output twice leaves the same
rows. Before the first item the collection's partitioning and queryables are set
(terramesh_stac.catalog.database.prepare_collection). Files are read once each and written in
batches of about BATCH_ITEMS items, one batch after the other, never in parallel: concurrent
upserts into one partition deadlock (pgstac#285). After each batch the items of each of its
files are counted in pgstac; a difference is an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from terramesh_stac import cyclic_gc
from terramesh_stac.catalog import database, density
from terramesh_stac.catalog.bulk import PartitionWriter
from terramesh_stac.converters.item_assets import full_item
from terramesh_stac.converters.layout import published_path
from terramesh_stac.converters.storage import Store

if TYPE_CHECKING:  # the manifest module pulls in the converters' codecs
    from terramesh_stac.converters.manifest import Manifest

log = logging.getLogger(__name__)

ITEM_SUFFIXES = (".ndjson", ".ndjson.gz")
BATCH_ITEMS = 20_000  # items per write: per-partition costs are paid once per batch, not per file


class LoadError(RuntimeError):
    """The load failed or pgstac holds a different number of items than were written."""

    def __init__(self, message: str, result: LoadResult):
        super().__init__(message)
        self.result = result


@dataclass
class FileCount:
    path: str
    written: int  # item lines in the file
    in_db: int  # of those (collection, id) pairs, how many pgstac holds after the load


@dataclass
class LoadResult:
    dest: str
    collection_id: str
    files: list[FileCount] = field(default_factory=list)
    expected: int | None = None  # a caller's expected total, checked when given
    collection_seconds: float = 0.0
    items_seconds: float = 0.0
    check_seconds: float = 0.0
    density_seconds: float = 0.0  # the map's density recount (catalog/density.py)
    total_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(f.written for f in self.files)

    @property
    def in_db(self) -> int:
        return sum(f.in_db for f in self.files)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def items_per_second(self) -> float:
        return self.written / self.items_seconds if self.items_seconds else 0.0

    def summary(self) -> str:
        text = (
            f"loaded {self.written} items from {len(self.files)} files into collection "
            f"{self.collection_id!r} ({self.in_db} in pgstac) in {self.total_seconds:.1f} s "
            f"(collection {self.collection_seconds:.2f} s, items {self.items_seconds:.2f} s "
            f"= {self.items_per_second:.0f}/s, check {self.check_seconds:.2f} s, map density {self.density_seconds:.2f} s)"
        )
        return text if self.ok else text + "\nERRORS:\n  " + "\n  ".join(self.errors)


def item_files(store: Store) -> list[str]:
    """Relative paths of the NDJSON item files under items/, sorted."""
    return sorted(p for suffix in ITEM_SUFFIXES for p in store.glob(f"items/**/*{suffix}"))


def read_items(store: Store, relpath: str) -> Iterator[dict]:
    """The items of one NDJSON file (gzip-compressed too), one dict per line."""
    with store.fs.open(store.path(relpath), "rb", compression="infer") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise ValueError(f"{relpath}:{n}: not a JSON line: {e}") from None


def database_identity(dsn: str) -> str:
    """host:port/dbname of a DSN, without credentials (recorded in publication markers)."""
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


class Publisher:
    """One writer into pgstac: the collection, then item files (or finished shards) in turn.

    Items are written by a bulk.PartitionWriter (COPY into a fresh collection's partitions,
    else an upsert of changed rows; an item whose datetime changed moves instead of being
    duplicated). After each batch each file's ids are counted in pgstac. finish() (also run
    on exit) brings partition stats and constraints up to date.

        with Publisher(dsn, store) as publisher:
            publisher.publish_collection(collection_dict)
            publisher.publish_shards(manifests)   # see converters/manifest.py
    """

    def __init__(self, dsn: str, store: Store, *, partition: str | None = "month"):
        self.dsn, self.store, self.partition = dsn, store, partition
        self.collection_id: str | None = None
        self.item_assets: dict = {}  # the collection's: what lean items are loaded with
        self.files: list[FileCount] = []
        self.errors: list[str] = []
        self.items_seconds = self.check_seconds = 0.0
        self.batches = self.shards = 0
        self.database = database_identity(dsn)
        self._writer: PartitionWriter | None = None
        self._written_since_check = False
        self._changed = False  # items written or deleted: the map's density is recounted on exit
        self.density_seconds = 0.0

    def __enter__(self) -> Publisher:
        from pypgstac.load import Loader

        self._db_context = database.pgstac_db(self.dsn)
        self._db = self._db_context.__enter__()
        self._loader = Loader(self._db)
        self._conn = self._db.connect()
        return self

    def __exit__(self, *exc):
        try:
            self.finish()  # even after a failure: what was written gets its stats and constraints
            if self._changed and exc[0] is None:
                self.refresh_density()
            elif self._changed:  # after a failure: try, without hiding the failure
                try:
                    self.refresh_density()
                except Exception as e:  # noqa: BLE001
                    log.warning("map density of %s not recounted: %s", self.collection_id, e)
        finally:
            self._db_context.__exit__(*exc)

    def refresh_density(self) -> None:
        """Recount the map's density cells (catalog/density.py) of the collection: once per
        load, as it reads every item of the collection (32-36 s per million items, measured)."""
        t = time.perf_counter()
        density.refresh(self._conn, self.collection_id)
        self._changed = False
        self.density_seconds += time.perf_counter() - t
        log.info("map density of %s recounted in %.1f s", self.collection_id, self.density_seconds)

    def finish(self) -> None:
        """Partition stats and tight constraints of what was written; errors recorded."""
        if self._writer is not None:
            self.errors.extend(self._writer.finish(check_twice=self._written_since_check))
            self._written_since_check = False

    def publish_collection(self, collection: dict) -> None:
        from pypgstac.load import Methods

        self._loader.load_collections(iter([collection]), Methods.upsert)
        database.prepare_collection(self._conn, collection["id"], self.partition)
        self._loader.collection_json.cache_clear()  # partition_trunc may have changed
        self.collection_id = collection["id"]
        self.item_assets = collection.get("item_assets") or {}
        self._writer = PartitionWriter(self._loader, self._conn, self.collection_id)

    def load_file(self, relpath: str, expected_ids: set[str] | None = None) -> FileCount | None:
        """Load one NDJSON item file; None (and an error recorded) if it cannot be loaded."""
        return self.load_files([(relpath, expected_ids)])[0]

    def load_files(self, files: list[tuple[str, set[str] | None]]) -> list[FileCount | None]:
        """Load NDJSON item files (relpath, ids the file must hold or None) in one write: its
        cost is mostly per (write, month partition), and a shard's items spread over many
        months. Each file's ids are counted in pgstac afterwards; a file that cannot be read or
        fails its checks is left out (None, error recorded)."""
        return self.load_checked([(relpath, self.read_checked(relpath, expected)) for relpath, expected in files])

    def rows(self, checked: list[tuple[str, list[dict] | None]]) -> list[dict] | None:
        """The pgstac rows of files already read, or None if the files repeat ids (then
        load_checked loads them file by file). Pure Python: may run beside load_checked."""
        batch = [item for _, items in checked if items for item in items]
        if len({i["id"] for i in batch}) != len(batch) and len(checked) > 1:  # ids repeated across files
            return None
        # whole items: pypgstac stores only what differs from the collection's item_assets
        # and marks what an item lacks, so a lean item loaded as it is would be served lean
        return self._writer.format(full_item(i, self.item_assets) for i in batch)

    def load_checked(
        self, checked: list[tuple[str, list[dict] | None]], rows: list[dict] | None = None
    ) -> list[FileCount | None]:
        """load_files for files already read (read_checked: items, or None if refused), with
        their rows when already made (rows())."""
        t = time.perf_counter()
        rows = self.rows(checked) if rows is None else rows
        if rows is None:
            return [c for one in checked for c in self.load_checked([one])]
        if rows:
            self._writer.write_rows(rows)
            self._written_since_check = self._changed = True
        self.items_seconds += time.perf_counter() - t
        t = time.perf_counter()
        stored = self._writer.stored_ids(rows)
        self.check_seconds += time.perf_counter() - t
        counts = []
        for relpath, items in checked:
            if items is None:
                counts.append(None)
                continue
            count = FileCount(relpath, written=len(items), in_db=sum(i["id"] in stored for i in items))
            self.files.append(count)
            if count.in_db != count.written:
                self.errors.append(f"{relpath}: wrote {count.written} items, pgstac holds {count.in_db} of them")
            log.info("%s: %d items, %d in pgstac", relpath, count.written, count.in_db)
            counts.append(count)
        return counts

    def read_checked(self, relpath: str, expected_ids: set[str] | None) -> list[dict] | None:
        """A file's items, or None (error recorded) if unreadable or failing a check."""
        cid = self.collection_id
        try:
            items = list(read_items(self.store, relpath))
        except (ValueError, OSError) as e:
            self.errors.append(str(e))
            return None
        for item in items:
            item.setdefault("collection", cid)
        strays = {i["collection"] for i in items} - {cid}
        if strays:
            self.errors.append(f"{relpath}: items of other collections {sorted(strays)} (expected {cid!r})")
            return None
        pairs = [(i["collection"], i["id"]) for i in items]
        if expected_ids is not None and {i for _, i in pairs} != expected_ids:
            self.errors.append(f"{relpath}: its items differ from the shard's manifest; not loaded")
            return None
        duplicates = len(pairs) - len(set(pairs))
        if duplicates:  # pgstac rejects a batch that names a row twice
            self.errors.append(f"{relpath}: {duplicates} duplicate item ids; file not loaded")
            self.files.append(FileCount(relpath, written=len(items), in_db=0))
            return None
        return items

    def _delete(self, ids: list[str]) -> None:
        if ids:
            self._conn.execute(
                "DELETE FROM pgstac.items WHERE collection = %s AND id = ANY(%s)", (self.collection_id, list(ids))
            )
            self._conn.commit()
            self._changed = True

    def publish_shards(self, manifests: list[Manifest]) -> None:
        """Load the items of finished shards not yet published (as their manifest says) into
        this database; remove items a new revision dropped; mark each shard published."""
        self.batches += 1
        pending = []  # (manifest, marker path, marker) of shards to load, in one call
        for m in manifests:
            marker_path = published_path(m.split, m.shard)
            marker = {
                "items_sha256": m.items.sha256,
                "content_id": m.content_id,
                "database": self.database,
                "collection": self.collection_id,
            }
            try:
                if orjson.loads(self.store.get(marker_path)) == marker:
                    continue  # this very content is in this database already
            except FileNotFoundError:
                pass
            pending.append((m, marker_path, marker))
        for m, _, _ in pending:
            self._delete(m.items.removed)
        counts = self.load_files([(m.items.path, set(m.items.ids)) for m, _, _ in pending])
        self.finish()  # stats and constraints of this batch's partitions, before it is marked published
        for (m, marker_path, marker), count in zip(pending, counts):
            if count is None or count.in_db != m.items.count:
                self.errors.append(
                    f"{m.split}/{m.shard}: manifest says {m.items.count} items, "
                    f"pgstac holds {count.in_db if count else 0}"
                )
                continue
            self.store.put(marker_path, orjson.dumps(marker, option=orjson.OPT_SORT_KEYS))
            self.shards += 1

    @property
    def in_db(self) -> int:
        return sum(f.in_db for f in self.files)

    def summary(self) -> dict:
        written = sum(f.written for f in self.files)
        return {
            "items": written,
            "in_db": sum(f.in_db for f in self.files),
            "shards": self.shards,
            "batches": self.batches,
            "seconds": self.items_seconds + self.check_seconds,
            "density_seconds": self.density_seconds,
            "items_per_second": written / self.items_seconds if self.items_seconds else 0.0,
            "errors": list(self.errors),
        }


def _batches(publisher: Publisher, paths: list[str]) -> Iterator[tuple[int, list]]:
    """(files read so far, [(relpath, items or None)]) of about BATCH_ITEMS items each."""
    batch: list[tuple[str, list[dict] | None]] = []
    for n, relpath in enumerate(paths, 1):
        batch.append((relpath, publisher.read_checked(relpath, None)))
        if n == len(paths) or sum(len(items or ()) for _, items in batch) >= BATCH_ITEMS:
            yield n, batch
            batch = []


def _progress(enabled: bool):
    """A rich progress bar on stderr, or one that shows nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=True)


def _load_pipelined(publisher: Publisher, paths: list[str], on_files_done=None) -> None:
    """Load these item files in batches. Reading and formatting a batch (Python) runs while
    the previous one is written (the database): one writer thread, so the database still
    sees one batch at a time. `on_files_done(n)`: after each batch, files done so far."""
    with ThreadPoolExecutor(max_workers=1) as writer, cyclic_gc.paused() as collect:
        pending = None
        for n, batch in _batches(publisher, paths):
            collect()
            t = time.perf_counter()
            rows = publisher.rows(batch)
            publisher.items_seconds += time.perf_counter() - t
            if pending is not None:
                pending.result()
            pending = writer.submit(publisher.load_checked, batch, rows)
            if on_files_done is not None:
                pending.add_done_callback(lambda _, n=n: on_files_done(n))
        if pending is not None:
            pending.result()


def publish_catalog(publisher: Publisher, on_files_done=None) -> dict:
    """Load the items `terramesh-stac catalog` made from the metadata parquet (listed in
    `catalog/manifests/<split>.json`), except those of shards `convert` finished: a converted
    item is never replaced by its metadata-only version. Each file's count is checked
    against the catalog manifest and in pgstac. Returns what was loaded."""
    from terramesh_stac.converters.catalog_manifest import pending_catalog_files

    files, skipped = pending_catalog_files(publisher.store, publisher.collection_id)
    first = len(publisher.files)
    _load_pipelined(publisher, [relpath for relpath, _ in files], on_files_done)
    expected = dict(files)
    loaded = publisher.files[first:]
    for f in loaded:
        if f.written != expected.get(f.path, f.written):
            publisher.errors.append(
                f"{f.path}: the catalog manifest says {expected[f.path]} items, the file holds {f.written}"
            )
    return {
        "files": len(loaded),
        "skipped_files": skipped,
        "items": sum(f.written for f in loaded),
        "in_db": sum(f.in_db for f in loaded),
        "errors": list(publisher.errors),
    }


def load(
    dest: str,
    dsn: str,
    *,
    collection_path: str | None = None,
    partition: str | None = "month",
    expected_count: int | None = None,
    endpoint_url: str | None = None,
    raise_on_error: bool = True,
    progress: bool = False,
) -> LoadResult:
    """Upsert dest's collection and items into pgstac as `dsn` (the loader role) and check counts.

    collection_path: the collection JSON, relative to dest (default "collection.json") or an
    absolute path/URL. partition: pgstac partition_trunc set before the first item ("month",
    "year" or None). expected_count: a total the caller expects, checked on top of the per-file
    counts. Raises LoadError (with .result) on any error unless raise_on_error is False.
    progress: a rich progress bar (files loaded) on stderr.
    """
    t0 = time.perf_counter()
    store = Store(dest, endpoint_url=endpoint_url)
    if collection_path is None:
        collection = orjson.loads(store.get("collection.json"))
    elif "://" in collection_path or collection_path.startswith("/"):
        collection = orjson.loads(
            Store(collection_path.rsplit("/", 1)[0], endpoint_url=endpoint_url).get(collection_path.rsplit("/", 1)[1])
        )
    else:
        collection = orjson.loads(store.get(collection_path))
    result = LoadResult(dest=dest, collection_id=collection["id"], expected=expected_count)

    with Publisher(dsn, store, partition=partition) as publisher, _progress(progress) as bar:
        publisher.publish_collection(collection)
        result.collection_seconds = time.perf_counter() - t0
        task = bar.add_task("loading items", total=None)
        files_before = 0  # files of the steps before the current one

        def files_done(n: int) -> None:
            bar.update(task, completed=files_before + n, description=f"loading items ({publisher.in_db:,} in pgstac)")

        publish_catalog(publisher, files_done)  # first: converted items of the same ids then replace them
        files_before = len(publisher.files)
        paths = item_files(store)
        bar.update(task, total=files_before + len(paths))
        _load_pipelined(publisher, paths, files_done)
        t = time.perf_counter()
        publisher.finish()
        result.check_seconds += time.perf_counter() - t
    result.files, result.errors = publisher.files, publisher.errors
    result.density_seconds = publisher.density_seconds  # recounted as the publisher closed
    result.items_seconds, result.check_seconds = publisher.items_seconds, result.check_seconds + publisher.check_seconds

    if not result.files and not result.errors:
        result.errors.append(f"no item files under {store.href('items')} (*.ndjson)")
    if expected_count is not None and result.in_db != expected_count:
        result.errors.append(f"expected {expected_count} items, pgstac holds {result.in_db} of those loaded")
    result.total_seconds = time.perf_counter() - t0
    if result.errors and raise_on_error:
        raise LoadError(result.summary(), result)
    return result
