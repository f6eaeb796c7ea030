"""Where converted assets and items go: a local folder (default) or S3 (s3fs/boto3).

A Store hands out *storage URLs* as hrefs: absolute paths for local files, `s3://` URLs for
S3. Nothing about where the service runs (host, port, prefix) is written here; the API
turns local paths into HTTP links per request.
"""

import contextlib
import copy
import errno
import hashlib
import os
import posixpath
import re
import tempfile
import urllib.parse
import uuid
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


class DestinationError(OSError):
    """The destination cannot take writes (full, read-only, no credentials, unreachable):
    every shard would fail the same way, so the run stops. The message is one line that
    names the cause and where, e.g. "destination full: No space left on device writing
    /data/out/assets/k/S2L2A.tif". A plain string argument: it travels from a Dask worker
    to the client as it is (the cause stays on the worker, in `__cause__`). An OSError, so
    what handled the underlying OSError (e.g. a loader skipping an unreadable file) still does."""


# OSError numbers that are about the destination, not about one object's data
_FAULT_ERRNOS = {
    errno.ENOSPC: "destination full",
    errno.EDQUOT: "destination full (quota)",
    errno.EFBIG: "destination full (file too large)",
    errno.EROFS: "destination read-only",
    errno.EACCES: "destination not writable",
    errno.EPERM: "destination not writable",
    errno.EIO: "destination I/O error",
}
# S3 error codes of a destination that refuses every write, not one object
_S3_REFUSED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "NoSuchBucket",
}


def destination_fault(exc: BaseException, where: str, verb: str = "writing") -> str | None:
    """The one-line cause if `exc` (or what it was raised from) means the destination at
    `where` cannot be used at all; None for anything else (a bug, one bad object)."""
    from botocore import exceptions as be

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DestinationError):
            return str(exc)
        if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError, be.CredentialRetrievalError)):
            return (
                f"no S3 credentials for {where}: {exc}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE) where convert and its workers run"
            )
        if isinstance(exc, (be.EndpointConnectionError, be.ConnectTimeoutError, be.ReadTimeoutError)):
            url = urllib.parse.urlsplit(exc.kwargs.get("endpoint_url", ""))
            what = "no answer in time from" if isinstance(exc, be.ReadTimeoutError) else "cannot connect to"
            return f"S3 endpoint unreachable: {what} {url.scheme}://{url.netloc} {verb} {where}"
        if isinstance(exc, be.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _S3_REFUSED:
                return f"S3 refused {verb} {where}: {code}: {exc.response['Error'].get('Message', '')}".rstrip(": ")
        if isinstance(exc, OSError) and exc.errno in _FAULT_ERRNOS:
            return f"{_FAULT_ERRNOS[exc.errno]}: {exc.strerror or exc} {verb} {where}"
        exc = exc.__cause__ or exc.__context__
    return None


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

    @contextlib.contextmanager
    def _faults(self, relpath: str | None = None, verb: str = "writing"):
        """A destination that cannot be used becomes one DestinationError naming the cause."""
        try:
            yield
        except DestinationError:
            raise
        except Exception as e:
            message = destination_fault(e, self.href(relpath) if relpath else self.url, verb)
            if message is None:
                raise
            raise DestinationError(message) from e

    def put(self, relpath: str, data: bytes) -> str:
        """Write an object whole; readers never see a partial file at its final name, and a
        failed write leaves no temporary file behind."""
        path = self.path(relpath)
        with self._faults(relpath):
            if self.is_s3:
                self.fs.pipe_file(path, data)  # S3 PUT is atomic
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp_dir = self.path(self.staging) if self.staging else os.path.dirname(path)
                fd, tmp = _make_temp_file(tmp_dir)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    os.chmod(tmp, 0o644)  # readable by the service and the postgres-run stack
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        return self.href(relpath)

    def check_writable(self) -> None:
        """Write and delete one small object at the root, before any work: DestinationError
        at once (a few seconds at most) when the destination is full, read-only, without
        credentials or unreachable, instead of a failure per shard later."""
        probe = f".tmp-probe-{uuid.uuid4().hex}"
        with self._faults():
            if self.is_s3:
                self._probe_s3(probe)
            else:
                os.makedirs(self.root, exist_ok=True)
                fd, tmp = _make_temp_file(self.path(self.staging) if self.staging else self.root)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(b"probe\n")
                        f.flush()
                        os.fsync(f.fileno())
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)

    def _probe_s3(self, name: str) -> None:
        """PUT + DELETE with short timeouts and one retry: the store's own client waits and
        retries for minutes, right for a run but not to find out that nothing can work."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(connect_timeout=3, read_timeout=5, retries={"total_max_attempts": 2, "mode": "standard"}),
        )
        bucket, _, prefix = self.root.partition("/")
        key = posixpath.join(prefix, name) if prefix else name
        client.put_object(Bucket=bucket, Key=key, Body=b"probe\n")
        client.delete_object(Bucket=bucket, Key=key)

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
        with self._faults(relpath):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def copy(self, src: str, dst: str) -> None:
        """Copy an object whole (server-side on S3); `dst` appears complete or not at all."""
        if self.is_s3:
            with self._faults(dst):
                self.fs.copy(self.path(src), self.path(dst))
        else:
            self.put(dst, self.get(src))

    def delete(self, relpath: str) -> None:
        path = self.path(relpath)
        with self._faults(relpath):
            if self.fs.exists(path):
                self.fs.rm_file(path)

    def get(self, relpath: str) -> bytes:
        with self._faults(relpath, "reading"):
            return self.fs.cat_file(self.path(relpath))

    def exists(self, relpath: str) -> bool:
        with self._faults(relpath, "reading"):
            return self.fs.exists(self.path(relpath))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob pattern under the root, sorted."""
        root_len = len(self.root.rstrip("/")) + 1
        with self._faults(None, "reading"):
            return sorted(p[root_len:] for p in self.fs.glob(self.path(pattern)))
