"""The `terramesh-stac` command: a thin layer over the converters and catalog libraries."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pydantic

from terramesh_stac.converters.formats import Format, parse_formats
from terramesh_stac.converters.storage import DestinationError
from terramesh_stac.exits import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from terramesh_stac.settings import Settings, get_settings


def _cmd_synth(args, settings: Settings) -> int:
    if args.metadata_only:
        return _synth_metadata(args)
    if args.rows is not None:
        print("error: --rows needs --metadata-only", file=sys.stderr)
        return EXIT_USAGE
    from terramesh_stac.converters.synth import generate

    split = args.split or "val"
    keys = generate(
        args.out_dir,
        split=split,
        shards=2 if args.shards is None else args.shards,
        samples_per_shard=4 if args.samples_per_shard is None else args.samples_per_shard,
        seed=args.seed,
    )
    print(f"wrote {len(keys)} samples of split {split!r} to {args.out_dir}")
    return EXIT_OK


def _synth_metadata(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from terramesh_stac.converters import synth_metadata

    if args.shards is not None:
        print("error: --shards does not apply to --metadata-only (no shards are written)", file=sys.stderr)
        return EXIT_USAGE
    rows = synth_metadata.FULL_ROWS if args.rows is None else args.rows
    splits = (args.split,) if args.split else synth_metadata.SPLITS
    counts = synth_metadata.split_counts(rows)
    console = Console(stderr=True)  # progress on a terminal only; stdout keeps the plain summary
    with Progress(
        TextColumn("metadata rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("rows", total=sum(sum(counts[s].values()) for s in splits))
        written = synth_metadata.generate_metadata(
            args.out_dir,
            rows,
            seed=args.seed,
            splits=splits,
            samples_per_shard=synth_metadata.SAMPLES_PER_SHARD
            if args.samples_per_shard is None
            else args.samples_per_shard,
            progress=lambda n: bar.advance(task, n),
        )
    for split, n in written.items():
        print(f"wrote {n:,} rows to {args.out_dir}/{split}_metadata.parquet")
    return EXIT_OK


FORMATS = tuple(Format)


def _formats(value: str) -> tuple[Format, ...]:
    names = [f.strip() for f in value.split(",") if f.strip()]
    try:
        return parse_formats(names)
    except ValueError:
        unknown = [f for f in names if f.lower() not in FORMATS]
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {unknown or value!r}; choose from {', '.join(FORMATS)}"
        ) from None


def _modality_formats(value: str) -> tuple[str, tuple[Format, ...]]:
    from terramesh_stac.converters.modalities import MODALITIES, parse_modality

    modality, sep, formats = value.partition("=")
    try:
        modality = parse_modality(modality) if sep else None
    except ValueError:
        modality = None
    if modality is None:
        raise argparse.ArgumentTypeError(
            f"expected MODALITY=FORMATS with MODALITY one of {', '.join(MODALITIES)}, got {value!r}"
        )
    return modality, _formats(formats)


def _usage_errors(check):
    """An argparse type from a library check: its ValueError (or FileNotFoundError) becomes
    argparse's error, so the command exits 2 with the check's message."""

    def argument(value: str):
        try:
            return check(value)
        except (ValueError, FileNotFoundError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return argument


@_usage_errors
def _modalities(value: str) -> tuple[str, ...]:
    from terramesh_stac.converters.modalities import parse_modality

    names = [m for m in value.split(",") if m.strip()]
    if not names:
        raise ValueError("no modality given")
    return tuple(dict.fromkeys(parse_modality(m) for m in names))


@_usage_errors
def _destination(value: str) -> str:
    from terramesh_stac.converters.storage import check_destination

    return check_destination(value)


@_usage_errors
def _source(value: str) -> str:
    """A source that can be opened: a local folder that exists, or a URL of a known scheme."""
    from terramesh_stac.converters.source import open_source

    open_source(value)
    return value


def _zooms(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want MIN-MAX, e.g. 11-13") from None
    from terramesh_stac.catalog.mosaic_cache import MAX_SEED_ZOOM

    if not 0 <= low <= high <= MAX_SEED_ZOOM:
        raise argparse.ArgumentTypeError(f"{text!r}: want 0 <= MIN <= MAX <= {MAX_SEED_ZOOM}")
    return low, high


def _port(value: str) -> int:
    port = int(value) if value.isdigit() else -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number from 1 to 65535, got {value!r}")
    return port


@_usage_errors
def _synth_rows(value: str) -> int:
    from terramesh_stac.converters.synth_metadata import parse_rows

    return parse_rows(value)


def _publisher(stack, args, settings: Settings, store):
    """The loader (--load) of convert and catalog: into --dsn or the embedded database, as
    the loader role, closed (and finished) with `stack`."""
    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.loader import Publisher

    dsn = args.dsn or database.dsn(settings, role="loader")
    return stack.enter_context(Publisher(dsn, store))


def _cmd_convert(args, settings: Settings) -> int:
    import contextlib

    from terramesh_stac.converters.pipeline import ConvertOptions
    from terramesh_stac.converters.run import convert

    options = ConvertOptions(
        dest=args.dest or settings.dest,
        collection_id=args.collection or settings.collection_id,
        formats=args.format,
        modality_formats=tuple(sorted(dict(args.format_for or []).items())),
        modalities=args.modalities,
        revision=args.revision,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_public_url=settings.s3_public_url,
    )
    with contextlib.ExitStack() as stack:
        publisher = _publisher(stack, args, settings, options.store()) if args.load else None
        try:
            report = convert(
                args.source,
                options,
                split=args.split,
                limit=args.limit,
                max_shards=args.max_shards,
                scheduler=args.scheduler or settings.scheduler,
                workers=args.workers,
                force=args.force,
                progress=not args.quiet,
                publisher=publisher,
            )
        except DestinationError as e:  # found before any work: nothing was converted
            if args.report:
                _write_report(args.report, {"stopped": str(e), "items": 0, "shards": 0, "errors": []})
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    print(report.summary())
    if args.report:
        _write_report(args.report, report.to_dict())
    if report.stopped:
        print(f"error: {report.stopped}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PARTIAL if report.errors else EXIT_OK


def _cmd_catalog(args, settings: Settings) -> int:
    import contextlib

    from terramesh_stac.converters.catalog_run import CatalogOptions, build_catalog

    options = CatalogOptions(
        dest=args.dest or settings.dest,
        collection_id=args.collection or settings.collection_id,
        revision=args.revision,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
    with contextlib.ExitStack() as stack:
        publisher = _publisher(stack, args, settings, options.store()) if args.load else None
        report = build_catalog(
            args.source,
            options,
            split=args.split,
            scheduler=args.scheduler or settings.scheduler,
            workers=args.workers,
            progress=not args.quiet,
            publisher=publisher,
        )
    print(report.summary())
    if report.published.get("errors"):
        return EXIT_FAILED
    return EXIT_PARTIAL if report.errors else EXIT_OK


def _write_report(path: str, report: dict) -> None:
    try:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    except OSError as e:  # e.g. on the same full disk: the summary above still says it all
        print(f"error: report not written: {e.strerror or e}: {path}", file=sys.stderr)


def _cmd_prune(args, settings: Settings) -> int:
    from terramesh_stac.converters.prune import prune
    from terramesh_stac.converters.storage import Store

    store = Store(args.dest or settings.dest, endpoint_url=settings.s3_endpoint_url)
    result = prune(store, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {result['objects']} superseded objects ({result['bytes']} bytes) of {result['shards']} shards")
    return EXIT_OK


def _cmd_load(args, settings: Settings) -> int:
    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.loader import load

    dsn = args.dsn or database.dsn(settings, role="loader")
    result = load(args.dest or settings.dest, dsn, endpoint_url=settings.s3_endpoint_url, progress=True)
    print(result.summary())
    return EXIT_OK


class _RichProgress:
    """catalog.export.Progress on a rich bar (stderr, a terminal only)."""

    def __init__(self, bar):
        self.bar, self.task = bar, None

    def start(self, phase: str, total: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(phase, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


def _bbox(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want W,S,E,N numbers") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: want four numbers W,S,E,N")
    return values


def _cmd_subset(args, settings: Settings) -> int:
    import psycopg

    from terramesh_stac.catalog import database
    from terramesh_stac.ml import subset as subsets

    folder = settings.subsets_dir or settings.state_dir / "subsets"
    try:
        path = subsets.path_of(folder, args.name)
        if args.action == "show":
            subset = subsets.read(path)
            picture = subsets.thumbnail(subset, Path(args.thumbnail) if args.thumbnail else path.with_suffix(".png"))
            print(subsets.describe(subset))
            print(f"  where the samples are: {picture}")
            return EXIT_OK
        if args.action == "export":
            return _export_subset(subsets.read(path), Path(args.out), args.format, args.force, settings)
        if path.exists() and not args.force:
            raise subsets.SubsetError(f"subset {args.name!r} exists ({path}): --force replaces it")
        collections = [c for c in (args.collections or settings.collection_id).split(",") if c]
        body = subsets.search_body(args.filter, args.bbox, args.datetime, collections)
        modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
        if args.api:
            subset = subsets.create_from_api(args.api, args.name, body, modalities)
        else:
            with psycopg.connect(args.dsn or database.dsn(settings, role="loader")) as conn:
                subset = subsets.create_from_db(conn, args.name, body, modalities)
    except subsets.SubsetError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except psycopg.Error as e:  # unreachable, refused, ...: one line, no traceback
        print(f"error: database: {str(e).strip()}", file=sys.stderr)
        return EXIT_FAILED
    subsets.write(subset, path)
    print(subsets.describe(subset))
    print(f"  manifest: {path}")
    return EXIT_OK


def _export_subset(subset, out: Path, fmt: str, force: bool, settings: Settings) -> int:
    from rich.progress import Progress

    from terramesh_stac.ml.export import export_webdataset, export_zarr
    from terramesh_stac.ml.subset import SubsetError

    if out.exists() and any(out.iterdir()) and not force:
        raise SubsetError(f"{out} is not empty: --force writes into it")
    storage_options = {"client_kwargs": {"endpoint_url": settings.s3_endpoint_url}} if settings.s3_endpoint_url else {}
    export = export_zarr if fmt == "zarr" else export_webdataset
    with Progress(transient=True) as bar:
        task = bar.add_task(f"exporting {subset.name}", total=None)
        report = export(subset, out, storage_options, progress=lambda n: bar.update(task, advance=n))
    print(report.summary())
    return EXIT_PARTIAL if report.errors else EXIT_OK


def _cmd_export(args, settings: Settings) -> int:
    import psycopg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.export import export_geoparquet

    dsn = args.dsn or database.dsn(settings, role="loader")
    console = Console(stderr=True)  # progress on a terminal only; stdout keeps the plain summary
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=args.quiet or not console.is_terminal,
    ) as bar:
        try:
            result = export_geoparquet(
                dsn,
                args.collection or settings.collection_id,
                args.out,
                endpoint_url=settings.s3_endpoint_url,
                row_group_size=args.row_group_size,
                progress=_RichProgress(bar),
                workers=args.workers or os.cpu_count() or 1,
            )
        except psycopg.Error as e:  # unreachable, refused, ...: one line, no traceback
            print(f"error: database: {str(e).strip()}", file=sys.stderr)
            return EXIT_FAILED
    print(result.summary())
    return EXIT_OK


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def _cmd_validate(args, settings: Settings) -> int:
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from terramesh_stac.validate_catalog import API_MAX_ITEMS, validate_api, validate_destination

    target = args.target or settings.dest
    console = Console(stderr=True)  # progress on a terminal only; stdout keeps the plain summary
    with Progress(
        TextColumn("validating: {task.completed} items"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("validate", total=None)

        def tick():
            bar.advance(task)

        if target.startswith(("http://", "https://")):
            report = validate_api(target, max_items=args.max_items or API_MAX_ITEMS, progress=tick)
        else:
            report = validate_destination(
                target, endpoint_url=settings.s3_endpoint_url, max_items=args.max_items, progress=tick
            )
    print(report.summary(show=args.show))
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_db(args, settings: Settings) -> int:
    from terramesh_stac.catalog import database

    if args.action == "start":
        database.start(settings)
        print(f"database running: {database.dsn(settings, role='admin')}")
    elif args.action == "stop":
        database.stop(settings)
        print("database stopped")
    elif args.action == "status":
        print(json.dumps(database.status(settings), indent=2, default=str))
    elif args.action == "dsn":
        print(database.dsn(settings, role=args.role))
    elif args.action == "density":  # after items were loaded by another tool than ours
        import psycopg

        from terramesh_stac.catalog import density

        collection_id = args.collection or settings.collection_id
        t = time.perf_counter()
        with psycopg.connect(database.dsn(settings, role="loader"), autocommit=True) as conn:
            revision = density.refresh(conn, collection_id)
        print(f"map density of {collection_id!r} recounted in {time.perf_counter() - t:.1f} s (revision {revision})")
    elif args.action == "mosaic":  # the map's zoom 11-13 mosaic, after each load
        from terramesh_stac.catalog import mosaic_cache

        renders = args.render or [settings.default_render]
        loader_dsn = database.dsn(settings, role="loader")
        try:
            reports = mosaic_cache.seed_collection(
                settings, args.collection or settings.collection_id, renders, args.zooms, loader_dsn
            )
        except mosaic_cache.UnknownMosaic as e:  # refused before any tile is drawn
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        for report in reports:
            print(report.summary())
        return EXIT_PARTIAL if any(r.errors for r in reports) else EXIT_OK
    return EXIT_OK


def _cmd_serve(args, settings: Settings) -> int:
    from terramesh_stac.catalog.app import check_can_listen, run

    settings = settings.model_copy(
        update={k: v for k, v in {"host": args.host, "port": args.port, "dest": args.dest}.items() if v}
    )
    check_can_listen(settings.host, settings.port)  # before the app is built: fail at once
    run(settings)
    return EXIT_OK


def _cmd_demo(args, settings: Settings) -> int:
    from terramesh_stac.demo import run_demo

    return run_demo(settings, source=args.source, serve=not args.no_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="terramesh-stac", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a small TerraMesh-format tree (generated data)")
    s.add_argument("out_dir")
    s.add_argument(
        "--split", choices=["train", "val"], help="default: val; with --metadata-only both, unless one is named"
    )
    s.add_argument("--shards", type=int, help="default 2")
    s.add_argument("--samples-per-shard", type=int, help="default 4; with --metadata-only 10,240")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--metadata-only",
        action="store_true",
        help="only {split}_metadata.parquet, at TerraMesh scale (no shards; see converters/synth_metadata.py)",
    )
    s.add_argument(
        "--rows",
        type=_synth_rows,
        help="with --metadata-only: rows over both splits, in TerraMesh's proportions (default 9,178,624)",
    )
    s.set_defaults(func=_cmd_synth)

    c = sub.add_parser("convert", help="convert TerraMesh shards to assets + STAC items")
    c.add_argument(
        "source", type=_source, help="TerraMesh root: folder, https://…/resolve/<rev>/ or s3://bucket/prefix"
    )
    c.add_argument("--dest", type=_destination, help="local folder or s3://bucket/prefix (default: TERRAMESH_DEST)")
    c.add_argument("--split", default="val", choices=["train", "val", "all"])
    c.add_argument(
        "--format",
        default="cog",
        type=_formats,
        help="asset formats, comma-separated: cog (Cloud-Optimized GeoTIFF copies), zarr "
        "(Zarr v3, a shard's samples stacked per modality), ref (kerchunk references "
        "into the source shards, no copy); e.g. cog,zarr",
    )
    c.add_argument(
        "--format-for",
        action="append",
        type=_modality_formats,
        metavar="MODALITY=FORMATS",
        help="formats of one modality instead of --format (repeatable), e.g. "
        "--format-for S1GRD=zarr --format-for DEM=ref",
    )
    c.add_argument("--modalities", type=_modalities, help="comma-separated subset, e.g. S2L2A,S1RTC,DEM")
    c.add_argument("--limit", type=int, help="at most N samples per shard (a trial run)")
    c.add_argument("--max-shards", type=int, help="only the first N shards")
    c.add_argument("--collection", help="collection id (default: terramesh)")
    c.add_argument("--revision", help="dataset revision to record (default: from the source URL)")
    c.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler, e.g. tcp://host:8786 "
        "(default: TERRAMESH_SCHEDULER, else a LocalCluster on this machine)",
    )
    c.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    c.add_argument("--force", action="store_true", help="convert shards again even if their manifest is current")
    c.add_argument("--load", action="store_true", help="load items into pgstac as shards finish")
    c.add_argument("--dsn", help="with --load: PostgreSQL DSN (default: the embedded cluster's loader role)")
    c.add_argument("--report", help="write the run's report (every problem, per shard) as JSON here")
    c.add_argument("--quiet", action="store_true", help="no progress display")
    c.set_defaults(func=_cmd_convert)

    ca = sub.add_parser("catalog", help="one STAC item per row of {split}_metadata.parquet, without reading a pixel")
    ca.add_argument(
        "source", type=_source, help="TerraMesh root: folder, https://…/resolve/<rev>/ or s3://bucket/prefix"
    )
    ca.add_argument("--dest", type=_destination, help="local folder or s3://bucket/prefix (default: TERRAMESH_DEST)")
    ca.add_argument("--split", default="val", choices=["train", "val", "all"])
    ca.add_argument("--collection", help="collection id (default: terramesh)")
    ca.add_argument("--revision", help="dataset revision to record (default: from the source URL)")
    ca.add_argument(
        "--scheduler", help="address of a running Dask scheduler (default: TERRAMESH_SCHEDULER, else a process pool)"
    )
    ca.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    ca.add_argument("--load", action="store_true", help="load the items into pgstac when written")
    ca.add_argument("--dsn", help="with --load: PostgreSQL DSN (default: the embedded cluster's loader role)")
    ca.add_argument("--quiet", action="store_true", help="no progress display")
    ca.set_defaults(func=_cmd_catalog)

    pr = sub.add_parser("prune", help="delete superseded assets kept from older source revisions")
    pr.add_argument("dest", nargs="?", type=_destination, help="what `convert` wrote (default: TERRAMESH_DEST)")
    pr.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    pr.set_defaults(func=_cmd_prune)

    ld = sub.add_parser("load", help="bulk-load converted items into pgstac (upsert)")
    ld.add_argument("dest", nargs="?", type=_destination, help="what `convert` wrote (default: TERRAMESH_DEST)")
    ld.add_argument("--dsn", help="PostgreSQL DSN (default: the embedded cluster's loader role)")
    ld.set_defaults(func=_cmd_load)

    ex = sub.add_parser("export", help="bulk export of a collection's items from pgstac")
    ex_sub = ex.add_subparsers(dest="format", required=True)
    gp = ex_sub.add_parser(
        "geoparquet",
        help="stac-geoparquet, hive-partitioned by year, spatially sorted; linked from the collection",
    )
    gp.add_argument("--out", required=True, type=_destination, help="local folder or s3://bucket/prefix")
    gp.add_argument("--collection", help="collection id (default: TERRAMESH_COLLECTION_ID, else terramesh)")
    gp.add_argument("--dsn", help="PostgreSQL DSN (default: the embedded cluster's loader role)")
    gp.add_argument(
        "--row-group-size", type=_positive, default=10_000, help="rows per Parquet row group (default 10,000)"
    )
    gp.add_argument(
        "--workers", type=_positive, help="processes, one year of items each at a time (default: one per core)"
    )
    gp.add_argument("--quiet", action="store_true", help="no progress display")
    gp.set_defaults(func=_cmd_export)

    ss = sub.add_parser("subset", help="a saved selection of samples for training (README 'Training on a subset')")
    ss_sub = ss.add_subparsers(dest="action", required=True)
    sc = ss_sub.add_parser("create", help="resolve a search into a frozen manifest of samples")
    sc.add_argument("name", help="the subset's name (letters, digits, '_', '.', '-')")
    sc.add_argument(
        "--filter", help='a CQL2 text filter, e.g. "eo:cloud_cover < 10 AND \\"terramesh:source\\" = \'majortom\'"'
    )
    sc.add_argument("--bbox", type=_bbox, help="W,S,E,N in degrees")
    sc.add_argument("--datetime", help="a STAC datetime or range, e.g. 2020-01-01T00:00:00Z/2020-12-31T23:59:59Z")
    sc.add_argument("--collections", help="comma-separated collection ids (default: TERRAMESH_COLLECTION_ID)")
    sc.add_argument("--modalities", help="comma-separated modalities (default: all the samples have)")
    sc.add_argument("--dsn", help="PostgreSQL DSN (default: the embedded cluster's loader role)")
    sc.add_argument("--api", help="resolve through this STAC API instead (e.g. http://host:8000/stac)")
    sc.add_argument("--force", action="store_true", help="replace a subset of the same name")
    sh = ss_sub.add_parser("show", help="counts of a subset and a map thumbnail of where its samples are")
    sh.add_argument("name")
    sh.add_argument("--thumbnail", help="PNG to write (default: <subsets dir>/<NAME>.png)")
    se = ss_sub.add_parser(
        "export", help="write a subset as TerraMesh-format shards (the official loader reads them) or as Zarr"
    )
    se.add_argument("name")
    se.add_argument(
        "--format",
        choices=["webdataset", "zarr"],
        default="webdataset",
        help="webdataset: tars of .zarr.zip; zarr: one store per modality, the samples stacked along `item`",
    )
    se.add_argument("--out", required=True, help="a local folder (empty, or --force)")
    se.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    ss.set_defaults(func=_cmd_subset)

    va = sub.add_parser(
        "validate",
        help="check a destination's or a STAC API's items and collections "
        "against the STAC JSON Schemas (offline: schemas shipped with terramesh-stac)",
    )
    va.add_argument(
        "target",
        nargs="?",
        metavar="DEST|URL",
        help="what `convert` wrote (folder or s3://), or a STAC API root such as "
        "http://127.0.0.1:8000/stac (default: TERRAMESH_DEST)",
    )
    va.add_argument(
        "--max-items",
        type=int,
        help="at most N items per collection (default: all of a destination, 10,000 per collection of an API)",
    )
    va.add_argument("--show", type=int, default=20, help="print the first N errors (default 20)")
    va.set_defaults(func=_cmd_validate)

    d = sub.add_parser("db", help="the embedded PostgreSQL/PostGIS + pgstac cluster")
    d.add_argument(
        "action",
        choices=["start", "stop", "status", "dsn", "density", "mosaic"],
        help="density: recount the map's density cells of a collection (loads do it themselves); "
        "mosaic: seed the map's zoom 11-13 mosaic of a collection (after each load)",
    )
    d.add_argument("--role", default="admin", choices=["admin", "loader", "api"])
    d.add_argument("--collection", help="density, mosaic: the collection (default TERRAMESH_COLLECTION_ID)")
    d.add_argument(
        "--render",
        action="append",
        help="mosaic: a render preset of the collection (repeatable; default TERRAMESH_DEFAULT_RENDER)",
    )
    d.add_argument("--zooms", type=_zooms, default=(11, 13), help="mosaic: MIN-MAX tile zooms to seed (default 11-13)")
    d.set_defaults(func=_cmd_db)

    sv = sub.add_parser("serve", help="STAC API (/stac), tiles (/raster), assets and map page")
    sv.add_argument("--host")
    sv.add_argument("--port", type=_port)
    sv.add_argument("--dest", help="local asset folder to serve (default: TERRAMESH_DEST)")
    sv.set_defaults(func=_cmd_serve)

    dm = sub.add_parser("demo", help="database + generated sample + convert + load + serve")
    dm.add_argument("--source", type=_source, help="a TerraMesh root to use instead of a generated sample")
    dm.add_argument("--no-serve", action="store_true", help="stop after loading")
    dm.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad usage: exit status 2 (EXIT_USAGE), with the accepted values
    try:
        settings = get_settings()
    except pydantic.ValidationError as e:
        problems = "; ".join(f"TERRAMESH_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())
        print(f"error: bad setting: {problems}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, PermissionError, DestinationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
