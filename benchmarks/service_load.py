"""Concurrent load on `terramesh-stac serve`: requests/s, p50/p95/p99, errors and peak RSS
under 20 and 50 clients, and a PostgreSQL restart in the middle of a run.

    .venv/bin/python benchmarks/service_load.py [--seconds 60] [--clients 20,50] [--outage-for 5]
                                               [--baseline-seconds 30] [--baseline-rounds 2]

Builds the demo catalog as `terramesh-stac demo --no-serve` does (a fresh TERRAMESH_STATE_DIR:
embedded PostgreSQL + pgstac, a GENERATED TerraMesh-format source of 3 shards x 8 samples,
converted and loaded into `terramesh-demo`), starts `terramesh-stac serve` (one uvicorn
process, default settings) and registers a search of the collection for mosaic tiles.
Clients are asyncio tasks of one httpx.AsyncClient in this process (benchmarks/_loadgen.py),
each sending its next request as soon as the previous one is answered, drawn at random
(seeded): 40 % STAC searches (bbox, datetime, CQL2 text, POST CQL2 JSON, single item),
40 % item tiles (a preset the item has, z 12-14), 20 % registered-search mosaic tiles
(true colour, z 12-13). The server's RSS (process + children) is sampled every 0.2 s.

Runs, in order:
  load       --clients each for --seconds: every request must answer 200
  outage     the first --clients value for --seconds; the database is stopped (`terramesh-stac
             db stop`) a third of the way in and started again --outage-for seconds later:
             failures must be 503s only, and recovery (database back -> end of the last failed
             request) within 10 s
  baseline   searches only, --baseline-rounds rounds of --baseline-seconds each, interleaved:
             our STAC API vs a plain stac-fastapi-pgstac (its own app, `uvicorn
             --factory stac_fastapi.pgstac.app:create_app`, same database, same pgstac_read role): the ratio is
             what our layer (request guard, checks, link rewriting) costs under load

The client runs on the same 2 cores as the server, so figures are lower bounds of the server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, free_port, loadavg, percentile, temp_dir  # noqa: E402
from _loadgen import outage_report, request_mix, run_load  # noqa: E402

CID = "terramesh-demo"  # terramesh_stac.demo.DEMO_COLLECTION
VENV_BIN = Path(sys.executable).parent


def cli() -> str:
    exe = VENV_BIN / "terramesh-stac"
    return str(exe) if exe.exists() else shutil.which("terramesh-stac") or "terramesh-stac"


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def describe(label: str, result) -> dict:
    ok = [o for o in result.outcomes if o.status == 200]
    ms = [o.seconds * 1000 for o in ok] or [0.0]
    row = {
        "run": label,
        "clients": result.clients,
        "requests": len(result.outcomes),
        "req/s": len(result.outcomes) / result.seconds,
        "p50 ms": percentile(ms, 50),
        "p95 ms": percentile(ms, 95),
        "p99 ms": percentile(ms, 99),
        "errors": len(result.outcomes) - len(ok),
        "peak RSS MB": result.peak_rss_mb,
    }
    kinds = sorted({o.kind for o in result.outcomes})
    row["by kind"] = {
        k: (
            sum(1 for o in ok if o.kind == k),
            percentile([o.seconds * 1000 for o in ok if o.kind == k] or [0.0], 50),
            percentile([o.seconds * 1000 for o in ok if o.kind == k] or [0.0], 95),
        )
        for k in kinds
    }
    return row


def print_row(row: dict) -> None:
    print(
        f"{row['run']:<34} {row['clients']:>3} clients  {row['requests']:>6} req  {row['req/s']:7.1f} req/s  "
        f"p50 {row['p50 ms']:7.1f}  p95 {row['p95 ms']:7.1f}  p99 {row['p99 ms']:7.1f} ms  "
        f"errors {row['errors']:>4}  peak RSS {row['peak RSS MB']:6.0f} MB"
    )
    for kind, (n, p50, p95) in row["by kind"].items():
        print(f"    {kind:<14} {n:>6} ok  p50 {p50:7.1f}  p95 {p95:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", default="20,50", help="comma-separated client counts")
    ap.add_argument("--outage-for", type=float, default=5.0, help="seconds the database stays down")
    ap.add_argument("--baseline-seconds", type=float, default=30.0)
    ap.add_argument("--baseline-rounds", type=int, default=2)
    ap.add_argument("--log", default="/tmp/terramesh-service-load.log", help="the servers' log (kept)")
    args = ap.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    print(
        conditions(
            command_line(),
            [
                f"clients: asyncio tasks of one httpx.AsyncClient in this process, on the same cores as the server; "
                f"{args.seconds:g} s per run",
            ],
        )
    )
    state = temp_dir("terramesh-bench-load-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAMESH_")}
    env.update(TERRAMESH_STATE_DIR=state, TERRAMESH_DB_PORT=str(free_port()))
    processes: list[subprocess.Popen] = []
    failed = False
    try:
        demo = subprocess.run([cli(), "demo", "--no-serve"], env=env, cwd=state, capture_output=True, text=True)
        if demo.returncode not in (0, 3):
            raise RuntimeError(f"demo failed ({demo.returncode}):\n{demo.stdout}\n{demo.stderr}")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        senv = dict(env, TERRAMESH_DEST=str(Path(state) / "demo" / "output"), TERRAMESH_COLLECTION_ID=CID)
        log = open(args.log, "w")
        print(f"# servers' log: {args.log}")
        server = subprocess.Popen(
            [cli(), "serve", "--port", str(port)], env=senv, cwd=state, stdout=log, stderr=subprocess.STDOUT
        )
        processes.append(server)
        wait_up(f"{base}/raster/healthz", server)
        items = httpx.get(f"{base}/stac/search", params={"collections": CID, "limit": 100}, timeout=60).json()[
            "features"
        ]
        search_id = httpx.post(f"{base}/raster/searches/register", json={"collections": [CID]}, timeout=60).json()["id"]
        print(f"# catalog: {len(items)} items of {CID}; registered search {search_id}")
        mix = request_mix(f"{base}/stac", f"{base}/raster", items, CID, search_id)

        def db(action: str):
            subprocess.run([cli(), "db", action], env=env, cwd=state, check=True, capture_output=True)

        print("\n## load: every request must answer 200")
        for clients in client_counts:
            result = run_load(server.pid, mix, clients, args.seconds)
            row = describe("mix", result)
            print_row(row)
            if row["errors"]:
                failed = True
                bad = [o for o in result.outcomes if o.status != 200][:5]
                print(f"    FAILED: {result.statuses}; e.g. {[(o.kind, o.status, o.error[:100]) for o in bad]}")

        print(
            f"\n## outage: database stopped {args.seconds / 3:g} s in, started {args.outage_for:g} s later; "
            "only 503s, recovery <= 10 s"
        )
        result = run_load(
            server.pid,
            mix,
            client_counts[0],
            args.seconds,
            outage_at=args.seconds / 3,
            outage_for=args.outage_for,
            stop_db=lambda: db("stop"),
            start_db=lambda: db("start"),
        )
        print_row(describe("mix with a database restart", result))
        report = outage_report(result)
        for key, value in report.items():
            print(f"    {key}: {value:.1f}" if isinstance(value, float) else f"    {key}: {value}")
        if report["not 503"] or report["failed before the outage"] or report["recovery seconds"] > 10:
            failed = True
            print("    FAILED")

        print("\n## baseline: searches only, ours vs plain stac-fastapi-pgstac, interleaved")
        api_dsn = subprocess.run(
            [cli(), "db", "dsn", "--role", "api"], env=env, cwd=state, check=True, capture_output=True, text=True
        ).stdout.strip()
        u = urlsplit(api_dsn)
        plain_port = free_port()
        plain_env = dict(
            env,
            PGUSER=u.username,
            PGPASSWORD=u.password or "",
            PGHOST=u.hostname,
            PGPORT=str(u.port),
            PGDATABASE=u.path.lstrip("/"),
            ENABLE_TRANSACTIONS_EXTENSIONS="false",
        )
        plain = subprocess.Popen(
            [
                str(VENV_BIN / "uvicorn"),
                "--factory",
                "stac_fastapi.pgstac.app:create_app",
                "--port",
                str(plain_port),
                "--log-level",
                "warning",
            ],
            env=plain_env,
            cwd=state,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(plain)
        plain_base = f"http://127.0.0.1:{plain_port}"
        wait_up(f"{plain_base}/_mgmt/ping", plain)
        searches_ours = request_mix(f"{base}/stac", "", items, CID, None, weights=(1.0, 0.0, 0.0), seed=1)
        searches_plain = request_mix(plain_base, "", items, CID, None, weights=(1.0, 0.0, 0.0), seed=1)
        ratios = []
        for rnd in range(args.baseline_rounds):
            order = [("ours", server, searches_ours), ("plain stac-fastapi-pgstac", plain, searches_plain)]
            rows = {}
            for label, proc, mix_ in order if rnd % 2 == 0 else order[::-1]:
                r = run_load(proc.pid, mix_, client_counts[0], args.baseline_seconds)
                rows[label] = describe(f"searches, {label}", r)
                print_row(rows[label])
            ratios.append(rows["ours"]["req/s"] / rows["plain stac-fastapi-pgstac"]["req/s"])
        print(f"    ours / plain req/s per round: {', '.join(f'{x:.2f}' for x in ratios)}")
        print(f"# load average at the end: {loadavg()}")
    finally:
        for proc in processes:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run([cli(), "db", "stop"], env=env, cwd=state, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
