"""Cache-Control of tiles: immutable for one state of the catalog, a short TTL otherwise.

The map asks every tile with `v=<revision>`, the collection's catalog revision
(catalog/density.py, raised by each load). A tile of one item or of the density asked for the
current revision cannot change until the next load: it is sent `immutable` (a year), so
browsers and caches keep it; the next load changes the revision, hence the URLs. Any other
tile, and every tile that depends on a search (mosaics, footprints), gets a short max-age.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qs

import anyio
from cachetools import TTLCache
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from terramesh_stac.catalog import density

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT_TTL = "public, max-age=60"
REVISION_TTL = 2.0  # seconds a collection's revision is cached in the process

# /collections/{cid}/items/{iid}/tiles/... (one item) and the mosaics' tiles
_ITEM_TILE = re.compile(r"^/collections/(?P<cid>[^/]+)/items/[^/]+/tiles/")
_MOSAIC_TILE = re.compile(r"^/(?:searches|collections)/[^/]+/tiles/")


class RevisionCache:
    """Collection -> (revision, exists), each looked up at most every REVISION_TTL seconds."""

    def __init__(self):
        self._cache: TTLCache = TTLCache(maxsize=1024, ttl=REVISION_TTL)
        self._lock = threading.Lock()

    def get(self, conn, collection_id: str) -> tuple[int, bool]:
        with self._lock:
            hit = self._cache.get(collection_id)
        if hit is not None:
            return hit
        exists = conn.execute("SELECT 1 FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone()
        revision = density.revision(conn, collection_id) if exists else 0
        with self._lock:
            self._cache[collection_id] = (revision, bool(exists))
        return revision, bool(exists)


def cache_control(asked: str | int | None, current: int) -> str:
    """IMMUTABLE when the tile was asked for the current revision, else SHORT_TTL."""
    return IMMUTABLE if asked is not None and str(asked) == str(current) else SHORT_TTL


class TileCacheHeaders:
    """ASGI middleware of the tile service: Cache-Control on successful tile responses (item
    tiles immutable when asked with the current `v`, mosaic tiles a short TTL)."""

    def __init__(self, app: ASGIApp, revisions: RevisionCache, pool_of):
        self.app, self.revisions, self.pool_of = app, revisions, pool_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        path = path[len(root) :] if root and path.startswith(root) else path  # as the sub-app routes it
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        item = _ITEM_TILE.match(path)
        if not item and not _MOSAIC_TILE.match(path):
            return await self.app(scope, receive, send)
        value = SHORT_TTL
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("v", [None])[0]
        if item and asked is not None:
            value = await anyio.to_thread.run_sync(self._for_item, item["cid"], asked)

        async def send_with_cache(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = MutableHeaders(scope=message)
                if "cache-control" not in headers:
                    headers["Cache-Control"] = value
            await send(message)

        await self.app(scope, receive, send_with_cache)

    def _for_item(self, collection_id: str, asked: str) -> str:
        try:
            with self.pool_of().connection() as conn:
                revision, _ = self.revisions.get(conn, collection_id)
        except Exception:  # noqa: BLE001 - no database now: the tile answers (or fails) on its own
            return SHORT_TTL
        return cache_control(asked, revision)
