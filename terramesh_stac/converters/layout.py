"""Where things go under a conversion destination (read by the loader and the server too).

collection.json
items/<split>/<shard>.ndjson      one STAC item per line
assets/<key>/<asset file>         COGs, cloud mask, thumbnail, reference files
assets/zarr/<split>/<shard>/<MODALITY>.zarr   Zarr v3: the shard's samples stacked
reports/<split>/<shard>.json      counts, timings, problems of one shard
index/<split>/<shard>.parquet     byte ranges of every member of the original shard tars
manifests/<split>/<shard>.json    what a finished shard wrote; written last (resume, skip)
revisions/<id>/assets/...         superseded assets of an older source revision (until prune)
published/<split>/<shard>.json    which content of the shard was loaded into which pgstac
reports/run.json                  the last run's report (every problem, per shard)
catalog/items/<split>/<shard>.<row group>.ndjson   items from the metadata parquet alone
catalog/manifests/<split>.json    what `catalog` wrote for a split (files, counts, extent)
"""

COLLECTION_FILE = "collection.json"
ASSETS_DIR = "assets"
INDEX_DIR = "index"


def asset_path(key: str, filename: str) -> str:
    return f"{ASSETS_DIR}/{key}/{filename}"


def zarr_path(split: str, shard: str, modality: str) -> str:
    """The stacked Zarr store of one shard and modality (under assets/: the API serves it)."""
    return f"{ASSETS_DIR}/zarr/{split}/{shard.removesuffix('.tar')}/{modality}.zarr"


def _per_shard(folder: str, split: str, shard: str, suffix: str) -> str:
    return f"{folder}/{split}/{shard.removesuffix('.tar')}{suffix}"


def items_path(split: str, shard: str) -> str:
    return _per_shard("items", split, shard, ".ndjson")


def report_path(split: str, shard: str) -> str:
    return _per_shard("reports", split, shard, ".json")


def index_path(split: str, shard: str) -> str:
    return _per_shard(INDEX_DIR, split, shard, ".parquet")


def manifest_path(split: str, shard: str) -> str:
    return _per_shard("manifests", split, shard, ".json")


def published_path(split: str, shard: str) -> str:
    return _per_shard("published", split, shard, ".json")


def staging_path(split: str, shard: str) -> str:
    """Temporary files of a shard being written (local destinations), cleared on retry."""
    return _per_shard(".staging", split, shard, "")


def revision_path(revision_id: str, relpath: str) -> str:
    """Where a superseded object stays readable: revisions/<id>/<its relative path>."""
    return f"revisions/{revision_id}/{relpath}"


def catalog_items_path(split: str, shard: str, row_group: int) -> str:
    """A shard's items from one row group of the metadata parquet (`catalog`): a shard may
    span row groups, and each row group is one task."""
    return f"catalog/items/{split}/{shard.removesuffix('.tar')}.{row_group:05d}.ndjson"


def catalog_manifest_path(split: str) -> str:
    return f"catalog/manifests/{split}.json"
