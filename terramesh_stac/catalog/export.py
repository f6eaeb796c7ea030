"""Bulk export of a collection's items from pgstac as stac-geoparquet, and search over it.

`export_geoparquet(dsn, collection_id, out)` writes, at `out` (a local folder or
s3://bucket/prefix, through converters.storage.Store):

    out/year=YYYY/part-0.parquet     the items whose `datetime` falls in year YYYY

Items are the ones the STAC API serves, without what is host-specific: hydrated from the
collection's base item as the API does (hydraters, the same `pgstac:base_item` tag rules as
pgstac's content_nonhydrated), `stac_extensions` completed with what hydration adds
(items.served_extensions), asset hrefs as stored (the API turns local paths under its
folders into its own URLs) and no API links (self, parent, tiles ...).

Layout, for searches that read little: hive partitions by year (a datetime range prunes
whole files); inside a year rows are sorted by the geohash of the footprint's centroid (a
Z-order curve, computed and sorted by PostGIS, so a year never has to fit in memory); row
groups of ROW_GROUP_SIZE rows, so each covers a small region and the `bbox` struct's
min/max statistics let a bbox query skip the others. Compression zstd.

Library: stac-geoparquet (pyarrow), chosen over rustac 0.9.18 by fit and measurement: rustac
keeps only the columns of its first batch, silently dropping the assets and properties a later
batch adds (TerraMesh's items differ: S1GRD or S1RTC, metadata-only or converted), so the
schema is inferred over all items first. 20,000 simple items, schema inference included:
stac-geoparquet's own from_dicts 3.6 s, rustac 1.2 s, the path here 0.3 s (items straight
into Arrow with PostGIS's WKB: from_dicts deep-copies every item and parses its GeoJSON).

Memory stays bounded: two passes over server-side cursors (PAGE_SIZE rows per fetch): one
infers the union schema of all items, one writes, ROW_GROUP_SIZE items at a time. Both passes
go a year at a time, in `workers` processes (the export is Python-bound: hydration and
Arrow conversion), every process reading the export transaction's snapshot
(pg_export_snapshot), so the files hold one consistent state of the collection. The
collection then gets the `geoparquet` asset (role `collection-mirror`,
converters.collection.mirror_asset), visible on /collections/{id}.

`search_parquet(path, bbox, datetime_range, max_cloud, limit)` answers a STAC search from
the export with DuckDB, with pgstac's semantics and order (datetime desc, then collection
and id desc): bbox prefilter on the `bbox` columns, then exact footprint intersection
(shapely) as pgstac's ST_Intersects does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg
import psycopg.sql
import pyarrow as pa
import pyarrow.fs as pafs
from hydraters import hydrate
from psycopg.types.json import set_json_loads
from stac_geoparquet.arrow import to_parquet
from stac_geoparquet.arrow._batch import StacJsonBatch  # raw item rows -> stac-geoparquet columns (0.8.3)
from stac_geoparquet.arrow._schema.models import InferredSchema

from terramesh_stac.catalog.links import rewrite_asset_hrefs
from terramesh_stac.converters.collection import MIRROR_ASSET_KEY, mirror_asset
from terramesh_stac.converters.items import asset_extensions, served_extensions
from terramesh_stac.converters.storage import DestinationError, Store, destination_fault

ROW_GROUP_SIZE = 10_000  # rows per Parquet row group (a region of the year's geohash curve)
PAGE_SIZE = 1_000  # rows per fetch of the server-side cursor
GEOHASH_PRECISION = 10  # ~1 m cells: a total order of the patches' centroids
PARTITION = "year"
FILE_NAME = "part-0.parquet"

_ROWS_SQL = """
SELECT id, collection, ST_AsBinary(geometry), content
FROM pgstac.items
WHERE collection = %(cid)s AND datetime >= %(start)s AND datetime < %(end)s
"""
_SPATIAL_ORDER = " ORDER BY ST_GeoHash(ST_Centroid(geometry), %(precision)s), datetime, id"


class Progress(Protocol):
    """What the export reports: a phase with its total, then items done."""

    def start(self, phase: str, total: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass
class ExportResult:
    collection_id: str
    href: str  # the export's root, as the collection asset links it
    items: int = 0
    files: list[str] = field(default_factory=list)  # relative paths, year=YYYY/part-0.parquet
    bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        per_item = self.bytes / self.items if self.items else 0
        return (
            f"exported {self.items:,} items of collection {self.collection_id!r} to {self.href}: "
            f"{len(self.files)} files, {self.bytes:,} bytes ({per_item:,.0f} B per item) in {self.seconds:.1f} s"
        )


class _Hydrator:
    """Stored pgstac rows -> items as the STAC API serves them, less its host-specific parts."""

    def __init__(self, conn: psycopg.Connection, collection: dict):
        self.conn = conn
        self.extensions_of_assets = asset_extensions(collection.get("item_assets") or {})
        self.bases: dict[tuple[str, Any], dict] = {}

    def _base(self, cid: str, tag: Any) -> dict:
        if (cid, tag) not in self.bases:
            # pgstac's rule: a numeric tag names a base_items row, no tag the collection's first one
            number = int(tag) if tag is not None and str(tag).strip().isdigit() else None
            base = self.conn.execute("SELECT pgstac.collection_base_item(%s, %s)", (cid, number)).fetchone()[0]
            self.bases[cid, tag] = {k: v for k, v in (base or {}).items() if v is not None}
        return self.bases[cid, tag]

    def __call__(self, row: tuple) -> dict:
        """An item dict whose geometry is WKB, as stac-geoparquet stores it."""
        iid, cid, wkb, content = row
        tag = content.pop("pgstac:base_item", None)
        item = {"id": iid, "collection": cid, "type": "Feature", **content}
        item = hydrate(self._base(cid, tag), item, strip_unmatched_markers=True)
        if "stac_extensions" in item:
            item["stac_extensions"] = served_extensions(item, self.extensions_of_assets)
        rewrite_asset_hrefs(item, {}, "")  # what the API leaves out of every item (server paths)
        item["geometry"] = wkb  # PostGIS's own WKB: the same coordinates the API's GeoJSON has
        return item


# stac-geoparquet's StacJsonBatch.from_dicts deep-copies every item and parses its GeoJSON
# geometry (~4 ms per hydrated item, 80 % of the export's time); our items are fresh dicts
# with WKB geometries already (and no proj:geometry), so they go straight into Arrow.
def _raw_batch(items: list[dict], schema: pa.Schema | None = None) -> pa.RecordBatch:
    return pa.RecordBatch.from_struct_array(pa.array(items, type=pa.struct(schema) if schema else None))


def _stac_batch(items: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    """Items -> one stac-geoparquet record batch (properties as columns, bbox struct, timestamps)."""
    return StacJsonBatch(_raw_batch(items, schema)).to_arrow_batch(drop_invalid_properties=True).inner


def _connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn)
    set_json_loads(orjson.loads, conn)  # jsonb rows: orjson is several times faster than json
    return conn


def _year_counts(conn: psycopg.Connection, collection_id: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT extract(year FROM datetime AT TIME ZONE 'UTC')::int, count(*) FROM pgstac.items "
        "WHERE collection = %s GROUP BY 1 ORDER BY 1",
        (collection_id,),
    ).fetchall()
    return dict(rows)


def _year_rows(conn: psycopg.Connection, collection_id: str, year: int, *, ordered: bool) -> Iterator[tuple]:
    """One year's rows from a server-side cursor (PAGE_SIZE per fetch), spatially sorted if `ordered`."""
    params = {
        "cid": collection_id,
        "start": dt.datetime(year, 1, 1, tzinfo=dt.UTC),
        "end": dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC),
        "precision": GEOHASH_PRECISION,
    }
    with conn.cursor(name=f"export_{uuid.uuid4().hex}") as cur:
        cur.itersize = PAGE_SIZE
        cur.execute(_ROWS_SQL + (_SPATIAL_ORDER if ordered else ""), params)
        yield from cur


