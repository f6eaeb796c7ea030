"""Write item rows into pgstac's partitions: COPY into fresh ones, upsert what changed otherwise.

pypgstac's Loader.load_items pays per (call, partition): a catalog lookup, check_partition,
a COPY into a temp table, an INSERT from it and update_partition_stats, which re-tightens the
partition's CHECK constraints and so re-validates the whole partition each time. Loading file
by file, that is O(files x partitions) scans. PartitionWriter keeps what it learnt about each
partition for the whole session instead:

- check_partition once per partition, with the partition's whole datetime range (a wider
  constraint than the rows need is still true of them), so later batches never rebuild it;
- a collection without items when the writer started is loaded "fresh": a batch's rows are
  COPYed into pgstac.items in one statement (PostgreSQL routes them; no temp table, no
  conflict handling). A unique-id violation (an id given twice) falls back to the upsert
  path for that batch. A partition still empty when first written gets its queryable indexes
  after its rows (terramesh.defer_queryable_indexes, then pgstac's maintain_partitions in
  finish()): kept up row by row, those expression indexes were ~40 % of the database's time;
- otherwise (a re-load) rows go through a temp table into their partition, upserted with
  `WHERE t IS DISTINCT FROM EXCLUDED`, so unchanged items are not rewritten; a row new to its
  partition (the item's datetime moved, or a new item) has its id deleted from the others;
- `finish()` rebuilds deferred indexes, runs update_partition_stats once per touched
  partition (stats, tight constraints, extent) and, after a fresh load, checks no id is
  stored twice.

Rows come from pypgstac's own Loader.format_item (dehydration against the collection's
base_item, geometry as EWKB), so the stored rows are the ones pypgstac would store.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg
import shapely
from psycopg import sql

log = logging.getLogger(__name__)

COLUMNS = ("id", "collection", "datetime", "end_datetime", "geometry", "content", "private")
_COPY_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))


def ewkb(geometries: list[dict | None], ids: list[str]) -> list[str | None]:
    """GeoJSON geometries as hex EWKB (SRID 4326), None kept; ValueError naming a bad item."""
    present = [n for n, g in enumerate(geometries) if g is not None]
    try:
        shapes = shapely.from_geojson([orjson.dumps(geometries[n]) for n in present])
    except shapely.errors.GEOSException:
        for n in present:  # which one
            try:
                shapely.from_geojson(orjson.dumps(geometries[n]))
            except shapely.errors.GEOSException as e:
                raise ValueError(f"item {ids[n]!r}: invalid geometry: {e}") from None
        raise
    out: list[str | None] = [None] * len(geometries)
    for n, wkb in zip(present, shapely.to_wkb(shapely.set_srid(shapes, 4326), hex=True, include_srid=True)):
        out[n] = wkb
    return out


@dataclass
class _Partition:
    edt_lo: datetime | None = None  # end_datetime range its constraint is known to allow
    edt_hi: datetime | None = None


def _instant(text: str) -> datetime:
    """A row's datetime string (pypgstac's format) as an aware datetime."""
    return datetime.fromisoformat(text)


def _copy_rows(cur: psycopg.Cursor, table: sql.Composable, rows: list[dict]) -> None:
    """COPY rows (made by PartitionWriter.format) into a table with pgstac.items' columns."""
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, _COPY_COLUMNS)) as copy:
        for r in rows:
            copy.write_row(tuple(r.get(c) for c in COLUMNS))


