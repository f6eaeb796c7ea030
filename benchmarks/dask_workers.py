"""Conversion on Dask: scaling with workers, closeness to the decode limit, memory, pgstac
load during conversion, and an extrapolation to the full 9.2 M samples.

    .venv/bin/python benchmarks/dask_workers.py [--shards 8] [--samples-per-shard 16]
        [--workers 1,2] [--extrapolate 2,32,256] [--no-publish]
        [--real-samples-per-shard 1000] [--real-months-per-shard N]

A TerraMesh-format tree is generated (terramesh_stac.converters.synth, seed 0, Major TOM + SSL4EO-S12
shards) into a temp dir removed at the end. First (c0): every shard converted by
terramesh_stac.converters.pipeline.convert_shard in this process, one after another, without Dask (the
per-core rate Dask is compared with), counting the calls to the destination Store. Then for
every worker count N (a fresh LocalCluster from terramesh_stac.converters.run.start_client each: N
single-threaded worker processes, the production configuration):

(a) idle memory: RSS of each worker process just after the cluster starts and again after
    a warm-up (imports + decode and encode of one sample on every worker, not timed);
(b) decode only: one task per shard (terramesh_stac.converters.shards.iter_samples: tar read + zarr.zip
    decode of every modality, nothing encoded or written), submitted to the same cluster ->
    samples/s; the read/decode ceiling of (c);
(c) full conversion: terramesh_stac.converters.run.convert(..., client=) into a fresh dest, the call behind
    `terramesh-stac convert` -> samples/s, its ratio to (b), and the scaling N vs 1 worker;
(d) peak memory per worker: VmHWM of every worker
    process after (b) and after (c) (a high-water mark: after (c) it is max(b, c)).

Then, unless --no-publish: (e) a conversion with a terramesh_stac.catalog.loader.Publisher into a
throwaway embedded pgstac (benchmarks/_common.pgstac_cluster), on the largest N: the
publishing's own items/s, its batches, and per shard the time from the shard's manifest
(its last write on the worker) to the end of the publisher's count check in pgstac (the
items are committed and searchable then); the last shard's value is "how long after the
last shard finished the last item was searchable". (e2) the same items published again
with the cores idle, per shard file and as one file, to separate pgstac's cost per item,
per (file, month partition) and per partition created. (f) objects written per sample
(files at the dest) and the Store calls of (c0) (put/copy/get/exists/delete: PUT/COPY/GET/
HEAD/DELETE requests on an S3 dest). (g) the extrapolation to the full dataset; its
assumptions are printed with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

from _common import command_line, conditions, generate_source, loadavg, pgstac_cluster, temp_dir  # noqa: E402

from terramesh_stac.converters.pipeline import ConvertOptions  # noqa: E402
from terramesh_stac.converters.run import convert, start_client  # noqa: E402
from terramesh_stac.converters.source import open_source  # noqa: E402

FULL_SAMPLES = 9_200_000
# start_client starts LocalCluster workers with terramesh_stac.converters.run.WORKER_ENV (glibc's
# MALLOC_TRIM_THRESHOLD_ 64 MiB, MALLOC_MMAP_THRESHOLD_ 16 MiB) in Dask's pre-spawn environment,
# instead of Dask's MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's dynamic mmap
# threshold. The extra run measures Dask's environment as it comes, without ours.
DASK_DEFAULT_ENV: dict[str, str] = {}
FULL_BYTES = 17e12  # TerraMesh on the Hub: ~17 TB
MB = 1e6


# --- functions run on the workers (pickled by value from __main__) ------------------------


def _memory() -> tuple[float, float]:
    """(current RSS MB, peak RSS MB) of this worker process.

    Peak from VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a
    process started from a larger one would report its parent's size."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    kb = {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}
    return kb["VmRSS"] * 1024 / MB, kb["VmHWM"] * 1024 / MB


def _warm(source_url: str, split: str, shard: str) -> None:
    """Imports, GDAL/zarr initialisation: decode and encode one sample, write nothing."""
    from terramesh_stac.converters.pipeline import encode_sample
    from terramesh_stac.converters.sample import Sample
    from terramesh_stac.converters.shards import iter_samples
    from terramesh_stac.converters.source import open_source

    for s in iter_samples(open_source(source_url), split, shard):
        if isinstance(s, Sample):
            encode_sample(s)
            return


