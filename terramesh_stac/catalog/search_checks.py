"""Checks of STAC API requests before they reach stac-fastapi and pgstac.

What a client sends that PostgreSQL would reject (a 500 with SQL in the log), or that would
make one request do unbounded work, is answered here with a 400 (415 for a body that is not
JSON; the body's size is catalog/guard.py's) and a short message:

- `SearchChecks`, an ASGI middleware of the STAC app: control characters in the path and
  query parameters; for the searches (GET/POST /search, GET /collections/{id}/items,
  GET /collections) the body (size, strict JSON, an object, no NUL), bbox, intersects
  (GeoJSON structure with geojson-pydantic, validity with shapely, a size limit), ids,
  collections, fields, sortby, token, datetime strings, filter-lang/filter-crs and the
  filter: parsed with `cql2` (text in a thread with a large stack: its parser recurses per
  nesting level and would crash the process on the event loop's stack), nesting depth
  limited before `cql2` validates it (its JSON-schema validation costs memory that grows
  with depth), geometry literals checked as `intersects` is. The parsed CQL2 JSON is left
  in the request scope (`FILTER_SCOPE_KEY`) so nothing parses the text again.
- `filter_type_errors` / `query_type_errors`: a filter's (or `query`'s) literals against
  the queryables' JSON-schema types (`eo:cloud_cover < 'abc'`); the STAC client
  (catalog/api.py) runs them with the queryables documents of pgstac.

The limits (README, "Limits of the STAC API") are the constants below.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pydantic
import shapely
import shapely.errors
import shapely.geometry
from cql2 import Expr
from geojson_pydantic import (
    GeometryCollection,
    LineString,
    MultiLineString,
    MultiPoint,
    MultiPolygon,
    Point,
    Polygon,
)
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from terramesh_stac.catalog.errors import error_response

MAX_LIMIT = 1000  # items (or collections) per page; a larger `limit` is served as this
MAX_GEOMETRY_POSITIONS = 10_000  # per geometry (`intersects`, a filter's geometry literal)
MAX_FILTER_DEPTH = 10  # nested CQL2 operators (`a < 1` is 1, `NOT (a < 1 AND b = 2)` is 3)
MAX_FILTER_TEXT = 20_000  # characters of a cql2-text filter
MAX_IDS = 1000
MAX_COLLECTIONS = 100
MAX_FIELDS = 100
MAX_SORTBY = 10
MAX_NAME_LENGTH = 1024  # an id, collection id, field or sort property, token, datetime
MAX_FREE_TEXT = 1000  # characters of `q`

FILTER_SCOPE_KEY = "terramesh.cql2_json"  # the checked filter as CQL2 JSON, for catalog/api.py
INTERSECTS_SCOPE_KEY = "terramesh.intersects"  # the checked GET `intersects`, type and coordinates only
CRS84 = {"http://www.opengis.net/def/crs/OGC/1.3/CRS84", "https://www.opengis.net/def/crs/OGC/1.3/CRS84"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# query parameters that carry JSON or CQL2 text, where tabs and newlines are whitespace
_FREE_FORM_PARAMS = {"filter", "intersects", "query"}
_TOKEN = re.compile(r"(next|prev):((?:[0-9a-f]{2})+):((?:[0-9a-f]{2})+)", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

_GEOMETRY_MODELS: dict[str, type[pydantic.BaseModel]] = {
    m.__name__: m for m in (Point, MultiPoint, LineString, MultiLineString, Polygon, MultiPolygon, GeometryCollection)
}


class BadRequest(ValueError):
    """A client error: the STAC app answers it with `status` and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- plain values -------------------------------------------------------------------------