def _chunks(items: Iterable[dict], size: int, progress: Progress | None) -> Iterator[list[dict]]:
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        if progress:
            progress.advance(len(chunk))
        yield chunk


def _arrow_filesystem(store: Store) -> pafs.FileSystem:
    return pafs.PyFileSystem(pafs.FSSpecHandler(store.fs))


@contextlib.contextmanager
def _writing(store: Store, relpath: str):
    """A path to write `relpath` to, in place at the end: a local file under a temporary name
    first (readers never see half a file), an S3 object directly (visible only once complete)."""
    final = store.path(relpath)
    target = final if store.is_s3 else f"{final}.tmp-{uuid.uuid4().hex}"
    try:
        if not store.is_s3:
            store.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        yield target
        if not store.is_s3:
            store.fs.mv(target, final)
    except Exception as e:
        if not store.is_s3:
            with contextlib.suppress(OSError):
                store.fs.rm_file(target)
        if (message := destination_fault(e, store.href(relpath))) is not None:
            raise DestinationError(message) from e
        raise


def export_geoparquet(
    dsn: str,
    collection_id: str,
    out: str,
    *,
    endpoint_url: str | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
    progress: Progress | None = None,
    workers: int = 1,
) -> ExportResult:
    """Write the collection's items at `out` as stac-geoparquet (module docstring) and link
    the export from the collection in pgstac. ValueError for a collection pgstac lacks.
    `workers` > 1: years in that many processes (the export is Python-bound), all reading
    the same database snapshot; progress then advances a year at a time."""
    if row_group_size < 1:
        raise ValueError(f"row group size must be at least 1, got {row_group_size}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    started = time.perf_counter()
    store = Store(out, endpoint_url=endpoint_url)
    store.check_writable()  # a destination that cannot work fails now, not after the first pass
    result = ExportResult(collection_id, store.href("").rstrip("/"))
    with _connect(dsn) as conn:
        # one snapshot for both passes and every worker: an item loaded in between cannot
        # miss the schema (each worker's transaction imports this one's snapshot)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        row = conn.execute("SELECT content FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone()
        if row is None:
            raise ValueError(f"collection {collection_id!r} is not in pgstac")
        counts = _year_counts(conn, collection_id)
        job = _YearJob(
            dsn=dsn,
            snapshot=conn.execute("SELECT pg_export_snapshot()").fetchone()[0],
            collection=row[0],
            out=out,
            endpoint_url=endpoint_url,
            row_group_size=row_group_size,
        )
        if progress:
            progress.start("reading the schema", sum(counts.values()))
        schemas = dict(_per_year(job.infer, counts, workers, progress))
        inferred = InferredSchema()
        for year in counts:  # in year order, whichever process finished first: the same schema
            inferred.inner = pa.unify_schemas([inferred.inner, schemas[year]], promote_options="permissive")
        inferred.manual_updates()
        if progress:
            progress.start("writing", sum(counts.values()))
        written = dict(_per_year(functools.partial(job.write, schema=inferred.inner), counts, workers, progress))
        result.files = [written[year] for year in counts]
        result.items = sum(counts.values())
        conn.commit()  # the end of the snapshot the items were read in
        _remove_stale(store, result.files)
        result.bytes = sum(store.fs.size(store.path(p)) for p in result.files)
        _link_from_collection(conn, collection_id, result)
        conn.commit()
    result.seconds = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class _YearJob:
    """What a process needs to read and write one year of the export (picklable)."""

    dsn: str
    snapshot: str  # pg_export_snapshot() of the export's transaction
    collection: dict
    out: str
    endpoint_url: str | None
    row_group_size: int

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        with _connect(self.dsn) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(self.snapshot)))
            yield conn
            conn.rollback()  # read only

    def infer(self, year: int, progress: Progress | None = None) -> pa.Schema:
        """The union schema of the year's items (their raw Arrow structs)."""
        cid = self.collection["id"]
        with self._connection() as conn:
            hydrator, schema = _Hydrator(conn, self.collection), None
            for chunk in _chunks(map(hydrator, _year_rows(conn, cid, year, ordered=False)), PAGE_SIZE, progress):
                batch_schema = _raw_batch(chunk).schema
                schema = (
                    batch_schema
                    if schema is None
                    else pa.unify_schemas([schema, batch_schema], promote_options="permissive")
                )
        return schema

    def write(self, year: int, progress: Progress | None = None, *, schema: pa.Schema) -> str:
        """Write the year's file, spatially sorted, a row group per ROW_GROUP_SIZE items; its path."""
        cid = self.collection["id"]
        store = Store(self.out, endpoint_url=self.endpoint_url)
        relpath = f"{PARTITION}={year}/{FILE_NAME}"
        with self._connection() as conn:
            items = map(_Hydrator(conn, self.collection), _year_rows(conn, cid, year, ordered=True))
            batches = (_stac_batch(c, schema) for c in _chunks(items, self.row_group_size, progress))
            first = next(batches)
            with _writing(store, relpath) as target:
                # each batch is written as one row group (pyarrow's write_batch)
                reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))
                to_parquet(
                    reader,
                    target,
                    filesystem=_arrow_filesystem(store),
                    collections={cid: self.collection},
                    compression="zstd",
                )
        return relpath


