"""Validate a whole catalog offline (`terramesh-stac validate`): what a conversion wrote, or
what a running STAC API serves, every object against the shipped JSON Schemas.

- `validate_destination(dest)`: collection.json and every item of items/**/*.ndjson, read
  as `terramesh-stac load` reads them (a local folder or s3://);
- `validate_api(url)`: the landing page, each collection of /collections and its items,
  following `next` links, at most `max_items` per collection.

Only the STAC objects are fetched (from the destination or the API); schemas never are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin

from terramesh_stac.validation import KINDS, Problem, problems

API_MAX_ITEMS = 10_000


@dataclass
class CatalogReport:
    source: str
    catalogs: int = 0
    collections: int = 0
    items: int = 0
    problems: list[Problem] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what could not be read at all

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures and bool(self.collections or self.items)

    def check(self, d: dict) -> None:
        self.problems.extend(problems(d))
        kind = KINDS.get(d.get("type"))  # an unknown type is only a problem, not counted
        if kind == "item":
            self.items += 1
        elif kind == "collection":
            self.collections += 1
        elif kind == "catalog":
            self.catalogs += 1

    def summary(self, show: int = 20) -> str:
        lines = [
            f"validated {self.source}: {self.catalogs} catalogs, {self.collections} collections, "
            f"{self.items} items; {len(self.problems) + len(self.failures)} errors"
        ]
        if not self.collections and not self.items:
            lines.append("nothing to validate: no collection and no item found")
        lines += [f"could not read {f}" for f in self.failures]
        lines += [str(p) for p in self.problems[:show]]
        if len(self.problems) > show:
            lines.append(f"... and {len(self.problems) - show} more errors (--show N)")
        return "\n".join(lines)


def validate_destination(
    dest: str,
    *,
    endpoint_url: str | None = None,
    max_items: int | None = None,
    progress: Callable[[], None] | None = None,
) -> CatalogReport:
    """collection.json + items/**/*.ndjson of a conversion destination (folder or s3://)."""
    import orjson

    from terramesh_stac.catalog.loader import item_files, read_items
    from terramesh_stac.converters.storage import Store

    store = Store(dest, endpoint_url=endpoint_url)
    report = CatalogReport(source=store.url)
    if store.exists("collection.json"):
        try:
            report.check(orjson.loads(store.get("collection.json")))
        except ValueError as e:
            report.failures.append(f"collection.json: {e}")
    seen = 0
    for relpath in item_files(store):
        try:
            for item in read_items(store, relpath):
                if max_items is not None and seen >= max_items:
                    return report
                report.check(item)
                seen += 1
                if progress:
                    progress()
        except ValueError as e:  # a line that is not JSON: the rest of the file is unread
            report.failures.append(str(e))
    return report


def validate_api(
    url: str,
    *,
    max_items: int = API_MAX_ITEMS,
    page_size: int = 1000,
    timeout: float = 60.0,
    progress: Callable[[], None] | None = None,
) -> CatalogReport:
    """A STAC API root (e.g. http://127.0.0.1:8000/stac): landing page, collections, items
    (`page_size` items per request)."""
    import httpx

    root = url.rstrip("/") + "/"
    report = CatalogReport(source=url)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        try:
            report.check(_get(client, root))
            for page in _pages(client, urljoin(root, "collections")):
                for collection in page.get("collections", []):
                    report.check(collection)
                    items_url = _link(collection, "items") or urljoin(root, f"collections/{collection['id']}/items")
                    _check_items(client, items_url, max_items, page_size, report, progress)
        except (httpx.HTTPError, ValueError) as e:
            report.failures.append(f"{url}: {e}")
    return report


def _check_items(client, items_url: str, max_items: int, page_size: int, report: CatalogReport, progress) -> None:
    seen = 0
    for page in _pages(client, items_url, params={"limit": min(max_items, page_size)}):
        for item in page.get("features", []):
            if seen >= max_items:
                return
            report.check(item)
            seen += 1
            if progress:
                progress()


def _get(client, url: str, params: dict | None = None) -> dict:
    r = client.get(url, params=params)
    r.raise_for_status()
    return r.json()


def _link(d: dict, rel: str) -> str | None:
    # GET links only: a POST `next` link (search) needs its body, collections and items have none
    return next(
        (link["href"] for link in d.get("links", []) if link.get("rel") == rel and link.get("method", "GET") == "GET"),
        None,
    )


def _pages(client, url: str, params: dict | None = None) -> Iterator[dict]:
    """A paged response and the pages its `next` links lead to (each URL once)."""
    seen = set()
    while url and url not in seen:
        seen.add(url)
        page = _get(client, url, params)
        yield page
        url, params = _link(page, "next"), None  # a next link carries its own query