def check_text(where: str, value: Any, max_length: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string")
    if len(value) > max_length:
        raise BadRequest(f"{where} is longer than {max_length} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{where} contains a control character")
    return value


def check_names(where: str, values: Any, max_count: int) -> None:
    """A list of ids / collection ids / field names: count, type, no control characters."""
    if values is None:
        return
    if not isinstance(values, list):
        raise BadRequest(f"{where} must be a list of strings")
    if len(values) > max_count:
        raise BadRequest(f"{where}: at most {max_count} values, got {len(values)}")
    for value in values:
        check_text(f"{where} value", value)
        if not value.strip():
            raise BadRequest(f"{where}: empty value")


def check_bbox(where: str, bbox: Any) -> None:
    """4 or 6 finite numbers, longitudes in [-180, 180], latitudes in [-90, 90], south <= north."""
    if not isinstance(bbox, list | tuple) or len(bbox) not in (4, 6):
        raise BadRequest(f"{where} must be 4 or 6 numbers (west, south, [min z,] east, north[, max z])")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise BadRequest(f"{where} must be finite numbers")
    half = len(bbox) // 2
    west, south, east, north = bbox[0], bbox[1], bbox[half], bbox[half + 1]
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise BadRequest(f"{where}: longitudes must be within [-180, 180]")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise BadRequest(f"{where}: latitudes must be within [-90, 90]")
    if south > north:
        raise BadRequest(f"{where}: south ({south}) is greater than north ({north})")
    if len(bbox) == 6 and bbox[2] > bbox[5]:
        raise BadRequest(f"{where}: minimum elevation is greater than maximum elevation")


def _count_positions(coordinates: Any, limit: int) -> int:
    """Positions (innermost lists) in nested GeoJSON coordinates, iteratively, stopping past `limit`."""
    count, stack = 0, [coordinates]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            if node and not isinstance(node[0], list):
                count += 1
                if count > limit:
                    break
            else:
                stack.extend(node)
    return count


def check_geometry(where: str, geometry: Any) -> None:
    """A GeoJSON geometry: its structure (geojson-pydantic: positions, closed rings of at least
    4 positions, ...), at most MAX_GEOMETRY_POSITIONS positions, finite coordinates, and
    valid (shapely: no self-intersection, ...); PostGIS would fail or answer wrongly otherwise."""
    if not isinstance(geometry, dict) or geometry.get("type") not in _GEOMETRY_MODELS:
        raise BadRequest(f"{where} must be a GeoJSON geometry ({', '.join(_GEOMETRY_MODELS)})")
    parts = [geometry]
    if geometry["type"] == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list) or any(
            not isinstance(g, dict) or g.get("type") == "GeometryCollection" for g in members
        ):
            raise BadRequest(f"{where}: a GeometryCollection's geometries must be a list of non-collection geometries")
        parts = members
    positions = sum(_count_positions(g.get("coordinates"), MAX_GEOMETRY_POSITIONS) for g in parts)
    if positions > MAX_GEOMETRY_POSITIONS:
        raise BadRequest(f"{where} has more than {MAX_GEOMETRY_POSITIONS} positions")
    try:
        _GEOMETRY_MODELS[geometry["type"]].model_validate(geometry)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("Position"))
        raise BadRequest(f"{where}: not a valid GeoJSON {geometry['type']}: {loc}: {first['msg']}") from None
    try:
        shape = shapely.geometry.shape(geometry)
    except (ValueError, TypeError, shapely.errors.ShapelyError) as e:
        raise BadRequest(f"{where}: not a valid geometry: {_short(e, 120)}") from None
    coords = shapely.get_coordinates(shape, include_z=bool(shapely.has_z(shape)))
    if not coords.size:
        raise BadRequest(f"{where} has no positions")
    if not np.isfinite(coords).all():
        raise BadRequest(f"{where}: coordinates must be finite numbers")
    if not shapely.is_valid(shape):
        raise BadRequest(f"{where}: invalid geometry: {shapely.is_valid_reason(shape)}")


def check_token(token: Any) -> None:
    """pgstac's paging token: `next|prev:<collection hex>:<item id hex>`, the hex of UTF-8
    text without control characters (pgstac raises on other shapes, and PostgreSQL on bad bytes)."""
    check_text("token", token)
    match = _TOKEN.fullmatch(token)
    if match:
        try:
            parts = [bytes.fromhex(match[2]).decode("utf-8"), bytes.fromhex(match[3]).decode("utf-8")]
        except ValueError:
            parts = None
        if parts and not any(_CONTROL.search(p) for p in parts):
            return
    raise BadRequest("token is not a paging token of this API (use the `next`/`prev` links of a result)")


