"""The whole TerraMesh catalog at full size, from metadata alone (issue 12).

    .venv/bin/python benchmarks/scale.py [--rows 9178624] [--raw-rows 1000000] [--requests 200]

In one run, on one embedded pgstac cluster (TERRAMESH_STATE_DIR = a fresh folder under
--work), as a user runs the commands:

1. `terramesh-stac synth W/source --metadata-only --rows N`: the synthetic metadata parquets;
2. `terramesh-stac catalog W/source --dest W/dest --split all`: rows -> NDJSON (time, rows/s,
   bytes per item);
3. loading: first, the same --raw-rows items (the first NDJSON files) loaded fresh by raw
   `pypgstac load items --method insert` and by ours (`terramesh-stac load`), interleaved
   (raw, ours, raw, ours: the collection's items deleted in between), then the whole
   catalog by ours (items/s), then ours again over the loaded catalog (the re-load:
   unchanged rows; above 1 M items only the --raw-rows files, or --reload-rows);
4. bytes per item: NDJSON, pgstac (items partitions with their indexes / rows), served (an
   item as the STAC API answers it);
5. searches against our service and a plain stac-fastapi-pgstac (its own app, same database,
   same pgstac_read role), interleaved, at concurrency 1 and 10: a random 1-degree bbox around
   a sample + a random year + `eo:cloud_cover < 20` with limit 10 and with limit 100, and an
   id lookup, and full pages of 10 and 100 items (a year, no bbox); p50/p95/p99 and our ratio;
   per-returned-item cost ((page of 100 - page of 10) / 90);
   our service also with pgstac's own hydration (`TERRAMESH_API_HYDRATE=false`);
6. `terramesh-stac export geoparquet`: size per item, and the limit-10 search answered from the
   parquet with DuckDB, timed next to the API;
7. pgstac settings, in SQL (`pgstac.search`, no app): numberMatched `context` off / auto (our
   setting) / on (exact count), on month partitions, then the collection repartitioned to
   year partitions (time) and the same again (up to 2 M items, or --repartition).

Everything is removed at the end unless --keep. Disk: ~2.5 kB per item NDJSON + ~2 kB per
item in pgstac (+ WAL) + ~0.3 kB parquet: ~45 GB at 9.2 M items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, free_port, percentile, temp_dir  # noqa: E402

CID = "terramesh"
VENV_BIN = Path(sys.executable).parent
TOTAL_ROWS = 9_178_624


def cli() -> str:
    return str(VENV_BIN / "terramesh-stac")


def run(env: dict, *args: str, cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return seconds, proc


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout:g} s")


def psql(env: dict, cwd: str, sql: str) -> str:
    admin = run(env, cli(), "db", "dsn", "--role", "admin", cwd=cwd)[1].stdout.strip()
    return run(env, "psql", admin, "-XAtc", sql, cwd=cwd)[1].stdout.strip()


def ndjson_files(dest: Path) -> list[Path]:
    """The items files `catalog` wrote, in its manifests' order (train first, then val)."""
    return [dest / f["path"] for m in catalog_manifests(dest) for f in m["files"]]


def catalog_manifests(dest: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(dest.glob("catalog/manifests/*.json"))]


# ----------------------------------------------------------------------------- loading


