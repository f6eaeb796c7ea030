"""Helpers shared by the benchmark scripts: conditions, a throwaway pgstac cluster, stats.

Not a benchmark itself (leading underscore). Every script prints `conditions()` first so a
figure is never separated from the machine, load and versions it was measured under.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import statistics
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PACKAGES = (
    "numpy",
    "xarray",
    "zarr",
    "rasterio",
    "rio-cogeo",
    "pillow",
    "pystac",
    "pypgstac",
    "psycopg",
    "stac-fastapi-pgstac",
    "titiler-core",
    "titiler-pgstac",
    "uvicorn",
    "httpx",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def versions(names=PACKAGES) -> str:
    out = []
    for n in names:
        try:
            out.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            pass
    try:
        import rasterio

        out.append(f"GDAL {rasterio.__gdal_version__}")
    except ImportError:
        pass
    return ", ".join(out)


def conditions(command: str, extra: list[str] | None = None) -> str:
    """'# '-prefixed lines: command, date, CPU, cores, load average, versions (+ extra)."""
    lines = [
        f"command: {command}",
        f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {cpu_model()}, {os.cpu_count()} cores visible (shared), load average (1/5/15 min) at start: {loadavg()}",
        f"python {sys.version.split()[0]}; {versions()}",
        *(extra or []),
    ]
    return "\n".join("# " + line for line in lines)


def command_line() -> str:
    return ".venv/bin/python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temp_dir(prefix: str, parent: str = "/tmp") -> str:
    """A fresh 0755 folder under `parent` (as root the `postgres` user must be able to enter it)."""
    os.makedirs(parent, exist_ok=True)
    d = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(d, 0o755)
    return d


@contextlib.contextmanager
def pgstac_cluster(prefix: str = "terramesh-bench-"):
    """A throwaway embedded PostgreSQL + PostGIS + pgstac cluster (the one tests/conftest.py's
    pgstac_db fixture starts, catalog.database.temporary_cluster): yields its Settings."""
    from terramesh_stac.catalog import database
    from terramesh_stac.settings import Settings

    with database.temporary_cluster(lambda **fields: Settings(**fields, _env_file=None), prefix) as settings:
        yield settings


def generate_source(out_dir: str, shards: int, samples_per_shard: int, seed: int = 0) -> list[str]:
    from terramesh_stac.converters.synth import generate

    return generate(out_dir, split="val", shards=shards, samples_per_shard=samples_per_shard, seed=seed)


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> tuple[float, float, float]:
    """(p50, p95, mean) in ms."""
    ms = [s * 1000 for s in seconds]
    return percentile(ms, 50), percentile(ms, 95), statistics.fmean(ms)