def check_sortby(sortby: Any) -> list[str]:
    """The sort properties of a GET (`+a,-b`) or POST (`[{"field": "a", "direction": "asc"}]`) sortby."""
    if sortby is None:
        return []
    if not isinstance(sortby, list):
        raise BadRequest("sortby must be a list")
    if len(sortby) > MAX_SORTBY:
        raise BadRequest(f"sortby: at most {MAX_SORTBY} properties")
    names = []
    for entry in sortby:
        name = entry.get("field") if isinstance(entry, dict) else entry
        if isinstance(name, str) and not isinstance(entry, dict):
            name = name.strip().lstrip("+-")
        check_text("sortby property", name)
        if not name.strip():
            raise BadRequest("sortby: empty property name")
        names.append(name.strip())
    return names


def _check_fields(fields: Any) -> None:
    if fields is None:
        return
    if isinstance(fields, dict):  # POST {"include": [...], "exclude": [...]}
        for key in ("include", "exclude"):
            if fields.get(key) is not None and not isinstance(fields[key], list):
                raise BadRequest(f"fields.{key} must be a list of strings")
        names = [*(fields.get("include") or []), *(fields.get("exclude") or [])]
    elif isinstance(fields, list):  # GET ["+a", "-b", "c"]
        names = [f.lstrip("+-") if isinstance(f, str) else f for f in fields]
    else:
        raise BadRequest("fields must be an object with include/exclude lists")
    check_names("fields", names, MAX_FIELDS)


# --- CQL2 filters -------------------------------------------------------------------------

# cql2's parser recurses once per nesting level (parentheses, prefix operators, operator
# chains), about 4 KB of stack each: on the event loop's 8 MB stack a 16 KB GET filter can
# crash the process. Parsing runs in one thread with a stack sized for MAX_FILTER_TEXT.
_PARSER_STACK_BYTES = 256 * 1024 * 1024
# One thread: cql2's validation keeps ~90 MB per thread that ran it, plus ~9 MB per nesting
# level (measured: a depth-10 filter takes ~0.25 s and the process stays ~160 MB larger).
_PARSER_THREADS = 1
_parser: ThreadPoolExecutor | None = None
_parser_lock = threading.Lock()


