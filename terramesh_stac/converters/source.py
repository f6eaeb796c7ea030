"""Where a TerraMesh tree lives: a local folder, an https root (Hugging Face layout) or s3.

All access goes through fsspec, so the rest of the converters never care which it is:

    source = open_source("https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/resolve/main/")
    source.list_shards("val")                  # shard file names, never a hard-coded range
    with source.open_shard("val", "S2L2A", "majortom_shard_000001.tar") as f: ...  # streamed
    source.read_metadata("val")                # {key: row} or None if the parquet is absent
    source.revision                            # "main" here; None for folders unless given
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import fsspec

from . import metadata as _metadata
from .modalities import MODALITIES

# https://<host>/datasets/<org>/<name>/resolve/<revision>/...
_HF_URL = re.compile(r"^(?P<host>https?://[^/]+)/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/?")
_SHARD = re.compile(r"^[A-Za-z0-9]+_shard_\d+\.tar$")


@dataclass(frozen=True)
class HubLocation:
    """A Hugging Face dataset root URL taken apart."""

    host: str  # https://huggingface.co
    repo: str  # ibm-esa-geospatial/TerraMesh
    revision: str  # branch, tag or commit, URL-decoded (e.g. refs/pr/3)


def parse_hub_url(url: str) -> HubLocation | None:
    """`https://huggingface.co/datasets/<repo>/resolve/<rev>/` -> its parts; None otherwise."""
    m = _HF_URL.match(url)
    if not m:
        return None
    return HubLocation(m["host"], m["repo"], urllib.parse.unquote(m["rev"]))


def hub_tree_url(loc: HubLocation, path: str, cursor: str | None = None) -> str:
    """The Hub's file-listing API URL for folder `path` (e.g. `val/S2L2A`) at the revision."""
    rev = urllib.parse.quote(loc.revision, safe="")
    url = f"{loc.host}/api/datasets/{loc.repo}/tree/{rev}/{path.strip('/')}"
    return url + (f"?cursor={urllib.parse.quote(cursor)}" if cursor else "")


def parse_hub_tree(entries: list[dict]) -> list[str]:
    """Shard file names out of one page of the tree API's JSON answer."""
    return [
        posixpath.basename(e["path"])
        for e in entries
        if e.get("type") == "file" and _SHARD.match(posixpath.basename(e.get("path", "")))
    ]


def next_page_url(link_header: str | None) -> str | None:
    """The Hub paginates listings with an RFC 8288 `Link: <url>; rel="next"` header."""
    for part in (link_header or "").split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if m:
            return m[1]
    return None


def _list_hub_folder(loc: HubLocation, path: str) -> list[str]:
    import urllib.error
    import urllib.request

    names, url = [], hub_tree_url(loc, path)
    while url:
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        if token := os.environ.get("HF_TOKEN"):
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                names += parse_hub_tree(json.load(r))
                url = next_page_url(r.headers.get("Link"))
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FileNotFoundError(f"{path} not found at revision {loc.revision}") from e
            raise
    return names


