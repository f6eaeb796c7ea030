"""Measure COG encode time and size for 264 px TerraMesh patches across GTiff profiles.

    .venv/bin/python benchmarks/cog_profiles.py [--samples 12] [--repeat 3]

Patches are synthetic but shaped like the real data (no real shard is available here):
spatially correlated fields (1/f^2 power spectrum, i.e. smooth terrain-like structure) plus
pixel noise, per modality:
  S2L2A  12 x int16, band-correlated reflectance with the published per-band mean/std,
         clipped to [-1000, 15000]
  S1RTC  2 x float16 dB (smooth backscatter + speckle in dB), some NaN
  DEM    1 x int16 metres (smooth relief)
Every profile is lossless (LERC with max_z_error 0). Encoding goes through
terramesh_stac.converters.cog.write_cog (GDAL's COG driver, one in-memory write), exactly what the
converter runs; time is wall-clock per sample (best of --repeat), single thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affine import Affine  # noqa: E402

from terramesh_stac.converters.cog import CogProfile, write_cog  # noqa: E402
from terramesh_stac.converters.footprint import Grid  # noqa: E402
from terramesh_stac.converters.modalities import MODALITY_INFO  # noqa: E402

N = 264


def smooth_field(rng: np.random.Generator, n: int = N, beta: float = 2.0) -> np.ndarray:
    """Gaussian random field with power spectrum 1/f^beta, zero mean, unit std."""
    fx = np.fft.fftfreq(n)[:, None]
    fy = np.fft.fftfreq(n)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / f ** (beta / 2)
    spec[0, 0] = 0
    field = np.fft.ifft2(spec).real
    return (field - field.mean()) / field.std()


def patch(modality: str, rng: np.random.Generator) -> np.ndarray:
    info = MODALITY_INFO[modality]
    if modality == "S2L2A":
        base = smooth_field(rng)
        out = []
        for b in info.bands:
            own = smooth_field(rng)
            v = b.mean + b.std * (0.8 * base + 0.5 * own) * 0.6 + rng.normal(0, 15, (N, N))
            out.append(np.clip(v, -1000, 15000))
        return np.stack(out).astype("int16")
    if modality == "S1RTC":
        base = smooth_field(rng)
        out = []
        for b in info.bands:
            lin = 10 ** ((b.mean + b.std * 0.7 * base) / 10)
            speckle = rng.gamma(4.4, 1 / 4.4, (N, N))  # ~4.4 looks
            out.append(10 * np.log10(lin * speckle))
        a = np.stack(out).astype("float16")
        a[:, :6, :] = np.nan  # a swath edge
        return a.astype("float32")  # stored as float32 (lossless from float16)
    if modality == "DEM":
        return (400 + 300 * smooth_field(rng, beta=3.0)).round().astype("int16")[None]
    raise ValueError(modality)


PROFILES: dict[str, CogProfile] = {}
for block in (256, 272, 512):
    PROFILES[f"b{block} DEFLATE6 +pred"] = CogProfile(block, "DEFLATE", 6)
    PROFILES[f"b{block} ZSTD1 +pred"] = CogProfile(block, "ZSTD", 1)
for name, prof in {
    "b272 ZSTD1 nopred": CogProfile(272, "ZSTD", 1, predictor=0),
    "b272 ZSTD3 +pred": CogProfile(272, "ZSTD", 3),
    "b272 ZSTD9 +pred": CogProfile(272, "ZSTD", 9),
    "b272 ZSTD15 +pred": CogProfile(272, "ZSTD", 15),
    "b272 DEFLATE9 +pred": CogProfile(272, "DEFLATE", 9),
    "b272 LERC_ZSTD1 (lossless)": CogProfile(272, "LERC_ZSTD", 1),
    "b272 ZSTD1 +pred +1 overview": CogProfile(272, "ZSTD", 1, overview_level=1),
}.items():
    PROFILES[name] = prof


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("GDAL_NUM_THREADS", "1")
    rng = np.random.default_rng(42)
    modalities = ("S2L2A", "S1RTC", "DEM")
    data = {m: [patch(m, rng) for _ in range(args.samples)] for m in modalities}
    grid = Grid(32633, Affine(10, 0, 500000, 0, -10, 4200000), (N, N))
    nodata = {"S2L2A": 0, "S1RTC": float("nan"), "DEM": None}

    import rasterio

    print(f"# command: .venv/bin/python benchmarks/cog_profiles.py --samples {args.samples} --repeat {args.repeat}")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus visible (shared), "
        f"GDAL {rasterio.__gdal_version__}, rasterio {rasterio.__version__}, numpy {np.__version__}"
    )
    print("# ms = best-of-repeat wall time per sample; kB = mean COG size; x = size relative to b272 ZSTD1 +pred")
    header = "| profile | " + " | ".join(f"{m} ms | {m} kB" for m in modalities) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(modalities)))
    results = {}
    for name, prof in PROFILES.items():
        row = []
        for m in modalities:
            best = float("inf")
            sizes = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                sizes = [len(write_cog(a, grid, nodata=nodata[m], profile=prof)) for a in data[m]]
                best = min(best, (time.perf_counter() - t0) / len(data[m]))
            results[(name, m)] = (best * 1000, np.mean(sizes) / 1000)
            row.append(results[(name, m)])
        ref = [results.get(("b272 ZSTD1 +pred", m)) for m in modalities]
        cells = []
        for (ms, kb), r in zip(row, ref):
            rel = f" ({kb / r[1]:.2f}x)" if r else ""
            cells.append(f"{ms:.1f} | {kb:.0f}{rel}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
