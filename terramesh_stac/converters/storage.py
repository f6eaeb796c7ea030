"""Where converted assets and items go: a local folder (default) or S3 (s3fs/boto3).

A Store hands out *storage URLs* as hrefs: absolute paths for local files, `s3://` URLs for
S3. Nothing about where the service runs (host, port, prefix) is written here; the API
turns local paths into HTTP links per request.
"""

import copy
import hashlib
import os
import posixpath
import re
import tempfile
from pathlib import Path

import fsspec


def multihash_sha256(data: bytes) -> str:
    """`file:checksum` value: multihash hex of SHA2-256 (code 0x12, length 0x20)."""
    return "1220" + hashlib.sha256(data).hexdigest()


def _make_temp_file(folder: str, attempts: int = 5) -> tuple[int, str]:
    """mkstemp in `folder`, created if missing. Another shard finishing at the same moment
    removes the staging folders it leaves empty (`discard_staging`), which can take away a
    parent this shard has just created: then create it again."""
    for _ in range(attempts - 1):
        try:
            os.makedirs(folder, exist_ok=True)
            return tempfile.mkstemp(dir=folder, prefix=".tmp-")
        except FileNotFoundError:
            continue
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix=".tmp-")


_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules


def check_destination(url: str) -> str:
    """`url` if it is a destination a Store can write: a local folder, file://… or
    s3://bucket[/prefix]; else ValueError saying what is accepted."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        if not url.strip():
            raise ValueError("destination is empty: give a folder or s3://bucket/prefix")
        return url
    if scheme == "file" and rest:
        return url
    if scheme == "s3" and _S3_BUCKET.match(rest.split("/", 1)[0]):
        return url
    raise ValueError(f"destination {url!r} is neither a folder, file://PATH nor s3://BUCKET/PREFIX")


class Store:
    """A destination root. Relative paths use '/' on every platform."""

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, public_url: str | None = None, staging: str | None = None
    ):
        self.url = check_destination(url).rstrip("/")
        # local files are written under `staging` (relative) then renamed into place, so a
        # killed writer leaves its leftovers in one folder the next attempt clears
        self.staging = staging
        self.is_s3 = self.url.startswith("s3://")
        self.endpoint_url = endpoint_url
        self.public_url = public_url
        if self.is_s3:
            client_kwargs = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
            self.fs = fsspec.filesystem("s3", client_kwargs=client_kwargs, skip_instance_cache=True)
            self.root = self.url[len("s3://") :]
        else:
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(self.url.removeprefix("file://")).expanduser().resolve())

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, relpath: str) -> str:
        """The full path of an object in its filesystem (`self.fs`)."""
        return posixpath.join(self.root, relpath)

    def href(self, relpath: str) -> str:
        """Storage URL of an object: what items record as the asset href."""
        return f"s3://{self.path(relpath)}" if self.is_s3 else self.path(relpath)

    def https_href(self, relpath: str) -> str | None:
        """A plain HTTP(S) URL for an S3 object, when one exists (asset alternate)."""
        if not self.is_s3:
            return None
        if self.public_url:
            bucket_relative = self.path(relpath).split("/", 1)[1]
            return f"{self.public_url.rstrip('/')}/{bucket_relative}"
        if self.endpoint_url:  # path-style URL on an S3-compatible endpoint
            return f"{self.endpoint_url.rstrip('/')}/{self.path(relpath)}"
        bucket, key = self.path(relpath).split("/", 1)
        return f"https://{bucket}.s3.amazonaws.com/{key}"

    def put(self, relpath: str, data: bytes) -> str:
        """Write an object whole; readers never see a partial file at its final name."""
        path = self.path(relpath)
        if self.is_s3:
            self.fs.pipe_file(path, data)  # S3 PUT is atomic
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp_dir = self.path(self.staging) if self.staging else os.path.dirname(path)
            fd, tmp = _make_temp_file(tmp_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # readable by the service and the postgres-run stack
            os.replace(tmp, path)
        return self.href(relpath)

    def staged(self, staging: str) -> "Store":
        """This store writing its temporary files under `staging`, emptied first."""
        store = copy.copy(self)  # shares the filesystem object: no new S3 client per shard
        store.staging = staging
        store.clear_staging()
        return store

    def clear_staging(self) -> None:
        if self.staging and not self.is_s3:
            self.delete_tree(self.staging)

    def discard_staging(self) -> None:
        """Remove the staging folder and its parents that are left empty."""
        if self.staging and not self.is_s3:
            self.delete_tree(self.staging)
            try:
                os.removedirs(os.path.dirname(self.path(self.staging)))
            except OSError:  # not empty (another shard is staging): leave it
                pass

    def delete_tree(self, relpath: str) -> None:
        path = self.path(relpath)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def copy(self, src: str, dst: str) -> None:
        """Copy an object whole (server-side on S3); `dst` appears complete or not at all."""
        if self.is_s3:
            self.fs.copy(self.path(src), self.path(dst))
        else:
            self.put(dst, self.get(src))

    def delete(self, relpath: str) -> None:
        path = self.path(relpath)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def get(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def exists(self, relpath: str) -> bool:
        return self.fs.exists(self.path(relpath))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob pattern under the root, sorted."""
        root_len = len(self.root.rstrip("/")) + 1
        return sorted(p[root_len:] for p in self.fs.glob(self.path(pattern)))
