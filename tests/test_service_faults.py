"""Faults while serving: the database going away and coming back, the asset folder moved
away, requests over the service's bounds (body size, time), SIGTERM with work in flight.

Its own PostgreSQL cluster (stopped and started here, so the session's cluster is not
disturbed) with the sample catalog of conftest.build_api_sample_catalog, served by
`terramesh-stac serve` (conftest.start_service).
"""

from __future__ import annotations

import concurrent.futures
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import API_COLLECTION_ID, build_api_sample_catalog, start_service

from terramesh_stac.catalog import database
from terramesh_stac.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def fault_cluster():
    with database.temporary_cluster(lambda **fields: Settings(**fields, _env_file=None), "terramesh-faults-") as s:
        yield s


@pytest.fixture(scope="module")
def fault_catalog(fault_cluster):
    """(dest, item ids) of the sample catalog loaded into the module's own cluster."""
    from pypgstac.load import Loader, Methods

    dest = Path(tempfile.mkdtemp(prefix="terramesh-faults-", dir="/tmp"))
    dest.chmod(0o755)
    collection, items = build_api_sample_catalog(dest)
    with database.pgstac_db(database.dsn(fault_cluster, "loader")) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([collection]), insert_mode=Methods.upsert)
        database.prepare_collection(db.connect(), API_COLLECTION_ID)
        loader.collection_json.cache_clear()
        loader.load_items(iter(items), insert_mode=Methods.upsert)
    yield dest, [item["id"] for item in items]
    shutil.rmtree(dest, ignore_errors=True)


def _env(cluster, dest, **extra) -> dict:
    return {
        "TERRAMESH_API_DSN": database.dsn(cluster, "api"),
        "TERRAMESH_DEST": str(dest),
        "TERRAMESH_COLLECTION_ID": API_COLLECTION_ID,
        "TERRAMESH_DEFAULT_RENDER": "true_color",
        "TERRAMESH_DB_POOL_MAX_SIZE": "3",
        **extra,
    }


@pytest.fixture(scope="module")
def fault_server(fault_cluster, fault_catalog, tmp_path_factory):
    dest, ids = fault_catalog
    with start_service(_env(fault_cluster, dest), tmp_path_factory.mktemp("fault-server"), "faults") as base:
        yield base, dest, ids


def _needs_database(base: str, item_id: str, zoom: int) -> dict[str, str]:
    """One request per kind of endpoint that reads pgstac: name -> URL (tiles on the item,
    at `zoom`: titiler-pgstac caches a mosaic tile's items, so a new zoom asks pgstac)."""
    import morecantile

    item = f"collections/{API_COLLECTION_ID}/items/{item_id}"
    west, south, east, north = httpx.get(f"{base}/stac/{item}", timeout=30).json()["bbox"]
    t = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, zoom)
    return {
        "collections": f"{base}/stac/collections",
        "collection": f"{base}/stac/collections/{API_COLLECTION_ID}",
        "items": f"{base}/stac/collections/{API_COLLECTION_ID}/items?limit=2",
        "item": f"{base}/stac/{item}",
        "search": f"{base}/stac/search?limit=2",
        "filtered search": f"{base}/stac/search?filter=eo:cloud_cover<50&limit=2",
        "item tile": f"{base}/raster/{item}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?render=true_color",
        "item info": f"{base}/raster/{item}/info?assets=S2L2A",
        "collection mosaic tile": (
            f"{base}/raster/collections/{API_COLLECTION_ID}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
            "?render=true_color"
        ),
    }


# titiler-pgstac caches the items it reads for a while: their endpoints may still answer.
SERVED_FROM_CACHE = {"item tile", "item info"}


def _not_ok(urls: dict[str, str]) -> dict[str, int]:
    """name -> status of the URLs that did not answer 200."""
    statuses = {name: httpx.get(url, timeout=30).status_code for name, url in urls.items()}
    return {name: status for name, status in statuses.items() if status != 200}


