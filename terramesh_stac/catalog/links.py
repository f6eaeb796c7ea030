"""URLs the service hands out, computed per request (nothing host-dependent is stored).

Pure helpers shared by the STAC API (`api.py`) and the tile service (`tiles.py`):

- `service_root(request)`: base URL of the whole service (`http://host:port/`), as seen
  by the client (honours uvicorn's `root_path` and proxy headers), from inside any
  mounted sub-application.
- `rewrite_asset_hrefs(...)`: local asset paths -> `{service root}assets/<relative path>`
  (and `index/…` for the byte-range index).
- `render_query(render)`: a render-extension preset -> titiler query parameters.
- `item_render_links(...)`: TileJSON + preview links of an item for one preset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request

from terramesh_stac.converters.layout import ASSETS_DIR, INDEX_DIR

# ASGI scope key set by catalog/app.py for its mounted sub-apps: the root path of the
# whole service (usually "", or uvicorn's --root-path behind a proxy).
SERVICE_ROOT_PATH_KEY = "terramesh.root_path"

ASSETS_PATH = "assets"
INDEX_PATH = "index"
RASTER_PATH = "raster"
STAC_PATH = "stac"


def service_root(request: Request) -> str:
    """`http://host:port/` (+ root path): the URL the service's own paths hang from."""
    root_path = request.scope.get(SERVICE_ROOT_PATH_KEY)
    if root_path is None:  # sub-app used on its own: its base URL is the root
        return str(request.base_url)
    # request.base_url carries scheme/host after proxy-header handling; keep those and
    # replace the sub-app's root path by the service's.
    return str(request.base_url.replace(path=root_path.rstrip("/") + "/", query=""))


def served_folders(dest: str | os.PathLike | None) -> dict[str, Path]:
    """{URL path: folder} of what the service serves of a local destination: the assets and
    the byte-range index (terramesh_stac.converters.layout); {} when it is on object storage.
    Items, manifests and reports beside them are not served."""
    if dest is None:
        return {}
    dest = str(dest)
    if "://" in dest and not dest.startswith("file://"):
        return {}
    root = Path(dest.removeprefix("file://")).expanduser()
    return {ASSETS_PATH: (root / ASSETS_DIR).resolve(), INDEX_PATH: (root / INDEX_DIR).resolve()}


def local_href_to_url(href: str, folders: dict[str, Path], base: str) -> str | None:
    """`/data/out/assets/x/S2L2A.tif` -> `{base}assets/x/S2L2A.tif` if under a served folder."""
    path = href.removeprefix("file://")
    for url_path, folder in folders.items():
        try:
            rel = Path(os.path.normpath(path)).relative_to(folder)
        except ValueError:
            continue
        tail = "" if rel == Path(".") else quote(rel.as_posix()) + ("/" if path.endswith("/") else "")
        return f"{base}{url_path}/{tail}"
    return None


def is_local_path(href: str) -> bool:
    return href.startswith("file://") or ("://" not in href and os.path.isabs(href))


SOURCE_SUFFIX = "_source"  # converters.source_assets.source_asset_key


def rewrite_asset_hrefs(obj: dict[str, Any], folders: dict[str, Path], base: str) -> None:
    """In place: local asset paths of an item or collection dict under a served folder become
    URLs under `base`; other local asset paths are left as stored (items of another
    destination than the one served: dropping them would leave items without the assets
    their extensions describe). Links to local paths and `<MODALITY>_source` assets in the
    shards of a local source are left out: the service does not serve them, and they name
    server folders."""
    links = obj.get("links")
    if isinstance(links, list):
        obj["links"] = [
            link
            for link in links
            if not (isinstance(link, dict) and isinstance(link.get("href"), str) and is_local_path(link["href"]))
        ]
    assets = obj.get("assets")
    if not isinstance(assets, dict):
        return
    for key, asset in list(assets.items()):
        href = asset.get("href") if isinstance(asset, dict) else None
        if isinstance(href, str) and is_local_path(href):
            url = local_href_to_url(href, folders, base)
            if url is not None:
                asset["href"] = url
            elif key.endswith(SOURCE_SUFFIX):  # the shards of a local source: not served, a server folder
                del assets[key]