def _by_partition(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The rows grouped by the partition they belong to, in partition name order (sorts
    `rows` in place: a COPY of rows in partition order fills one partition at a time)."""
    rows.sort(key=lambda r: r["partition"])
    return [(name, list(group)) for name, group in itertools.groupby(rows, key=lambda r: r["partition"])]


def _copy(conn: psycopg.Connection, rows: list[dict]) -> None:
    """One COPY into pgstac.items, one transaction (PostgreSQL routes each row to its
    partition): a statement and a transaction per partition cost round trips that were a
    fifth of the load's time."""
    with conn.transaction(), conn.cursor() as cur:
        _copy_rows(cur, sql.SQL("pgstac.items"), rows)


class PartitionWriter:
    """Rows of one collection into pgstac, partition by partition, over one connection.

    `loader` is a pypgstac Loader (for format_item and the collection's cached base_item),
    `conn` an autocommit psycopg connection as a pgstac_ingest member.
    """

    def __init__(self, loader, conn: psycopg.Connection, collection_id: str):
        self.loader, self.conn, self.collection_id = loader, conn, collection_id
        self.partitions: dict[str, _Partition] = {}
        self.fresh = not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pgstac.items WHERE collection = %s)", (collection_id,)
        ).fetchone()[0]
        # partitions whose queryable indexes finish() builds: those this load defers, and those
        # of a load that was killed before its finish()
        self.deferred: set[str] = {
            name
            for (name,) in conn.execute(
                "SELECT partition FROM terramesh.deferred_indexes WHERE collection = %s", (collection_id,)
            )
        }
        self.fallbacks = 0  # fresh batches that had to be upserted (an id given twice)
        loader.collection_json(collection_id)  # cached now: format() then needs no database

    def write(self, items) -> int:
        """Format and write whole items (dicts); returns the number of rows written."""
        return self.write_rows(self.format(items))

    def format(self, items) -> list[dict]:
        """Whole items as pgstac rows (pure Python, no database: may run beside write_rows)."""
        items = list(items)
        # geometries as EWKB in one vectorised shapely call: pypgstac's per-item plpygis
        # conversion was a quarter of the load's Python time (same hex EWKB, SRID 4326)
        rows = [self.loader.format_item({**item, "geometry": None}) for item in items]
        for row, wkb in zip(rows, ewkb([item.get("geometry") for item in items], [r["id"] for r in rows])):
            row["geometry"] = wkb
        return rows

    def write_rows(self, rows: list[dict]) -> int:
        """Write rows made by format(); returns their number."""
        groups = _by_partition(rows)
        for name, group in groups:
            self._ensure_partition(name, group)
        if self.fresh:
            try:
                _copy(self.conn, rows)
                return len(rows)
            except psycopg.errors.UniqueViolation:
                self.fallbacks += 1  # an id already loaded in this session: upsert the batch instead
        self._upsert(groups)
        return len(rows)

    def stored_ids(self, rows: list[dict]) -> set[str]:
        """The ids of these rows that pgstac holds, each looked up in the partition it was
        written to (its unique index): a lookup across all partitions probes every one of
        them, and a join scans them, which grows with the catalog, not with the batch."""
        ids_by_partition: dict[str, list[str]] = {}  # (rows stay as they are: no sort)
        for r in rows:
            ids_by_partition.setdefault(r["partition"], []).append(r["id"])
        stored: set[str] = set()
        for name, ids in ids_by_partition.items():
            query = sql.SQL("SELECT id FROM pgstac.{} WHERE id = ANY(%s)").format(sql.Identifier(name))
            stored.update(i for (i,) in self.conn.execute(query, (ids,)))
        return stored

    def _upsert(self, groups: list[tuple[str, list[dict]]]) -> None:
        """Upsert each partition's rows (one transaction for the batch): unchanged rows are
        not rewritten; a row new to its partition may be an item whose datetime moved, so
        its id is deleted from the collection's other partitions (by id: their unique
        indexes; a join would scan the whole collection once per partition and batch)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS _terramesh_ingest (LIKE pgstac.items) ON COMMIT DELETE ROWS")
            for name, group in groups:
                cur.execute("DELETE FROM _terramesh_ingest")
                _copy_rows(cur, sql.Identifier("_terramesh_ingest"), group)
                cur.execute(
                    sql.SQL(
                        "INSERT INTO pgstac.{} AS t SELECT * FROM _terramesh_ingest ON CONFLICT (id) DO UPDATE SET "
                        "datetime = EXCLUDED.datetime, end_datetime = EXCLUDED.end_datetime, "
                        "geometry = EXCLUDED.geometry, content = EXCLUDED.content, private = EXCLUDED.private "
                        "WHERE t IS DISTINCT FROM EXCLUDED "  # unchanged items are not rewritten
                        "RETURNING t.id, t.xmax = 0"  # xmax 0: inserted, not updated
                    ).format(sql.Identifier(name))
                )
                inserted = [i for i, new in cur.fetchall() if new]
                if inserted:
                    cur.execute(
                        "DELETE FROM pgstac.items WHERE collection = %s AND id = ANY(%s) AND tableoid <> %s::regclass",
                        (self.collection_id, inserted, f"pgstac.{name}"),
                    )

    def _ensure_partition(self, name: str, rows: list[dict]) -> None:
        """The partition exists and its constraints allow these rows (check_partition)."""
        edt_lo = _instant(min(r["end_datetime"] for r in rows))
        edt_hi = _instant(max(r["end_datetime"] for r in rows))
        known = self.partitions.get(name)
        if known and known.edt_lo is not None and known.edt_lo <= edt_lo and edt_hi <= known.edt_hi:
            return
        dt_lo = min(r["datetime"] for r in rows)
        dt_hi = max(r["datetime"] for r in rows)
        lo, hi = self.conn.execute(
            "SELECT lower(r), upper(r) FROM pgstac.partition_name(%s, %s::timestamptz) p, "
            "LATERAL (SELECT p.partition_range AS r) x WHERE isfinite(lower(r)) AND isfinite(upper(r))",
            (self.collection_id, dt_lo),
        ).fetchone() or (None, None)
        if lo is None:  # one partition for all times (partition_trunc None): the rows' range
            dtrange = (dt_lo, dt_hi, "[]")
        else:  # the partition's whole range: later rows of this partition never widen it again
            dtrange = (lo, hi, "[)")
            if known and known.edt_lo is not None:
                edt_lo, edt_hi = min(edt_lo, known.edt_lo), max(edt_hi, known.edt_hi)
            if self.fresh:
                # and an end_datetime range wider than these rows need (a partition's span past
                # them), set while the partition is empty: widening it later re-checks every
                # row, once per batch; finish() makes the range tight. Not on a loaded
                # partition: check_partition leaves a range that covers the rows as it is
                edt_lo, edt_hi = min(edt_lo, lo), max(edt_hi, hi) + (hi - lo)
        self.conn.execute(
            "SELECT pgstac.check_partition(%s, tstzrange(%s, %s, %s), tstzrange(%s, %s, '[]'))",
            (self.collection_id, *dtrange, edt_lo, edt_hi),
        )
        if self.fresh and known is None and name not in self.deferred:
            if self.conn.execute("SELECT terramesh.defer_queryable_indexes(%s)", (name,)).fetchone()[0]:
                self.deferred.add(name)
        self.partitions[name] = _Partition(edt_lo, edt_hi) if lo is not None else _Partition()

    def finish(self, check_twice: bool = True) -> list[str]:
        """Partition stats and tight constraints for every partition written; errors found.

        check_twice (a fresh load only): count ids stored in two partitions, which the direct
        COPY cannot see (each partition's unique index is its own). One scan of the collection.
        """
        for name in sorted(self.deferred):  # built once, after the rows: cheaper than row by row
            self.conn.execute("SELECT pgstac.maintain_partitions(%s)", (name,))
            self.conn.execute("DELETE FROM terramesh.deferred_indexes WHERE partition = %s", (name,))
        self.deferred.clear()
        for name in sorted(self.partitions):
            self.conn.execute("SELECT pgstac.update_partition_stats_q(%s)", (name,))
        self.partitions.clear()
        if not (self.fresh and check_twice):
            return []
        twice = self.conn.execute(
            "SELECT count(*) - count(DISTINCT id) FROM pgstac.items WHERE collection = %s", (self.collection_id,)
        ).fetchone()[0]
        return (
            [f"{twice} item ids are stored twice (the same id with datetimes in different partitions)"] if twice else []
        )