def test_database_restart_answers_503_then_recovers(fault_cluster, fault_server):
    base, _, ids = fault_server
    assert _not_ok(_needs_database(base, ids[0], 12)) == {}, "the service must work before the fault"
    urls = _needs_database(base, ids[0], 13)

    database.stop(fault_cluster)
    try:
        for name, url in urls.items():
            started = time.monotonic()
            r = httpx.get(url, timeout=30)
            took = time.monotonic() - started
            if name in SERVED_FROM_CACHE and r.status_code == 200:
                continue
            assert r.status_code == 503, (name, r.status_code, r.text[:300])
            assert r.headers.get("retry-after", "").isdigit(), (name, r.headers)
            assert "database" in r.json()["detail"], (name, r.text)
            assert "SELECT" not in r.text and "/tmp" not in r.text and "127.0.0.1" not in r.text, r.text
            assert took < 10, f"{name}: {took:.1f} s to say the database is down"
    finally:
        database.start(fault_cluster)
    back = time.monotonic()
    while (bad := _not_ok(urls)) and time.monotonic() - back < 10:
        time.sleep(0.5)
    assert bad == {}, f"not recovered within 10 s of the database being back: {bad}"


def test_moved_asset_folder_answers_503_without_paths(fault_server):
    base, dest, ids = fault_server
    tile = f"{base}/raster/collections/{API_COLLECTION_ID}/items/{ids[0]}/preview.png?render=true_color"
    assert httpx.get(tile, timeout=30).status_code == 200
    moved = dest.with_name(dest.name + "-moved")
    dest.rename(moved)
    try:
        r = httpx.get(tile, timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after"), r.headers
        assert str(dest) not in r.text and "/tmp" not in r.text, r.text
    finally:
        moved.rename(dest)
    assert httpx.get(tile, timeout=30).status_code == 200


def test_request_body_over_the_limit_is_413(fault_server):
    base, _, _ = fault_server
    huge = b'{"limit": 1, "ids": ["' + b"x" * 2_000_000 + b'"]}'
    r = httpx.post(f"{base}/stac/search", content=huge, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    assert "larger than" in r.json()["detail"]
    assert httpx.post(f"{base}/stac/search", json={"limit": 1}, timeout=30).status_code == 200


def test_request_over_the_time_limit_is_503(fault_cluster, fault_catalog, tmp_path):
    dest, ids = fault_catalog
    env = _env(fault_cluster, dest, TERRAMESH_REQUEST_TIME_LIMIT="0.001")
    with start_service(env, tmp_path, "slow") as base:
        r = httpx.get(f"{base}/stac/search?limit=5", timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after"), r.headers
        assert "time limit" in r.json()["detail"] or "longer than" in r.json()["detail"]
        # files are not under the time limit (a large asset may take long to send)
        assert httpx.get(f"{base}/map", timeout=30).status_code == 200


def test_sigterm_with_requests_in_flight_stops_within_seconds(fault_cluster, fault_catalog, tmp_path):
    """uvicorn's graceful shutdown waits for requests in flight, at most TERRAMESH_SHUTDOWN_GRACE."""
    import psutil

    dest, ids = fault_catalog
    with start_service(_env(fault_cluster, dest), tmp_path, "sigterm") as base:
        port = int(base.rsplit(":", 1)[1])
        server = next(
            p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and str(port) in p.info["cmdline"]
        )
        urls = [
            f"{base}/raster/collections/{API_COLLECTION_ID}/items/{i}/preview.png?render=true_color&max_size=1024"
            for i in ids
        ] * 4
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(httpx.get, url, timeout=60) for url in urls]
            time.sleep(0.5)
            in_flight = sum(not f.done() for f in futures)
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            took = time.monotonic() - sent
            concurrent.futures.wait(futures)
        assert in_flight > 0, "no request was in flight at SIGTERM: nothing was tested"
        assert took < 8, f"{took:.1f} s from SIGTERM to exit"


# --- load (benchmarks/_loadgen.py, the generator of benchmarks/service_load.py) ------------


def _load_benchmark_module(name: str):
    """benchmarks/<name>.py as a module, without putting benchmarks/ on sys.path (its
    `dask_workers.py` would hide dask's `distributed` from every later import)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"terramesh_benchmarks_{name}", Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_loadgen = _load_benchmark_module("_loadgen")
outage_report, request_mix, run_load = _loadgen.outage_report, _loadgen.request_mix, _loadgen.run_load

LOAD_PRESETS = {"S2L2A": "true_color", "S2RGB": "rgb", "S1RTC": "s1rtc_vv"}
MAX_RSS_MB = 1500  # the service's bound under this load (measured ~0.7 GB: libraries + 256 MB GDAL cache)


def _server_pid(base: str) -> int:
    import psutil

    port = base.rsplit(":", 1)[1]
    return next(p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and port in p.info["cmdline"])


@pytest.fixture(scope="module")
def load_mix(fault_server):
    base, _, _ = fault_server
    items = httpx.get(f"{base}/stac/search", params={"limit": 100}, timeout=30).json()["features"]
    search_id = httpx.post(
        f"{base}/raster/searches/register", json={"collections": [API_COLLECTION_ID]}, timeout=30
    ).json()["id"]
    return request_mix(f"{base}/stac", f"{base}/raster", items, API_COLLECTION_ID, search_id, presets=LOAD_PRESETS)


def test_load_of_searches_and_tiles_answers_every_request(fault_server, load_mix):
    base, _, _ = fault_server
    result = run_load(_server_pid(base), load_mix, clients=10, seconds=8)
    failed = [(o.kind, o.status, o.error[:200]) for o in result.outcomes if o.status != 200]
    assert len(result.outcomes) > 20, "the load did not run"
    assert {o.kind for o in result.outcomes} == {"search", "item tile", "mosaic tile"}
    assert failed == [], failed[:5]
    assert result.peak_rss_mb < MAX_RSS_MB, f"peak RSS {result.peak_rss_mb:.0f} MB"


def test_database_restart_under_load_gives_only_503s_then_recovers(fault_cluster, fault_server, load_mix):
    base, _, _ = fault_server
    result = run_load(
        _server_pid(base),
        load_mix,
        clients=10,
        seconds=14,
        outage_at=4,
        outage_for=3,
        stop_db=lambda: database.stop(fault_cluster),
        start_db=lambda: database.start(fault_cluster),
    )
    report = outage_report(result)
    assert report["failed from the stop on"] > 0, "the outage was not seen: nothing was tested"
    assert report["failed before the outage"] == 0, report
    assert report["not 503"] == [], report
    assert report["recovery seconds"] <= 10, report
    after = [o for o in result.outcomes if o.started > result.outage.back + report["recovery seconds"]]
    assert after and all(o.status == 200 for o in after), "requests after the recovery must succeed"
    assert result.peak_rss_mb < MAX_RSS_MB, f"peak RSS {result.peak_rss_mb:.0f} MB"


def test_requests_of_clients_gone_are_cancelled_not_queued(fault_cluster, fault_catalog, tmp_path):
    """60 image requests (~1 s of work each here) whose clients give up at once, on a service
    with 2 worker threads: without cancellation they would all still run (~30 s of backlog)
    before a new request gets a thread; cancelled, the next one is answered at once."""
    dest, ids = fault_catalog
    env = _env(fault_cluster, dest, TERRAMESH_WORKER_THREADS="2")
    with start_service(env, tmp_path, "disconnect") as base:
        item = httpx.get(f"{base}/stac/collections/{API_COLLECTION_ID}/items/{ids[0]}", timeout=30).json()
        bbox = ",".join(str(v) for v in item["bbox"])
        image = f"{base}/raster/collections/{API_COLLECTION_ID}/items/{{}}/bbox/{bbox}/1024x1024.png?render=true_color"
        started = time.monotonic()
        assert httpx.get(image.format(ids[0]), timeout=60).status_code == 200
        one = time.monotonic() - started

        def abandon(url):
            try:
                httpx.get(url, timeout=0.05)
            except httpx.TimeoutException:
                pass

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            list(pool.map(abandon, [image.format(ids[0])] * 60))
        started = time.monotonic()
        r = httpx.get(image.format(ids[0]), timeout=120)
        took = time.monotonic() - started
        assert r.status_code == 200
        assert took < max(5.0, 4 * one), f"{took:.1f} s behind abandoned requests (one image alone: {one:.2f} s)"
