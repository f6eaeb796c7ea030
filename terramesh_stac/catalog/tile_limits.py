"""Bounds on the work one tile request may cause (wired into the tile service by catalog/tiles.py).

Without them one request could OOM-kill the service (`bbox/.../50000x50000.png`,
`tilesize=100000`, `histogram_bins=1000000000`) or keep it busy for minutes (a zoomed-out
mosaic of thousands of items). Every limit is a `ServiceSettings` field (`TileLimits`);
measurements behind the defaults are in the README ("Limits of the tile service").

- `request_checks`: a dependency of every tile route. Output sizes (`tilesize`, `width`,
  `height`, `max_size`, `buffer`, `padding`), histogram bins, percentiles, the pgstac search
  limits of mosaics (`items_limit`, `scan_limit`, `time_limit`), tile indexes and
  coordinates are checked before any database query or read: 400 (404 for a tile that the
  tile matrix set does not have) with the limit in the message.
- `mosaic_zoom_check`: mosaic tiles only from a minimum zoom (the render preset's
  `minmax_zoom`, else `mosaic_minzoom`).
- `BoundedPartParams`: bbox and feature images without a size are read at most
  `max_image_size` pixels wide (titiler reads them at native resolution).
- `OutputBudget` + `BoundedReader`: the exact output of each asset read (pixels x bands,
  known once the asset is open) counted against `max_values` per request, so many bands or
  assets at the maximum size, or one side derived from a thin bbox, are refused too.
- `BudgetedBackend`: a mosaic stops opening items once `mosaic_read_seconds` have passed;
  it answers what it has read, or 503 when that is nothing.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass

import attr
import morecantile
import numpy as np
from fastapi import HTTPException, Request
from rasterio.transform import from_bounds
from rasterio.warp import transform_bounds
from rio_tiler.constants import WGS84_CRS
from rio_tiler.errors import EmptyMosaicError, PointOutsideBounds, TileOutsideBounds
from rio_tiler.expression import parse_expression
from rio_tiler.io import Reader
from rio_tiler.utils import output_size
from titiler.core.dependencies import PartFeatureParams
from titiler.pgstac.backend import PGSTACBackend

from terramesh_stac.catalog.guard import Budget, current_budget

logger = logging.getLogger(__name__)

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
MAX_TILE_BUFFER = 64  # `buffer` and `padding`, pixels on each side of a tile
MAX_HISTOGRAM_BINS = 1024


@dataclass(frozen=True)
class TileLimits:
    max_tilesize: int = 1024
    max_image_size: int = 2048
    max_values: int = 2048 * 2048 * 3
    mosaic_minzoom: int = 8
    mosaic_max_items: int = 100
    mosaic_max_scan: int = 10_000
    mosaic_max_search_seconds: int = 5
    mosaic_read_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> TileLimits:
        return cls(
            max_tilesize=settings.tile_max_tilesize,
            max_image_size=settings.tile_max_image_size,
            max_values=settings.tile_max_values,
            mosaic_minzoom=settings.mosaic_minzoom,
            mosaic_max_items=settings.mosaic_max_items,
            mosaic_max_scan=settings.mosaic_max_scan,
            mosaic_max_search_seconds=settings.mosaic_max_search_seconds,
            mosaic_read_seconds=settings.mosaic_read_seconds,
        )


class LimitExceeded(HTTPException):
    """400: the request asks for more than the service gives one request."""

    def __init__(self, detail: str):
        super().__init__(status_code=400, detail=detail)


class MosaicReadTimeout(Exception):
    """A mosaic's read budget was spent before any of its items was read (503)."""


# Scope key under which RenderPresetMiddleware leaves the preset's `minmax_zoom`.
RENDER_ZOOMS_KEY = "terramesh.render_zooms"


