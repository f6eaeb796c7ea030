"""Schemathesis against the tile service's own OpenAPI document (`/raster/api`) on the live
server (fixture `live_server`: uvicorn subprocess, real pgstac with the sample catalog): every
operation, generated valid and invalid requests, no answer may be a server error (5xx).

Bounded and reproducible: MAX_EXAMPLES per operation, derandomized, no example database, no
shrinking. Nothing is excluded. The fuzzer gets real values (schemathesis dictionaries): the
sample's collection and item ids, a registered search, asset names (with band options),
tile indexes, coordinates and bboxes of the items, so requests reach the readers and the
database and not only the parameter checks. The server's memory (RSS of its process) is
sampled during the run; test_the_fuzz_run_reached_every_operation reports it.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import httpx
import hypothesis
import psutil
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from tests.conftest import API_COLLECTION_ID, API_SAMPLES

MAX_EXAMPLES = 50  # x 60 operations: ~3,300 requests, about 2 minutes on 2 cores
REGISTERED = "REGISTERED-SEARCH"  # stands for the search registered by the fixture below
# bytes: the service's bound under any mix (as tests/test_service_faults.py MAX_RSS_MB); measured
# 530 MB-1.06 GB over CI runs (273 MB at the start; the fuzzer's choices vary by session)
PEAK_RSS_BOUND = 1_500_000_000

ITEM_IDS = [s[0] for s in API_SAMPLES]
ITEM_ID = "majortom_val_0000001"  # the tile below is on it: half of the item ids are this one
# Real asset selections, given to every other request that has `assets` (schemathesis'
# dictionaries do not reach array query parameters): those requests read pixels.
ASSETS = ["DEM", "S2L2A|bidx=4,3,2", "NDVI", "LULC", "S1RTC|bidx=1", "S2RGB", "S2L2A"]
CONFIG = {
    "dictionaries": {
        "collection_ids": {"values": [API_COLLECTION_ID]},
        "item_ids": {"values": ITEM_IDS + [ITEM_ID] * len(ITEM_IDS)},
        "search_ids": {"values": [REGISTERED]},
        "sizes": {"values": [256, 1024]},
        "zooms": {"values": [14]},  # WebMercatorQuad 14/8602/5894: on ITEM_ID (see the test)
        "xs": {"values": [8602]},
        "ys": {"values": [5894]},
        "lons": {"values": [9.0165, 9.05]},
        "lats": {"values": [44.988, 45.0]},
        "minxs": {"values": [8.99, 9.0]},
        "minys": {"values": [44.97, 44.9]},
        "maxxs": {"values": [9.04, 9.2]},
        "maxys": {"values": [45.01, 45.1]},
        "expressions": {"values": ["b1/b2", "(b4-b3)/(b4+b3)", "b1*", "b99"]},
        "filters": {"values": ["eo:cloud_cover < 50", "eo:cloud_cover < 'abc'", "nope("]},
    },
    "parameters": {
        "path.collection_id": {"dictionary": "collection_ids", "probability": 0.8},
        "path.item_id": {"dictionary": "item_ids", "probability": 0.8},
        "path.search_id": {"dictionary": "search_ids", "probability": 0.8},
        "path.width": {"dictionary": "sizes", "probability": 0.5},
        "path.height": {"dictionary": "sizes", "probability": 0.5},
        "path.z": {"dictionary": "zooms", "probability": 0.7},
        "path.x": {"dictionary": "xs", "probability": 0.7},
        "path.y": {"dictionary": "ys", "probability": 0.7},
        "path.lon": {"dictionary": "lons", "probability": 0.5},
        "path.lat": {"dictionary": "lats", "probability": 0.5},
        "path.minx": {"dictionary": "minxs", "probability": 0.5},
        "path.miny": {"dictionary": "minys", "probability": 0.5},
        "path.maxx": {"dictionary": "maxxs", "probability": 0.5},
        "path.maxy": {"dictionary": "maxys", "probability": 0.5},
        "query.expression": {"dictionary": "expressions", "probability": 0.3},
        "query.filter": {"dictionary": "filters", "probability": 0.3},
    },
    "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
    # The coverage phase's boundary-value combinations are hundreds of requests per operation
    # on this document (~500 on an item tile: over 13 minutes for the run on 2 cores); the
    # examples and fuzzing phases with real values cover the operations in ~2 minutes.
    "phases": {"coverage": {"enabled": False}},
    # TERRAMESH_FUZZ_SEED=N runs another reproducible set of examples (more fuzzing by hand)
    "seed": int(os.environ.get("TERRAMESH_FUZZ_SEED", "20261202")),
}

# Every other request of an operation gets these path values where it has the parameter
# (schemathesis applies the dictionaries' probabilities with a random state that other tests
# of the session move, so without this whether an operation reads real data varied by run).
REAL_PATH = {
    "collection_id": API_COLLECTION_ID,
    "item_id": ITEM_ID,
    "search_id": REGISTERED,
    "tileMatrixSetId": "WebMercatorQuad",
    "z": 14,
    "x": 8602,
    "y": 5894,
    "lon": 9.0165,
    "lat": 44.988,
    "minx": 8.99,
    "miny": 44.97,
    "maxx": 9.04,
    "maxy": 45.01,
    "width": 256,
    "height": 256,
}

REQUESTS: collections.Counter[str] = collections.Counter()  # operation -> requests made
STATUSES: collections.Counter[tuple[str, int]] = collections.Counter()  # (operation, status) -> responses
RSS = {"peak": 0, "samples": 0, "first": 0}


def _raster_openapi_document() -> dict:
    """The tile app's OpenAPI document, built in-process: schemathesis must see the
    operations when pytest collects (its lazy `from_fixture` loader does not run on pytest
    9). test_the_served_document_is_the_one_fuzzed checks that the live server serves it."""
    from terramesh_stac.catalog.settings import ServiceSettings
    from terramesh_stac.catalog.tiles import create_raster_app

    settings = ServiceSettings(dest="/nonexistent", collection_id=API_COLLECTION_ID)
    return create_raster_app(settings, "postgresql://unused@127.0.0.1/unused").openapi()


DOCUMENT = _raster_openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(CONFIG))


def _server_process(base_url: str) -> psutil.Process:
    port = int(base_url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid)
    raise RuntimeError(f"no process listens on {port}")


@pytest.fixture(scope="module")
def registered_search(live_server) -> str:
    r = httpx.post(f"{live_server}/raster/searches/register", json={"collections": [API_COLLECTION_ID]}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def server_rss(live_server):
    """Samples the server's RSS every 50 ms while the module runs (peak in RSS)."""
    proc = _server_process(live_server)
    RSS["first"] = proc.memory_info().rss
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss = proc.memory_info().rss
            RSS["peak"] = max(RSS["peak"], rss)
            RSS["samples"] += 1
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield RSS
    stop.set()
    thread.join()


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_tile_service_answers_no_server_error(case, live_server, registered_search, server_rss):
    params = case.path_parameters or {}
    operation = f"{case.method} {case.path}"
    REQUESTS[operation] += 1
    real = REQUESTS[operation] % 2  # this request on real data (path values and assets)
    if real:
        params.update({k: v for k, v in REAL_PATH.items() if k in params})
    if params.get("search_id") == REGISTERED:
        params["search_id"] = registered_search
    if (params.get("z"), params.get("x"), params.get("y")) == (14, 8602, 5894):
        # the dictionaries' tile is a WebMercatorQuad one (schemathesis cannot bind a
        # dictionary to the tileMatrixSetId enum of this document)
        params["tileMatrixSetId"] = "WebMercatorQuad"
    if REQUESTS[operation] % 4 == 1 and "assets" in {q.name for q in case.operation.query}:
        # every 4th: a plain request on real data (generated query values are mostly invalid)
        case.query = {"assets": [ASSETS[REQUESTS[operation] // 4 % len(ASSETS)]]}
        if "format" in params:
            params["format"] = "png"
    elif case.query and "assets" in case.query and real:
        case.query["assets"] = [ASSETS[REQUESTS[operation] // 2 % len(ASSETS)]]
    response = case.call_and_validate(base_url=f"{live_server}/raster", checks=[not_a_server_error], timeout=60)
    STATUSES[operation, response.status_code] += 1


def test_the_served_document_is_the_one_fuzzed(live_server):
    served = httpx.get(f"{live_server}/raster/api", timeout=30).json()
    served.pop("servers", None)  # FastAPI adds the mount path it is served under
    assert served == DOCUMENT


def test_the_fuzz_run_reached_every_operation(server_rss):
    """The run above is not vacuous: every operation got requests, real data was read (200s
    on item tiles, previews and mosaics), and the service's memory stayed bounded."""
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    missing = {op for op in operations if REQUESTS[op] == 0}
    assert not missing, f"no requests for {missing}; made {dict(REQUESTS)}"
    ok = {op: STATUSES[op, 200] for op in operations}
    print(
        f"\nschemathesis: {sum(REQUESTS.values())} requests on {len(operations)} operations; "
        f"server RSS {server_rss['first'] / 1e6:.0f} MB at the start, peak {server_rss['peak'] / 1e6:.0f} MB "
        f"({server_rss['samples']} samples)"
    )
    print(f"answered 200: {ok}")
    for op in (
        "GET /collections/{collection_id}/items/{item_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
        "GET /collections/{collection_id}/items/{item_id}/point/{lon},{lat}",
        "POST /collections/{collection_id}/items/{item_id}/statistics",
        "GET /searches/{search_id}/bbox/{minx},{miny},{maxx},{maxy}/{width}x{height}.{format}",
        "GET /searches/{search_id}/info",
    ):
        assert ok[op], f"no 200 on {op}: {dict((k, v) for k, v in STATUSES.items() if k[0] == op)}"
    assert server_rss["samples"] > 10 and server_rss["peak"] < PEAK_RSS_BOUND
