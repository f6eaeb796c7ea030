"""Shared pytest fixtures: each section belongs to the module it serves."""


# --- pgstac database (catalog/database.py) ------------------------------------------------

import dataclasses as _dataclasses
import os as _os
import shutil as _shutil
import socket as _socket
import tempfile as _tempfile

import pytest as _pytest


def pytest_collection_modifyitems(items):
    """Markers from the services a test's fixtures start, so `-m "not postgres"` (or s3,
    subprocess) selects by what a test needs; tests that start processes themselves carry
    `@pytest.mark.subprocess`."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "pgstac_db" in fixtures:
            item.add_marker("postgres")
        if "s3_server" in fixtures:
            item.add_marker("s3")
        if "live_server" in fixtures:
            item.add_marker("subprocess")


@_dataclasses.dataclass(frozen=True)
class PgstacTestDB:
    """A running embedded pgstac cluster: its Settings and one DSN per role."""

    settings: object  # terramesh_stac.settings.Settings
    admin: str  # superuser DSN
    loader: str  # member of pgstac_ingest
    api: str  # member of pgstac_read


def _free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@_pytest.fixture(scope="session")
def pgstac_db():
    """Session-wide embedded PostgreSQL + PostGIS + pgstac on a free port, removed at the end
    (catalog.database.temporary_cluster, which the benchmarks use too)."""
    from terramesh_stac.catalog import database
    from terramesh_stac.settings import Settings

    with database.temporary_cluster(lambda **fields: Settings(**fields, _env_file=None)) as settings:
        yield PgstacTestDB(
            settings=settings,
            admin=database.dsn(settings, "admin"),
            loader=database.dsn(settings, "loader"),
            api=database.dsn(settings, "api"),
        )


# --- S3-compatible server (moto standalone, real HTTP on 127.0.0.1) -------------------------


@_pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free local port; yields its endpoint URL. Fake credentials are
    put in the environment for the session (botocore/s3fs refuse to sign without any)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with _pytest.MonkeyPatch.context() as mp:
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            mp.setenv(name, value)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


# --- STAC API, tiles, assets, map page (catalog/app.py) ----------------------------------

import datetime as _dt
import subprocess as _subprocess
import sys as _sys
import time as _time
from pathlib import Path as _Path

API_COLLECTION_ID = "terramesh-apitest"

# (id, lon, lat, datetime, eo:cloud_cover): 264 px at 10 m is ~0.033 deg of longitude at
# these latitudes; items 1+2 and 5+6 are neighbours (mosaic tests), 3 and 4 stand alone.
API_SAMPLES = [
    ("majortom_val_0000001", 9.000, 45.000, "2021-06-01T10:00:00Z", 5.0),
    ("majortom_val_0000002", 9.033, 45.000, "2021-07-01T10:00:00Z", 20.0),
    ("majortom_train_0000003", 10.000, 47.000, "2022-03-01T10:00:00Z", 2.0),
    ("ssl4eos12_val_0000004", 11.000, 48.000, "2021-06-15T10:00:00Z", 50.0),
    ("ssl4eos12_train_0000005", 7.000, 50.000, "2020-01-10T10:00:00Z", 8.0),
    ("ssl4eos12_train_0000006", 7.033, 50.000, "2023-05-05T10:00:00Z", 30.0),
]

# Render presets as the collection carries them (render extension). `true_color` uses the
# titiler `asset_bidx` convention, which terramesh_stac.catalog.links folds into `S2L2A|bidx=4,3,2`.
API_RENDERS = {
    "true_color": {
        "title": "True colour (S2 L2A)",
        "assets": ["S2L2A"],
        "asset_bidx": "S2L2A|4,3,2",
        "rescale": [[0, 3000], [0, 3000], [0, 3000]],
        "minmax_zoom": [8, 16],
    },
    "rgb": {"title": "S2 RGB", "assets": ["S2RGB"], "rescale": [[0, 255]]},
    "s1rtc_vv": {"title": "S1 RTC VV", "assets": ["S1RTC|bidx=1"], "rescale": [[-25, 0]], "colormap_name": "greys_r"},
    "s1grd_vv": {
        "title": "S1 GRD VV",
        "assets": ["S1GRD"],
        "asset_bidx": "S1GRD|1",
        "rescale": [[-25, 0]],
        "colormap_name": "greys_r",
    },
    "dem": {"title": "Elevation", "assets": ["DEM"], "rescale": [[0, 2000]], "colormap_name": "terrain"},
    "ndvi": {"title": "NDVI", "assets": ["NDVI"], "rescale": [[-1, 1]], "colormap_name": "rdylgn"},
    "lulc": {
        "title": "Land cover",
        "assets": ["LULC"],
        "colormap": {"1": "#419bdf", "2": "#397d49", "4": "#e49635", "5": "#c4281b"},
    },
}

# asset key -> (bands, dtype, role title)
_API_ASSETS = {
    "S2L2A": (12, "int16"),
    "S2RGB": (3, "int16"),
    "S1RTC": (2, "float32"),
    "S1GRD": (2, "float32"),
    "DEM": (1, "int16"),
    "NDVI": (1, "float32"),
    "LULC": (1, "uint8"),
}


def _api_write_cog(path, data, crs, transform):
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        compress="deflate",
        blocksize=256,
    ) as dst:
        dst.write(data)


def _api_pixels(key, bands, dtype, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:264, 0:264]
    ramp = (xx + yy) / 526.0
    if key == "S2L2A":
        data = np.stack([500 + 2500 * ramp + 50 * b for b in range(bands)])
    elif key == "S2RGB":
        data = np.stack([40 + 200 * ramp for _ in range(bands)])
    elif key in ("S1RTC", "S1GRD"):
        data = np.stack([-20 + 15 * ramp, -25 + 10 * ramp])
    elif key == "DEM":
        data = (200 + 1500 * ramp)[None]
    elif key == "NDVI":
        data = (-0.5 + 1.4 * ramp)[None]
    else:  # LULC: classes 1, 2, 4, 5 in quadrants
        data = (1 + (xx >= 132) + 3 * (yy >= 132))[None]
    data = data + rng.normal(0, 1e-3, data.shape) if dtype == "float32" else data
    return data.astype(dtype)


def build_api_sample_catalog(dest):
    """A collection + items + COGs at local paths under `dest` (like the converter's output)."""
    import pystac
    from pyproj import Transformer
    from rasterio.transform import from_origin
    from shapely.geometry import box, mapping
    from shapely.ops import transform as shp_transform

    dest = _Path(dest)
    items = []
    for n, (key, lon, lat, when, cloud) in enumerate(API_SAMPLES):
        source = key.split("_", 1)[0]
        zone = int((lon + 180) // 6) + 1
        crs = f"EPSG:{32600 + zone}"
        to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        x0, y0 = to_utm.transform(lon, lat)
        x0, y0 = round(x0 / 10) * 10, round(y0 / 10) * 10
        transform = from_origin(x0, y0, 10, 10)
        utm_box = box(x0, y0 - 2640, x0 + 2640, y0)
        to_wgs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        footprint = shp_transform(lambda x, y: to_wgs.transform(x, y), utm_box)
        item = pystac.Item(
            id=key,
            geometry=mapping(footprint),
            bbox=list(footprint.bounds),
            datetime=_dt.datetime.fromisoformat(when.replace("Z", "+00:00")),
            properties={
                "eo:cloud_cover": cloud,
                "terramesh:source": source,
                "terramesh:split": key.split("_")[1],
                "proj:code": crs,
            },
            collection=API_COLLECTION_ID,
            stac_extensions=[
                "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
                "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            ],
        )
        s1 = "S1RTC" if source == "majortom" else "S1GRD"
        for akey, (bands, dtype) in _API_ASSETS.items():
            if akey in ("S1RTC", "S1GRD") and akey != s1:
                continue
            path = dest / "assets" / key / f"{akey}.tif"
            _api_write_cog(path, _api_pixels(akey, bands, dtype, n), crs, transform)
            item.add_asset(
                akey, pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"], title=akey)
            )
        items.append(item.to_dict(include_self_link=False, transform_hrefs=False))

    collection = pystac.Collection(
        id=API_COLLECTION_ID,
        description="TerraMesh API test collection",
        title="TerraMesh (API test)",
        license="CC-BY-SA-4.0",
        extent=pystac.Extent(
            pystac.SpatialExtent([[6.9, 44.9, 11.1, 50.1]]),
            pystac.TemporalExtent(
                [[_dt.datetime(2020, 1, 1, tzinfo=_dt.UTC), _dt.datetime(2023, 12, 31, tzinfo=_dt.UTC)]]
            ),
        ),
        stac_extensions=["https://stac-extensions.github.io/render/v2.0.0/schema.json"],
    )
    cdict = collection.to_dict(include_self_link=False, transform_hrefs=False)
    cdict["links"] = [link for link in cdict["links"] if link["rel"] not in ("root", "self")]
    cdict["renders"] = API_RENDERS
    cdict["item_assets"] = {k: {"type": pystac.MediaType.COG, "roles": ["data"], "title": k} for k in _API_ASSETS}
    return cdict, items


@_pytest.fixture(scope="session")
def api_catalog(pgstac_db):
    """The sample collection + items, assets written under a fresh dest, loaded in pgstac
    (as the loader role). Yields (dest, collection dict, item dicts)."""
    from pypgstac.load import Loader, Methods

    from terramesh_stac.catalog import database, density

    dest = _tempfile.mkdtemp(prefix="terramesh-api-", dir="/tmp")
    _os.chmod(dest, 0o755)
    collection, items = build_api_sample_catalog(dest)
    with database.pgstac_db(pgstac_db.loader) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([collection]), insert_mode=Methods.upsert)
        # partitioning + queryables before the first item load, as terramesh_stac.catalog.loader does
        database.prepare_collection(db.connect(), API_COLLECTION_ID)
        loader.collection_json.cache_clear()
        loader.load_items(iter(items), insert_mode=Methods.upsert)
        density.refresh(db.connect(), API_COLLECTION_ID)  # the map's density, as the Publisher does after a load
    try:
        yield _Path(dest), collection, items
    finally:
        _shutil.rmtree(dest, ignore_errors=True)


def _wait_http(url, proc, timeout=60.0):
    import httpx

    deadline = _time.monotonic() + timeout
    while _time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        _time.sleep(0.2)
    raise TimeoutError(url)


@_pytest.fixture(scope="session")
def live_server(pgstac_db, api_catalog):
    """`terramesh-stac serve` (terramesh_stac.catalog.app) in a uvicorn subprocess on a free port.

    A subprocess, not a thread: tests open COGs over HTTP with GDAL, which must not share a
    GIL with the server answering them. Yields the base URL, e.g. http://127.0.0.1:PORT
    (no trailing slash).
    """
    dest, _, _ = api_catalog
    env = {
        "TERRAMESH_API_DSN": pgstac_db.api,
        "TERRAMESH_DEST": str(dest),
        "TERRAMESH_COLLECTION_ID": API_COLLECTION_ID,
        "TERRAMESH_DEFAULT_RENDER": "true_color",
        "TERRAMESH_DB_POOL_MAX_SIZE": "3",
    }
    # cwd is the asset folder (so no stray .env is read)
    with start_service(env, dest, "server") as base:
        yield base


import contextlib as _contextlib


def cluster_env(pgstac_db) -> dict[str, str]:
    """The settings that point the CLI at the test cluster: its state dir and port."""
    return {
        "TERRAMESH_STATE_DIR": str(pgstac_db.settings.state_dir),
        "TERRAMESH_DB_PORT": str(pgstac_db.settings.db_port),
    }


@_contextlib.contextmanager
def serve_with_cli(pgstac_db, dest, **env):
    """`terramesh-stac serve --dest DEST` as a user runs it, against the test cluster (its
    state dir and port), with extra TERRAMESH_* settings from `env`. Yields the base URL."""
    port = _free_port()
    full_env = {
        **_os.environ,
        **cluster_env(pgstac_db),
        "TERRAMESH_DB_POOL_MAX_SIZE": "3",
        **env,
    }
    proc = _subprocess.Popen(
        [_sys.executable, "-m", "terramesh_stac.cli", "serve", "--port", str(port), "--dest", str(dest)],
        env=full_env,
        stdout=_subprocess.DEVNULL,
        stderr=_subprocess.DEVNULL,
        cwd=dest,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/raster/healthz", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@_contextlib.contextmanager
def start_service(env: dict, cwd, name: str = "server"):
    """Another `terramesh-stac serve` (uvicorn subprocess, terramesh_stac.asgi:create_app) with
    TERRAMESH_* settings from `env` on top of this process's environment (no .env: `cwd`
    should be a fresh folder). Yields the base URL; the log is `cwd/<name>.log`."""
    cwd = _Path(cwd)
    port = _free_port()
    full_env = {
        **_os.environ,
        **env,
        "PYTHONPATH": _os.pathsep.join([str(_Path(__file__).resolve().parents[1]), _os.environ.get("PYTHONPATH", "")]),
    }
    log_path = cwd / f"{name}.log"
    log = open(log_path, "wb")
    proc = _subprocess.Popen(
        [
            _sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "terramesh_stac.asgi:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "5",
        ],
        env=full_env,
        cwd=str(cwd),
        stdout=log,
        stderr=_subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_http(f"{base}/raster/healthz", proc)
        except (RuntimeError, TimeoutError) as e:
            log.flush()
            raise RuntimeError(f"{name} did not start ({e}):\n{log_path.read_text(errors='replace')[-3000:]}") from e
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except _subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def delete_collection(admin_dsn: str, collection_id: str) -> None:
    """Remove a collection and its items from pgstac (test clean-up, as the admin)."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone():
            conn.execute("SELECT pgstac.delete_collection(%s)", (collection_id,))


# --- TerraMesh-format sample tree and an HTTP server for it (converters/synth.py, source.py) --


@_pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A generated TerraMesh tree (read-only, shared): split `val`, 3 shards x 4 samples
    (majortom_shard_000001/2, ssl4eos12_shard_000003), seed 0, plus val_metadata.parquet.
    Copy it before modifying anything."""
    from terramesh_stac.converters.synth import generate

    root = tmp_path_factory.mktemp("terramesh")
    generate(root, split="val", shards=3, samples_per_shard=4, seed=0)
    return root


def read_original(src, modality: str, shard: str, key: str, tmp, split: str = "val"):
    """What xarray reads from a sample's original .zarr.zip (extracted from its tar): the
    reference that Zarr and reference assets must equal."""
    import tarfile
    from pathlib import Path

    import xarray as xr
    from zarr.storage import ZipStore

    with tarfile.open(Path(src) / split / modality / shard) as tar:
        data = tar.extractfile(f"{key}.zarr.zip").read()
    path = Path(tmp) / f"{key}-{modality}.zip"
    path.write_bytes(data)
    with ZipStore(path, mode="r") as store:
        return xr.open_zarr(store, zarr_format=2, consolidated=True).load()


def assert_bitwise_equal(got, want) -> None:
    """Every numeric array of `got` has the dtype and the exact bytes of `want`'s (NaN payloads
    included; assert_identical compares values, where any NaN equals any NaN)."""
    for name, var in want.variables.items():
        if var.dtype.kind not in "USO":
            assert got[name].dtype == var.dtype, (name, got[name].dtype, var.dtype)
            assert got[name].values.tobytes() == var.values.tobytes(), name


def rewrite_member(tar_path, key: str, change) -> None:
    """Rewrite one sample of a tar with `change(dataset)` applied (same keys, new content);
    `change=None` drops the sample."""
    import io
    import tarfile
    from pathlib import Path

    from terramesh_stac.converters.zarrzip import decode_zarr_zip, encode_zarr_zip

    tar_path = Path(tar_path)
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m, data in members:
            if m.name.startswith(key):
                if change is None:
                    continue
                data = encode_zarr_zip(change(decode_zarr_zip(data)))
                m.size = len(data)
            out.addfile(m, io.BytesIO(data))
    tar_path.write_bytes(buf.getvalue())


def read_items(dest, endpoint_url: str | None = None, full: bool = True) -> dict:
    """{item id: item} of every items/**/*.ndjson under a converted destination (a folder, or
    s3:// with `endpoint_url`); an id seen twice fails the test. `full`: each asset with what
    the collection's item_assets says put back (item_assets.full_item: what a STAC API serves
    after hydration); else the lean items as written."""
    from terramesh_stac.catalog.loader import item_files
    from terramesh_stac.catalog.loader import read_items as read_item_file
    from terramesh_stac.converters.item_assets import full_item
    from terramesh_stac.converters.storage import Store

    store = Store(str(dest), endpoint_url=endpoint_url)
    items = {}
    for path in item_files(store):
        for item in read_item_file(store, path):
            assert item["id"] not in items, f"duplicate item {item['id']}"
            items[item["id"]] = full_item(item) if full else item
    return items


def serve_directory(path, requests: list | None = None, ranges_only: bool = False, port: int = 0):
    """Serve `path` over HTTP on 127.0.0.1 (threaded, single byte ranges supported);
    returns (base URL without trailing slash, stop function). With `requests`, every
    request is appended to it as (method, path, Range header or None); with `ranges_only`,
    a GET of a .tar without a Range header is refused (403): nothing downloads a shard."""
    import functools
    import http.server
    import os
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def send_head(self):
            rng = self.headers.get("Range")
            if requests is not None:
                requests.append((self.command, self.path, rng))
            if ranges_only and self.command == "GET" and not rng and self.path.endswith(".tar"):
                self.send_error(403, "range requests only")
                return None
            fs_path = self.translate_path(self.path)
            if not rng or not rng.startswith("bytes=") or not os.path.isfile(fs_path):
                return super().send_head()
            size = os.path.getsize(fs_path)
            first, _, last = rng[6:].partition("-")
            start = int(first) if first else max(size - int(last), 0)
            end = min(int(last), size - 1) if first and last else size - 1
            if start >= size:
                self.send_error(416)
                return None
            f = open(fs_path, "rb")
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Type", self.guess_type(fs_path))
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            return _LimitedReader(f, end - start + 1)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(path)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


def serve_flaky_directory(path, fail_first=()):
    """Like serve_directory, but the first GET of each file whose path starts with one of
    `fail_first` gets a 503 (a real, misbehaving server). Returns (url, stop, failed paths)."""
    import functools
    import http.server
    import threading

    failed: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rel = self.path.lstrip("/")
            with lock:
                fail = rel.startswith(tuple(fail_first)) and rel not in failed
                if fail:
                    failed.append(rel)
            if fail:
                self.send_error(503, "Service Unavailable")
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(path)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop, failed


class _LimitedReader:
    """A file object that ends after `n` bytes (what copyfile sends for a range)."""

    def __init__(self, f, n):
        self.f, self.left = f, n

    def read(self, size=-1):
        if self.left <= 0:
            return b""
        data = self.f.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def close(self):
        self.f.close()


@_pytest.fixture(scope="session")
def http_server(synth_root):
    """Base URL (no trailing slash) of an HTTP server whose document root is `synth_root`."""
    url, stop = serve_directory(synth_root)
    try:
        yield url
    finally:
        stop()
