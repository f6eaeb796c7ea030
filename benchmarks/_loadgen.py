"""A load on `terramesh-stac serve`: N asyncio clients (httpx) for a fixed time on a mix of
STAC searches, item tiles and registered-search mosaic tiles, with the server's RSS sampled,
and optionally the database stopped and started in the middle.

Not a benchmark itself (leading underscore): benchmarks/service_load.py prints its figures
and tests/test_service_load.py asserts on a short run of it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx
import psutil


@dataclass
class Request:
    kind: str  # "search", "item tile", "mosaic tile"
    method: str
    url: str
    body: dict | None = None


@dataclass
class Outcome:
    kind: str
    started: float  # monotonic seconds
    seconds: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    error: str = ""


@dataclass
class Outage:
    """When the database was stopped and when it answered again (monotonic seconds)."""

    stopped: float = 0.0
    back: float = 0.0


@dataclass
class LoadResult:
    clients: int
    seconds: float
    outcomes: list[Outcome]
    peak_rss_mb: float
    outage: Outage | None = None
    statuses: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.statuses = Counter(o.status for o in self.outcomes)


# asset -> a render preset of the converted collection that shows it
DEMO_PRESETS = {"S2L2A": "true-color", "S2RGB": "s2rgb", "S1RTC": "sar-rtc", "DEM": "dem", "NDVI": "ndvi"}


def _tile_at(lon: float, lat: float, zoom: int):
    import morecantile

    return morecantile.tms.get("WebMercatorQuad").tile(lon, lat, zoom)


def request_mix(
    stac: str,
    raster: str,
    items: list[dict],
    collection_id: str,
    search_id: str | None,
    weights: tuple[float, float, float] = (0.4, 0.4, 0.2),
    seed: int = 0,
    presets: dict[str, str] | None = None,
) -> Callable[[], Request]:
    """A function that draws the next request, by `weights`: searches (bbox, datetime,
    CQL2, POST, single item) from the STAC API at `stac`, item tiles (a preset the item's
    assets allow, z 12-14 inside the item) and mosaic tiles of the registered search
    `search_id` (z 12-13 on an item) from the tile service at `raster`. `presets`: asset ->
    render preset to draw item tiles with (the first also draws the mosaic tiles); default
    the converted collection's (converters/collection.py RENDERS)."""
    rng = random.Random(seed)
    presets = presets or DEMO_PRESETS
    mosaic_preset = next(iter(presets.values()))
    base_search, base_item = weights[0], weights[0] + weights[1]
    usable = [it for it in items if it["bbox"][0] < it["bbox"][2]]  # not across the antimeridian

    def centre(item):
        w, s, e, n = item["bbox"]
        return (w + e) / 2, (s + n) / 2

    def search() -> Request:
        item = rng.choice(usable)
        lon, lat = centre(item)
        year = (item["properties"].get("datetime") or item["properties"]["start_datetime"])[:4]
        choice = rng.randrange(5)
        q = {"collections": collection_id, "limit": 10}
        if choice == 0:
            q["bbox"] = f"{lon - 2:.4f},{lat - 2:.4f},{lon + 2:.4f},{lat + 2:.4f}"
        elif choice == 1:
            q["datetime"] = f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z"
        elif choice == 2:
            q["filter"] = f"eo:cloud_cover < {rng.randrange(5, 100)}"
            q["filter-lang"] = "cql2-text"
        elif choice == 3:
            body = {
                "collections": [collection_id],
                "bbox": [lon - 5, lat - 5, lon + 5, lat + 5],
                "filter-lang": "cql2-json",
                "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]},
                "limit": 10,
            }
            return Request("search", "POST", f"{stac}/search", body)
        else:
            return Request("search", "GET", f"{stac}/collections/{collection_id}/items/{item['id']}")
        return Request("search", "GET", f"{stac}/search?{urlencode(q)}")

    def item_tile() -> Request:
        item = rng.choice(usable)
        choices = [p for a, p in presets.items() if a in item["assets"]]
        preset = rng.choice(choices)
        t = _tile_at(*centre(item), rng.randrange(12, 15))
        url = f"{raster}/collections/{collection_id}/items/{item['id']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
        return Request("item tile", "GET", f"{url}?render={preset}")

    def mosaic_tile() -> Request:
        item = rng.choice(usable)
        t = _tile_at(*centre(item), rng.randrange(12, 14))
        url = f"{raster}/searches/{search_id}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?render={mosaic_preset}"
        return Request("mosaic tile", "GET", url)

    def draw() -> Request:
        r = rng.random()
        return search() if r < base_search else item_tile() if r < base_item else mosaic_tile()

    return draw


class RssSampler:
    """Peak resident memory of a process and its children, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.2):
        self.process = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            return self.process.memory_info().rss + sum(
                c.memory_info().rss for c in self.process.children(recursive=True)
            )
        except psutil.Error:
            return 0

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def _client(http: httpx.AsyncClient, draw: Callable[[], Request], until: float, out: list[Outcome]):
    while (now := time.monotonic()) < until:
        req = draw()
        try:
            r = await http.request(req.method, req.url, json=req.body)
            await r.aread()
            out.append(
                Outcome(
                    req.kind, now, time.monotonic() - now, r.status_code, "" if r.status_code < 400 else r.text[:200]
                )
            )
        except httpx.HTTPError as e:
            out.append(Outcome(req.kind, now, time.monotonic() - now, 0, f"{type(e).__name__}: {e}"))


async def _run(clients: int, seconds: float, draw, outage_at: float | None, outage_for: float, stop_db, start_db):
    outcomes: list[Outcome] = []
    outage = None
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(_client(http, draw, until, outcomes)) for _ in range(clients)]
        if outage_at is not None:
            await asyncio.sleep(outage_at)
            outage = Outage()
            outage.stopped = time.monotonic()
            await asyncio.to_thread(stop_db)
            await asyncio.sleep(outage_for)
            await asyncio.to_thread(start_db)
            outage.back = time.monotonic()
        await asyncio.gather(*tasks)
    return outcomes, outage


def run_load(
    server_pid: int,
    draw: Callable[[], Request],
    clients: int,
    seconds: float,
    outage_at: float | None = None,
    outage_for: float = 5.0,
    stop_db: Callable[[], None] | None = None,
    start_db: Callable[[], None] | None = None,
) -> LoadResult:
    """Run the load; with `outage_at`, `stop_db()` that many seconds in and `start_db()`
    `outage_for` seconds later (both blocking; run in a thread)."""
    with RssSampler(server_pid) as rss:
        outcomes, outage = asyncio.run(_run(clients, seconds, draw, outage_at, outage_for, stop_db, start_db))
    return LoadResult(clients, seconds, outcomes, rss.peak / 2**20, outage)


def outage_report(result: LoadResult) -> dict:
    """What the clients saw around the outage: statuses of the failed requests from the
    stop on, whether any was other than 503, and the recovery time (from the database
    answering again to the end of the last failed request)."""
    o = result.outage
    failed = [x for x in result.outcomes if x.status != 200]
    during = [x for x in failed if x.started + x.seconds >= o.stopped]
    before = [x for x in failed if x.started + x.seconds < o.stopped]
    last_fail_end = max((x.started + x.seconds for x in during), default=o.back)
    return {
        "failed before the outage": len(before),
        "failed from the stop on": len(during),
        "statuses of those": dict(Counter(x.status for x in during)),
        "not 503": [(x.kind, x.status, x.error) for x in during if x.status != 503][:5],
        "recovery seconds": max(0.0, last_fail_end - o.back),
    }