def _parser_executor() -> ThreadPoolExecutor:
    """The parser threads, started at once (a thread takes the stack size set when it starts)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            previous = threading.stack_size(_PARSER_STACK_BYTES)
            try:
                executor = ThreadPoolExecutor(max_workers=_PARSER_THREADS, thread_name_prefix="cql2")
                started = threading.Barrier(_PARSER_THREADS)
                for future in [executor.submit(started.wait) for _ in range(_PARSER_THREADS)]:
                    future.result()
            finally:
                threading.stack_size(previous)
            _parser = executor
    return _parser


def _filter_depth(node: Any) -> tuple[int, int]:
    """(nesting of CQL2 operators, nesting of JSON containers) of a CQL2 JSON value, iteratively."""
    deepest_op = deepest = 0
    stack = [(node, 0, 0)]
    while stack:
        value, ops, containers = stack.pop()
        if isinstance(value, dict):
            ops += "op" in value
            containers += 1
            stack.extend((v, ops, containers) for v in value.values())
        elif isinstance(value, list):
            containers += 1
            stack.extend((v, ops, containers) for v in value)
        else:
            continue
        deepest_op, deepest = max(deepest_op, ops), max(deepest, containers)
        if deepest > 4 * MAX_FILTER_DEPTH:
            break
    return deepest_op, deepest


def _shape(node: Any) -> Any:
    """The filter with every number replaced by 0: what its validity against the CQL2 JSON
    schema depends on (numbers are only ever checked for being numbers)."""
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return 0
    return node


_VALID_SHAPES: dict[bytes, None] = {}  # insertion-ordered: the oldest is dropped first
_VALID_SHAPES_MAX = 4096
_VALID_SHAPES_LOCK = threading.Lock()


def _validate(expr: dict) -> None:
    """`cql2.Expr(expr).validate()`, remembered for valid filters of the same shape: cql2
    builds its JSON-schema validator on every call (30-60 ms per filter here), while clients
    send the same few filters with other values (`eo:cloud_cover < N`)."""
    key = orjson.dumps(_shape(expr), option=orjson.OPT_SORT_KEYS)
    if key in _VALID_SHAPES:
        return
    Expr(expr).validate()
    with _VALID_SHAPES_LOCK:
        if len(_VALID_SHAPES) >= _VALID_SHAPES_MAX:
            del _VALID_SHAPES[next(iter(_VALID_SHAPES))]
        _VALID_SHAPES[key] = None


def _parse_and_validate(expr: Any) -> dict:
    """In the parser thread: cql2 text or JSON -> checked CQL2 JSON (BadRequest if not)."""
    if isinstance(expr, str):
        try:
            expr = Expr(expr).to_json()
        except Exception as e:  # cql2 raises plain exceptions (ParseError, ...)
            raise BadRequest(f"filter is not valid cql2-text: {_short(e)}") from None
    if not isinstance(expr, dict):
        raise BadRequest("filter must be a boolean CQL2 expression (in cql2-json, an object)")
    ops, containers = _filter_depth(expr)
    # JSON containers: 2 per operator ({"op", "args": [...]}), a few more for geometry literals
    if ops > MAX_FILTER_DEPTH or containers > 2 * MAX_FILTER_DEPTH + 8:
        raise BadRequest(f"filter nests too deep (at most {MAX_FILTER_DEPTH} levels of operators)")
    for literal, kind in _filter_literals(expr):  # before validate(): its messages say less
        if kind == "bbox":
            check_bbox("filter bbox", literal)
        else:
            check_geometry("filter geometry", literal)
    try:
        _validate(expr)
    except Exception as e:  # its message starts with the whole filter: keep what follows
        message = str(e)
        if " is not valid under any of the schemas" in message:  # the usual one, after the whole filter
            message = "it does not match the CQL2 JSON schema (an operator with arguments of the wrong kind?)"
        raise BadRequest(f"filter is not valid CQL2: {_short(message, 160)}") from None
    return expr


async def parse_filter(expr: Any, lang: str | None, post: bool) -> dict:
    """A filter as sent (cql2-text or CQL2 JSON), checked, as CQL2 JSON. `filter-lang`
    defaults to cql2-text in GET and cql2-json in POST (the filter extension's defaults)."""
    lang = lang or ("cql2-json" if post else "cql2-text")
    if isinstance(expr, str):
        if lang == "cql2-json" and post:
            raise BadRequest(
                'filter is a string but filter-lang is cql2-json: send "filter-lang": "cql2-text" '
                "with a CQL2 text filter, or the filter as a CQL2 JSON object"
            )
        if lang == "cql2-json":  # GET cql2-json: the JSON as text
            try:
                expr = orjson.loads(expr)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"filter is not valid JSON (filter-lang is cql2-json): {_short(e, 120)}") from None
        elif len(expr) > MAX_FILTER_TEXT:
            raise BadRequest(f"filter is longer than {MAX_FILTER_TEXT} characters")
        elif "\x00" in expr:
            raise BadRequest("filter contains a NUL character")
    elif lang == "cql2-text":
        raise BadRequest('filter-lang is cql2-text but filter is a JSON object: send "filter-lang": "cql2-json"')
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_parser_executor(), _parse_and_validate, expr)


def _filter_literals(node: Any):
    """(geometry or bbox, kind) of every spatial literal of a CQL2 JSON filter."""
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if "coordinates" in value or "geometries" in value:
                yield value, "geometry"
            elif set(value) == {"bbox"}:
                yield value["bbox"], "bbox"
            else:
                stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


# --- type checks against the queryables --------------------------------------------------

# item columns pgstac knows without a queryable, and their kinds
COLUMN_KINDS = {
    "id": "string",
    "collection": "string",
    "datetime": "datetime",
    "start_datetime": "datetime",
    "end_datetime": "datetime",
    "geometry": "geometry",
}
_ARITHMETIC = {"+", "-", "*", "/", "%", "^", "div"}
_COMPARISON = {"=", "<>", "<", "<=", ">", ">=", "between", "in"}
_KIND_NAMES = {
    "number": "a number",
    "string": "a string",
    "datetime": "a date-time",
    "boolean": "a boolean",
    "geometry": "a geometry",
    "array": "an array",
    "interval": "an interval",
}


def property_name(name: str) -> str:
    return name[len("properties.") :] if name.startswith("properties.") else name


def property_kind(name: str, queryables: dict[str, Any] | None) -> str | None:
    """The kind of a queryable from its JSON schema: number, string, datetime, boolean,
    geometry, array, or None (no type to check against)."""
    name = property_name(name)
    if name in COLUMN_KINDS:
        return COLUMN_KINDS[name]
    schema = (queryables or {}).get(name)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind in ("number", "integer"):
        return "number"
    if kind == "string":
        return "datetime" if schema.get("format") in ("date-time", "date") else "string"
    if kind in ("boolean", "array"):
        return kind
    if "geometry" in str(schema.get("$ref", "")).lower():
        return "geometry"
    return None