def _per_year(task, counts: dict[int, int], workers: int, progress: Progress | None) -> Iterator[tuple[int, Any]]:
    """(year, task(year)) for every year: here, item by item progress; or in `workers`
    processes (spawned: no inherited connections or threads), the largest years first."""
    if workers == 1 or len(counts) <= 1:
        for year in counts:
            yield year, task(year, progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(workers, len(counts)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(task, year): year for year in sorted(counts, key=lambda y: -counts[y])}
        for future in as_completed(futures):
            year = futures[future]
            result = future.result()
            if progress:
                progress.advance(counts[year])
            yield year, result


def _link_from_collection(conn: psycopg.Connection, collection_id: str, result: ExportResult) -> None:
    """The collection as it is now (re-read: it may have been reloaded meanwhile) plus the
    export's asset, in pgstac."""
    collection = conn.execute("SELECT content FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone()[0]
    collection.setdefault("assets", {})[MIRROR_ASSET_KEY] = mirror_asset(
        result.href, items=result.items, files=len(result.files)
    )
    conn.execute("SELECT pgstac.update_collection(%s::text::jsonb)", (orjson.dumps(collection).decode(),))


def _remove_stale(store: Store, written: list[str]) -> None:
    """Files of an earlier export that this one did not write (a year without items now)."""
    for relpath in store.glob(f"{PARTITION}=*/*.parquet"):
        if relpath not in written:
            store.delete(relpath)


# --- search ---------------------------------------------------------------------------


def _datetime_bounds(datetime_range: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """A STAC `datetime` ("A/B", "../B", "A/..", or one instant) as inclusive bounds."""
    if not datetime_range:
        return None, None

    def parse(text: str) -> dt.datetime | None:
        if text in ("", ".."):
            return None
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    start, sep, end = datetime_range.partition("/")
    try:
        return (parse(start), parse(end)) if sep else (parse(start),) * 2
    except ValueError:
        raise ValueError(f"datetime must be an RFC 3339 instant or interval A/B, got {datetime_range!r}") from None


_duckdb = threading.local()


def search_parquet(
    path: str,
    bbox: list[float] | tuple[float, ...] | None = None,
    datetime_range: str | None = None,
    max_cloud: float | None = None,
    limit: int = 10,
    *,
    ids_only: bool = False,
    endpoint_url: str | None = None,
) -> list[dict] | list[str]:
    """The search of a STAC API (bbox, datetime, `eo:cloud_cover < max_cloud`, limit) answered
    from an export (local folder or s3://) with DuckDB: item dicts, or ids with `ids_only`,
    in pgstac's default order (datetime desc, collection desc, id desc)."""
    import duckdb
    import shapely
    from stac_geoparquet.arrow import stac_table_to_items

    if bbox is not None and len(bbox) != 4:
        raise ValueError(f"bbox must be [xmin, ymin, xmax, ymax], got {bbox!r}")
    start, end = _datetime_bounds(datetime_range)
    store = Store(path, endpoint_url=endpoint_url)
    if getattr(_duckdb, "con", None) is None:  # one connection per thread: connecting costs ~30 ms
        _duckdb.con = duckdb.connect()
    con = _duckdb.con
    if store.is_s3:  # DuckDB's own S3 reader is an extension it would download: read through pyarrow
        import pyarrow.dataset as pads

        dataset = pads.dataset(
            store.path(""), filesystem=_arrow_filesystem(store), format="parquet", partitioning="hive"
        )
        con.register("export_items", dataset)
        source = "export_items"
    else:
        source = f"read_parquet('{store.path(f'{PARTITION}=*/*.parquet')}', hive_partitioning = true)"
    where, params = ["TRUE"], []
    if bbox is not None:
        where.append("bbox.xmin <= ? AND bbox.xmax >= ? AND bbox.ymin <= ? AND bbox.ymax >= ?")
        params += [bbox[2], bbox[0], bbox[3], bbox[1]]
    if start is not None:
        where.append(f"{PARTITION} >= ? AND datetime >= ?")  # the partition column prunes whole files
        params += [start.astimezone(dt.UTC).year, start]
    if end is not None:
        where.append(f"{PARTITION} <= ? AND datetime <= ?")
        params += [end.astimezone(dt.UTC).year, end]
    if max_cloud is not None:
        where.append('"eo:cloud_cover" < ?')
        params.append(max_cloud)
    # first the few columns that decide which items match, in order; then the whole rows of those
    condition = " AND ".join(where)
    reader = con.sql(
        f"SELECT id, geometry FROM {source} WHERE {condition} ORDER BY datetime DESC, collection DESC, id DESC",
        params=params,
    ).to_arrow_reader(max(limit, 1) * 4)
    area = shapely.box(*bbox) if bbox is not None else None
    ids: list[str] = []
    for batch in reader:  # in order: the first `limit` rows whose footprint meets the bbox
        if area is not None:
            hits = shapely.intersects(shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False)), area)
            batch = batch.filter(pa.array(hits))
        ids += batch.column("id").to_pylist()[: limit - len(ids)]
        if len(ids) >= limit:
            break
    reader.close()  # the rest of the result is not needed (and DuckDB runs one query at a time)
    if ids_only or not ids:
        return ids
    table = con.sql(
        f"SELECT * EXCLUDE ({PARTITION}) FROM {source} WHERE {condition} AND list_contains(?, id)",
        params=[*params, ids],
    ).to_arrow_table()
    position = {iid: n for n, iid in enumerate(table.column("id").to_pylist())}
    return list(stac_table_to_items(table.take([position[i] for i in ids])))
