"""Byte-range index of the source shards: where every member sits in its tar.

Tar members are stored uncompressed, so a sample's original `.zarr.zip` is one contiguous
byte range of its shard file, and each entry of that zip (a zarr chunk or metadata file)
is a range inside it. The index records both, per shard, as Parquet next to the output
(`index/<split>/<shard>.parquet`), so one HTTP range request fetches any sample's original
bytes, or one chunk, without reading the shard. The dataset card asks for this index and
says it is not provided.

One row per tar member (including members that are not samples or do not decode, with the
reason in `problem`): key, split, shard, modality, tar_url, member, offset, size,
problem, entries. `entries` lists the zip's files: name, offset (absolute in the tar),
size (stored bytes), uncompressed_size, compression ("stored", "deflated", ...), crc32.
"""

from __future__ import annotations

import io
import struct
import zipfile

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.utils import merge_offset_ranges

ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes; name and extra lengths last
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
COMPRESSION_NAMES = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflated",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}

# the index's columns, three to a line
# fmt: off
ENTRY_TYPE = pa.struct([
    ("name", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
    ("uncompressed_size", pa.int64()), ("compression", pa.string()), ("crc32", pa.uint32()),
])
SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()),
    ("modality", pa.string()), ("tar_url", pa.string()), ("member", pa.string()),
    ("offset", pa.int64()), ("size", pa.int64()), ("problem", pa.string()),
    ("entries", pa.list_(ENTRY_TYPE)),
])
# fmt: on


class RangeRequestError(OSError):
    """The server did not answer a range request with exactly the bytes asked for."""


def zip_entries(data: bytes, base_offset: int = 0) -> list[dict]:
    """Where each file of a zip archive's bytes sits, `base_offset` added (the member's
    offset in its tar). Raises zipfile.BadZipFile (or ValueError) on a damaged zip."""
    entries = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            header = data[info.header_offset : info.header_offset + ZIP_LOCAL_HEADER.size]
            if len(header) < ZIP_LOCAL_HEADER.size:
                raise zipfile.BadZipFile(f"local header of {info.filename} cut short")
            fields = ZIP_LOCAL_HEADER.unpack(header)
            if fields[0] != ZIP_LOCAL_SIGNATURE:
                raise zipfile.BadZipFile(f"bad local header signature for {info.filename}")
            name_length, extra_length = fields[-2], fields[-1]
            start = info.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length
            if start + info.compress_size > len(data):
                raise zipfile.BadZipFile(f"entry {info.filename} runs past the end of the zip")
            entries.append(
                {
                    "name": info.filename,
                    "offset": base_offset + start,
                    "size": info.compress_size,
                    "uncompressed_size": info.file_size,
                    "compression": COMPRESSION_NAMES.get(info.compress_type, str(info.compress_type)),
                    "crc32": info.CRC,
                }
            )
    return entries


class ShardIndex:
    """Collects the index rows of one shard while its tars are streamed."""

    def __init__(self, split: str, shard: str):
        self.split, self.shard = split, shard
        self.rows: list[dict] = []

    def add(
        self,
        *,
        key: str,
        modality: str,
        tar_url: str,
        member: str,
        offset: int,
        size: int,
        data: bytes | None = None,
        problem: str | None = None,
    ) -> None:
        """One tar member. With its bytes, the zip's entries are indexed too; a zip that
        does not parse is indexed with the reason and no entries."""
        entries = []
        if data is not None and problem is None:
            try:
                entries = zip_entries(data, offset)
            except (zipfile.BadZipFile, ValueError, struct.error) as e:
                problem = f"not a readable zip: {e}"
        self.rows.append(
            {
                "key": key,
                "split": self.split,
                "shard": self.shard,
                "modality": modality,
                "tar_url": tar_url,
                "member": member,
                "offset": offset,
                "size": size,
                "problem": problem,
                "entries": entries,
            }
        )

    def to_parquet(self) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), buffer, compression="zstd")
        return buffer.getvalue()


def read_index(path_or_url: str, **storage_options) -> list[dict]:
    """The rows of one index file (local path or any fsspec URL)."""
    with fsspec.open(path_or_url, "rb", **storage_options) as f:
        return pq.read_table(f).to_pylist()


def fetch_range(url: str, offset: int, size: int, **storage_options) -> bytes:
    """Bytes [offset, offset + size) of `url` in one range request (local path, http(s),
    s3, ...). A server that ignores the range, or a short read, raises RangeRequestError."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    data = fs.cat_file(path, start=offset, end=offset + size)
    if len(data) != size:
        raise RangeRequestError(
            f"asked {url} for {size} bytes at {offset}, got {len(data)} (does the server support range requests?)"
        )
    return data


def fetch_ranges(ranges: list[tuple[str, int, int]], max_gap: int, max_block: int, **storage_options) -> list:
    """The bytes of each (url, offset, size), neighbours read together: ranges of one file
    less than `max_gap` bytes apart become one request of at most `max_block` bytes
    (fsspec.utils.merge_offset_ranges). A failed request gives its exception in place of
    the bytes of every range it covered."""
    paths, starts, ends = merge_offset_ranges(
        [u for u, _, _ in ranges],
        [o for _, o, _ in ranges],
        [o + n for _, o, n in ranges],
        max_gap=max_gap,
        max_block=max_block,
    )
    spans = []
    for path, start, end in zip(paths, starts, ends):
        try:
            spans.append((path, start, end, fetch_range(path, start, end - start, **storage_options)))
        except (OSError, RangeRequestError) as e:
            spans.append((path, start, end, e))
    out = []
    for url, offset, size in ranges:
        path, start, _, data = next(s for s in spans if s[0] == url and s[1] <= offset and offset + size <= s[2])
        out.append(data if isinstance(data, Exception) else data[offset - start : offset - start + size])
    return out


def fetch_member(row: dict, **storage_options) -> bytes:
    """A sample's original `.zarr.zip` bytes from its index row."""
    return fetch_range(row["tar_url"], row["offset"], row["size"], **storage_options)


def fetch_entry(row: dict, name: str, **storage_options) -> bytes:
    """One file of a sample's zip (e.g. `bands/0.0.0`), as stored (compressed if the entry is)."""
    entry = next((e for e in row["entries"] if e["name"] == name), None)
    if entry is None:
        raise KeyError(f"{row['member']} has no entry {name!r}")
    return fetch_range(row["tar_url"], entry["offset"], entry["size"], **storage_options)