def _number(value: str, kind=float):
    """The query/path value as a number, or None when it is not one (FastAPI answers that)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _check_at_most(name: str, value, limit) -> None:
    if value is not None and value > limit:
        raise LimitExceeded(f"{name}={value} is more than this service gives: at most {limit}")


# The deepest zoom a tile matrix set of titiler's may have (morecantile's default sets end
# at 24-30); beyond it computations overflow.
MAX_ZOOM = 30

# titiler's rescaling of a 1-2 px image fails (IndexError in rescale_array): smaller sides are refused.
MIN_IMAGE_SIDE = 4


def _check_size(name: str, value, limit) -> None:
    """An image side: MIN_IMAGE_SIDE..limit pixels."""
    if value is not None and value < MIN_IMAGE_SIDE:
        raise LimitExceeded(f"{name}={value}: an image side is at least {MIN_IMAGE_SIDE} pixels")
    _check_at_most(name, value, limit)


def _check_tile_index(params: dict) -> None:
    """404 for z/x/y that the tile matrix set does not have (morecantile would compute with
    them: z=-1 overflows)."""
    z, x, y = (_number(params.get(k), int) for k in ("z", "x", "y"))
    if None in (z, x, y):
        return
    try:
        tms = morecantile.tms.get(params.get("tileMatrixSetId", "WebMercatorQuad"))
    except morecantile.errors.InvalidIdentifier:
        return  # FastAPI answers 422 with the accepted ids
    if not tms.minzoom <= z <= tms.maxzoom:
        raise HTTPException(404, f"zoom {z} is not in {tms.id} (zooms {tms.minzoom}-{tms.maxzoom})")
    matrix = tms.matrix(z)
    if not (0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight):
        raise HTTPException(
            404,
            f"tile {z}/{x}/{y} is not in {tms.id} (x < {matrix.matrixWidth}, y < {matrix.matrixHeight} at zoom {z})",
        )


def _check_coordinates(params: dict, query) -> None:
    """Finite coordinates, a bbox with an area, and lon/lat in range when they are WGS84
    (PROJ and GDAL fail on the rest with errors that do not say what was wrong)."""
    values = {k: _number(params.get(k)) for k in ("minx", "miny", "maxx", "maxy", "lon", "lat")}
    if any(v is not None and not math.isfinite(v) for v in values.values()):
        raise LimitExceeded("coordinates must be finite numbers")
    minx, miny, maxx, maxy, lon, lat = values.values()
    if (minx is not None and minx == maxx) or (miny is not None and miny == maxy):
        raise LimitExceeded("the bbox has no area (minx = maxx or miny = maxy)")
    if query.get("coord_crs", "").upper() in ("", "EPSG:4326"):
        xs, ys = (v for v in (lon, minx, maxx) if v is not None), (v for v in (lat, miny, maxy) if v is not None)
        if any(not -180 <= x <= 180 for x in xs) or any(not -90 <= y <= 90 for y in ys):
            raise LimitExceeded(
                "longitudes must be within -180..180 and latitudes within -90..90 (coord_crs EPSG:4326)"
            )


def request_checks(limits: TileLimits):
    """The dependency of every tile route (see the module docstring)."""

    def check(request: Request) -> None:
        query, params = request.query_params, request.path_params
        _check_tile_index(params)
        _check_coordinates(params, query)
        for name in ("width", "height"):
            _check_size(name, _number(params.get(name, query.get(name)), int), limits.max_image_size)
        _check_size("max_size", _number(query.get("max_size"), int), limits.max_image_size)
        _check_size("tilesize", _number(query.get("tilesize"), int), limits.max_tilesize)
        for name in ("buffer", "padding"):
            _check_at_most(name, _number(query.get(name)), MAX_TILE_BUFFER)
        if (bins := query.get("histogram_bins")) is not None:
            if "," not in bins:
                _check_at_most("histogram_bins", _number(bins, int), MAX_HISTOGRAM_BINS)
            else:  # bin edges: numpy wants them finite and increasing
                edges = [_number(edge) for edge in bins.split(",")]
                _check_at_most("histogram_bins", len(edges), MAX_HISTOGRAM_BINS)
                if None not in edges and not (
                    all(math.isfinite(e) for e in edges) and all(a < b for a, b in zip(edges, edges[1:]))
                ):
                    raise LimitExceeded("histogram_bins: bin edges must be finite and increasing")
        if (bounds := query.get("histogram_range")) is not None:
            low, _, high = bounds.partition(",")
            if (low := _number(low)) is not None and (high := _number(high)) is not None:
                if not (math.isfinite(low) and math.isfinite(high)):
                    raise LimitExceeded("histogram_range: both values must be finite")
                if not low <= high:
                    raise LimitExceeded("histogram_range: the first value must not be above the second")
        if (cmap := query.get("colormap")) is not None:  # rio-tiler takes a number for a colormap
            try:
                parsed = json.loads(cmap)
            except ValueError:
                parsed = {}  # not JSON: titiler's own check answers
            if not isinstance(parsed, dict | list):
                raise LimitExceeded("colormap must be a JSON object ({value: [r, g, b, a]}) or a list of intervals")
        for name in ("minzoom", "maxzoom"):  # TileJSON / map zooms: morecantile overflows far out
            if (zoom := _number(query.get(name), int)) is not None and not 0 <= zoom <= MAX_ZOOM:
                raise LimitExceeded(f"{name}={zoom} is not a zoom level (0..{MAX_ZOOM})")
        for p in query.getlist("p"):
            if (value := _number(p)) is not None and not 0 <= value <= 100:
                raise LimitExceeded(f"percentile p={p} is not within 0..100")
        if (params_json := query.get("algorithm_params")) is not None:
            try:
                is_object = isinstance(json.loads(params_json), dict)
            except ValueError:
                is_object = True  # not JSON: titiler's own validation answers 422
            if not is_object:
                raise LimitExceeded("algorithm_params must be a JSON object")
        if any(not a.strip() for a in query.getlist("assets")):
            raise LimitExceeded("assets: an empty asset name; give asset keys such as assets=DEM")
        _check_at_most("items_limit", _number(query.get("items_limit"), int), limits.mosaic_max_items)
        _check_at_most("scan_limit", _number(query.get("scan_limit"), int), limits.mosaic_max_scan)
        _check_at_most("time_limit", _number(query.get("time_limit"), int), limits.mosaic_max_search_seconds)

    return check


def _positions(coordinates):
    """The positions of a GeoJSON `coordinates` array, at any nesting depth."""
    if isinstance(coordinates, list) and coordinates and all(isinstance(c, (int, float)) for c in coordinates):
        yield coordinates
    elif isinstance(coordinates, list):
        for part in coordinates:
            yield from _positions(part)


def _geometry_positions(geometry: dict, depth: int = 0):
    """The positions of a GeoJSON geometry, those of a GeometryCollection's members included."""
    if geometry.get("type") == "GeometryCollection" and isinstance(geometry.get("geometries"), list) and depth < 8:
        for member in geometry["geometries"]:
            if isinstance(member, dict):
                yield from _geometry_positions(member, depth + 1)
    else:
        yield from _positions(geometry.get("coordinates"))


