"""Where a sample lies: its pixel grid (CRS, affine transform) and its WGS84 footprint.

Everything is derived from the sample's own `crs` scalar and its `x`/`y` coordinates, never
from the key, the Major TOM cell name or the `spatial_ref` attributes (see the format notes).
`x`/`y` are pixel CENTRES, so the grid's outer edges lie half a pixel outside them.

Footprint accuracy: a straight UTM edge is a (very slightly) curved line in lon/lat. The
footprint is built from `DENSIFY` points per edge, transformed with pyproj, which keeps the
polygon within 1e-6 degrees of the true UTM outline (`tests/test_items.py` measures it against
a 100-point-per-edge reference, on patches up to 80 degrees latitude). An edge that is
straight to within STRAIGHT_TOLERANCE keeps only its corners (most edges, away from the
poles and the zone edges: 5 vertices instead of 17, ~300 B less per item).

Antimeridian: a footprint whose longitudes span more than 180 degrees after transformation
crosses 180 E/W; it is unwrapped, cut at 180 and returned as a MultiPolygon of the two parts
(RFC 7946 section 3.1.9), with a bbox whose west (first) value is greater than its east (third)
value (RFC 7946 section 5.2, STAC's antimeridian convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xarray as xr
from affine import Affine
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.geometry.polygon import orient

DENSIFY = 5  # points per edge, corners included
_DECIMALS = 7  # ~1 cm; 20x below the 1e-6 degree target, 2 characters less per number than 9
# an edge whose densified points all lie this close to its chord is written as the chord:
# measured against 100-point edges, the footprint then stays within 4.7e-7 degrees (< 1e-6)
STRAIGHT_TOLERANCE = 4e-7


def scalar(ds: xr.Dataset, name: str):
    """A metadata scalar that may be stored 0-d or with shape (1,)."""
    v = np.asarray(ds[name].values)
    if v.size != 1:
        raise ValueError(f"{name!r} should hold one value, has shape {v.shape}")
    return v.reshape(()).item()


@dataclass(frozen=True)
class Grid:
    """The pixel grid of one sample: EPSG code, north-up affine transform, (rows, cols)."""

    epsg: int
    transform: Affine
    shape: tuple[int, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the pixel edges, in the grid's CRS."""
        h, w = self.shape
        t = self.transform
        x0, y0 = t.c, t.f
        x1, y1 = x0 + w * t.a, y0 + h * t.e
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def proj_code(self) -> str:
        return f"EPSG:{self.epsg}"

    def stac_proj_fields(self) -> dict:
        """Projection extension v2 fields for an asset on this grid."""
        t = self.transform
        return proj_fields(self.epsg, self.shape, [t.a, t.b, t.c, t.d, t.e, t.f], self.bounds)


def proj_fields(epsg: int, shape, transform: list[float], bounds) -> dict:
    """The projection fields of a grid (a Grid's, or one `catalog` builds from a metadata row)."""
    return {
        "proj:code": f"EPSG:{epsg}",
        "proj:shape": [int(shape[0]), int(shape[1])],
        "proj:transform": transform,
        "proj:bbox": list(bounds),
    }


def _spacing(c: np.ndarray, name: str) -> float:
    if c.size < 2:
        raise ValueError(f"coordinate {name!r} needs at least 2 values to derive the spacing")
    d = np.diff(c)
    step = float(d.mean())
    if not np.allclose(d, step, rtol=0, atol=1e-6 * max(1.0, abs(step))):
        raise ValueError(f"coordinate {name!r} is not regularly spaced")
    return step


def grid_of(ds: xr.Dataset) -> Grid:
    """The grid from `crs` and the pixel-centre coordinates `x`/`y` (y may decrease)."""
    x = np.asarray(ds["x"].values, dtype="float64")
    y = np.asarray(ds["y"].values, dtype="float64")
    dx, dy = _spacing(x, "x"), _spacing(y, "y")
    if dx <= 0:
        raise ValueError("x must increase")
    if dy >= 0:
        raise ValueError("y must decrease (north-up grid)")
    transform = Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)
    return Grid(int(scalar(ds, "crs")), transform, (int(y.size), int(x.size)))