def subset_folder(subset: Path, dest: Path, rows: int) -> tuple[Path, int]:
    """A catalog folder of dest's first item files (hard links) holding >= `rows` items, with
    a catalog manifest of just them; returns it and its number of items."""
    shutil.rmtree(subset, ignore_errors=True)
    (subset / "catalog" / "manifests").mkdir(parents=True)
    shutil.copy(dest / "collection.json", subset / "collection.json")
    n = 0
    for manifest in catalog_manifests(dest):
        kept = []
        for f in manifest["files"]:
            if n >= rows:
                break
            kept.append(f)
            n += f["count"]
            target = subset / f["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(dest / f["path"], target)
        if kept:
            path = subset / "catalog" / "manifests" / f"{manifest['split']}.json"
            path.write_text(json.dumps({**manifest, "files": kept, "items": sum(f["count"] for f in kept)}))
    return subset, n


def load_comparison(env: dict, cwd: str, work: Path, dest: Path, raw_rows: int, rounds: int) -> dict:
    """Fresh loads of the same first files by raw pypgstac and by ours, interleaved."""
    subset, n = subset_folder(work / "subset", dest, raw_rows)
    files = ndjson_files(subset)
    loader_dsn = run(env, cli(), "db", "dsn", "--role", "loader", cwd=cwd)[1].stdout.strip()
    times: dict[str, list[float]] = {"raw pypgstac": [], "ours": []}

    def empty() -> None:
        psql(env, cwd, f"DELETE FROM pgstac.items WHERE collection = '{CID}'")
        psql(env, cwd, "VACUUM pgstac.items")

    # the collection (partitioning, queryables) as ours prepares it, for both
    run(env, cli(), "load", str(subset), cwd=cwd)
    for r in range(rounds):
        for label in ("raw pypgstac", "ours") if r % 2 == 0 else ("ours", "raw pypgstac"):
            empty()
            if label == "ours":
                seconds, _ = run(env, cli(), "load", str(subset), cwd=cwd)
            else:
                t = time.perf_counter()
                for f in files:
                    run(env, str(VENV_BIN / "pypgstac"), "load", "items", str(f), "--method", "insert",
                        "--dsn", loader_dsn, cwd=cwd)  # fmt: skip
                seconds = time.perf_counter() - t
            times[label].append(seconds)
            print(f"    round {r + 1} {label}: {n:,} items in {seconds:.1f} s = {n / seconds:,.0f} items/s", flush=True)
    empty()
    return {"items": n, "files": len(files), "times": times}


# ----------------------------------------------------------------------------- searches


def sample_queries(source: Path, count: int, seed: int) -> tuple[list[dict], list[str]]:
    """`count` search bodies (1-degree bbox around a random sample, a random year, cloud < 20)
    and `count` random item ids, from the metadata parquets."""
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    bodies, ids = [], []
    for f in sorted(source.glob("*_metadata.parquet")):
        meta = pq.ParquetFile(f)
        for _ in range(max(1, count * meta.metadata.num_rows // TOTAL_ROWS) if "val" in f.name else count):
            g = rng.randrange(meta.num_row_groups)
            t = meta.read_row_group(g, columns=["zarr", "center_lon", "center_lat"])
            i = rng.randrange(t.num_rows)
            lon, lat = t["center_lon"][i].as_py(), t["center_lat"][i].as_py()
            year = rng.randrange(2017, 2025)
            bodies.append(
                {
                    "collections": [CID],
                    "bbox": [round(lon - 0.5, 4), round(lat - 0.5, 4), round(lon + 0.5, 4), round(lat + 0.5, 4)],
                    "datetime": f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z",
                    "filter-lang": "cql2-json",
                    "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
                    "limit": 10,
                }
            )
            ids.append(str(t["zarr"][i].as_py()).split(".", 1)[0])
    rng.shuffle(bodies)
    rng.shuffle(ids)
    return bodies[:count], ids[:count]


async def _timed(client: httpx.AsyncClient, method: str, url: str, body, out: list, errors: list) -> None:
    t = time.perf_counter()
    r = await client.request(method, url, json=body)
    out.append(time.perf_counter() - t)
    if r.status_code != 200:
        errors.append(r.status_code)


async def _measure(requests: list[tuple[str, str, dict | None]], concurrency: int) -> tuple[list[float], list]:
    out: list[float] = []
    errors: list = []
    queue = list(requests)

    async def worker(client):
        while queue:
            method, url, body = queue.pop()
            await _timed(client, method, url, body, out, errors)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return out, errors


def measure(requests, concurrency: int) -> tuple[list[float], list]:
    return asyncio.run(_measure(requests, concurrency))


def stats_ms(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"p50 {percentile(ms, 50):7.1f}  p95 {percentile(ms, 95):7.1f}  p99 {percentile(ms, 99):7.1f} ms"


def _year_page(body: dict, limit: int) -> dict:
    return {"collections": body["collections"], "datetime": body["datetime"], "limit": limit}


def search_comparison(apps: dict[str, str], bodies: list[dict], ids: list[str], rounds: int) -> dict:
    """Every query kind at c=1 and c=10 on each app, apps interleaved per round."""
    kinds = {
        "search limit 10": lambda base: [("POST", f"{base}/search", b) for b in bodies],
        "search limit 100": lambda base: [("POST", f"{base}/search", {**b, "limit": 100}) for b in bodies],
        "id lookup": lambda base: [("GET", f"{base}/collections/{CID}/items/{i}", None) for i in ids],
        # full pages (a year, no bbox): what one more returned item costs
        "year page of 10": lambda base: [("POST", f"{base}/search", _year_page(b, 10)) for b in bodies],
        "year page of 100": lambda base: [("POST", f"{base}/search", _year_page(b, 100)) for b in bodies],
    }
    results: dict = {}
    for kind, make in kinds.items():
        for concurrency in (1, 10):
            for r in range(rounds):
                order = list(apps.items()) if r % 2 == 0 else list(apps.items())[::-1]
                for label, base in order:
                    measure(make(base)[:10], concurrency)  # warm-up
                    seconds, errors = measure(make(base), concurrency)
                    results.setdefault((kind, concurrency, label), []).append(seconds)
                    print(f"    {kind:17} c={concurrency:<2} {label:34} {stats_ms(seconds)}"
                          f"{'  ERRORS ' + str(errors[:5]) if errors else ''}", flush=True)  # fmt: skip
    return results


def start_servers(env: dict, cwd: str, log) -> tuple[dict[str, str], list[subprocess.Popen]]:
    apps, procs = {}, []
    for label, extra in (("ours", {}), ("ours, pgstac hydration", {"TERRAMESH_API_HYDRATE": "false"})):
        port = free_port()
        proc = subprocess.Popen(
            [cli(), "serve", "--port", str(port)],
            env=dict(env, TERRAMESH_COLLECTION_ID=CID, **extra),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        wait_up(f"http://127.0.0.1:{port}/stac/_mgmt/ping", proc)
        apps[label] = f"http://127.0.0.1:{port}/stac"
    u = urlsplit(run(env, cli(), "db", "dsn", "--role", "api", cwd=cwd)[1].stdout.strip())
    port = free_port()
    plain_env = dict(
        env,
        PGUSER=u.username,
        PGPASSWORD=u.password or "",
        PGHOST=u.hostname,
        PGPORT=str(u.port),
        PGDATABASE=u.path.lstrip("/"),
        ENABLE_TRANSACTIONS_EXTENSIONS="false",
    )
    cmd = [str(VENV_BIN / "uvicorn"), "--factory", "stac_fastapi.pgstac.app:create_app", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=plain_env, cwd=cwd, stdout=log, stderr=log)
    procs.append(proc)
    wait_up(f"http://127.0.0.1:{port}/_mgmt/ping", proc)
    apps["plain stac-fastapi-pgstac"] = f"http://127.0.0.1:{port}"
    return apps, procs


# ----------------------------------------------------------------------------- pgstac settings


def sql_search_times(dsn: str, bodies: list[dict], context: str) -> list[float]:
    """Seconds of `pgstac.search(body)` per body, in SQL (no app), with `context` (the count)."""
    import psycopg

    out = []
    with psycopg.connect(dsn, autocommit=True, options="-c search_path=pgstac,public") as conn:
        for b in bodies[:10]:  # warm-up
            conn.execute(
                "SELECT pgstac.search(%s::jsonb)", (json.dumps({**b, "conf": {"context": context}}),)
            ).fetchone()
        for b in bodies:
            t = time.perf_counter()
            conn.execute(
                "SELECT pgstac.search(%s::jsonb)", (json.dumps({**b, "conf": {"context": context}}),)
            ).fetchone()
            out.append(time.perf_counter() - t)
    return out


def settings_comparison(dsn: str, bodies: list[dict], label: str, rounds: int) -> dict:
    """numberMatched off / auto (our setting) / on (exact), interleaved, in SQL."""
    results: dict = {}
    for r in range(rounds):
        contexts = ("off", "auto", "on") if r % 2 == 0 else ("on", "auto", "off")
        for context in contexts:
            secs = sql_search_times(dsn, bodies, context)
            results.setdefault(context, []).extend(secs)
            print(f"    {label:7} context={context:<4} round {r + 1}: {stats_ms(secs)}", flush=True)
    return results


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=TOTAL_ROWS, help="metadata rows (items) in all")
    ap.add_argument("--raw-rows", type=int, default=1_000_000, help="items of the ours-vs-raw-pypgstac load rounds")
    ap.add_argument("--load-rounds", type=int, default=2)
    ap.add_argument(
        "--reload-rows", type=int, default=None,
        help="items of the re-load (unchanged rows, over the loaded catalog; default: the whole catalog "
        "up to 1,000,000 items, else the --raw-rows files)",
    )  # fmt: skip
    ap.add_argument(
        "--repartition", action=argparse.BooleanOptionalAction, default=None,
        help="time month -> year repartitioning and search on both (default: up to 2,000,000 rows)",
    )  # fmt: skip
    ap.add_argument("--requests", type=int, default=200, help="timed requests per kind, app and concurrency")
    ap.add_argument("--search-rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp", help="folder for the run's files (needs ~5 kB per row)")
    ap.add_argument("--keep", action="store_true", help="keep the files and the database (stopped)")
    args = ap.parse_args()
    print(conditions(command_line(), [f"rows: {args.rows:,}; clients in this process, on the same 2 cores"]))

    work = Path(temp_dir("terramesh-bench-scale-", args.work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAMESH_")}
    env.update(TERRAMESH_STATE_DIR=str(work / "state"), TERRAMESH_DB_PORT=str(free_port()))
    cwd = str(work)
    source, dest = work / "source", work / "dest"
    procs: list[subprocess.Popen] = []
    try:
        run(env, cli(), "db", "start", cwd=cwd)
        print("\n## 1. synthetic metadata")
        seconds, _ = run(env, cli(), "synth", str(source), "--metadata-only", "--rows", str(args.rows), cwd=cwd)
        size = sum(f.stat().st_size for f in source.glob("*.parquet"))
        print(f"    {args.rows:,} rows in {seconds:.1f} s; {size / 1e6:,.0f} MB of parquet")

        print("\n## 2. catalog: rows -> NDJSON")
        seconds, _ = run(env, cli(), "catalog", str(source), "--dest", str(dest), "--split", "all", cwd=cwd)
        files = ndjson_files(dest)
        nd_bytes = sum(f.stat().st_size for f in files)
        print(f"    {args.rows:,} items in {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s "
              f"(target: all 9.2 M in <= 600 s); {len(files):,} files, {nd_bytes / args.rows:,.0f} B per item")  # fmt: skip

        print(f"\n## 3. load: {args.raw_rows:,} items fresh, raw pypgstac vs ours, interleaved")
        cmp = load_comparison(env, cwd, work, dest, args.raw_rows, args.load_rounds)
        raw, ours = cmp["times"]["raw pypgstac"], cmp["times"]["ours"]
        print(f"    {cmp['items']:,} items ({cmp['files']} files): raw {cmp['items'] / max(raw):,.0f}-"
              f"{cmp['items'] / min(raw):,.0f} items/s, ours {cmp['items'] / max(ours):,.0f}-"
              f"{cmp['items'] / min(ours):,.0f} items/s; time ours / raw per round: "
              f"{', '.join(f'{o / r:.2f}' for o, r in zip(ours, raw))} (target <= 1.2)")  # fmt: skip
        seconds, _ = run(env, cli(), "load", str(dest), cwd=cwd)
        print(f"    the whole catalog, ours: {args.rows:,} items in {seconds:.1f} s = {args.rows / seconds:,.0f} items/s "
              "(target >= 5,000)")  # fmt: skip
        reload_rows = args.reload_rows
        if reload_rows is None:
            reload_rows = args.rows if args.rows <= 1_000_000 else args.raw_rows
        if reload_rows >= args.rows:
            seconds, _ = run(env, cli(), "load", str(dest), cwd=cwd)
            print(f"    re-load of the unchanged catalog, ours: {seconds:.1f} s = {args.rows / seconds:,.0f} items/s")
        else:  # the first files again (their manifest, as for the comparison), over the whole catalog
            subset, n = subset_folder(work / "reload", dest, min(reload_rows, args.rows))
            seconds, _ = run(env, cli(), "load", str(subset), cwd=cwd)
            print(f"    re-load of {n:,} unchanged items over the whole catalog, ours: {seconds:.1f} s = "
                  f"{n / seconds:,.0f} items/s")  # fmt: skip

        print("\n## 4. bytes per item")
        rows = int(psql(env, cwd, f"SELECT count(*) FROM pgstac.items WHERE collection = '{CID}'"))
        db_bytes = int(
            psql(
                env,
                cwd,
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname LIKE '_items_%'",
            )
            or 0
        )
        partitions = psql(env, cwd, "SELECT count(*), min(n), max(n) FROM (SELECT count(*) n FROM pgstac.items "
                          f"WHERE collection = '{CID}' GROUP BY date_trunc('month', datetime)) m")  # fmt: skip
        print(f"    rows in pgstac: {rows:,} (of {args.rows:,}); rows per month: count|min|max = {partitions}")
        print(f"    NDJSON {nd_bytes / args.rows:,.0f} B, pgstac {db_bytes / rows:,.0f} B (table + indexes) per item")
        # per kind of index over all partitions: what each queryable's index costs per item
        index_sizes = psql(
            env,
            cwd,
            "SELECT regexp_replace(regexp_replace(pg_get_indexdef(x.indexrelid), '_items_[0-9_]+', '_items_N', 'g'), "
            "'_idx[0-9]+ ', '_idx ', 'g'), "
            "sum(pg_relation_size(x.indexrelid)) FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indrelid "
            "GROUP BY 1 ORDER BY 2 DESC",
        )
        for line in index_sizes.splitlines():
            definition, size = line.rsplit("|", 1)
            print(f"      {int(size) / rows:6.1f} B/item  {definition[:150]}")

        log = open(work / "servers.log", "w")
        apps, procs = start_servers(env, cwd, log)
        bodies, ids = sample_queries(source, args.requests, seed=1)
        served = httpx.get(f"{apps['ours']}/collections/{CID}/items/{ids[0]}", timeout=60).content
        plain_served = httpx.get(f"{apps['plain stac-fastapi-pgstac']}/collections/{CID}/items/{ids[0]}", timeout=60)
        print(f"    served: {len(served):,} B (ours), {len(plain_served.content):,} B (plain stac-fastapi-pgstac)")

        print(f"\n## 5. searches: {args.requests} requests per kind, app and concurrency; {args.search_rounds} rounds")
        results = search_comparison(apps, bodies, ids, args.search_rounds)
        print("\n    summary (all rounds together):")
        for kind in ("search limit 10", "search limit 100", "id lookup", "year page of 10", "year page of 100"):
            for c in (1, 10):
                p95 = {}
                for label in apps:
                    secs = [s for run_ in results[(kind, c, label)] for s in run_]
                    p95[label] = percentile(secs, 95)
                    print(f"    {kind:17} c={c:<2} {label:34} {stats_ms(secs)}")
                print(f"    {'':17}      ours / plain p95: {p95['ours'] / p95['plain stac-fastapi-pgstac']:.2f}")
        for label in apps:
            t10 = percentile([s for r in results[("year page of 10", 1, label)] for s in r], 50)
            t100 = percentile([s for r in results[("year page of 100", 1, label)] for s in r], 50)
            print(
                f"    per returned item ({label}): {(t100 - t10) / 90 * 1000:.2f} ms "
                "(p50 of a full page of 100 - of 10, / 90; target <= 1 ms)"
            )

        print("\n## 6. export: stac-geoparquet")
        export = work / "export"
        seconds, _ = run(env, cli(), "export", "geoparquet", "--out", str(export), "--collection", CID, cwd=cwd)
        pq_bytes = sum(f.stat().st_size for f in export.rglob("*.parquet"))
        print(f"    {rows:,} items in {seconds:.1f} s; {pq_bytes / 1e6:,.0f} MB = {pq_bytes / rows:,.0f} B per item")
        from terramesh_stac.catalog.export import search_parquet

        secs = []
        for b in bodies:
            t = time.perf_counter()
            search_parquet(str(export), bbox=b["bbox"], datetime_range=b["datetime"], max_cloud=20, limit=10)
            secs.append(time.perf_counter() - t)
        print(f"    the limit-10 search from the parquet (DuckDB): {stats_ms(secs)}")

        print("\n## 7. pgstac: numberMatched (context) and partitioning, in SQL (pgstac.search, no app)")
        admin = run(env, cli(), "db", "dsn", "--role", "admin", cwd=cwd)[1].stdout.strip()
        month = settings_comparison(admin, bodies, "month", args.search_rounds)
        if not (args.repartition if args.repartition is not None else args.rows <= 2_000_000):
            for context in ("off", "auto", "on"):
                print(f"    context={context:<4} month partitions: {stats_ms(month[context])}")
            print("    (month -> year repartitioning not run at this size: --repartition)")
            return 0
        t = time.perf_counter()
        psql(env, cwd, f"UPDATE pgstac.collections SET partition_trunc = 'year' WHERE id = '{CID}'")
        print(f"    repartitioned month -> year in {time.perf_counter() - t:.1f} s", flush=True)
        year = settings_comparison(admin, bodies, "year", args.search_rounds)
        for context in ("off", "auto", "on"):
            print(f"    context={context:<4} month partitions: {stats_ms(month[context])}")
            print(f"    context={context:<4} year partitions:  {stats_ms(year[context])}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        subprocess.run([cli(), "db", "stop"], env=env, cwd=cwd, capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
