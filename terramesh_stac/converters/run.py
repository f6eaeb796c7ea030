"""Run a conversion on Dask: one task per shard, published in batches as shards finish.

    report = convert("path/or/url/of/TerraMesh", ConvertOptions(dest="out"), split="val")

The client only plans and bookkeeps: workers stream shards from the source and write
straight to the destination (`pipeline.convert_shard`); what comes back is a small report.
Without `scheduler` a LocalCluster sized to the machine is started (one single-threaded
worker process per core: encoding holds the GIL in places, and one shard in flight per
worker bounds memory). With `scheduler="tcp://host:8786"` an existing cluster does the work.

Re-running is safe at any point: finished shards (manifest present, same content id) are
skipped, unfinished ones are converted again from the start. A destination that cannot be
written at all (full, read-only, no credentials, unreachable: storage.DestinationError) is
found before the work starts when it can be (`Store.check_writable`), else it stops the run
at the first shard that hits it: what finished is reported, nothing temporary stays behind,
and the same command resumes once the cause is gone. When a `publisher` is given
(terramesh_stac.catalog.loader.Publisher), the items of each batch of finished shards are loaded into
pgstac by this process alone (one writer: concurrent loaders deadlock, pgstac#285), after
their assets exist.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pystac

from terramesh_stac.converters.catalog_manifest import catalog_extent_summary
from terramesh_stac.converters.collection import create_collection
from terramesh_stac.converters.layout import COLLECTION_FILE, INDEX_DIR, staging_path
from terramesh_stac.converters.manifest import all_manifests, read_manifest
from terramesh_stac.converters.pipeline import ConvertOptions, SampleCounts, ShardReport, convert_shard
from terramesh_stac.converters.sample import SampleError
from terramesh_stac.converters.source import open_source
from terramesh_stac.converters.storage import DestinationError

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "terramesh-samples"
RUN_REPORT = "reports/run.json"
RUN_STAGING = ".staging/run"  # the client's temporary files (no split is called "run")
# glibc's allocator settings for worker processes. Dask's nanny starts workers with
# MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS), which also switches off
# glibc's dynamic mmap threshold: each codec buffer over 128 kB became its own mmap, first-touch
# page faults and munmap. A worker converting one shard made ~5x the page faults of a plain
# process (~970k against ~190k for 64 samples) and ran at 0.48-0.68x its speed. With these,
# ~500. glibc reads them once at process start, so they go into Dask's pre-spawn environment
# (LocalCluster's `env=` is applied inside the worker, too late); the cost is up to 64 MB of
# freed memory a worker keeps for reuse. Workers of a cluster started elsewhere
# (`--scheduler`) need the same variables in their environment.
WORKER_ENV = {"MALLOC_TRIM_THRESHOLD_": "67108864", "MALLOC_MMAP_THRESHOLD_": "16777216"}
SUMMARY_PROBLEMS = 50  # problems listed in the printed summary; the report has them all
# Finished shards are published together once they hold this many items or the oldest has
# waited this long: pgstac's load cost is mostly per (call, month partition), not per item.
PUBLISH_ITEMS, PUBLISH_SECONDS = 10_000, 30.0


@dataclass
class RunReport:
    shards: list[ShardReport]
    collection_href: str
    seconds: float
    workers: int = 0
    dashboard: str | None = None
    published: dict = field(default_factory=dict)  # items loaded, seconds, errors
    stopped: str | None = None  # why the run stopped before the end (a DestinationError)
    unfinished: list[str] = field(default_factory=list)  # "split/shard" not converted (stopped)
    unfinished_samples: int | None = None  # metadata parquet rows of the unfinished shards
    report_error: str | None = None  # why reports/run.json could not be written at the destination

    @property
    def items(self) -> int:
        return sum(s.items for s in self.shards)

    @property
    def samples(self) -> SampleCounts:
        total = SampleCounts()
        for s in self.shards:
            total = total.add(s.samples)
        return total

    @property
    def converted(self) -> list[ShardReport]:
        return [s for s in self.shards if not s.skipped]

    @property
    def errors(self) -> list[dict]:
        return [e for s in self.shards for e in s.errors] + [
            {"key": None, "shard": None, "modality": None, "reason": f"publishing: {e}"}
            for e in self.published.get("errors", [])
        ]

    @property
    def notes(self) -> list[dict]:
        return [n for s in self.shards for n in s.notes]

    def to_dict(self) -> dict:
        return {
            "collection": self.collection_href,
            "seconds": self.seconds,
            "workers": self.workers,
            "stopped": self.stopped,
            "items": self.items,
            "samples": self.samples.to_dict(),
            "shards": len(self.shards) + len(self.unfinished),
            "skipped": len(self.shards) - len(self.converted),
            "unfinished": self.unfinished,
            "unfinished_samples": self.unfinished_samples,
            "errors": self.errors,
            "notes": self.notes,
            "published": self.published,
            "shard_reports": [s.to_dict() for s in self.shards],
        }

    def summary(self) -> str:
        converted = self.converted
        samples = sum(s.items for s in converted)
        rate = samples / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.items} items in {len(self.shards)} shards: converted {len(converted)} shards "
            f"({samples} samples, {rate:.1f} samples/s on {self.workers} workers), skipped "
            f"{len(self.shards) - len(converted)} already done; {self.seconds:.1f} s; "
            f"collection: {self.collection_href}",
            self._samples_line(),
        ]
        if self.published:
            p = self.published
            lines.append(
                f"published {p.get('items', 0)} items of {p.get('shards', 0)} shards into "
                f"pgstac in {p.get('batches', 0)} batches ({p.get('seconds', 0.0):.1f} s)"
            )
        notes = self.notes
        if notes:
            lines.append(
                f"{len(notes)} notes (not errors), e.g. {notes[0]['key']}, {notes[0]['modality']}: {notes[0]['reason']}"
            )
        retried = [s for s in self.shards if s.retries]
        if retried:
            lines.append(f"{len(retried)} shards retried after transient errors")
        if self.errors:
            lines.append(f"PARTIAL: {len(self.errors)} problems (key, shard, modality: reason):")
            lines += [
                f"  {e['key']}, {e['shard']}, {e['modality']}: {e['reason']}" for e in self.errors[:SUMMARY_PROBLEMS]
            ]
            if len(self.errors) > SUMMARY_PROBLEMS:
                lines.append(
                    f"  ... {len(self.errors) - SUMMARY_PROBLEMS} more in the report "
                    "(--report FILE, or reports/run.json at the destination)"
                )
        if self.stopped:
            lines.append(
                f"STOPPED: {len(self.unfinished)} of {len(self.shards) + len(self.unfinished)} shards not converted; "
                "run the same command again once the cause is fixed: finished shards are skipped"
            )
        if self.report_error:
            lines.append(f"run report not written at the destination ({self.report_error}); --report FILE writes it")
        return "\n".join(lines)

    def _samples_line(self) -> str:
        c = self.samples
        metadata = ""
        if c.in_metadata is not None:
            metadata = f" ({c.in_metadata} in the metadata parquet, {c.not_in_metadata} not in it)"
        line = f"samples: {c.total}{metadata}: {c.converted} converted, {c.partial} partial, {c.failed} failed"
        if self.unfinished and self.unfinished_samples is not None:
            line += f"; {self.unfinished_samples} more in the shards not converted"
        return line


def collection_from_manifests(options: ConvertOptions, store) -> pystac.Collection:
    """The collection, its extent and summaries the union of every finished shard's (this
    run or earlier) of this collection, and of the items `catalog` made from the metadata."""
    extent, summary = catalog_extent_summary(store, options.collection_id)
    for m in all_manifests(store):
        if m.collection == options.collection_id:
            extent, summary = extent.union(m.extent), summary.union(m.summary)
    return create_collection(
        collection_id=options.collection_id,
        title=options.collection_title,
        description=options.collection_description,
        extent=extent,
        summary=summary,
        index_href=store.href(INDEX_DIR) + "/",
    )


def write_collection(options: ConvertOptions, store) -> tuple[str, dict]:
    collection = collection_from_manifests(options, store).to_dict(include_self_link=False)
    return store.put(COLLECTION_FILE, json.dumps(collection, indent=1).encode()), collection


def start_client(scheduler: str | None = None, workers: int | None = None, worker_env: dict[str, str] | None = None):
    """A dask.distributed Client: of `scheduler` if given, else of a new LocalCluster whose
    worker processes start with `worker_env` (default WORKER_ENV) over Dask's pre-spawn
    environment."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    n = workers or len(os.sched_getaffinity(0))
    pre_spawn = {
        **dask.config.get("distributed.nanny.pre-spawn-environ"),
        **(WORKER_ENV if worker_env is None else worker_env),
    }
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):  # read by each Nanny as it is made
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    return Client(cluster)