def _is_instant(text: Any) -> bool:
    return isinstance(text, str) and bool(_RFC3339.fullmatch(text) or _DATE.fullmatch(text)) and _parses(text)


def _parses(text: str) -> bool:
    try:
        if len(text) == 10:
            dt.date.fromisoformat(text)
        else:
            dt.datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def _literal_kind(value: Any, queryables: dict | None) -> str | None:
    """The kind of a CQL2 JSON operand (None: unknown, e.g. a function call)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        if "property" in value:
            return property_kind(str(value["property"]), queryables)
        if "timestamp" in value or "date" in value:
            return "datetime"
        if "interval" in value:
            return "interval"
        if "coordinates" in value or "geometries" in value or "bbox" in value:
            return "geometry"
        if value.get("op") in _ARITHMETIC:
            return "number"
        if value.get("op") in ("casei", "accenti"):
            return "string"
    return None


def _describe(value: Any) -> str:
    return _short(orjson.dumps(value).decode(), 60)


def _check_instant_literal(value: Any) -> str | None:
    """Why a timestamp/date/interval literal cannot be read, or None."""
    if isinstance(value, dict):
        if "timestamp" in value and not (
            isinstance(value["timestamp"], str)
            and _RFC3339.fullmatch(value["timestamp"])
            and _parses(value["timestamp"])
        ):
            return f"TIMESTAMP {_describe(value['timestamp'])} is not an RFC 3339 date-time"
        if "date" in value and not (
            isinstance(value["date"], str) and _DATE.fullmatch(value["date"]) and _parses(value["date"])
        ):
            return f"DATE {_describe(value['date'])} is not a YYYY-MM-DD date"
        if "interval" in value:
            bounds = value["interval"]
            if not isinstance(bounds, list) or len(bounds) != 2:
                return "an INTERVAL has two bounds"
            for bound in bounds:
                if (
                    bound != ".."
                    and not _is_instant(bound)
                    and not (isinstance(bound, dict) and not _check_instant_literal(bound))
                ):
                    return f"INTERVAL bound {_describe(bound)} is not a date, date-time or '..'"
    return None


def _mismatch(name: str, kind: str, value: Any, value_kind: str | None) -> str | None:
    """Why `value` cannot be compared with property `name` of `kind`, or None."""
    if value_kind is None or kind is None:
        return None
    if kind == "datetime":
        if value_kind == "datetime" or (value_kind == "string" and _is_instant(value)):
            return None
        if value_kind == "string":
            return f"{name} is a date-time: {_describe(value)} is not one (use TIMESTAMP('2021-01-01T00:00:00Z') or DATE('2021-01-01'))"
    elif value_kind == kind:
        return None
    return (
        f"{name} is {_KIND_NAMES[kind]}, compared with {_describe(value)} ({_KIND_NAMES.get(value_kind, value_kind)})"
    )


def _side_kind(value: Any, queryables: dict | None) -> tuple[str | None, str | None]:
    """(kind, property name) of a comparison side; the name only for a property (or casei(property))."""
    if isinstance(value, dict) and value.get("op") in ("casei", "accenti") and isinstance(value.get("args"), list):
        inner = value["args"][0] if value["args"] else None
        if isinstance(inner, dict) and "property" in inner:
            return property_kind(str(inner["property"]), queryables), str(inner["property"])
    if isinstance(value, dict) and "property" in value:
        return property_kind(str(value["property"]), queryables), str(value["property"])
    return _literal_kind(value, queryables), None


def _check_node(node: dict, queryables: dict | None) -> str | None:
    op, args = node.get("op"), node.get("args")
    if not isinstance(args, list) or not isinstance(op, str):
        return None
    op = op.lower()
    if op in _COMPARISON or op == "like":
        if not args:
            return None
        kind, name = _side_kind(args[0], queryables)
        others = args[1:]
        if op == "in" and others and isinstance(others[0], list):
            others = others[0]
        if name is None and len(args) == 2 and op != "in":  # literal on the left: `10 > eo:cloud_cover`
            kind2, name2 = _side_kind(args[1], queryables)
            if name2 is not None:
                kind, name, others = kind2, name2, [args[0]]
        if name is None:
            return None
        if op == "like":
            if kind not in (None, "string"):
                return f"LIKE needs a string property: {name} is {_KIND_NAMES[kind]}"
            return None
        for other in others:
            if reason := _check_instant_literal(other):
                return reason
            other_kind, other_name = _side_kind(other, queryables)
            if other_name is not None:  # property against property
                if kind and other_kind and kind != other_kind:
                    return f"{name} ({_KIND_NAMES[kind]}) is compared with {other_name} ({_KIND_NAMES[other_kind]})"
                continue
            if reason := _mismatch(name, kind, other, other_kind):
                return reason
    elif op in _ARITHMETIC:
        for arg in args:
            kind, name = _side_kind(arg, queryables)
            if kind not in (None, "number"):
                return f"arithmetic ({op}) needs numbers: {name or _describe(arg)} is {_KIND_NAMES.get(kind, kind)}"
        if op in ("/", "%", "div") and len(args) == 2 and args[1] == 0 and not isinstance(args[1], bool):
            return "division by zero"
    elif op.startswith("s_"):
        for arg in args:
            kind, name = _side_kind(arg, queryables)
            if kind not in (None, "geometry"):
                return f"{op.upper()} needs geometries: {name or _describe(arg)} is {_KIND_NAMES.get(kind, kind)}"
    elif op.startswith("t_"):
        for arg in args:
            if reason := _check_instant_literal(arg):
                return reason
            kind, name = _side_kind(arg, queryables)
            if kind not in (None, "datetime", "interval") and not (kind == "string" and _is_instant(arg)):
                return f"{op.upper()} needs date-times or intervals: {name or _describe(arg)} is {_KIND_NAMES.get(kind, kind)}"
    elif op.startswith("a_"):
        for arg in args:
            kind, name = _side_kind(arg, queryables)
            if kind not in (None, "array"):
                return f"{op.upper()} needs arrays: {name or _describe(arg)} is {_KIND_NAMES.get(kind, kind)}"
    return None


def filter_type_errors(expr: Any, queryables: dict[str, Any] | None) -> str | None:
    """The first type error of a CQL2 JSON filter against the queryables' schemas, or None."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if reason := _check_node(node, queryables):
                return reason
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


