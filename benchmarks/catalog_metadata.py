"""Rows -> NDJSON of `terramesh-stac catalog`: metadata rows/s and bytes per item.

    terramesh-stac synth /tmp/meta --metadata-only            # 9,178,624 rows (~6 min)
    .venv/bin/python benchmarks/catalog_metadata.py /tmp/meta --split all [--workers 2] [--keep]

Runs `build_catalog` (the command's code path: process pool, one task per row group) from
the metadata parquet under SOURCE into a fresh folder, prints the conditions, the wall
time, rows/s, items, NDJSON bytes per item (with and without the 7 tar hrefs, whose
length is the source's), the CPU time of the workers, and deletes the output unless
--keep. Target (issue 12): 9,178,624 rows in <= 10 min on the 2-core machine, <= 2 kB/item.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

from _common import command_line, conditions, temp_dir

from terramesh_stac.converters.catalog_run import CatalogOptions, build_catalog


def href_bytes(dest: str, sample: int = 1000) -> float:
    """Mean bytes of the asset hrefs (with their JSON quotes and key) of the first items."""
    total = n = 0
    for path in sorted(Path(dest, "catalog/items").rglob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            item = json.loads(line)
            total += sum(len(a["href"]) + len('"href":"",') for a in item["assets"].values())
            n += 1
            if n >= sample:
                return total / n
    return total / n if n else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a folder (or URL) holding {split}_metadata.parquet")
    p.add_argument("--split", default="all", choices=["train", "val", "all"])
    p.add_argument("--workers", type=int, help="local processes (default: one per core)")
    p.add_argument("--dest", help="output folder (default: a fresh one under /tmp, deleted after)")
    p.add_argument("--keep", action="store_true", help="keep the output")
    args = p.parse_args()

    dest = args.dest or temp_dir("terramesh-catalog-")
    print(conditions(command_line(), [f"source: {args.source}, split {args.split}, dest {dest}"]))
    t0 = time.perf_counter()
    report = build_catalog(args.source, CatalogOptions(dest=dest), split=args.split, workers=args.workers)
    wall = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    per_item = report.bytes / report.items if report.items else 0.0
    hrefs = href_bytes(dest)
    print(report.summary().splitlines()[0])
    print(f"rows: {report.rows:,}  items: {report.items:,}  files: {report.files:,}  problems: {len(report.errors)}")
    print(f"wall: {wall:.1f} s  rows/s: {report.rows / wall:,.0f}  workers: {report.workers}")
    print(f"worker CPU: {children.ru_utime + children.ru_stime:.1f} s")
    print(
        f"NDJSON: {report.bytes / 1e9:.2f} GB, {per_item:,.0f} bytes/item ({per_item - hrefs:,.0f} without the hrefs)"
    )
    if not args.keep and not args.dest:
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    main()