@dataclass
class Source:
    """A TerraMesh root: `root` is a URL or path with a trailing slash; `revision` what the
    items record as the dataset revision (None if unknown)."""

    root: str
    fs: fsspec.AbstractFileSystem
    revision: str | None = None
    hub: HubLocation | None = None
    _shards: dict = field(default_factory=dict, repr=False)

    @property
    def protocol(self) -> str:
        p = self.fs.protocol
        return p[0] if isinstance(p, (tuple, list)) else p

    def url(self, *parts: str) -> str:
        return self.root + "/".join(p.strip("/") for p in parts)

    def shard_url(self, split: str, modality: str, shard: str) -> str:
        return self.url(split, modality, shard)

    def list_shards(self, split: str) -> list[str]:
        """Shard file names of `split`, sorted. Folders are listed (all modality folders,
        union); over https the metadata parquet's `tar` column is used, else the Hub API."""
        if split in self._shards:
            return self._shards[split]
        if self.protocol in ("http", "https"):
            names = self._list_shards_http(split)
        else:
            names = set()
            for modality in MODALITIES:
                folder = self.url(split, modality)
                try:
                    entries = self.fs.ls(folder, detail=False)
                except FileNotFoundError:
                    continue
                names |= {posixpath.basename(e.rstrip("/")) for e in entries}
            names = {n for n in names if _SHARD.match(n)}
        self._shards[split] = sorted(names)
        return self._shards[split]

    def _list_shards_http(self, split: str) -> set[str]:
        table = self._read_metadata_table(split, columns=["tar"])
        if table is not None:
            return {n for n in table.column("tar").to_pylist() if n}
        if self.hub is None:
            raise FileNotFoundError(
                f"cannot list shards under {self.root}: no {split}_metadata.parquet and not a Hugging Face dataset URL"
            )
        names: set[str] = set()
        for modality in MODALITIES:
            try:
                names |= set(_list_hub_folder(self.hub, f"{split}/{modality}"))
            except FileNotFoundError:
                continue
        return names

    def open_shard(self, split: str, modality: str, shard: str):
        """A binary file object streaming the shard tar (read sequentially, never whole).
        Raises FileNotFoundError when the shard has no tar for this modality."""
        url = self.shard_url(split, modality, shard)
        if self.protocol in ("http", "https"):
            # block_size=0: one streamed GET, no range requests, nothing buffered beyond a read
            return self.fs.open(url, "rb", block_size=0)
        return self.fs.open(url, "rb")

    def metadata_url(self, split: str) -> str:
        return self.url(f"{split}_metadata.parquet")

    def _read_metadata_table(self, split: str, columns=None, shard: str | None = None):
        import io

        import pyarrow.parquet as pq

        url = self.metadata_url(split)
        filters = [("tar", "==", shard)] if shard else None
        try:
            if self.protocol in ("http", "https"):
                # a small fetch; servers without range support rule out pyarrow's random reads
                data = self.fs.cat_file(url)
                return pq.read_table(io.BytesIO(data), columns=columns, filters=filters)
            with self.fs.open(url, "rb") as f:
                return pq.read_table(f, columns=columns, filters=filters)
        except FileNotFoundError:
            return None

    def samples_per_shard(self, split: str) -> dict[str, int] | None:
        """{shard: rows of the metadata parquet}, None when the file does not exist."""
        table = self._read_metadata_table(split, columns=["tar"])
        return None if table is None else dict(Counter(table.column("tar").to_pylist()))

    def read_metadata(self, split: str, shard: str | None = None) -> dict[str, dict] | None:
        """`{split}_metadata.parquet` normalised to {key: row} (see metadata.py); only the
        rows of `shard` if given; None when the file does not exist."""
        table = self._read_metadata_table(split, shard=shard)
        return None if table is None else _metadata.normalise(table.to_pandas())


SOURCE_SCHEMES = ("file", "s3", "http", "https")


def open_source(
    url: str, *, endpoint_url: str | None = None, revision: str | None = None, storage_options: dict | None = None
) -> Source:
    """Open a TerraMesh root: local path or file://, https://... or s3://bucket/prefix.

    `endpoint_url` points s3 at an S3-compatible server.
    `revision` is recorded as given; otherwise a Hugging Face URL's `resolve/<rev>/` is used.
    """
    url = str(url)
    scheme = url.partition("://")[0] if "://" in url else "file"
    if scheme not in SOURCE_SCHEMES:
        raise ValueError(
            f"source {url!r}: unknown scheme {scheme!r}; give a folder or a file://, s3://, http:// or https:// URL"
        )
    options = dict(storage_options or {})
    if url.startswith("s3://"):
        if endpoint_url:
            options.setdefault("endpoint_url", endpoint_url)
        fs = fsspec.filesystem("s3", **options)
    elif url.startswith(("http://", "https://")):
        fs = fsspec.filesystem("https" if url.startswith("https") else "http", **options)
    else:
        url = os.path.abspath(url.removeprefix("file://"))
        if not os.path.isdir(url):
            raise FileNotFoundError(f"source {url}: no such folder")
        fs = fsspec.filesystem("file", **options)
    root = url.rstrip("/") + "/"
    hub = parse_hub_url(root)
    return Source(root=root, fs=fs, revision=revision or (hub.revision if hub else None), hub=hub)
