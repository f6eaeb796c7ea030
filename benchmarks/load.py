"""Load throughput into pgstac: terramesh_stac.catalog.loader.load vs a raw pypgstac load of the same NDJSON.

    .venv/bin/python benchmarks/load.py [--items 3000] [--months 12] [--items-per-file 500]
    .venv/bin/python benchmarks/load.py --dest ./terramesh-output     # items of an existing conversion

Starts its own throwaway PostgreSQL + PostGIS + pgstac cluster (removed at the end). Without
--dest, a small TerraMesh-format tree is generated (terramesh_stac.converters.synth) and converted in a temp
dir. The converted items are then MULTIPLIED to --items items: copy j of an item gets the id
`<id>-x<j>` and its datetime / start_datetime / end_datetime shifted by (j mod --months)
x 30 days, so the items spread over --months monthly partitions. Loading never reads the assets,
so the copies load exactly like real items (their asset hrefs still point at the original
sample's files). The NDJSON is written to files of --items-per-file items, as a conversion
writes one file per shard.

Loads, each as the loader role (pgstac_ingest), each into its own fresh collection with the
same partitioning (month) and the same queryables + BTREE indexes (prepare_collection), so
no load benefits from rows of another:

  raw insert     pypgstac Loader.load_items(<file>, Methods.insert), file by file
  raw upsert     pypgstac Loader.load_items(<file>, Methods.upsert), file by file
  ours           terramesh_stac.catalog.loader.load (whole items, COPY into the fresh collection's
                 partitions, per-file count check), first load
  ours again     terramesh_stac.catalog.loader.load of the same items a second time (every row exists:
                 the upsert path, nothing rewritten)
  raw upsert, no queryable indexes    (month partitions only: what the indexes cost)

Before each load (except "ours again") the previous collection is deleted and the database
vacuumed and checkpointed, so each starts from the same state (without this, every load was
slower than the one before it: the order, not the loader, decided the ranking). --rounds
rounds rotate the order; the summary is the median per load. --only picks loads, e.g.
`--items 50000 --only raw-upsert,ours,ours-again` for the comparison with raw pypgstac.
"""

from __future__ import annotations

import os