@lru_cache(maxsize=64)
def _to_wgs84(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def _edge_points(bounds: np.ndarray, densify: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y (shape (n, 4 * (densify - 1))) of the pixel-edge outlines of `bounds` rows
    (xmin, ymin, xmax, ymax), counter-clockwise from (xmin, ymin), not closed."""
    xmin, ymin, xmax, ymax = (bounds[:, i : i + 1] for i in range(4))
    t = np.linspace(0.0, 1.0, densify)[:-1][None, :]
    one = np.ones_like(t)
    xs = np.concatenate([xmin + (xmax - xmin) * t, xmax * one, xmax - (xmax - xmin) * t, xmin * one], axis=1)
    ys = np.concatenate([ymin * one, ymin + (ymax - ymin) * t, ymax * one, ymax - (ymax - ymin) * t], axis=1)
    return xs, ys


def outlines(epsg: int, bounds: np.ndarray, densify: int = DENSIFY) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat (shape (n, 4 * (densify - 1) + 1)) of the closed pixel-edge outlines of `bounds`
    rows in the grid CRS `epsg`: one pyproj call for all rows."""
    xs, ys = _edge_points(np.asarray(bounds, dtype="float64").reshape(-1, 4), densify)
    lon, lat = _to_wgs84(epsg).transform(xs, ys)
    lon, lat = np.asarray(lon), np.asarray(lat)
    return np.concatenate([lon, lon[:, :1]], axis=1), np.concatenate([lat, lat[:, :1]], axis=1)


def outline(grid: Grid, densify: int = DENSIFY) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the pixel-edge outline, counter-clockwise in the grid CRS, closed."""
    lon, lat = outlines(grid.epsg, np.array([grid.bounds]), densify)
    return lon[0], lat[0]


def _geojson(geom) -> dict:
    """shapely mapping() with lists instead of tuples (JSON round-trips compare equal)."""
    import json

    return json.loads(json.dumps(mapping(geom)))


def footprint(grid: Grid, densify: int = DENSIFY) -> tuple[dict, list[float]]:
    """(GeoJSON geometry, bbox) in WGS84 of the grid's pixel edges; antimeridian-aware."""
    return footprints(grid.epsg, np.array([grid.bounds]), densify)[0]


def footprints(
    epsg: int, bounds: np.ndarray, densify: int = DENSIFY, *, arrays: bool = False
) -> list[tuple[dict, list[float]]]:
    """footprint() of many grids of one CRS at once, from their pixel-edge `bounds` rows
    (xmin, ymin, xmax, ymax): the `catalog` command's path, the same rules as a converted
    item's. Outlines that need shapely (crossing the antimeridian, or not counter-clockwise
    in lon/lat) go through the per-ring path; the rest are built from the arrays directly.
    `arrays`: their rings as (k, 2) numpy arrays, for orjson's OPT_SERIALIZE_NUMPY (the same
    JSON as the lists, without building millions of Python floats)."""
    lon, lat = outlines(epsg, bounds, densify)
    lon, lat = np.round(lon, _DECIMALS), np.round(lat, _DECIMALS)
    # shoelace: > 0 for a counter-clockwise ring (what orient(polygon, 1.0) returns as is)
    area = (lon[:, :-1] * lat[:, 1:] - lon[:, 1:] * lat[:, :-1]).sum(axis=1)
    simple = (lon.max(axis=1) - lon.min(axis=1) <= 180.0) & (area > 0)
    bent = _bent_edges(lon, lat, densify)
    pattern_of = bent @ (1 << np.arange(4))  # which of the 4 edges keep their densified points
    rings: list = [None] * len(lon)
    bboxes: list = [None] * len(lon)
    for pattern in np.unique(pattern_of).tolist():  # rings of one length at a time (<= 16)
        rows = np.flatnonzero(pattern_of == pattern)
        cols = _vertex_columns(pattern, densify)
        ring_lon, ring_lat = lon[rows][:, cols], lat[rows][:, cols]
        block = np.ascontiguousarray(np.stack([ring_lon, ring_lat], axis=2))  # orjson needs C order
        box_ = np.column_stack([ring_lon.min(axis=1), ring_lat.min(axis=1), ring_lon.max(axis=1), ring_lat.max(axis=1)])
        for row, ring, bbox in zip(rows.tolist(), list(block) if arrays else block.tolist(), box_.tolist()):
            rings[row], bboxes[row] = ring, bbox
    return [
        ({"type": "Polygon", "coordinates": [ring]}, bbox) if ok else _footprint_of_ring(lon[i], lat[i])
        for i, (ok, ring, bbox) in enumerate(zip(simple.tolist(), rings, bboxes))
    ]


def _bent_edges(lon: np.ndarray, lat: np.ndarray, densify: int) -> np.ndarray:
    """(rows, 4) bool: the outline edges whose densified points stray more than
    STRAIGHT_TOLERANCE from the edge's chord. The others are written as their two corners
    (near the equator a UTM edge is straight to ~1e-8 degrees: its points only cost bytes)."""
    step = densify - 1
    bent = np.ones((len(lon), 4), dtype=bool)
    if step < 2:
        return bent
    for edge in range(4):
        a, b = edge * step, (edge + 1) * step
        dx, dy = lon[:, b] - lon[:, a], lat[:, b] - lat[:, a]
        px, py = lon[:, a + 1 : b] - lon[:, a : a + 1], lat[:, a + 1 : b] - lat[:, a : a + 1]
        offset = np.abs(dx[:, None] * py - dy[:, None] * px) / np.hypot(dx, dy)[:, None]
        bent[:, edge] = offset.max(axis=1) > STRAIGHT_TOLERANCE
    return bent


def _vertex_columns(pattern: int, densify: int) -> np.ndarray:
    """The outline points kept for an edge pattern (bit e set: edge e keeps its points)."""
    step = densify - 1
    cols = [0]
    for edge in range(4):
        if pattern >> edge & 1:
            cols.extend(range(edge * step + 1, (edge + 1) * step))
        cols.append((edge + 1) * step)
    return np.array(cols)


def _footprint_of_ring(lon: np.ndarray, lat: np.ndarray) -> tuple[dict, list[float]]:
    """(GeoJSON geometry, bbox) of one closed, rounded lon/lat outline."""
    if lon.max() - lon.min() <= 180.0:
        poly = orient(Polygon(zip(lon, lat)), 1.0)
        xmin, ymin, xmax, ymax = poly.bounds
        return _geojson(poly), [xmin, ymin, xmax, ymax]

    # Crosses the antimeridian: unwrap to [0, 360), cut at 180, shift the east part back.
    ulon = np.where(lon < 0, lon + 360.0, lon)
    poly = Polygon(zip(ulon, lat))
    west_of_180 = poly.intersection(box(0.0, -90.0, 180.0, 90.0))  # lon in (.., 180]
    east_of_180 = poly.intersection(box(180.0, -90.0, 360.0, 90.0))  # lon in [180, ..)
    parts = []
    for part, shift in ((west_of_180, 0.0), (east_of_180, -360.0)):
        if part.is_empty or part.area == 0:
            continue
        coords = [(x + shift, y) for x, y in part.exterior.coords]
        parts.append(orient(Polygon(coords), 1.0))
    if len(parts) == 1:  # only touched 180
        p = parts[0]
        return _geojson(p), list(p.bounds)
    mp = MultiPolygon(parts)
    a, b = parts  # a: 1xx E side, b: -1xx W side
    west = a.bounds[0]
    east = b.bounds[2]
    south = min(a.bounds[1], b.bounds[1])
    north = max(a.bounds[3], b.bounds[3])
    return _geojson(mp), [west, south, east, north]
