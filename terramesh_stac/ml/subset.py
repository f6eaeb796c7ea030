"""A subset: a saved, reproducible selection of TerraMesh samples, for training.

    terramesh-stac subset create NAME --filter "eo:cloud_cover < 10" [--bbox W,S,E,N]
        [--datetime 2020-01-01/2020-12-31] [--collections ID,...] [--modalities S2L2A,S1RTC,DEM]
    terramesh-stac subset show NAME

The search is resolved once, straight from pgstac (its own WHERE clause of the search,
`pgstac.stac_search_to_where`, the clause the API and the map's footprints use), into a
Parquet manifest `<subsets dir>/<NAME>.parquet`, one row per sample, ordered by id:

    id, collection, datetime, s1_datetime, source, split, shard, center_lon, center_lat,
    cloud_cover, cloud_mask_cog, cloud_mask_cog_size (the item's cloud-mask COG and its
                                         file:size, None without one)
    <MOD>_href, <MOD>_offset, <MOD>_size where the sample's `.zarr.zip` lies in its source
                                         shard (the item's `<MOD>_source` asset: a byte range)
    <MOD>_cog, <MOD>_cog_size            the item's COG of the modality and its file:size
                                         (None without one)
    <MOD>_zarr, <MOD>_zarr_stack         the item's Zarr view (converters/zarrview.py) and its
                                         shard's stacked store (None without them)

and, in the file's metadata (key `terramesh:subset`), the search that made it, the catalog
revision of each collection (catalog/density.py), the time, the modalities and the counts
per source, split and year. A sample lacking one of the asked modalities is left out (and
counted): every row has every modality, as the official loader needs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cql2
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from terramesh_stac.catalog import density
from terramesh_stac.converters.byteindex import fetch_range
from terramesh_stac.converters.modalities import MODALITIES

METADATA_KEY = b"terramesh:subset"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
THUMBNAIL_SIZE = (720, 360)  # plate carree, 0.5 degree per pixel

_ITEMS_SQL = """
SELECT id, collection, datetime, content->'properties' AS properties, content->'assets' AS assets
FROM pgstac.items WHERE {where} ORDER BY id
"""


class SubsetError(ValueError):
    """A bad name, filter or option, or a subset that does not exist."""


@dataclass
class Subset:
    name: str
    rows: pa.Table
    meta: dict = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.meta["modalities"])

    def __len__(self) -> int:
        return self.rows.num_rows


def url_options(url: str, storage_options: dict) -> dict:
    """The fsspec options for `url`: `storage_options` (s3fs's) apply to URLs, not to local paths."""
    return storage_options if "://" in url else {}


def read_member(href: str, offset: int, size: int, storage_options: dict) -> bytes:
    """A manifest row's `.zarr.zip` bytes (byteindex.fetch_range: one range request, a short
    read raises)."""
    return fetch_range(href, offset, size, **url_options(href, storage_options))


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise SubsetError(f"subset name {name!r}: letters, digits, '_', '.', '-' (at most 100)")
    return name


def path_of(subsets_dir: Path, name: str) -> Path:
    return Path(subsets_dir) / f"{check_name(name)}.parquet"


def search_body(
    filter_text: str | None,
    bbox: list[float] | None = None,
    datetime_range: str | None = None,
    collections: list[str] | None = None,
) -> dict:
    """The STAC search (pgstac / API body) of the options; a CQL2 text filter is parsed
    and validated here (cql2), so a typo is a clear error, not a database one."""
    body: dict = {}
    if collections:
        body["collections"] = collections
    if filter_text:
        try:
            expr = cql2.Expr(filter_text)
            expr.validate()
        except Exception as e:  # noqa: BLE001 - cql2 raises a bare Exception for a parse error
            raise SubsetError(f"--filter {filter_text!r} is not CQL2 text: {str(e).strip()}") from None
        body["filter"], body["filter-lang"] = expr.to_json(), "cql2-json"
    if bbox:
        if len(bbox) != 4 or not (-180 <= bbox[0] < bbox[2] <= 180 and -90 <= bbox[1] < bbox[3] <= 90):
            raise SubsetError(f"--bbox {bbox}: want W,S,E,N in degrees, W < E and S < N")
        body["bbox"] = bbox
    if datetime_range:
        body["datetime"] = datetime_range
    return body


def _source_range(assets: dict, modality: str) -> tuple | None:
    """(href, offset, size, cog href, cog size, zarr view href, zarr stack href) of a
    modality's bytes in its source shard, or None. (pgstac keeps an asset the item lacks as a marker string,
    not a dict.)"""
    src = assets.get(f"{modality}_source")
    if not isinstance(src, dict) or "archive:start" not in src or "href" not in src:
        return None
    cog, view, stack = assets.get(modality), assets.get(f"{modality}_zarr"), assets.get(f"{modality}_zarr_stack")
    start, end = int(src["archive:start"]), int(src["archive:end"])  # inclusive
    return (
        src["href"],
        start,
        end - start + 1,
        cog.get("href") if isinstance(cog, dict) else None,
        cog.get("file:size") if isinstance(cog, dict) else None,
        view.get("href") if isinstance(view, dict) else None,
        stack.get("href") if isinstance(stack, dict) else None,
    )


def _rows_of(items, modalities: list[str] | None) -> tuple[dict[str, list], list[str], Counter]:
    """Manifest columns of `items` (dicts with id, collection, datetime, properties, assets),
    the modalities (when not given: those every item has) and the samples left out per
    missing modality."""
    samples = []
    for item in items:
        assets, p = item["assets"] or {}, item["properties"] or {}
        ranges = {m: r for m in MODALITIES if (r := _source_range(assets, m)) is not None}
        centre = p.get("terramesh:center") or [None, None]
        mask, s1_time = assets.get("cloud_mask"), p.get("terramesh:s1_datetime")
        base = {
            "id": item["id"],
            "collection": item["collection"],
            "datetime": item["datetime"],
            "s1_datetime": datetime.fromisoformat(s1_time.replace("Z", "+00:00")) if s1_time else None,
            "source": p.get("terramesh:source"),
            "split": p.get("terramesh:split"),
            "shard": p.get("terramesh:shard"),
            "center_lon": centre[0],
            "center_lat": centre[1],
            "cloud_cover": p.get("eo:cloud_cover"),
            "cloud_mask_cog": mask.get("href") if isinstance(mask, dict) else None,
            "cloud_mask_cog_size": mask.get("file:size") if isinstance(mask, dict) else None,
        }
        samples.append((base, ranges))
    if modalities is None:
        modalities = [m for m in MODALITIES if samples and all(m in ranges for _, ranges in samples)]
    if samples and not modalities:
        raise SubsetError(
            f"the {len(samples):,} matching items carry no byte ranges (<MODALITY>_source assets) of one modality"
            " in common (a STAC API leaves out those of shards on its own disk: use the database, --dsn)"
        )
    columns: dict[str, list] = {}
    left_out: Counter = Counter()
    for base, ranges in samples:
        missing = [m for m in modalities if m not in ranges]
        if missing:
            left_out.update(missing)
            continue
        row = dict(base)
        for m in modalities:
            (
                row[f"{m}_href"],
                row[f"{m}_offset"],
                row[f"{m}_size"],
                row[f"{m}_cog"],
                row[f"{m}_cog_size"],
                row[f"{m}_zarr"],
                row[f"{m}_zarr_stack"],
            ) = ranges[m]
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return columns, modalities, left_out


def counts(rows: pa.Table) -> dict:
    """Samples per source, split and year."""
    years = [d.year for d in rows.column("datetime").to_pylist() if d is not None] if rows.num_rows else []
    return {
        "samples": rows.num_rows,
        "source": dict(Counter(rows.column("source").to_pylist())) if rows.num_rows else {},
        "split": dict(Counter(rows.column("split").to_pylist())) if rows.num_rows else {},
        "year": {str(y): n for y, n in sorted(Counter(years).items())},
    }


def create_from_db(conn: psycopg.Connection, name: str, body: dict, modalities: list[str] | None) -> Subset:
    """Resolve `body` in pgstac into a Subset (not yet written)."""
    check_name(name)
    _check_modalities(modalities)
    try:
        (where,) = conn.execute("SELECT pgstac.stac_search_to_where(%s::jsonb)", (json.dumps(body),)).fetchone()
    except psycopg.errors.DataError as e:  # e.g. a datetime pgstac cannot read
        raise SubsetError(f"the search was refused: {e.diag.message_primary}") from None
    cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
    items = cursor.stream(sql.SQL(_ITEMS_SQL).format(where=sql.SQL(where or "true")))
    columns, modalities, left_out = _rows_of(items, modalities)
    rows = pa.table(columns) if columns else pa.table({"id": pa.array([], pa.string())})
    revisions = {cid: density.revision(conn, cid) for cid in sorted(set(columns.get("collection", [])))}
    return Subset(name, rows, _meta(name, body, modalities, revisions, left_out, rows, columns))


def _check_modalities(modalities: list[str] | None) -> None:
    for m in modalities or []:
        if m not in MODALITIES:
            raise SubsetError(f"--modalities: unknown modality {m!r} (choose from {', '.join(MODALITIES)})")


def _meta(name, body, modalities, revisions, left_out, rows, columns, api: str | None = None) -> dict:
    return {
        "name": name,
        "search": body,
        **({"api": api} if api else {}),
        "modalities": modalities,
        "catalog_revisions": revisions,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "left_out": dict(left_out),
        "counts": counts(rows) if columns else {"samples": 0},
    }


def create_from_api(url: str, name: str, body: dict, modalities: list[str] | None) -> Subset:
    """Resolve `body` through a STAC API (pystac-client, following its pages) into a Subset.
    The catalog revision is the API's `/vector/revision` when it is a terramesh-stac service."""
    import httpx
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    check_name(name)
    _check_modalities(modalities)
    try:
        search = Client.open(url).search(
            collections=body.get("collections"),
            bbox=body.get("bbox"),
            datetime=body.get("datetime"),
            filter=body.get("filter"),
            filter_lang=body.get("filter-lang"),
            limit=1000,
        )
        items = sorted(  # by id, as from the database (the API pages by datetime)
            (
                {**i, "datetime": datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00"))}
                for i in search.items_as_dicts()
            ),
            key=lambda i: i["id"],
        )
    except (APIError, httpx.HTTPError, OSError) as e:
        raise SubsetError(f"the STAC API at {url} refused the search: {str(e).strip()[:300]}") from None
    columns, modalities, left_out = _rows_of(items, modalities)
    rows = pa.table(columns) if columns else pa.table({"id": pa.array([], pa.string())})
    revisions = {}
    for cid in sorted(set(columns.get("collection", []))):
        try:
            r = httpx.get(
                f"{url.rstrip('/').removesuffix('/stac')}/vector/revision", params={"collection": cid}, timeout=30
            )
            revisions[cid] = r.json().get("revision") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            revisions[cid] = None
    return Subset(name, rows, _meta(name, body, modalities, revisions, left_out, rows, columns, api=url))


def write(subset: Subset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = subset.rows.replace_schema_metadata({METADATA_KEY: json.dumps(subset.meta).encode()})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # a reader never sees half a manifest
    return path


def read(path: Path) -> Subset:
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"no subset at {path} (make one with `terramesh-stac subset create`)")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    if "modalities" not in meta:
        raise SubsetError(f"{path} is not a subset manifest (no {METADATA_KEY.decode()} metadata)")
    return Subset(meta.get("name", path.stem), table.replace_schema_metadata(None), meta)


def thumbnail(subset: Subset, path: Path) -> Path:
    """Where the samples are: a 720 x 360 plate carree PNG, samples per 0.5 degree cell."""
    from PIL import Image

    width, height = THUMBNAIL_SIZE
    image = np.full((height, width, 3), (232, 238, 244), np.uint8)
    image[::30, :] = image[:, ::30] = (205, 212, 222)  # a 15 degree graticule
    if len(subset):
        lon = np.asarray(subset.rows.column("center_lon").to_numpy(zero_copy_only=False), float)
        lat = np.asarray(subset.rows.column("center_lat").to_numpy(zero_copy_only=False), float)
        ok = np.isfinite(lon) & np.isfinite(lat)
        col = np.clip(((lon[ok] + 180) / 360 * width).astype(int), 0, width - 1)
        row = np.clip(((90 - lat[ok]) / 180 * height).astype(int), 0, height - 1)
        n = np.zeros((height, width))
        np.add.at(n, (row, col), 1)
        shade = np.log1p(n) / np.log1p(n.max())
        drawn = n > 0
        image[drawn] = np.stack([200 + 55 * shade, 120 * (1 - shade), 30 * (1 - shade)], -1)[drawn].astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


def describe(subset: Subset) -> str:
    meta = subset.meta
    c = meta.get("counts", {})
    lines = [
        f"subset {subset.name!r}: {len(subset):,} samples, modalities {', '.join(subset.modalities)}",
        f"  search: {json.dumps(meta.get('search', {}))}",
        f"  catalog revisions: {meta.get('catalog_revisions', {})}; created {meta.get('created')}",
    ]
    for key in ("source", "split", "year"):
        if c.get(key):
            lines.append(f"  per {key}: " + ", ".join(f"{k} {v:,}" for k, v in c[key].items()))
    if meta.get("left_out"):
        lines.append("  left out (lacking a modality): " + ", ".join(f"{k} {v:,}" for k, v in meta["left_out"].items()))
    return "\n".join(lines)