_QUERY_OPS = {"eq": "=", "neq": "<>", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def query_type_errors(query: Any, queryables: dict[str, Any] | None) -> str | None:
    """The query extension's `{"property": {"op": value}}` checked as the filter is."""
    if not isinstance(query, dict):
        return None
    for name, ops in query.items():
        if not isinstance(ops, dict):
            continue
        for op, value in ops.items():
            if op in _QUERY_OPS:
                node = {"op": _QUERY_OPS[op], "args": [{"property": name}, value]}
            elif op == "in":
                node = {"op": "in", "args": [{"property": name}, value if isinstance(value, list) else [value]]}
            elif op in ("startsWith", "endsWith", "contains"):
                node = {"op": "like", "args": [{"property": name}, value]}
                if not isinstance(value, str):
                    return f"query {op} needs a string, got {_describe(value)}"
            else:
                continue
            if reason := _check_node(node, queryables):
                return f"query: {reason}"
    return None


def filter_properties(node: Any) -> set[str]:
    """Every `{"property": name}` of a CQL2 JSON expression."""
    found: set[str] = set()
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("property"), str):
                found.add(value["property"])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


# --- the middleware -----------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _search_kind(method: str, path: str) -> str | None:
    """Which search a request is: "search" (GET/POST /search), "items", "collections", or None."""
    if path == "/search" and method in ("GET", "POST"):
        return "search"
    if method == "GET" and path.rstrip("/") == "/collections":
        return "collections"
    if method == "GET" and re.fullmatch(r"/collections/[^/]+/items/?", path):
        return "items"
    return None


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _from_query(params: QueryParams) -> dict[str, Any]:
    """GET parameters in the shape of a POST search (lists split, JSON parsed)."""
    search: dict[str, Any] = {}
    for name in ("collections", "ids", "fields", "sortby"):
        if (value := params.get(name)) is not None and value != "":
            search[name] = value.split(",")
    if (bbox := params.get("bbox")) is not None and bbox != "":
        try:
            search["bbox"] = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise BadRequest("bbox must be 4 or 6 comma-separated numbers") from None
    for name in ("intersects", "query"):
        if value := params.get(name):
            try:
                search[name] = orjson.loads(value)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"{name} is not valid JSON: {_short(e, 120)}") from None
    for name in ("datetime", "token", "filter", "filter-lang", "filter-crs", "q"):
        if (value := params.get(name)) is not None and value != "":
            search[name] = value
    return search


