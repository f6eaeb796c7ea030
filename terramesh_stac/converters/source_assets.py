"""The source assets of an item: each modality's original `.zarr.zip` inside its shard tar.

Every item (from `catalog` or from `convert`) has one per modality, `<MODALITY>_source`:
`href` is the shard tar (`<root>/<split>/<MODALITY>/<shard>.tar`), `archive:href` the member,
and `archive:start` / `archive:end` (first and last byte, inclusive) where the byte index
knows them, so one HTTP range request fetches the sample's original bytes. STAC archive
extension v1.0.0; the shared fields live once in the collection's `item_assets`.
"""

from __future__ import annotations

ARCHIVE_EXTENSION = "https://stac-extensions.github.io/archive/v1.0.0/schema.json"
TAR_MEDIA_TYPE = "application/x-tar"
MEMBER_MEDIA_TYPE = "application/zip"
ROLES = ("data", "source", "archive")


def source_asset_key(modality: str) -> str:
    return f"{modality}_source"


def source_item_asset(modality: str) -> dict:
    """The collection's item_assets entry of a modality's source asset.

    `proj:code` and `proj:epsg` are null: a tar is no raster on the item's grid, but an
    asset without them inherits the item-level projection, and GDAL STACIT then offers the
    tar as a raster subdataset (one per CRS of a search) that fails to open."""
    return {
        "title": f"{modality}: original .zarr.zip inside the TerraMesh shard",
        "type": TAR_MEDIA_TYPE,
        "roles": list(ROLES),
        "archive:format": TAR_MEDIA_TYPE,
        "archive:type": MEMBER_MEDIA_TYPE,
        "proj:code": None,
        "proj:epsg": None,
    }


def source_asset(tar_href: str, member: str, start: int | None = None, end: int | None = None) -> dict:
    """An item's source asset: what differs per item only."""
    asset = {"href": tar_href, "archive:href": member}
    if start is not None and end is not None:
        asset["archive:start"], asset["archive:end"] = int(start), int(end)
    return asset