async def feature_body_check(request: Request) -> None:
    """Dependency of every tile route: a Feature body (POST feature/statistics) with finite
    coordinates, in range when they are WGS84 (GDAL and PROJ overflow on the rest)."""
    if request.method != "POST" or "json" not in request.headers.get("content-type", ""):
        return
    try:
        body = json.loads(await request.body())  # FastAPI re-uses the body read here
    except ValueError:
        return  # FastAPI answers 422
    geometries = (
        [f.get("geometry") for f in body.get("features", []) if isinstance(f, dict)] if isinstance(body, dict) else []
    )
    if isinstance(body, dict) and isinstance(body.get("geometry"), dict):
        geometries.append(body["geometry"])
    wgs84 = request.query_params.get("coord_crs", "").upper() in ("", "EPSG:4326")
    for geometry in (g for g in geometries if isinstance(g, dict)):
        positions = [p for p in _geometry_positions(geometry) if len(p) >= 2]
        for x, y, *_ in positions:
            if not (math.isfinite(x) and math.isfinite(y)):
                raise LimitExceeded("the geometry's coordinates must be finite numbers")
            if wgs84 and not (-180 <= x <= 180 and -90 <= y <= 90):
                raise LimitExceeded("the geometry's longitudes must be within -180..180 and latitudes within -90..90")
        xs, ys = {p[0] for p in positions}, {p[1] for p in positions}
        if positions and (len(xs) < 2 or len(ys) < 2):
            raise LimitExceeded("the geometry has no area (its bounding box is a line or a point)")


def check_nodata(nodata, dtype) -> None:
    """400 for a `nodata` that the asset's integer values cannot hold (numpy raises on it)."""
    if nodata is None or not np.issubdtype(np.dtype(dtype), np.integer):
        return
    info = np.iinfo(np.dtype(dtype))
    value = float(nodata)
    if not (math.isfinite(value) and value == int(value) and info.min <= value <= info.max):
        raise LimitExceeded(f"nodata={nodata} does not fit this asset's {dtype} values ({info.min}..{info.max})")