def _worker_progress(split: str, shard: str):
    """A per-sample callback `tick(n)` (n: samples done in this attempt at the shard) that
    tells the client's progress display, at most every 0.5 s."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return None
    last = [0.0]

    def tick(n: int):
        if time.monotonic() - last[0] > 0.5:
            worker.log_event(PROGRESS_TOPIC, [split, shard, n])
            last[0] = time.monotonic()

    return tick


def run_shard(
    source_url: str, split: str, shard: str, options: ConvertOptions, limit: int | None, force: bool
) -> ShardReport:
    """The Dask task: convert one shard, reporting samples as they finish. A destination
    that takes no writes is returned as the report's `fault`, not raised: it stops the run,
    it is not a bug for the worker to log with a traceback."""
    tick = _worker_progress(split, shard)
    try:
        return convert_shard(source_url, split, shard, options, limit=limit, force=force, on_sample=tick)
    except DestinationError as e:
        return ShardReport(split=split, shard=shard, fault=str(e))


class PublishQueue:
    """Finished shards waiting for the one publisher: due once they hold `items` items or the
    oldest has waited `seconds`."""

    def __init__(self, items: int = PUBLISH_ITEMS, seconds: float = PUBLISH_SECONDS):
        self.max_items, self.max_seconds = items, seconds
        self.shards: list[tuple[str, str]] = []
        self.items, self.oldest = 0, 0.0

    def add(self, split: str, shard: str, items: int) -> None:
        if not self.shards:
            self.oldest = time.monotonic()
        self.shards.append((split, shard))
        self.items += items

    def due(self) -> bool:
        return bool(self.shards) and (
            self.items >= self.max_items or time.monotonic() - self.oldest >= self.max_seconds
        )

    def take(self) -> list[tuple[str, str]]:
        shards, self.shards, self.items = self.shards, [], 0
        return shards


def _publish(publisher, store, shards: list[tuple[str, str]]) -> str | None:
    """Publish finished shards; the cause if the destination stopped it (its markers)."""
    try:
        publisher.publish_shards([read_manifest(store, s, shard) for s, shard in shards])
    except DestinationError as e:
        return str(e)
    return None


def _failed_shard(split: str, shard: str, exc: BaseException) -> ShardReport:
    """A shard whose task failed as a whole (e.g. retries exhausted): reported, run goes on."""
    report = ShardReport(split=split, shard=shard)
    report.errors.append(SampleError(None, shard, None, f"shard failed: {type(exc).__name__}: {exc}").to_dict())
    return report


def convert(
    source_url: str,
    options: ConvertOptions,
    *,
    split: str = "val",
    limit: int | None = None,
    max_shards: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = False,
    publisher=None,
    client=None,
) -> RunReport:
    """Convert the shards of `split` ("all": train and val) on Dask; see the module doc.

    limit: at most this many samples per shard (a trial run; the shards are converted again
    by a later run without it). max_shards: only the first N shards (sorted by name).
    publisher: loads finished shards into pgstac as they come (see terramesh_stac.catalog.loader.Publisher).
    client: an existing dask Client to use (else one is started and closed here).
    """
    from distributed import as_completed

    t0 = time.perf_counter()
    source = open_source(source_url, endpoint_url=options.s3_endpoint_url, revision=options.revision)
    splits = ["train", "val"] if split == "all" else [split]
    work = [(s, shard) for s in splits for shard in source.list_shards(s)][:max_shards]
    if not work:
        raise FileNotFoundError(f"no shards of split {split!r} under {source_url}")
    # the client's own writes are staged too: a kill -9 leaves its temporary files where the
    # next run clears them
    store = options.store().staged(RUN_STAGING)
    try:
        store.check_writable()  # DestinationError now, not one per shard later
        _, collection = write_collection(options, store)
    except DestinationError:
        with contextlib.suppress(DestinationError):
            store.discard_staging()
        raise
    if publisher is not None:
        publisher.publish_collection(collection)
    expected = _expected_samples(source, splits, work, limit)

    own_client = client is None
    client = client or start_client(scheduler, workers)
    reports: list[ShardReport] = []
    stopped = None
    try:
        n_workers = len(client.scheduler_info()["workers"])
        dashboard = client.dashboard_link if _has_dashboard() else None
        if progress:
            print(f"Dask: {n_workers} workers; dashboard: {dashboard or 'not available (pip install bokeh)'}")
        futures = {
            client.submit(
                run_shard,
                source_url,
                s,
                shard,
                options,
                limit,
                force,
                key=f"convert-{s}-{shard}-{time.time_ns()}",
                pure=False,
            ): (s, shard)
            for s, shard in work
        }
        with _Display(progress, len(work), expected) as display:
            if progress:
                client.subscribe_topic(PROGRESS_TOPIC, lambda event: display.samples(*event[1]))
            pending = PublishQueue()  # finished, not yet published
            for batch in as_completed(futures).batches():
                for future in batch:
                    s, shard = futures[future]
                    try:
                        report = future.result()
                    except DestinationError as e:  # every other shard would fail the same way
                        stopped = stopped or str(e)
                        continue
                    except Exception as e:  # noqa: BLE001 - reported per shard, the run goes on
                        report = _failed_shard(s, shard, e)
                    if report.fault:
                        stopped = stopped or report.fault
                        continue
                    reports.append(report)
                    display.shard(report)
                    if report.content_id:
                        pending.add(s, shard, report.items)
                    future.release()
                if stopped:
                    client.cancel([f for f in futures if not f.done()])
                    break
                if publisher is not None and pending.due():
                    stopped = _publish(publisher, store, pending.take())
                    if stopped:
                        client.cancel([f for f in futures if not f.done()])
                        break
            if publisher is not None and pending.shards:
                stopped = _publish(publisher, store, pending.take()) or stopped
    finally:
        if progress:
            try:
                client.unsubscribe_topic(PROGRESS_TOPIC)
            except Exception:  # noqa: BLE001 - the client may be closing already
                pass
        if own_client:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()

    finished = {(r.split, r.shard) for r in reports}
    unfinished = [w for w in work if w not in finished]
    if stopped and own_client:
        # the workers are gone: what they were writing is left half-done in their staging folders
        _discard_staging(store, unfinished)
    href = store.href(COLLECTION_FILE)
    try:
        href, collection = write_collection(options, store)
        if publisher is not None:
            publisher.publish_collection(collection)
    except DestinationError as e:
        stopped = stopped or str(e)
    reports.sort(key=lambda r: (r.split, r.shard))
    run = RunReport(
        shards=reports,
        collection_href=href,
        seconds=time.perf_counter() - t0,
        workers=n_workers,
        dashboard=dashboard,
        published=publisher.summary() if publisher is not None else {},
        stopped=stopped,
        unfinished=[f"{s}/{shard}" for s, shard in unfinished],
        unfinished_samples=None if expected is None else sum(expected[w] for w in unfinished),
    )
    run_dict = {"finished": datetime.now(UTC).isoformat(), **run.to_dict()}
    try:
        store.put(RUN_REPORT, json.dumps(run_dict, indent=1).encode())
        store.discard_staging()
    except DestinationError as e:
        run.report_error = str(e)
    return run


def _discard_staging(store, shards: list[tuple[str, str]]) -> None:
    for s, shard in shards:
        try:
            store.staged(staging_path(s, shard)).discard_staging()
        except DestinationError:  # e.g. read-only: then nothing was staged either
            pass


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401 - the dashboard needs it
    except ImportError:
        return False
    return True


def _expected_samples(source, splits, work, limit) -> dict[tuple[str, str], int] | None:
    """Samples to convert per (split, shard), from the metadata parquet's `tar` column
    (None if it is absent). The display replaces a shard's by what it held once it is done."""
    expected = {}
    for s in splits:
        counts = source.samples_per_shard(s)
        if counts is None:
            return None
        for s_, shard in work:
            if s_ == s:
                n = counts.get(shard, 0)
                expected[(s, shard)] = min(n, limit) if limit else n
    return expected


