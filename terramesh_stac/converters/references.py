"""Virtual references: a sample's zarr arrays as byte ranges of the original tar shard.

Tar members are stored uncompressed and TerraMesh's zip entries are STORED, so every zarr
chunk of a sample is one contiguous byte range of its shard file. A kerchunk reference
file (version 1 JSON) maps each zarr key to `[shard URL, offset, length]`; the metadata
files (`.zmetadata`, `.zarray`, `.zattrs`, `.zgroup`) and chunks under INLINE_BELOW bytes
are inlined, so opening a sample costs one read of the reference file and a range request
per large chunk (bands, cloud mask), and the pixels are not copied. xarray opens it with kerchunk's engine:

    xr.open_dataset(href, engine="kerchunk", storage_options={"remote_protocol": "https"})

One reference file per sample and modality: a sample is opened on its own (item asset),
and at ~20-30 kB each they are small next to the COGs. A zip entry that is DEFLATED is not a
plain byte range: such a member gets no reference (NotByteAddressable, the caller falls
back to a copy).
"""

from __future__ import annotations

import base64
import json

import fsspec

from terramesh_stac.converters.byteindex import zip_entries
from terramesh_stac.converters.sample import EncodedAsset, SourceMember

MEDIA_TYPE = "application/json"  # what xpystac and STAC practice use for kerchunk files
ROLES = ["data", "references"]
METADATA_FILES = (".zmetadata", ".zarray", ".zattrs", ".zgroup", "zarr.json")
# Chunks smaller than this (coordinates, scalars) are inlined: opening a sample then costs
# the reference file plus a range request per large chunk (bands, cloud mask), not one per
# tiny array. An x or y coordinate chunk is ~2 kB.
INLINE_BELOW = 4096


class NotByteAddressable(ValueError):
    """A member whose chunks are not plain byte ranges of the tar (DEFLATED zip entries)."""


def asset_key(modality: str) -> str:
    return f"{modality}_ref"


def remote_protocol(url: str) -> str:
    """The fsspec protocol readers need for the shard URL ("file" for a local path)."""
    return fsspec.core.split_protocol(url)[0] or "file"


def member_references(member: SourceMember) -> dict:
    """kerchunk (version 1) references of one `.zarr.zip` member at its place in its tar."""
    entries = zip_entries(member.data, member.offset)
    deflated = [e["name"] for e in entries if e["compression"] != "stored"]
    if deflated:
        kinds = "/".join(sorted({e["compression"] for e in entries} - {"stored"}))
        raise NotByteAddressable(
            f"{len(deflated)} of {len(entries)} zip entries are {kinds}-compressed, not byte ranges of the tar"
        )
    names = [e["name"] for e in entries]
    prefix = _common_folder(names)
    refs = {}
    for e in entries:
        name = e["name"][len(prefix) :]
        if not name or name.endswith("/"):
            continue
        start = e["offset"] - member.offset
        data = member.data[start : start + e["size"]]
        if name.rsplit("/", 1)[-1] in METADATA_FILES:
            refs[name] = data.decode("utf-8")
        elif e["size"] < INLINE_BELOW:
            refs[name] = "base64:" + base64.b64encode(data).decode("ascii")
        else:
            refs[name] = [member.tar_url, e["offset"], e["size"]]
    return {"version": 1, "refs": refs}


def _common_folder(names: list[str]) -> str:
    """`x.zarr/` when the group sits in one top folder of the zip, else ''."""
    if ".zmetadata" in names or ".zgroup" in names or "zarr.json" in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names}
    return tops.pop() + "/" if len(tops) == 1 and all("/" in n for n in names) else ""


def encode_references(modality: str, member: SourceMember) -> EncodedAsset:
    """The reference asset of one modality of a sample (raises NotByteAddressable)."""
    data = json.dumps(member_references(member), separators=(",", ":")).encode()
    return EncodedAsset(
        key=asset_key(modality),
        data=data,
        media_type=MEDIA_TYPE,
        roles=list(ROLES),
        filename=f"{modality}.refs.json",
        fields={
            "title": f"{modality}: kerchunk references into the original shard (no copy)",
            "xarray:open_kwargs": {
                "engine": "kerchunk",
                # skip_instance_cache: as for the Zarr views (zarrview.OPEN_KWARGS)
                "storage_options": {"remote_protocol": remote_protocol(member.tar_url), "skip_instance_cache": True},
            },
            "terramesh:source_member": {"href": member.tar_url, "offset": member.offset, "size": len(member.data)},
        },
    )