def mosaic_zoom_check(limits: TileLimits, unknown_mosaic):
    """Dependency of the mosaic routers: mosaic tiles from the preset's minzoom (its
    `minmax_zoom`), else `limits.mosaic_minzoom`, as WebMercatorQuad zooms; other tile matrix
    sets are compared by scale, so the same ground resolution is the limit in all of them.
    A tile of a search or collection that does not exist stays a 404: `unknown_mosaic(path
    params)` gives its message (or None) before a tile is refused."""

    def check(request: Request) -> None:
        z = _number(request.path_params.get("z"), int)
        if z is None or "/tiles/" not in request.url.path:
            return
        zooms = request.scope.get(RENDER_ZOOMS_KEY)
        minzoom = zooms[0] if zooms else limits.mosaic_minzoom
        try:
            tms = morecantile.tms.get(request.path_params.get("tileMatrixSetId", "WebMercatorQuad"))
        except morecantile.errors.InvalidIdentifier:
            return
        if not tms.minzoom <= z <= tms.maxzoom:
            return  # not a tile of this TMS: request_checks or FastAPI answer
        coarsest = WEB_MERCATOR.matrix(minzoom).scaleDenominator * 1.01  # same scale, rounding aside
        if tms.matrix(z).scaleDenominator > coarsest:
            if message := unknown_mosaic(request.path_params):
                raise HTTPException(404, message)
            raise LimitExceeded(
                f"mosaic tiles from zoom {minzoom} up (WebMercatorQuad zoom; zoom {z} of {tms.id} asked): "
                "a zoomed-out mosaic reads too many items; zoom in, or ask an item's tiles or preview"
            )

    return check


def document_limits(openapi: dict, limits: TileLimits) -> dict:
    """The limits of `request_checks` as `minimum`/`maximum` of the parameters in the
    OpenAPI document, so clients (and schemathesis) see them."""
    bounds = {
        "tilesize": (MIN_IMAGE_SIDE, limits.max_tilesize),
        "width": (MIN_IMAGE_SIDE, limits.max_image_size),
        "height": (MIN_IMAGE_SIDE, limits.max_image_size),
        "max_size": (MIN_IMAGE_SIDE, limits.max_image_size),
        "buffer": (None, MAX_TILE_BUFFER),
        "padding": (None, MAX_TILE_BUFFER),
        "items_limit": (1, limits.mosaic_max_items),
        "scan_limit": (1, limits.mosaic_max_scan),
        "time_limit": (1, limits.mosaic_max_search_seconds),
    }
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if param.get("name") not in bounds:
                    continue
                low, high = bounds[param["name"]]
                schema = param.get("schema", {})
                for branch in schema.get("anyOf", [schema]):
                    if branch.get("type") in ("integer", "number"):
                        branch["maximum"] = high
                        if low is not None and "exclusiveMinimum" not in branch:
                            branch["minimum"] = low
    return openapi


@dataclass
class BoundedPartParams(PartFeatureParams):
    """bbox/feature size: without width, height or max_size at most `default_max_size`
    pixels on the longer side (set per app by subclassing), not the native resolution."""

    default_max_size = 2048

    def __post_init__(self):
        super().__post_init__()
        if not (self.width or self.height or self.max_size):
            self.max_size = self.default_max_size


class OutputBudget:
    """The values (output pixels x bands) one request may still read, shared by the readers
    of its assets (they read in parallel threads)."""

    def __init__(self, max_values: int, max_side: int):
        self.max_values = max_values
        self.max_side = max_side
        self.used = 0
        self._lock = threading.Lock()

    def take(self, height: int, width: int, bands: int) -> None:
        if max(height, width) > self.max_side:
            raise LimitExceeded(
                f"the output would be {width}x{height} pixels; at most {self.max_side} on a side: "
                "give a smaller width/height or max_size"
            )
        with self._lock:
            self.used += height * width * bands
            used = self.used
        if used > self.max_values:
            raise LimitExceeded(
                f"this request would read {used:,} values (output pixels x bands); at most "
                f"{self.max_values:,}: ask for fewer assets or bands (bidx), or a smaller image"
            )


def bands_asked(indexes, expression, count: int) -> int:
    if expression:
        return len(parse_expression(expression))
    if indexes is not None:
        return 1 if isinstance(indexes, int) else len(indexes)
    return count


@dataclass
class PartPlan:
    """How to read `src.part(bbox, ...)` within bounds: the output size, and when the output
    is coarser than the data, a VRT at the output's resolution (`vrt_options`)."""

    height: int
    width: int
    vrt_options: dict | None = None