def rewrite_reference_urls(refs: dict[str, Any], folders: dict[str, Path], base: str) -> dict[str, Any]:
    """In place: the local paths of a kerchunk reference file (`[path, offset, size]`) under
    a served folder become URLs under `base`; returns `refs`."""
    for key, ref in (refs.get("refs") or {}).items():
        if isinstance(ref, list) and ref and isinstance(ref[0], str) and is_local_path(ref[0]):
            if (url := local_href_to_url(ref[0], folders, base)) is not None:
                refs["refs"][key] = [url, *ref[1:]]
    return refs


# Render-extension fields that are not tile query parameters.
_RENDER_NON_PARAMS = {"title", "minmax_zoom"}


def render_query(render: dict[str, Any]) -> list[tuple[str, str]]:
    """A render preset (STAC render extension) -> titiler query parameters.

    `assets` is a list (titiler-core 2.x per-asset options such as `S2L2A|bidx=4,3,2` are
    kept as written); `rescale` a list of [min, max]; `colormap` a dict (sent as JSON).
    """
    render = titiler_render(render)
    params: list[tuple[str, str]] = []
    for key, value in render.items():
        if key in _RENDER_NON_PARAMS or value is None:
            continue
        if key == "assets":
            params += [("assets", str(a)) for a in ([value] if isinstance(value, str) else value)]
        elif key == "rescale":
            ranges = value if value and isinstance(value[0], (list, tuple)) else [value]
            params += [("rescale", ",".join(str(v) for v in r)) for r in ranges]
        elif key == "colormap":
            params.append(("colormap", json.dumps(value, separators=(",", ":"))))
        elif isinstance(value, (list, tuple)):
            params += [(key, str(v)) for v in value]
        elif isinstance(value, bool):
            params.append((key, "true" if value else "false"))
        else:
            params.append((key, str(value)))
    return params


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def titiler_render(render: dict[str, Any]) -> dict[str, Any]:
    """Move band options into titiler-core 2.x asset syntax (`S2L2A|bidx=4,3,2`).

    titiler-core 2.3 ignores the older `asset_bidx=S2L2A|4,3,2` / `asset_expression`
    parameters (and a top-level `bidx` on a multi-asset reader): fold them into `assets`.
    """
    render = dict(render)
    assets = [str(a) for a in _as_list(render.get("assets") or [])]
    options: dict[str, list[str]] = {a.split("|", 1)[0]: [] for a in assets}
    for v in _as_list(render.pop("asset_bidx", None) or []):
        name, bidx = str(v).split("|", 1)
        options.setdefault(name, []).append(f"bidx={bidx}")
    for v in _as_list(render.pop("asset_expression", None) or []):
        name, expr = str(v).split("|", 1)
        options.setdefault(name, []).append(f"expression={expr}")
    if (bidx := render.pop("bidx", None)) is not None and len(options) == 1:
        name = next(iter(options))
        options[name].append("bidx=" + ",".join(str(b) for b in _as_list(bidx)))
    if assets:
        folded = []
        for a in assets:
            name = a.split("|", 1)[0]
            extra = options.get(name) or []
            folded.append("|".join([a, *extra]) if extra else a)
        render["assets"] = folded
    return render


def default_render_id(renders: dict[str, Any], preferred: str | None = None) -> str | None:
    """The preset used for an item's tile/preview links: `preferred` if the collection
    has it, else the collection's first preset."""
    if not renders:
        return None
    if preferred and preferred in renders:
        return preferred
    return next(iter(renders))


def item_render_links(
    raster_base: str, collection_id: str, item_id: str, render_id: str, render: dict[str, Any]
) -> list[dict[str, Any]]:
    """TileJSON and PNG preview links of one item for one render preset."""
    base = f"{raster_base}collections/{quote(collection_id, safe='')}/items/{quote(item_id, safe='')}"
    query = urlencode(render_query(render))
    title = render.get("title") or render_id
    return [
        {
            "rel": "tiles",
            "type": "application/json",
            "title": f"TileJSON ({title})",
            "href": f"{base}/WebMercatorQuad/tilejson.json?{query}",
        },
        {
            "rel": "preview",
            "type": "image/png",
            "title": f"Rendered preview ({title})",
            "href": f"{base}/preview.png?{query}",
        },
    ]
