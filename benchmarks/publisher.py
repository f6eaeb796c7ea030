"""The one writer's ceiling: how many conversion workers one Publisher keeps up with.

    .venv/bin/python benchmarks/publisher.py [--workers 128,256] [--worker-rate 10]
        [--shard-items 1000] [--months 48] [--seconds 60]

`convert --load` has one process write into pgstac (terramesh_stac.catalog.loader.Publisher:
concurrent loaders deadlock, pgstac#285) while any number of workers convert. Here it is fed
what W workers would hand it, without running them:

(1) template: a generated source (2 shards x 16 samples) converted for real in this process
    (pipeline.convert_shard): its items, as convert writes them.
(2) for each W in --workers: a separate process plays the workers. Each finishes a shard of
    --shard-items items every shard-items / worker-rate seconds, the workers staggered, for
    --seconds. A finished shard is written to the destination as a worker writes it (its
    items file: the template's items copied with new ids and their times spread over
    --months months, as load.py does; then its manifest) and announced on a queue (what
    run.convert's futures do). This process publishes them as run.convert does: a
    PublishQueue (PUBLISH_ITEMS items or PUBLISH_SECONDS), each batch in one publish_shards
    call, into a fresh collection of a throwaway embedded pgstac. Reported: items/s arriving
    and published, per shard the time from its manifest to its items counted in pgstac
    (searchable), and what still waited when the workers stopped.
(3) the ceiling: the largest run's shards published again with all of them pending at once
    (the collection deleted, VACUUM ANALYZE, CHECKPOINT; nothing else running), in batches
    of PUBLISH_ITEMS: the publisher's own items/s, and the workers at --worker-rate it keeps
    up with.

--worker-rate: samples/s of one conversion worker; the default 10 is benchmarks/conversion.py
(g) on this machine (64 samples in 5.6-9.9 s on one worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import time
import warnings

import orjson
from _common import command_line, conditions, generate_source, loadavg, percentile, pgstac_cluster, temp_dir
from load import multiply, reset

from terramesh_stac.catalog import database
from terramesh_stac.catalog.loader import Publisher
from terramesh_stac.converters.layout import COLLECTION_FILE, items_path
from terramesh_stac.converters.manifest import ItemsRecord, Manifest, all_manifests, read_manifest, write_manifest
from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard
from terramesh_stac.converters.run import PUBLISH_ITEMS, PUBLISH_SECONDS, PublishQueue, write_collection
from terramesh_stac.converters.source import open_source

SPLIT = "val"
COLLECTION = "terramesh-bench"


def template(work: str) -> tuple[list[dict], Manifest]:
    """(the items, a manifest) of 2 generated shards converted for real."""
    source_url = os.path.join(work, "source")
    generate_source(source_url, 2, 16)
    options = ConvertOptions(dest=os.path.join(work, "template"), collection_id=COLLECTION)
    store = options.store()
    items = []
    for shard in open_source(source_url).list_shards(SPLIT):
        convert_shard(source_url, SPLIT, shard, options)
    manifests = all_manifests(store)
    for m in manifests:
        items += [orjson.loads(line) for line in store.get(m.items.path).splitlines() if line.strip()]
    return items, manifests[0]


def play_workers(dest: str, items: list[dict], manifest: Manifest, args, workers: int, announce) -> None:
    """The simulated workers (a process of its own): shards written on their schedule."""
    store = ConvertOptions(dest=dest, collection_id=COLLECTION).store()
    period = args.shard_items / args.worker_rate  # seconds a worker takes for a shard
    due = sorted(
        (w * period / workers + k * period, w, k)
        for w in range(workers)
        for k in range(int(args.seconds // period) + 1)
    )
    due = [d for d in due if d[0] < args.seconds]
    start = time.monotonic()
    for at, w, k in due:
        time.sleep(max(0.0, start + at - time.monotonic()))
        shard = f"sim_w{w:04d}_{k:04d}"
        copies = multiply(items, args.shard_items, args.months)
        for it in copies:
            it["id"] = f"{it['id']}-{shard}"
        data = b"\n".join(orjson.dumps(it) for it in copies) + b"\n"
        path = items_path(SPLIT, shard)
        store.put(path, data)
        record = ItemsRecord(
            path=path,
            count=len(copies),
            ids={it["id"]: it["properties"].get("datetime") for it in copies},
            sha256=hashlib.sha256(data).hexdigest(),
        )
        content_id = hashlib.sha256(shard.encode()).hexdigest()[:12]
        write_manifest(store, dataclasses.replace(manifest, shard=shard, items=record, content_id=content_id))
        announce.put((shard, len(copies), time.time()))
    announce.put(None)


def publish_run(dsn: str, dest: str, items: list[dict], manifest: Manifest, args, workers: int) -> dict:
    """(2): W simulated workers' shards published as they come, as run.convert does."""
    options = ConvertOptions(dest=dest, collection_id=COLLECTION)
    store = options.store()
    _, collection = write_collection(options, store)
    spawn = multiprocessing.get_context("spawn")
    announce = spawn.Queue()
    player = spawn.Process(target=play_workers, args=(dest, items, manifest, args, workers, announce))
    finished: dict[str, float] = {}  # shard -> when its manifest was written
    lags, calls, arrived = [], 0, 0
    pending = PublishQueue()
    with Publisher(dsn, store) as publisher:
        publisher.publish_collection(collection)
        t0 = time.time()
        player.start()
        playing = True
        while playing or pending.shards:
            if playing:
                try:
                    got = announce.get(timeout=0.2)
                except queue.Empty:
                    got = ()
                if got is None:  # the workers are done
                    playing, stopped_at, waiting = False, time.time(), pending.items
                elif got:
                    shard, n, finished[shard] = got
                    pending.add(SPLIT, shard, n)
                    arrived += n
            if pending.due() or not playing:
                shards = pending.take()
                publisher.publish_shards([read_manifest(store, s, shard) for s, shard in shards])
                end = time.time()
                calls += 1
                lags += [end - finished[shard] for _, shard in shards]
        published_at = time.time()
        t = time.perf_counter()
    exit_seconds = time.perf_counter() - t  # stats, constraints, the map's density recount
    player.join()
    summary = publisher.summary()
    return {
        "workers": workers,
        "shards": len(finished),
        "items": arrived,
        "in_db": summary["in_db"],
        "errors": summary["errors"],
        "arrival_rate": arrived / (stopped_at - t0),
        "published_rate": summary["items"] / (published_at - t0),
        "load_rate": summary["items_per_second"],
        "calls": calls,
        "lags": lags,
        "waiting": waiting,
        "tail": published_at - stopped_at,
        "exit_seconds": exit_seconds,
    }