def plan_part(src, bbox, bounds_crs, dst_crs, height, width, max_size, buffer) -> PartPlan:
    """Output (height, width) of `src.part(bbox, ...)` as rio-tiler sizes it (native
    resolution of the bbox, then `output_size`), and, when that output is coarser than the
    data, a warped VRT at the output's resolution.

    rio-tiler warps through a VRT at the data's own resolution over the whole bbox and lets
    GDAL decimate: a z0 tile or a continent-wide bbox of one 2.6 km patch is a VRT of
    millions of pixels a side, which GDAL warps block by block (measured: a z0-z6 tile of a
    12-band patch over 20 s and 1.5 GB of block cache). At the output's resolution the warp
    touches only the output's pixels (nearest or the asked `reproject_method`)."""
    dst_crs = dst_crs or bounds_crs  # as rio-tiler's Reader.part
    src_bbox = bbox
    if bounds_crs and bounds_crs != src.crs:
        src_bbox = transform_bounds(bounds_crs, src.crs, *bbox, densify_pts=21)
    native_w = max(abs(src_bbox[2] - src_bbox[0]) / abs(src.transform.a), 1)
    native_h = max(abs(src_bbox[3] - src_bbox[1]) / abs(src.transform.e), 1)
    if not (height and width):
        height, width = output_size(
            dataset_height=native_h, dataset_width=native_w, output_height=height, output_width=width, max_size=max_size
        )
    # a small max_size on an elongated bbox rounds one side to 0-2 px (an IndexError downstream)
    plan = PartPlan(max(MIN_IMAGE_SIDE, height), max(MIN_IMAGE_SIDE, width))
    height, width = plan.height, plan.width
    if native_w * native_h > 4 * height * width:  # downsampling: a VRT at the output's size
        left, bottom, right, top = bbox
        if bounds_crs and dst_crs and bounds_crs != dst_crs:
            left, bottom, right, top = transform_bounds(bounds_crs, dst_crs, *bbox, densify_pts=21)
        pad = math.ceil(buffer or 0)  # rio-tiler's tile buffer: output pixels on each side
        xres, yres = (right - left) / width, (top - bottom) / height
        left, right, bottom, top = left - pad * xres, right + pad * xres, bottom - pad * yres, top + pad * yres
        h, w = height + 2 * pad, width + 2 * pad
        plan.vrt_options = {"transform": from_bounds(left, bottom, right, top, w, h), "width": w, "height": h}
    return plan


def check_part(src, budget: OutputBudget | None, bbox, bounds_crs, bands: int, kwargs: dict) -> dict:
    """Count a `part` read against `budget` and return its keyword arguments for rio-tiler:
    explicit height and width, and the output-sized VRT when downsampling (`plan_part`)."""
    plan = plan_part(
        src,
        bbox,
        bounds_crs,
        kwargs.get("dst_crs"),
        kwargs.get("height"),
        kwargs.get("width"),
        kwargs.get("max_size"),
        kwargs.get("buffer"),
    )
    extra = 2 * math.ceil(kwargs.get("buffer") or 0)
    if budget is not None:
        budget.take(plan.height + extra, plan.width + extra, bands)
    kwargs = {**kwargs, "height": plan.height, "width": plan.width, "max_size": None}
    if plan.vrt_options:
        # padding offsets a window into rio-tiler's own VRT; it is for resampling seams at
        # full resolution and has no use when the VRT is the output itself
        kwargs.pop("padding", None)
        kwargs["vrt_options"] = {**(kwargs.get("vrt_options") or {}), **plan.vrt_options}
    return kwargs


@attr.s
class BoundedReader(Reader):
    """rio-tiler's COG reader that counts each read against the request's `budget` and warps
    downsampled parts at the output's resolution (`check_part`)."""

    budget: OutputBudget | None = attr.ib(default=None, kw_only=True)

    def part(self, bbox, dst_crs=None, bounds_crs=WGS84_CRS, indexes=None, expression=None, **kwargs):
        check_nodata(kwargs.get("nodata"), self.dataset.dtypes[0])
        bands = bands_asked(indexes, expression, self.dataset.count)
        kwargs = check_part(self, self.budget, bbox, bounds_crs, bands, {**kwargs, "dst_crs": dst_crs})
        return super().part(bbox, bounds_crs=bounds_crs, indexes=indexes, expression=expression, **kwargs)

    def point(self, lon, lat, **kwargs):
        check_nodata(kwargs.get("nodata"), self.dataset.dtypes[0])
        return super().point(lon, lat, **kwargs)

    def info(self, indexes=None, **kwargs):
        # rio-tiler's multi-asset info passes an asset's band options (`DEM|bidx=1`), which
        # its Reader.info does not take: the info of the whole asset
        return super().info(**kwargs)

    def read(self, indexes=None, expression=None, **kwargs):
        check_nodata(kwargs.get("nodata"), self.dataset.dtypes[0])
        if self.budget is not None:
            h, w = output_size(
                dataset_height=self.dataset.height,
                dataset_width=self.dataset.width,
                output_height=kwargs.get("height"),
                output_width=kwargs.get("width"),
                max_size=kwargs.get("max_size"),
            )
            self.budget.take(h, w, bands_asked(indexes, expression, self.dataset.count))
        return super().read(indexes=indexes, expression=expression, **kwargs)