class _Display:
    """Rich progress: samples (with rate and ETA), shards, failures; or nothing.

    Samples are counted per shard: the latest count a worker sent for its current attempt
    (a retried shard starts again from 0), replaced by what the shard reports when it is
    done, and so is its expected number (metadata rows): the totals always agree with the
    report, whether a shard held samples the metadata lacks or lacked some it lists."""

    def __init__(self, enabled: bool, shards: int, expected: dict[tuple[str, str], int] | None):
        self.enabled, self.n_shards = enabled, shards
        self.expected = dict(expected) if expected is not None else None
        self.done: dict[tuple[str, str], int] = {}
        self.finished: set[tuple[str, str]] = set()
        self.failures = 0
        self._lock = threading.Lock()

    @property
    def completed(self) -> int:
        return sum(self.done.values())

    @property
    def total(self) -> int | None:
        return None if self.expected is None else sum(self.expected.values())

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._samples = self._bar.add_task("samples", total=self.total, rate="")
            self._shards = self._bar.add_task("shards ", total=self.n_shards, rate="problems: 0")
        return self

    def samples(self, split: str, shard: str, n: int) -> None:
        """A worker's count for the shard's current attempt."""
        with self._lock:
            if (split, shard) not in self.finished:  # a late event of a finished shard
                self.done[(split, shard)] = n
                self._refresh()

    def shard(self, report: ShardReport) -> None:
        with self._lock:
            key = (report.split, report.shard)
            self.finished.add(key)
            # a failed shard has no counts: what it got through stays, as done and as expected
            n = report.samples.total if report.content_id else self.done.get(key, 0)
            self.done[key] = n
            if self.expected is not None:
                self.expected[key] = n
            self.failures += len(report.errors)
            if self.enabled:
                self._bar.update(self._shards, advance=1, rate=f"problems: {self.failures}")
            self._refresh()

    def _refresh(self) -> None:
        if self.enabled:
            self._bar.update(self._samples, completed=self.completed, total=self.total)
            task = self._bar.tasks[self._samples]
            if task.elapsed:
                self._bar.update(self._samples, rate=f"{task.completed / task.elapsed:.1f}/s")

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