async def check_search(search: dict[str, Any], post: bool = False) -> dict | None:
    """Every check of a search's parameters that needs no database; the filter as CQL2 JSON."""
    check_names("collections", search.get("collections"), MAX_COLLECTIONS)
    check_names("ids", search.get("ids"), MAX_IDS)
    _check_fields(search.get("fields"))
    check_sortby(search.get("sortby"))
    if search.get("bbox") is not None:
        check_bbox("bbox", search["bbox"])
    if search.get("intersects") is not None:
        if search.get("bbox") is not None:
            raise BadRequest("bbox and intersects are mutually exclusive")
        check_geometry("intersects", search["intersects"])
    if search.get("datetime") is not None:
        check_text("datetime", search["datetime"])  # stac-fastapi parses the interval itself
    if search.get("token") is not None:
        check_token(search["token"])
    if search.get("q") is not None:
        q = search["q"]
        for text in q if isinstance(q, list) else [q]:
            check_text("q", text, MAX_FREE_TEXT)
    if search.get("query") is not None and not isinstance(search["query"], dict):
        raise BadRequest('query must be an object: {"property": {"operator": value}}')
    lang = search.get("filter-lang")
    if lang is not None and not (isinstance(lang, str) and lang in ("cql2-text", "cql2-json")):
        raise BadRequest("filter-lang must be cql2-text or cql2-json")
    crs = search.get("filter-crs")
    if crs is not None and not (isinstance(crs, str) and crs in CRS84):
        raise BadRequest(f"filter-crs: only {sorted(CRS84)[0]} is supported")
    if search.get("filter") is None:
        return None
    if search.get("query") is not None:
        raise BadRequest("query and filter are mutually exclusive")
    return await parse_filter(search["filter"], lang, post)


def _check_content_type(scope: Scope) -> None:
    """JSON (or no Content-Type, which FastAPI reads as JSON): anything else FastAPI hands
    the model as raw bytes."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            media = value.decode("latin-1").split(";")[0].strip().lower()
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                raise BadRequest("POST /search takes a JSON body (Content-Type: application/json)", status=415)


async def _read_body(receive: Receive, scope: Scope) -> bytes:
    """The body, whose size catalog/guard.RequestGuard has already bounded (413 beyond)."""
    _check_content_type(scope)
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _parse_body(body: bytes) -> dict:
    try:
        search = orjson.loads(body)  # strict JSON: no NaN/Infinity, nesting limited
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the body is not valid JSON: {_short(e, 120)}") from None
    if not isinstance(search, dict):
        raise BadRequest("the body must be a JSON object (a STAC search)")
    if _has_nul(search):
        raise BadRequest("the body contains a NUL character")
    return search


class SearchChecks:
    """ASGI middleware of the STAC app: the checks above, before any route runs."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = None
        try:
            path = _route_path(scope)
            if _CONTROL.search(path):
                raise BadRequest("the path contains a control character")
            params = QueryParams(scope.get("query_string", b""))
            for name, value in params.multi_items():
                pattern = _CONTROL_BUT_WHITESPACE if name in _FREE_FORM_PARAMS else _CONTROL
                if pattern.search(value) or _CONTROL.search(name):
                    raise BadRequest(f"query parameter {_short(name, 40)!r} contains a control character")
            kind = _search_kind(scope["method"], path)
            if kind == "search" and scope["method"] == "POST":
                body = await _read_body(receive, scope)
                search = _parse_body(body)
            elif kind:
                search = _from_query(params)
            if kind:
                scope[FILTER_SCOPE_KEY] = await check_search(search, post=scope["method"] == "POST")
                if isinstance(geometry := search.get("intersects"), dict):
                    # stac-fastapi parses GET `intersects` again, after unquote_plus: give it this one
                    scope[INTERSECTS_SCOPE_KEY] = {
                        k: geometry[k] for k in ("type", "coordinates", "geometries") if k in geometry
                    }
        except BadRequest as e:
            await error_response(e.status, str(e))(scope, receive, send)
            return
        if body is None:
            await self.app(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
