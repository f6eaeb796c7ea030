"""Where things go under a conversion destination (read by the loader and the server too).

    collection.json
    items/<split>/<shard>.ndjson      one STAC item per line
    assets/<key>/<asset file>         COGs, cloud mask, thumbnail
    reports/<split>/<shard>.json      counts, timings, problems of one shard
"""

COLLECTION_FILE = "collection.json"
ASSETS_DIR = "assets"
ITEMS_GLOB = "items/**/*.ndjson"


def asset_path(key: str, filename: str) -> str:
    return f"{ASSETS_DIR}/{key}/{filename}"


def items_path(split: str, shard: str) -> str:
    return f"items/{split}/{shard.removesuffix('.tar')}.ndjson"


def report_path(split: str, shard: str) -> str:
    return f"reports/{split}/{shard.removesuffix('.tar')}.json"