def ceiling(admin_dsn: str, dsn: str, dest: str) -> tuple[int, float, int]:
    """(3): every shard at dest published again, all pending at once -> (items, s, calls)."""
    store = ConvertOptions(dest=dest, collection_id=COLLECTION).store()
    collection = json.loads(store.get(COLLECTION_FILE))
    reset(admin_dsn, [COLLECTION])
    store.delete_tree("published")
    pending = PublishQueue()
    manifests = {m.shard: m for m in all_manifests(store)}
    with Publisher(dsn, store) as publisher:
        publisher.publish_collection(collection)
        t, calls = time.perf_counter(), 0
        for m in manifests.values():
            pending.add(SPLIT, m.shard, m.items.count)
            if pending.items >= PUBLISH_ITEMS:
                publisher.publish_shards([manifests[shard] for _, shard in pending.take()])
                calls += 1
        if pending.shards:
            publisher.publish_shards([manifests[shard] for _, shard in pending.take()])
            calls += 1
        seconds = time.perf_counter() - t
        items = publisher.summary()["items"]
    return items, seconds, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="128,256", help="simulated worker counts, comma-separated")
    ap.add_argument("--worker-rate", type=float, default=10.0, help="samples/s of one conversion worker")
    ap.add_argument("--shard-items", type=int, default=1000, help="items per shard (a 2026 copy of val: ~1,000)")
    ap.add_argument("--months", type=int, default=48, help="months the items of a shard spread over")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the workers run")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    counts = [int(n) for n in args.workers.split(",")]

    work = temp_dir("terramesh-bench-publisher-")
    try:
        items, manifest = template(work)
        print(
            conditions(
                command_line(),
                [
                    f"template: GENERATED (terramesh_stac.converters.synth, seed 0) 2 shards x 16 samples, "
                    f"converted: {len(items)} items, {len(b''.join(orjson.dumps(i) for i in items)) / len(items) / 1e3:.1f} kB/item",
                    f"simulated: shards of {args.shard_items} items over {args.months} months, each worker "
                    f"{args.worker_rate:g} samples/s (a shard every {args.shard_items / args.worker_rate:.0f} s), "
                    f"staggered, for {args.seconds:.0f} s; the workers are one process writing items + manifests",
                    f"publishing: one Publisher, batches of {PUBLISH_ITEMS} items or {PUBLISH_SECONDS:.0f} s "
                    "(run.convert's PublishQueue), into a throwaway embedded pgstac on the same 2 cores",
                ],
            )
        )
        rows = []
        with pgstac_cluster("terramesh-bench-publisher-") as settings:
            dsn, admin = database.dsn(settings, "loader"), database.dsn(settings, "admin")
            for workers in counts:
                rows.append(publish_run(dsn, os.path.join(work, f"dest-{workers}"), items, manifest, args, workers))
                for r in rows[-1]["errors"][:5]:
                    print(f"# WARNING: {r}")
            n, seconds, calls = ceiling(admin, dsn, os.path.join(work, f"dest-{counts[-1]}"))

        print()
        print("## (2) simulated workers' output published as it comes")
        print()
        print(
            "| workers (as they arrived) | shards | items arriving/s (nominal) | items published/s | loading items/s | in pgstac | calls | "
            "manifest -> searchable p50 / p95 / max s | waiting when the workers stopped | then done in s | on exit s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            lags = r["lags"]
            print(
                f"| {r['workers']} ({r['arrival_rate'] / args.worker_rate:.0f}) | {r['shards']} | {r['arrival_rate']:.0f} ({r['workers'] * args.worker_rate:.0f}) | {r['published_rate']:.0f} | "
                f"{r['load_rate']:.0f} | {r['in_db']} / {r['items']} | {r['calls']} | "
                f"{percentile(lags, 50):.1f} / {percentile(lags, 95):.1f} / {max(lags):.1f} | "
                f"{r['waiting']} items | {r['tail']:.1f} | {r['exit_seconds']:.1f} |"
            )
        behind = [r for r in rows if r["arrival_rate"] < 0.9 * r["workers"] * args.worker_rate]
        if behind:
            print()
            print(
                "# The simulated workers fell behind in the rows of "
                + ", ".join(str(r["workers"]) for r in behind)
                + " workers: the process that plays them shares the cores with the publisher and "
                "PostgreSQL. Those rows measure the workers in brackets, not the nominal ones."
            )
        rate = n / seconds
        print()
        print("## (3) the ceiling: everything pending at once")
        print()
        print(f"{n} items in {seconds:.1f} s, {calls} calls: **{rate:.0f} items/s**")
        print(
            f"one publisher keeps up with ~{rate / args.worker_rate:.0f} workers at {args.worker_rate:g} samples/s "
            f"(the full 9.2 M items: {9_178_624 / rate / 3600:.1f} h of publishing at least)"
        )
        print()
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