def _decode_shard(source_url: str, split: str, shard: str) -> int:
    """The decode-only task: every sample of the shard decoded, nothing encoded or written."""
    from terramesh_stac.converters.sample import Sample
    from terramesh_stac.converters.shards import iter_samples
    from terramesh_stac.converters.source import open_source

    return sum(isinstance(s, Sample) for s in iter_samples(open_source(source_url), split, shard))


# --- measurements -----------------------------------------------------------------------


def worker_memory(client) -> list[tuple[float, float]]:
    return [v for _, v in sorted(client.run(_memory).items())]


def decode_pass(client, source_url: str, split: str, shards: list[str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    futures = [client.submit(_decode_shard, source_url, split, s, pure=False) for s in shards]
    n = sum(client.gather(futures))
    return n, time.perf_counter() - t0


def run_workers(
    n: int, source_url: str, split: str, shards: list[str], work: str, env: dict[str, str] | None = None
) -> dict:
    """(a)-(d) on a fresh LocalCluster of n workers (env: their environment on top of Dask's;
    None: start_client's default, terramesh_stac.converters.run.WORKER_ENV)."""
    client = start_client(workers=n, worker_env=env)
    try:
        fresh = worker_memory(client)
        client.run(_warm, source_url, split, shards[0])
        idle = worker_memory(client)
        n_dec, s_dec = decode_pass(client, source_url, split, shards)
        after_decode = worker_memory(client)
        dest = os.path.join(work, f"dest-{n}w{'-env' if env is not None else ''}")
        report = convert(
            source_url, ConvertOptions(dest=dest, collection_id="terramesh-bench"), split=split, client=client
        )
        after_convert = worker_memory(client)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    if report.errors:
        print(f"# WARNING: {len(report.errors)} problems with {n} workers, e.g. {report.errors[0]}")
    label = f"{n}" if env is None else f"{n}, Dask's default worker environment (no WORKER_ENV)"
    return {
        "n": n,
        "label": label,
        "dest": dest,
        "decode": (n_dec, s_dec),
        "report": report,
        "fresh": fresh,
        "idle": idle,
        "after_decode": after_decode,
        "after_convert": after_convert,
    }


def publish_run(n: int, source_url: str, split: str, work: str) -> dict:
    """(e): a conversion with a Publisher into a throwaway pgstac, timing every batch."""
    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.loader import Publisher

    class TimedPublisher(Publisher):
        def publish_shards(self, manifests):
            t = time.time()
            super().publish_shards(manifests)
            self.batch_times.append((t, time.time(), [(m.split, m.shard) for m in manifests]))

    dest = os.path.join(work, "dest-publish")
    options = ConvertOptions(dest=dest, collection_id="terramesh-bench")
    # the nanny sets MALLOC_TRIM_THRESHOLD_ in this process's environment too ("pre-spawn"):
    # keep it away from PostgreSQL, which inherits this environment (it is set again for workers)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with pgstac_cluster("terramesh-bench-dist-") as settings:
        dsn = database.dsn(settings, "loader")
        client = start_client(workers=n)
        try:
            client.run(_warm, source_url, split, open_source(source_url).list_shards(split)[0])
            with TimedPublisher(dsn, options.store()) as publisher:
                publisher.batch_times = []
                report = convert(source_url, options, split=split, client=client, publisher=publisher)
                returned = time.time()
                batches = publisher.batch_times
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
        with database.pgstac_db(dsn) as db:
            conn = db.connect()
            in_db = conn.execute(
                "SELECT count(*) FROM pgstac.items WHERE collection = %s", ("terramesh-bench",)
            ).fetchone()[0]
            searched = conn.execute(
                "SELECT jsonb_array_length(pgstac.search(%s::jsonb)->'features')",
                ('{"collections": ["terramesh-bench"], "limit": 10000}',),
            ).fetchone()[0]
        markers = len(list(Path(dest, "published").rglob("*.json")))
        idle = republish_idle(options.store(), database.dsn(settings, "admin"), dsn)
    finished = {}  # (split, shard) -> epoch seconds its manifest (last write) appeared
    for p in Path(dest, "manifests").rglob("*.json"):
        finished[(p.parent.name, p.stem)] = p.stat().st_mtime
    lags = []  # (finished, searchable) per shard
    for _, end, shards in batches:
        for s, shard in shards:
            key = (s, shard.removesuffix(".tar"))
            if key in finished:
                lags.append((finished[key], end))
    if report.errors:
        print(f"# WARNING: {len(report.errors)} problems in the publishing run, e.g. {report.errors[0]}")
    return {
        "report": report,
        "batches": batches,
        "lags": sorted(lags),
        "in_db": in_db,
        "searched": searched,
        "dest": dest,
        "returned": returned,
        "markers": markers,
        "idle": idle,
    }


IDLE_LOADS = ("per shard, partitions created", "per shard, partitions exist", "one file, partitions exist")


def republish_idle(store, admin_dsn: str, loader_dsn: str) -> dict:
    """(e2) the same items published again with the cores idle (no workers), three ways:
    one call per shard file as during the run into a new collection (pgstac creates the month
    partitions), the same with the partitions already there (items deleted), and all items
    as one file (partitions there). Before each: the rows (or the whole collection) deleted,
    VACUUM ANALYZE, CHECKPOINT, published/ markers removed.
    -> {label: (files, (file, month partition) pairs, items, seconds)}."""
    import json

    import psycopg

    from terramesh_stac.catalog.loader import Publisher
    from terramesh_stac.converters.layout import COLLECTION_FILE
    from terramesh_stac.converters.manifest import all_manifests

    collection = json.loads(store.get(COLLECTION_FILE))
    manifests = all_manifests(store)
    files = [[line for line in store.get(m.items.path).splitlines() if line.strip()] for m in manifests]
    lines = [line for f in files for line in f]
    store.put("items/bench-all.ndjson", b"\n".join(lines) + b"\n")
    per_shard_pairs = sum(months(f) for f in files)
    out = {}
    for label in IDLE_LOADS:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            if label == IDLE_LOADS[0]:
                conn.execute("SELECT pgstac.delete_collection(%s)", (collection["id"],))
            else:
                conn.execute("DELETE FROM pgstac.items WHERE collection = %s", (collection["id"],))
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        store.delete_tree("published")
        with Publisher(loader_dsn, store) as publisher:
            publisher.publish_collection(collection)
            if label.startswith("per shard"):
                for m in manifests:
                    publisher.publish_shards([m])
            else:
                publisher.load_file("items/bench-all.ndjson")
            summary = publisher.summary()
        pairs = per_shard_pairs if label.startswith("per shard") else months(lines)
        out[label] = (len(publisher.files), pairs, summary["items"], summary["seconds"])
    store.delete("items/bench-all.ndjson")
    return out


def months(lines: list[bytes]) -> int:
    """Distinct months of the items' datetimes: the monthly pgstac partitions a load touches."""
    import json

    return len({json.loads(line)["properties"]["datetime"][:7] for line in lines})


def load_rate_model(idle: dict) -> tuple[float, float, float]:
    """(seconds per (file, partition) pair, seconds per item, seconds per partition created)
    from the idle loads: pypgstac loads a file partition by partition (temp table, COPY,
    DELETE, INSERT, partition stats), so with the partitions there t = c x pairs + b x items;
    creating a month partition (with its indexes) costs once per collection and month."""
    _, p1, _, s1 = idle[IDLE_LOADS[1]]
    _, p2, n2, s2 = idle[IDLE_LOADS[2]]
    c = (s1 - s2) / (p1 - p2) if p1 != p2 else 0.0
    b = (s2 - c * p2) / n2
    created = idle[IDLE_LOADS[0]]
    return c, b, (created[3] - s1) / p2  # one file: its pairs = the months = the partitions


def real_load_rate(idle: dict, items: int, months_: int) -> tuple[float, str]:
    """items/s for files of `items` items over `months_` existing partitions, and how it was
    obtained: the fit where both its terms are positive, else (noise) the measured rate of
    all items in one call with the partitions there (convert publishes finished shards
    together, up to terramesh_stac.converters.run.PUBLISH_ITEMS per call; a larger call amortises its
    per-partition cost further, so this is a lower bound)."""
    c, b, _ = load_rate_model(idle)
    if c > 0 and b > 0:
        return items / (c * months_ + b * items), f"fitted for {items}-item files over {months_} months"
    _, _, n, secs = idle[IDLE_LOADS[2]]
    return n / secs, (
        "measured for all items in one call with the partitions there, as convert "
        "publishes batches of finished shards (a lower bound: real batches are larger); "
        "the fit was not usable (noise)"
    )


def count_objects(dest: str) -> Counter:
    """Files at a local dest by kind: asset files, per-shard files per folder, run-level files."""
    kinds: Counter = Counter()
    for p in Path(dest).rglob("*"):
        if p.is_file() and ".staging" not in p.parts:
            rel = p.relative_to(dest)
            kinds[rel.parts[0] if len(rel.parts) > 1 else rel.name] += 1
    return kinds


def in_process(source_url: str, split: str, shards: list[str], work: str) -> tuple[int, float, Counter]:
    """(c0) every shard converted by convert_shard in this process, one after another, no
    Dask, counting the Store calls: (samples, seconds, calls)."""
    from terramesh_stac.converters.pipeline import convert_shard
    from terramesh_stac.converters.storage import Store

    options = ConvertOptions(dest=os.path.join(work, "dest-in-process"), collection_id="terramesh-bench")
    _warm(source_url, split, shards[0])
    calls: Counter = Counter()
    originals = {name: getattr(Store, name) for name in ("put", "copy", "get", "exists", "delete", "delete_tree")}

    def counting(name, original):
        def counted(self, *a, **k):
            calls[name] += 1
            return original(self, *a, **k)

        return counted

    for name, original in originals.items():
        setattr(Store, name, counting(name, original))
    try:
        t0 = time.perf_counter()
        n = sum(convert_shard(source_url, split, shard, options).items for shard in shards)
        seconds = time.perf_counter() - t0
    finally:
        for name, original in originals.items():
            setattr(Store, name, original)
    return n, seconds, calls


def generated_months(source_url: str, split: str) -> set[str]:
    """Months of the generated samples' S2 times (the item datetime), from the metadata parquet."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(source_url, f"{split}_metadata.parquet"), columns=["S2_time"])
    return {str(t)[:7] for t in table.column("S2_time").to_pylist()}


def source_bytes(source_url: str, split: str) -> tuple[int, int]:
    """(bytes of the split's tar files, bytes of their .zarr.zip members)."""
    import tarfile

    tars = members = 0
    for p in Path(source_url, split).rglob("*.tar"):
        tars += p.stat().st_size
        with tarfile.open(p) as tf:
            members += sum(m.size for m in tf if m.isfile())
    return tars, members


# --- output -----------------------------------------------------------------------------


def fmt_mem(values: list[tuple[float, float]], peak: bool) -> str:
    return " / ".join(f"{v[1] if peak else v[0]:.0f}" for v in values)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.0f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=8, help="generated shards")
    ap.add_argument("--samples-per-shard", type=int, default=16, help="generated samples per shard")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    ap.add_argument("--extrapolate", default="2,32,256", help="worker counts to extrapolate to")
    ap.add_argument("--no-publish", action="store_true", help="skip the pgstac publishing run (e)")
    ap.add_argument(
        "--no-env-run",
        action="store_true",
        help="skip the extra run of the first worker count in Dask's default worker "
        "environment (without terramesh_stac.converters.run.WORKER_ENV)",
    )
    ap.add_argument(
        "--real-samples-per-shard",
        type=int,
        default=1000,
        help="samples per real shard, for the extrapolation (a 2026 copy of val: ~1,000; "
        "the original card: up to 10,240)",
    )
    ap.add_argument(
        "--real-months-per-shard",
        type=int,
        help="month partitions one real shard's items fall in, for the extrapolation "
        "(default: the months of all generated samples)",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    counts = [int(x) for x in args.workers.split(",")]
    targets = [int(x) for x in args.extrapolate.split(",")]
    split = "val"

    work = temp_dir("terramesh-bench-dist-")
    try:
        source_url = os.path.join(work, "source")
        t = time.perf_counter()
        keys = generate_source(source_url, args.shards, args.samples_per_shard)
        gen_s = time.perf_counter() - t
        shards = open_source(source_url).list_shards(split)
        tar_bytes, member_bytes = source_bytes(source_url, split)
        per_sample_src = tar_bytes / len(keys)
        times = generated_months(source_url, split)
        all_months = f"{len(times)}, {min(times)} to {max(times)}"
        real_months = args.real_months_per_shard or len(times)
        from importlib import metadata

        print(
            conditions(
                command_line(),
                [
                    f"dask {metadata.version('dask')}, distributed {metadata.version('distributed')}; memory "
                    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
                    f"data: GENERATED (terramesh_stac.converters.synth, seed 0): {len(shards)} shards x {args.samples_per_shard} "
                    f"samples = {len(keys)} samples, split {split}, Major TOM + SSL4EO-S12 shards "
                    f"(generated in {gen_s:.0f} s, not timed); {tar_bytes / MB:.1f} MB of tars "
                    f"({per_sample_src / MB:.2f} MB per sample; .zarr.zip members {member_bytes / MB:.1f} MB)",
                    "clusters: terramesh_stac.converters.run.start_client(workers=N): a fresh LocalCluster per N, N worker "
                    "processes x 1 thread; scheduler, client (and in (e) PostgreSQL) on the same cores",
                    f"source and dest on the local disk ({work}); every convert into a fresh dest",
                ],
            )
        )

        in_items, in_seconds, calls = in_process(source_url, split, shards, work)
        calls_items = in_items
        runs = [run_workers(n, source_url, split, shards, work) for n in counts]
        if not args.no_env_run:
            runs.append(run_workers(counts[0], source_url, split, shards, work, env=DASK_DEFAULT_ENV))
        base = runs[0]
        base_rate = base["report"].items / base["report"].seconds

        print()
        print("## (b) decode only vs (c) full conversion, per worker count")
        print()
        print(
            "| workers | decode-only samples/s | convert samples | convert s | convert samples/s | "
            "samples/s per worker | ms/sample per worker | convert / decode-only | "
            f"scaling vs {base['n']} worker(s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print(
            f"| none: convert_shard in the benchmark process, shard after shard (no Dask) | - | {in_items} | "
            f"{in_seconds:.1f} | {in_items / in_seconds:.2f} | {in_items / in_seconds:.2f} | "
            f"{1000 * in_seconds / in_items:.0f} | - | - |"
        )
        for r in runs:
            n_dec, s_dec = r["decode"]
            rep = r["report"]
            rate = rep.items / rep.seconds
            print(
                f"| {r['label']} | {n_dec / s_dec:.2f} | {rep.items} | {rep.seconds:.1f} | {rate:.2f} | "
                f"{rate / r['n']:.2f} | {1000 * r['n'] / rate:.0f} | {rate / (n_dec / s_dec):.2f} | "
                f"{rate / base_rate:.2f}x (ideal {r['n'] / base['n']:.0f}x) |"
            )
        print()
        print(
            "Per shard (task time on the worker, from the shard reports): "
            + "; ".join(
                f"{r['label']} worker(s): mean {sum(s.seconds for s in r['report'].shards) / len(r['report'].shards):.1f} s, "
                f"max {max(s.seconds for s in r['report'].shards):.1f} s"
                for r in runs
            )
        )

        print()
        print("## (a) and (d) memory per worker process (MB, one value per worker)")
        print()
        print(
            "| workers | RSS fresh | RSS idle after warm-up | peak after decode-only | peak after convert | "
            "RSS at the end |"
        )
        print("|---|---|---|---|---|---|")
        for r in runs:
            print(
                f"| {r['label']} | {fmt_mem(r['fresh'], False)} | {fmt_mem(r['idle'], False)} | "
                f"{fmt_mem(r['after_decode'], True)} | {fmt_mem(r['after_convert'], True)} | "
                f"{fmt_mem(r['after_convert'], False)} |"
            )

        last = runs[len(counts) - 1]  # the largest worker count, default environment
        kinds = count_objects(last["dest"])
        n_items = last["report"].items
        written = sum(
            p.stat().st_size for p in Path(last["dest"]).rglob("*") if p.is_file() and ".staging" not in p.parts
        )

        pub = None
        if not args.no_publish:
            pub = publish_run(max(counts), source_url, split, work)
            p, rep = pub["report"].published, pub["report"]
            kinds["published"] = pub["markers"]
            lags = sorted(end - fin for fin, end in pub["lags"])
            print()
            print(f"## (e) publishing into pgstac during the conversion ({max(counts)} workers)")
            print()
            print("| figure | value |")
            print("|---|---|")
            print(
                f"| conversion with publishing: samples/s (vs without, same workers) | "
                f"{rep.items / rep.seconds:.2f} ({rep.items / rep.seconds / (last['report'].items / last['report'].seconds):.2f}x) |"
            )
            print(
                f"| items published / in pgstac / returned by pgstac.search | {p['items']} / {pub['in_db']} / "
                f"{pub['searched']} |"
            )
            print(f"| batches (publish_shards calls) / shards published | {p['batches']} / {p['shards']} |")
            print(f"| publishing time (pypgstac delsert + count check) | {p['seconds']:.2f} s |")
            print(f"| load rate: items / delsert time | {p['items_per_second']:.0f} items/s |")
            print(f"| load rate: items / (delsert + count check) | {p['items'] / p['seconds']:.0f} items/s |")
            print(
                f"| shard finished (manifest written) -> its items searchable: median / max | "
                f"{lags[len(lags) // 2]:.2f} s / {lags[-1]:.2f} s |"
            )
            print(f"| last shard finished -> last item searchable | {pub['lags'][-1][1] - pub['lags'][-1][0]:.2f} s |")
            print(
                f"| last item searchable -> convert() returned (collection rewrite, run report) | "
                f"{pub['returned'] - pub['batches'][-1][1]:.2f} s |"
            )
            print()
            print(
                "(e2) the same items published again after the conversion, cores idle (delsert + count "
                "check; collection deleted, VACUUM, CHECKPOINT before each):"
            )
            print()
            print("| load | files | (file, month partition) pairs | items | seconds | items/s | ms per pair |")
            print("|---|---|---|---|---|---|---|")
            for label, (files, pairs, items, secs) in pub["idle"].items():
                print(
                    f"| {label} | {files} | {pairs} | {items} | {secs:.2f} | {items / secs:.0f} | "
                    f"{1000 * secs / pairs:.0f} |"
                )
            per_pair, per_item, per_partition = load_rate_model(pub["idle"])
            k, m = args.real_samples_per_shard, real_months
            print()
            rate, how = real_load_rate(pub["idle"], k, m)
            print(
                f"Fit (partitions there) t = c x pairs + b x items: c = {1000 * per_pair:.1f} ms per (file, "
                f"partition) pair, b = {1000 * per_item:.2f} ms per item; creating a month partition "
                f"{1000 * per_partition:.0f} ms (once per month). A real shard file of {k} items over {m} months "
                f"(the months of all generated samples, {all_months}; --real-months-per-shard): "
                f"{rate:.0f} items/s ({how})."
            )

        objects = sum(kinds.values())
        asset_objects = kinds["assets"]
        shard_objects = objects - asset_objects - 2  # collection.json and reports/run.json per run
        print()
        print("## (f) objects and requests at the destination")
        print()
        print(
            f"Files at the dest of the {last['n']}-worker run ({n_items} samples, {len(shards)} shards"
            f"{', + published markers of (e)' if pub else ''}): "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            + f"; total {objects} = {objects / n_items:.2f} objects per sample here: "
            f"{asset_objects / n_items:.2f} asset files per sample + {shard_objects / len(shards):.0f} "
            f"files per shard + 2 per run; {written / MB:.1f} MB written = {written / n_items / MB:.2f} MB "
            f"per sample ({written / tar_bytes:.2f}x the source tars)."
        )
        per = {k: v / calls_items for k, v in calls.items()}
        print()
        print(
            f"Store calls of (c0), every shard converted in-process into a fresh dest ({calls_items} samples): "
            + ", ".join(f"{k} {v} ({per[k]:.2f}/sample)" for k, v in sorted(calls.items()))
            + ". On an s3:// dest put = one PUT (objects of a few MB: no multipart), copy = one COPY, "
            "get = GET, exists = HEAD (or LIST), delete = DELETE; the publisher adds one PUT per "
            "shard (its published/ marker)."
        )

        # (g) extrapolation
        r1 = base_rate / base["n"]  # samples/s per worker, the least contended run
        real_per_sample = FULL_BYTES / FULL_SAMPLES
        dest_per_sample = written / n_items * real_per_sample / per_sample_src
        k = args.real_samples_per_shard
        obj_per_sample = asset_objects / n_items + shard_objects / len(shards) / k
        shard_puts = (calls.get("put", 0) + calls.get("copy", 0) - asset_objects / n_items * calls_items) / len(shards)
        puts_per_sample = asset_objects / n_items + (shard_puts + (1 if pub else 0)) / k
        load_rate = None
        if pub:
            load_rate, load_how = real_load_rate(pub["idle"], k, real_months)
        peak = max(v[1] for r in runs for v in r["after_convert"])
        print()
        print(f"## (g) extrapolation to {FULL_SAMPLES / 1e6:.1f} M samples")
        print()
        print(
            "Assumptions: (1) CPU-bound, every worker converts at the per-worker rate measured here "
            f"with {base['n']} worker(s), {r1:.2f} samples/s ({1000 / r1:.0f} ms/sample), on real data as "
            "on generated (decode cost is per array, not per byte; see benchmarks/RESULTS.md), and "
            "scaling is linear in workers (one shard per task, no shared state but the scheduler); "
            f"(2) source bytes per sample: real TerraMesh {FULL_BYTES / 1e12:.0f} TB / "
            f"{FULL_SAMPLES / 1e6:.1f} M = {real_per_sample / MB:.2f} MB (the generated tars here: "
            f"{per_sample_src / MB:.2f} MB); (3) written bytes per sample: the measured written/source "
            f"ratio {written / tar_bytes:.2f}x applied to the real size = {dest_per_sample / MB:.2f} MB; "
            f"(4) {k} samples per shard (--real-samples-per-shard): {obj_per_sample:.3f} objects and "
            f"{puts_per_sample:.3f} PUT requests per sample (asset files as measured, per-shard files "
            "spread over the shard; no re-runs, no superseded assets); "
            + (
                f"(5) one publisher (pgstac writer) at the idle load rate of (e2), {load_how}, the "
                f"partitions existing (created once, early in the run): {load_rate:.0f} items/s (the rate into a 9 M-row table is not measured; during the conversion on these shared cores it was "
                f"{pub['report'].published['items_per_second']:.0f} items/s in {pub['report'].published['batches']} "
                f"publishing call(s) of {n_items // len(shards)}-item shard files)."
                if load_rate
                else "(5) pgstac load rate: not measured (--no-publish)."
            )
        )
        print()
        print(
            "| workers | convert wall time | worker-hours | source read per worker | source read total | "
            "written total | objects | PUT requests | PUT/s at the dest | pgstac load (one writer) | "
            "wall time with --load | memory (peak x workers) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in targets:
            rate = n * r1
            wall = FULL_SAMPLES / rate
            load_s = FULL_SAMPLES / load_rate if load_rate else None
            load_cell = f"{hours(load_s)} (items arrive at {rate / load_rate:.2f}x its rate)" if load_s else "-"
            with_load = hours(max(wall, load_s)) + (" (load-bound)" if load_s > wall else "") if load_s else "-"
            print(
                f"| {n} | {hours(wall)} | {FULL_SAMPLES / r1 / 3600:,.0f} | "
                f"{r1 * real_per_sample * 8 / 1e6:.0f} Mbit/s | {rate * real_per_sample * 8 / 1e9:.2f} Gbit/s | "
                f"{FULL_SAMPLES * dest_per_sample / 1e12:.1f} TB | {FULL_SAMPLES * obj_per_sample / 1e6:.0f} M | "
                f"{FULL_SAMPLES * puts_per_sample / 1e6:.0f} M | {rate * puts_per_sample:,.0f} | {load_cell} | "
                f"{with_load} | {n * peak / 1e3:,.1f} GB |"
            )
        if len(runs) > len(counts):
            env_run = runs[-1]
            r_env = env_run["report"].items / env_run["report"].seconds / env_run["n"]
            print()
            print(
                f"With the workers' environment of the last row of (b) ({env_run['label']}), "
                f"{r_env:.2f} samples/s per worker: {FULL_SAMPLES / r_env / 3600:,.0f} worker-hours instead of "
                f"{FULL_SAMPLES / r1 / 3600:,.0f}; the in-process rate of (c0), {in_items / in_seconds:.2f} "
                f"samples/s, would be {FULL_SAMPLES / (in_items / in_seconds) / 3600:,.0f}."
            )
        if load_rate:
            print()
            print(
                f"With --load the single publisher keeps up while workers x {r1:.2f} samples/s <= "
                f"{load_rate:.0f} items/s, i.e. up to ~{load_rate / r1:.0f} workers; beyond that the "
                "load is the bottleneck: the wall time is the load's, whether items are published "
                "during the conversion or by `terramesh-stac load` afterwards (one writer either way: "
                "concurrent pgstac loaders deadlock, see converters/run.py)."
            )
        print()
        print(f"# load average (1/5/15 min) at the end: {loadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