class _ReadTimeUp(TileOutsideBounds, PointOutsideBounds):
    """An item not read because the mosaic's read budget is spent: skipped like an item
    outside the tile (both are the exceptions rio-tiler's mosaic readers skip)."""


def check_deadline(deadline: float | None, request: Budget | None = None) -> None:
    """Skip the item when the mosaic's read time is spent or its request was cancelled."""
    if deadline is not None and time.monotonic() > deadline:
        raise _ReadTimeUp("mosaic read budget spent")
    if request is not None and request.cancelled:
        raise _ReadTimeUp(f"request stopped: {request.reason}")


# The most bands of a TerraMesh modality (S2 L2A): a mosaic reads as many items at once as
# fit in the values budget with that many bands each.
ITEM_BANDS = 12


@attr.s
class BudgetedBackend(PGSTACBackend):
    """titiler-pgstac's mosaic backend, bounded (limits set per app by subclassing):

    - time: the items' reader gets a deadline (`reader_options["deadline"]`) and declines
      to open an item after it; rio-tiler reads items in chunks of a few threads, so reads
      under way finish and no item is abandoned half-read. A mosaic that ran out of time
      answers with the items it read (logged); 503 when it read none.
    - memory: items are read in parallel only as far as their outputs fit in `max_values`
      together (`ITEM_BANDS` bands each): 10 at once for 256 px tiles, one at a time for a
      1024 px tile or a 2048 px bbox; each item's reads are counted against its share;
    - threads: at most `max_threads` items at once. An item's read is mostly Python and
      GIL-bound work around a short GDAL read: on 2 cores a z11 tile of 56 items took
      ~490-630 ms one item at a time, ~1,050 ms two at a time and ~1,180 ms with titiler's
      default of 10 (benchmarks/map_tiles.py; requests in parallel still use both cores).
    """

    read_seconds: float = 10.0
    max_values: int = 2048 * 2048 * 3
    max_side: int = 2048
    max_threads: int = 1  # items read at once (settings.mosaic_threads)

    def __attrs_post_init__(self):
        self.deadline = time.monotonic() + self.read_seconds
        # The request's budget, read here in the request's thread: rio-tiler's mosaic
        # threads, which open the items, do not carry the request's context.
        self.reader_options = {**self.reader_options, "deadline": self.deadline, "request": current_budget()}

    def _within_budget(self, method, pixels: int, *args, **kwargs):
        threads = max(1, min(kwargs.get("threads") or 1, self.max_threads, self.max_values // (pixels * ITEM_BANDS)))
        kwargs["threads"] = threads
        self.reader_options["item_max_values"] = self.max_values // threads
        try:
            result = method(*args, **kwargs)
        except EmptyMosaicError:
            if time.monotonic() > self.deadline:
                raise MosaicReadTimeout(
                    f"the mosaic took longer than {self.read_seconds:g} s to read; zoom in or narrow the search"
                ) from None
            raise
        if time.monotonic() > self.deadline:
            logger.warning(
                "mosaic %s: read budget of %gs spent, answered with the items read", self.input, self.read_seconds
            )
        return result

    def _image_pixels(self, kwargs) -> int:
        """At most the pixels of a bbox/feature image (its exact size is per item)."""
        width, height, max_size = kwargs.get("width"), kwargs.get("height"), kwargs.get("max_size")
        if width and height:
            return width * height
        return (max_size or width or height or self.max_side) ** 2

    def tile(self, *args, **kwargs):
        side = (kwargs.get("tilesize") or 256) + 2 * math.ceil(kwargs.get("buffer") or 0)
        return self._within_budget(super().tile, side * side, *args, **kwargs)

    def part(self, *args, **kwargs):
        return self._within_budget(super().part, self._image_pixels(kwargs), *args, **kwargs)

    def feature(self, *args, **kwargs):
        return self._within_budget(super().feature, self._image_pixels(kwargs), *args, **kwargs)

    def point(self, *args, **kwargs):
        return self._within_budget(super().point, 1, *args, **kwargs)