os.environ.setdefault("GDAL_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import orjson  # noqa: E402
from _common import command_line, conditions, generate_source, loadavg, pgstac_cluster, temp_dir  # noqa: E402

from terramesh_stac.catalog import database  # noqa: E402
from terramesh_stac.catalog.loader import item_files, load, read_items  # noqa: E402
from terramesh_stac.converters.storage import Store  # noqa: E402

TIME_KEYS = ("datetime", "start_datetime", "end_datetime")


def add_months(t: dt.datetime, months: int) -> dt.datetime:
    """t + months x 30 days (a plain shift keeps start < end and every time's order)."""
    return t + dt.timedelta(days=30 * months)


def multiply(base: list[dict], n: int, months: int) -> list[dict]:
    out = []
    j = 0
    while len(out) < n:
        for item in base:
            if len(out) >= n:
                break
            it = orjson.loads(orjson.dumps(item))
            it["id"] = f"{item['id']}-x{j:05d}"
            props = it["properties"]
            for k in TIME_KEYS:
                if props.get(k):
                    t = dt.datetime.fromisoformat(props[k].replace("Z", "+00:00"))
                    props[k] = add_months(t, j % months).isoformat().replace("+00:00", "Z")
            out.append(it)
        j += 1
    return out


def write_tree(root: Path, collection: dict, items: list[dict], cid: str, per_file: int) -> list[Path]:
    """root/collection.json + root/items/bench/part-NNNN.ndjson with `collection` = cid."""
    (root / "items" / "bench").mkdir(parents=True, exist_ok=True)
    c = dict(collection, id=cid)
    c["links"] = [link for link in c.get("links", []) if link.get("rel") not in ("self", "root", "parent")]
    (root / "collection.json").write_bytes(orjson.dumps(c))
    files = []
    for k in range(0, len(items), per_file):
        p = root / "items" / "bench" / f"part-{k // per_file:04d}.ndjson"
        p.write_bytes(b"\n".join(orjson.dumps(dict(i, collection=cid)) for i in items[k : k + per_file]) + b"\n")
        files.append(p)
    return files


def raw_load(dsn: str, root: Path, files: list[Path], method, queryables: bool) -> float:
    """Collection + prepared partitioning, then pypgstac load_items per file; wall seconds."""
    from pypgstac.load import Loader, Methods

    t0 = time.perf_counter()
    collection = orjson.loads((root / "collection.json").read_bytes())
    with database.pgstac_db(dsn) as db:
        loader = Loader(db)
        loader.load_collections(iter([collection]), Methods.upsert)
        conn = db.connect()
        if queryables:
            database.prepare_collection(conn, collection["id"], "month")
        else:
            conn.execute("UPDATE pgstac.collections SET partition_trunc = 'month' WHERE id = %s", (collection["id"],))
        loader.collection_json.cache_clear()
        for f in files:
            loader.load_items(str(f), method)
    return time.perf_counter() - t0


def count(admin_dsn: str, cid: str) -> int:
    import psycopg

    with psycopg.connect(admin_dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s", (cid,)).fetchone()[0]


def partitions(admin_dsn: str, cid: str) -> int:
    import psycopg

    with psycopg.connect(admin_dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgstac.partitions WHERE collection = %s", (cid,)).fetchone()[0]


def reset(admin_dsn: str, drop: list[str]) -> None:
    """Delete collections (pgstac drops their items and partitions), then CHECKPOINT, so every
    load starts from the same database state."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for cid in drop:
            conn.execute("SELECT pgstac.delete_collection(%s)", (cid,))
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dest",
        help="an existing conversion output to take the items from; "
        "default: generate + convert a small tree in a temp dir",
    )
    ap.add_argument("--shards", type=int, default=2, help="generated shards (without --dest)")
    ap.add_argument("--samples-per-shard", type=int, default=8, help="generated samples per shard")
    ap.add_argument("--items", type=int, default=3000, help="items per load (multiplied copies)")
    ap.add_argument("--months", type=int, default=12, help="months the copies are spread over")
    ap.add_argument("--items-per-file", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the order of the loads rotates")
    ap.add_argument(
        "--only",
        default="raw-insert,raw-upsert,ours,ours-again,raw-noidx",
        help="comma-separated loads to run (raw-insert, raw-upsert, ours, ours-again, raw-noidx); "
        "raw-upsert is always run (the ratios' reference)",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from pypgstac.load import Methods

    work = Path(temp_dir("terramesh-bench-load-"))
    try:
        if args.dest:
            dest, note = args.dest, f"base items: {args.dest}"
        else:
            from terramesh_stac.converters.pipeline import ConvertOptions
            from terramesh_stac.converters.run import convert

            src, dest = str(work / "source"), str(work / "dest")
            keys = generate_source(src, args.shards, args.samples_per_shard)
            convert(src, ConvertOptions(dest=dest, collection_id="terramesh-bench"), split="val")
            note = (
                f"base items: GENERATED (terramesh_stac.converters.synth, seed 0) {len(keys)} samples, "
                f"converted with terramesh_stac.converters.run.convert"
            )
        store = Store(dest)
        base = [i for f in item_files(store) for i in read_items(store, f)]
        collection = orjson.loads(store.get("collection.json"))
        items = multiply(base, args.items, args.months)
        size = sum(len(orjson.dumps(i)) for i in items)

        base_runs = [  # (label, collection id, kind)
            ("raw pypgstac insert", "bench-raw-insert", "raw-insert"),
            ("raw pypgstac upsert", "bench-raw-upsert", "raw-upsert"),
            ("ours: terramesh_stac.catalog.loader.load (fresh: COPY + count check)", "bench-ours", "ours"),
            ("ours again: same items, every row exists", "bench-ours", "ours-again"),
            ("raw pypgstac upsert, no queryable indexes", "bench-raw-noidx", "raw-noidx"),
        ]
        with pgstac_cluster() as settings:
            loader_dsn = database.dsn(settings, "loader")
            admin_dsn = database.dsn(settings, "admin")
            print(
                conditions(
                    command_line(),
                    [
                        note,
                        f"loaded per run: {len(items)} items (copies of {len(base)} converted items, ids "
                        f"rewritten, datetimes spread over {args.months} x 30 days), {size / 1e6:.1f} MB NDJSON "
                        f"({size / len(items) / 1e3:.1f} kB/item), files of <= {args.items_per_file} items",
                        "database: embedded PostgreSQL cluster started by this script, default config, same "
                        "machine; client and server share the 2 cores",
                        f"{args.rounds} round(s), the order of the loads rotating (ours-again right after ours); "
                        "before every load the previous collection is deleted (pgstac drops its partitions), "
                        "then VACUUM ANALYZE + CHECKPOINT: every load starts from an empty items table",
                    ],
                )
            )
            allruns: dict[str, list[float]] = {}
            wanted = set(args.only.split(",")) | {"raw-upsert"}
            base_runs = [r for r in base_runs if r[2] in wanted]
            for rnd in range(1, args.rounds + 1):
                by_kind = {r[2]: r for r in base_runs}
                units = [["raw-insert"], ["raw-upsert"], ["ours", "ours-again"], ["raw-noidx"]]
                units = [[k for k in unit if k in wanted] for unit in units]
                units = [unit for unit in units if unit]
                k = (rnd - 1) % len(units)
                runs = [by_kind[kind] for unit in units[k:] + units[:k] for kind in unit]
                print()
                print(f"round {rnd}, order: " + " -> ".join(k for _, _, k in runs))
                results, rows = {}, []
                loaded: list[str] = []
                for label, cid0, kind in runs:
                    cid = cid0  # one tree per load kind, reused by every round (reset drops its rows)
                    root = work / cid
                    if not root.exists():
                        write_tree(root, collection, items, cid, args.items_per_file)
                    files = sorted((root / "items" / "bench").glob("*.ndjson"))
                    if kind != "ours-again":
                        reset(admin_dsn, [c for c in loaded if c != cid])
                        loaded = [cid]
                    if kind.startswith("ours"):
                        t = time.perf_counter()
                        r = load(str(root), loader_dsn, partition="month")
                        secs = time.perf_counter() - t
                        extra = (
                            f" (items {r.items_seconds:.2f} s = {len(items) / r.items_seconds:.0f}/s, "
                            f"count check {r.check_seconds:.2f} s)"
                        )
                    else:
                        method = Methods.insert if kind == "raw-insert" else Methods.upsert
                        secs = raw_load(loader_dsn, root, files, method, queryables=kind != "raw-noidx")
                        extra = ""
                    results[kind] = secs
                    allruns.setdefault(kind, []).append(len(items) / secs)
                    rows.append(
                        (
                            kind,
                            f"| {label}{extra} | {len(items)} | {secs:.2f} | {len(items) / secs:.0f} | "
                            "{ratio} | "
                            f"{partitions(admin_dsn, cid)} | {count(admin_dsn, cid)} |",
                        )
                    )
                print()
                print("| load | items | seconds | items/s | vs raw upsert | partitions | in pgstac |")
                print("|---|---|---|---|---|---|---|")
                for kind, row in sorted(rows, key=lambda r: [b[2] for b in base_runs].index(r[0])):
                    print(row.replace("{ratio}", f"{results['raw-upsert'] / results[kind]:.2f}"))
                reset(admin_dsn, loaded)
            print()
            print(f"median over {args.rounds} rounds:")
            print()
            print("| load | items/s (median) | items/s per round | vs raw upsert (median) |")
            print("|---|---|---|---|")
            med = {k: statistics.median(v) for k, v in allruns.items()}
            for label, _, kind in base_runs:
                print(
                    f"| {label} | {med[kind]:.0f} | {', '.join(f'{x:.0f}' for x in allruns[kind])} | "
                    f"{med[kind] / med['raw-upsert']:.2f} |"
                )
            print()
            print(f"# load average (1/5/15 min) at the end: {loadavg()}")
            print(
                "seconds = wall time of the whole load (collection upsert + partitioning/queryables + "
                "items [+ count check for ours]); ratio = items/s relative to raw pypgstac upsert "
                "of the same round"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
